import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import MQIMetrics
import MQITestSupport
import Testing
@testable import MQIHTTP

/// `HEAD` as uptime checkers and `curl -I` send it: every GET route answers with GET's status and
/// headers and no body, a stream without being started, under the same token rules. Over a real
/// TCP connection (HummingbirdTesting's live client), so what NIO puts on the wire for a HEAD is
/// what is checked; on `HTTPExposureTests.Site` (tokens, one NEW case `CASE-1`).
@Suite struct HeadRequestTests {
    struct Reply: Sendable {
        var status: HTTPResponse.Status
        var headers: HTTPFields
        var body: ByteBuffer

        var contentType: String? { headers[.contentType] }
        var contentLength: String? { headers[.contentLength] }
        /// The header names, without those the server stamps on each response anew.
        var headerNames: Set<String> { Set(headers.map { $0.name.canonicalName }).subtracting(["date"]) }
    }

    static func send(_ client: any TestClientProtocol, _ method: HTTPRequest.Method, _ path: String, _ headers: HTTPFields = [:]) async throws -> Reply {
        try await client.execute(uri: path, method: method, headers: headers) { Reply(status: $0.status, headers: $0.headers, body: $0.body) }
    }

    /// GET and HEAD on pages, the API (a 404 case id, a 409 and a streamed log included), the document, metrics,
    /// probes and assets: the same status, content type and header names, Content-Length where
    /// GET has one (the same number where the body cannot change between the two requests), and
    /// no body.
    @Test(.timeLimit(.minutes(4)))
    func everyGETRouteAnswersHEADWithItsStatusAndHeadersAndNoBody() async throws {
        let site = try await HTTPExposureTests.Site()
        defer { site.temp.remove() }
        // A finished attempt's log: GET streams it (chunked, no Content-Length), and so HEAD has none either.
        let log = try StepLogs(logsDir: site.config.state.logsDir).path(caseId: "CASE-1", step: "run_moqui_sim", attempt: 1)
        try FileManager.default.createDirectory(atPath: (log as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data("Total execution time: 1 s\n".utf8).write(to: URL(fileURLWithPath: log))
        let router = HTTPServer.router(store: site.store, metrics: MQIMetrics(), readiness: { [:] }, api: site.api())
        try await Application(router: router).test(.live) { client in
            // Bodies that are the same on every request.
            let fixed: Set<String> = ["/api/cases/NO-SUCH-CASE", "/api/cases/CASE-1/results.zip", "/api/openapi.json", "/healthz", "/readyz",
                                      "/assets/dashboard.js", "/assets/dashboard.css", "/favicon.ico", "/api/nothing-here"]
            let expected: [String: HTTPResponse.Status] = ["/api/cases/NO-SUCH-CASE": .notFound, "/api/cases/CASE-1/results.zip": .conflict,
                                                          "/api/nothing-here": .notFound, "/cases/NO-SUCH-CASE": .notFound]
            for path in ["/", "/cases", "/cases/CASE-1", "/cases/NO-SUCH-CASE", "/api/cases", "/api/cases/CASE-1", "/api/cases/NO-SUCH-CASE",
                         "/api/cases/CASE-1/results.zip", "/api/summary", "/api/gpus", "/api/queues", "/api/communicators", "/api/openapi.json",
                         "/metrics", "/healthz", "/readyz", "/assets/dashboard.js", "/assets/dashboard.css", "/favicon.ico", "/api/nothing-here",
                         "/api/cases/CASE-1/logs/run_moqui_sim/1"] {
                let get = try await Self.send(client, .get, path)
                let head = try await Self.send(client, .head, path)
                #expect(get.status == (expected[path] ?? .ok), "GET \(path): \(get.status) \(String(buffer: get.body).prefix(300))")
                #expect(head.status == get.status, "HEAD \(path): \(head.status), GET: \(get.status)")
                #expect(head.contentType != nil && head.contentType == get.contentType, "HEAD \(path): \(head.contentType ?? "no Content-Type"), GET: \(get.contentType ?? "none")")
                #expect(head.headerNames == get.headerNames, "HEAD \(path): \(head.headers), GET: \(get.headers)")
                #expect(head.body.readableBytes == 0, "HEAD \(path) sent a body: \(String(buffer: head.body).prefix(200))")
                if let length = get.contentLength {
                    #expect(Int(length) == get.body.readableBytes, "GET \(path): Content-Length \(length), body \(get.body.readableBytes)")
                    #expect(head.contentLength != nil, "HEAD \(path) has no Content-Length; GET has \(length)")
                    if fixed.contains(path) { #expect(head.contentLength == length, "HEAD \(path): \(head.contentLength ?? "-"), GET: \(length)") }
                } else {
                    // RFC 9110 §8.6: a HEAD's Content-Length must be what GET would send.
                    #expect(head.contentLength == nil, "HEAD \(path): Content-Length \(head.contentLength ?? "") where GET streams without one")
                }
            }
            let logGET = try await Self.send(client, .get, "/api/cases/CASE-1/logs/run_moqui_sim/1")
            #expect(String(buffer: logGET.body) == "Total execution time: 1 s\n" && logGET.contentLength == nil, "\(logGET.headers)")
            // The same path with both methods pinned down where it matters most.
            let page = try await Self.send(client, .head, "/cases/CASE-1")
            #expect(page.status == .ok && page.contentType?.hasPrefix("text/html") == true && page.headers[.init("X-Frame-Options")!] == "DENY", "\(page.headers)")
            let notFound = try await Self.send(client, .head, "/api/cases/NO-SUCH-CASE")
            #expect(notFound.status == .notFound && notFound.contentType?.hasPrefix("application/json") == true)
            let metrics = try await Self.send(client, .head, "/metrics")
            #expect(metrics.status == .ok && metrics.contentType == "text/plain; version=0.0.4; charset=utf-8" && Int(metrics.contentLength ?? "") ?? 0 > 0,
                    "\(metrics.headers)")

            // `/` for a Prometheus scrape: the metrics' head, as GET gives it.
            let scrape = try await Self.send(client, .head, "/", [.accept: "text/plain;version=0.0.4"])
            #expect(scrape.status == .ok && scrape.contentType?.hasPrefix("text/plain; version=0.0.4") == true && scrape.headers[.vary] == "Accept",
                    "\(scrape.headers)")
            #expect(scrape.body.readableBytes == 0)

            // HEAD only where GET is: an operation that only takes POST still says so.
            let retry = try await Self.send(client, .head, "/api/cases/CASE-1/retry")
            #expect(retry.status == .methodNotAllowed && retry.headers[.allow] == "POST" && retry.body.readableBytes == 0, "\(retry.status) \(retry.headers)")
        }
        // Nothing was changed by any of it.
        #expect(try await site.store.caseSummary("CASE-1")?.status == .new)
    }

    /// The live feed never ends for GET; HEAD returns its status and content type at once, the
    /// stream not started (a started one would keep this request open until the time limit).
    @Test(.timeLimit(.minutes(4)))
    func anEventStreamAnswersHEADWithoutStreaming() async throws {
        let site = try await HTTPExposureTests.Site()
        defer { site.temp.remove() }
        let router = HTTPServer.router(store: site.store, metrics: MQIMetrics(), readiness: { [:] }, api: site.api())
        try await Application(router: router).test(.live) { client in
            for _ in 0..<3 {
                let events = try await Self.send(client, .head, "/api/events")
                #expect(events.status == .ok)
                #expect(events.contentType?.hasPrefix("text/event-stream") == true, "\(events.headers)")
                #expect(events.contentLength == nil, "a stream's length is unknown, not 0: \(events.headers)")
                #expect(events.body.readableBytes == 0)
            }
            // A log stream of a case that has no such log: its 404, as GET gives it.
            let log = try await Self.send(client, .head, "/api/cases/CASE-1/logs/run_moqui_sim/1/stream")
            #expect(log.status == .notFound && log.contentType?.hasPrefix("application/json") == true, "\(log.status) \(log.headers)")
            // The connection is still good for a GET afterwards.
            #expect(try await Self.send(client, .get, "/healthz").status == .ok)
        }
    }

    /// Bound beyond loopback (reads need a token), HEAD is refused exactly as GET is, and passes
    /// with a Bearer token or Basic with the token as the password; probes and metrics stay open.
    @Test(.timeLimit(.minutes(4)))
    func headNeedsATokenWhereGETDoes() async throws {
        let site = try await HTTPExposureTests.Site()
        defer { site.temp.remove() }
        let router = HTTPServer.router(store: site.store, metrics: MQIMetrics(), readiness: { [:] }, api: site.api(), readsNeedToken: true)
        let alice = site.alice
        try await Application(router: router).test(.live) { client in
            for path in ["/api/cases", "/api/cases/CASE-1", "/", "/cases/CASE-1", "/api/events", "/api/openapi.json"] {
                let head = try await Self.send(client, .head, path)
                #expect(head.status == .unauthorized, "HEAD \(path) without a token: \(head.status)")
                #expect(head.body.readableBytes == 0)
                if path != "/api/events" {
                    let get = try await Self.send(client, .get, path)
                    #expect(get.status == .unauthorized && head.contentType == get.contentType && head.contentLength == get.contentLength
                            && head.headers[values: .wwwAuthenticate] == get.headers[values: .wwwAuthenticate], "HEAD \(path): \(head.headers), GET: \(get.headers)")
                }
            }
            let refused = try await Self.send(client, .head, "/api/cases")
            #expect(refused.headers[values: .wwwAuthenticate].contains("Bearer realm=\"MQI Communicator\""), "\(refused.headers)")
            #expect(try await Self.send(client, .head, "/api/cases", [.authorization: "Bearer wrong-\(alice)"]).status == .unauthorized)

            #expect(try await Self.send(client, .head, "/api/cases", [.authorization: "Bearer \(alice)"]).status == .ok)
            let basic = try await Self.send(client, .head, "/cases/CASE-1", [.authorization: HTTPExposureTests.basic("anyone", alice)])
            #expect(basic.status == .ok && basic.contentType?.hasPrefix("text/html") == true && basic.body.readableBytes == 0)
            let events = try await Self.send(client, .head, "/api/events", [.authorization: "Bearer \(alice)"])
            #expect(events.status == .ok && events.contentType?.hasPrefix("text/event-stream") == true)
            for path in ["/healthz", "/readyz", "/metrics", "/assets/dashboard.js"] {
                #expect(try await Self.send(client, .head, path).status == .ok, "HEAD \(path) is open like GET")
            }
        }
    }
}
