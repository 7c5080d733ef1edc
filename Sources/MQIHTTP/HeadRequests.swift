import Hummingbird

/// HEAD (RFC 9110 §9.3.2) on every GET route, as `curl -I` and uptime checkers send it: the
/// request is routed as the GET it stands for, through the same middlewares (`ReadAccess` asks
/// for the same token), and GET's status and headers go out without its body, whose closure (an
/// event stream, a log, `results.zip`) is never started. `Content-Length` goes out where GET
/// sends one and only there: Hummingbird's own `autoGenerateHeadEndpoints` adds
/// `Content-Length: 0` to the HEAD of a streamed GET, which RFC 9110 §8.6 forbids. A path without
/// GET answers HEAD as it answers GET (405 with `Allow`, or 404). NIO sends no body bytes in a
/// response to HEAD.
public struct HeadRequests<Builder: HTTPResponderBuilder>: HTTPResponderBuilder {
    public let builder: Builder

    public init(_ builder: Builder) {
        self.builder = builder
    }

    public func buildResponder() -> Responder {
        Responder(next: builder.buildResponder())
    }

    public struct Responder: HTTPResponder {
        public typealias Context = Builder.Responder.Context
        let next: Builder.Responder

        public func respond(to request: Request, context: Context) async throws -> Response {
            guard request.method == .head else { return try await next.respond(to: request, context: context) }
            var head = request.head
            head.method = .get
            let response = try await next.respond(to: Request(head: head, body: request.body), context: context)
            // A body of unknown length, so that no Content-Length is added beside GET's headers.
            return Response(status: response.status, headers: response.headers, body: ResponseBody { writer in try await writer.finish(nil) })
        }
    }
}

extension HeadRequests where Builder == Router<MQIRequestContext> {
    /// The routes as registered (GET, POST); each GET route also answers HEAD.
    public var routes: [Router<MQIRequestContext>.RouteDescription] { builder.routes }
}
