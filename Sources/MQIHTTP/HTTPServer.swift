import Foundation
import Hummingbird
import Logging
import MQICore
import MQIMetrics
import MQIStore
import NIOCore

/// Why the daemon is not ready, as named checks; empty when ready.
public typealias ReadinessCheck = @Sendable () async -> [String: String]

/// The daemon's HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, `/readyz`; `/` gives
/// the metrics too when the request's `Accept` asks for them (a Prometheus scrape), else the
/// dashboard. Bound beyond loopback, the pages and `/api` need a token (`ReadAccess`); with
/// `http.tls` it speaks HTTPS only. Every GET route also answers HEAD.
public enum HTTPServer {
    /// - Parameter readsNeedToken: whether pages and `/api` reads need a token; nil decides from
    ///   the API's `metrics.host` (`readsNeedToken(host:)`). Tests pass `true` to check the rule on
    ///   127.0.0.1, since they must not listen beyond loopback.
    /// - Returns: the router, wrapped so that every GET route also answers HEAD (`HeadRequests`).
    public static func router(store: Store, metrics: MQIMetrics, readiness: @escaping ReadinessCheck, api: APIContext? = nil,
                              readsNeedToken: Bool? = nil) -> HeadRequests<Router<MQIRequestContext>> {
        let router = Router(context: MQIRequestContext.self)
        router.add(middleware: SecurityHeaders())
        // The state directory (for its free space) is known where the config is: with the API.
        let stateDirectory = api?.config.state.localDirectory
        let exposition: @Sendable () async throws -> Response = {
            let text = try await metrics.render(from: store, stateDirectory: stateDirectory)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        // Before the dashboard's routes: a middleware applies to the routes added after it.
        router.add(middleware: MetricsAtRoot(exposition: exposition))
        if let api {
            // After MetricsAtRoot, so a scrape of `/` stays open like `/metrics`.
            if readsNeedToken ?? Self.readsNeedToken(host: api.config.metrics.host) {
                router.add(middleware: ReadAccess(authorization: APIAuthorization(api.config.http)))
            }
            APIRoutes.register(on: router, api)
        }
        router.get("/metrics") { _, _ -> Response in try await exposition() }
        router.get("/healthz") { _, _ -> Response in
            json(.ok, ["status": "ok"])
        }
        router.get("/readyz") { _, _ -> Response in
            let problems = await readiness()
            if problems.isEmpty { return json(.ok, ["status": "ready"]) }
            return json(.serviceUnavailable, ["status": "not ready", "reasons": problems])
        }
        return HeadRequests(router)
    }

    /// The server as a service for the daemon's ServiceGroup. `onListening` gets the bound port.
    /// With the API's `http.tls` it serves HTTPS only (and logs its https URL); whether reads need
    /// a token follows `config.host` unless `readsNeedToken` says otherwise (tests).
    public static func application(
        config: MetricsConfig, store: Store, metrics: MQIMetrics, readiness: @escaping ReadinessCheck, api: APIContext? = nil, logger: Logger,
        readsNeedToken: Bool? = nil, onListening: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        let tls = api?.config.http.tls
        let needToken = api != nil && (readsNeedToken ?? Self.readsNeedToken(host: config.host))
        return Application(
            router: router(store: store, metrics: metrics, readiness: readiness, api: api, readsNeedToken: needToken),
            server: tls.map(HTTPSConfiguration.serverBuilder) ?? .http1(),
            configuration: .init(address: .hostname(config.host, port: config.port), serverName: "mqi-communicator"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? config.port
                var notes: [String] = []
                if tls != nil { notes.append("HTTPS only (http.tls)") }
                if needToken { notes.append("pages and /api need a token (metrics.host is not loopback)") }
                if !notes.isEmpty {
                    logger.info("serving \(baseURL(host: config.host, port: port, tls: tls != nil)): \(notes.joined(separator: "; "))")
                }
                await onListening(port)
            },
            logger: logger)
    }

    static func json(_ status: HTTPResponse.Status, _ object: [String: Any]) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return Response(status: status, headers: [.contentType: "application/json; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// Fails with a clear message if `host:port` cannot be bound (checked before the daemon starts).
    public static func checkBindable(host: String, port: Int) throws {
        guard port != 0 else { return }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &address.sin_addr) == 1 else { return }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if bound != 0 {
            let reason = String(cString: strerror(errno))
            throw HTTPServerError("cannot listen on \(host):\(port) (metrics.host / metrics.port): \(reason); is another mqi or service using the port?")
        }
    }
}

public struct HTTPServerError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Standard security headers on every response; no CORS.
struct SecurityHeaders<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response = try await next(request, context)
        response.headers[.init("X-Content-Type-Options")!] = "nosniff"
        response.headers[.init("X-Frame-Options")!] = "DENY"
        response.headers[.init("Referrer-Policy")!] = "no-referrer"
        response.headers[.init("Content-Security-Policy")!] = "default-src 'self'; frame-ancestors 'none'"
        response.headers[.cacheControl] = "no-store"
        return response
    }
}
