import Foundation
import Hummingbird

/// On a server that listens beyond loopback, every request needs a token (see
/// `APIAuthorization`), reads included: the pages and the JSON API show patient ids, which are
/// personal data. What stays open is what carries none and what machines must reach without a
/// token: the probes (`/healthz`, `/readyz`), the metrics (`/metrics`, and `/` for a Prometheus
/// scrape, answered by `MetricsAtRoot` before this middleware; no metric label carries a case or
/// patient id) and the dashboard's static files (`/assets/...`, `/favicon.ico`).
///
/// A refused page answers 401 with a Basic challenge, so a browser asks for the token once (user
/// name: anything, password: the token) and then sends it with the page's own `fetch()` and
/// `EventSource` requests too. A refused `/api` request answers the API's JSON error.
struct ReadAccess: RouterMiddleware {
    typealias Context = MQIRequestContext

    static let realm = "MQI Communicator"
    let authorization: APIAuthorization

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        guard !Self.isOpen(path) else { return try await next(request, context) }
        do {
            try authorization.check(request, context, for: .read)
        } catch let error as APIError {
            return Self.isAPI(path) ? Self.apiRefusal(error) : Self.pageRefusal(error)
        }
        return try await next(request, context)
    }

    /// Paths served without a token on any address. An `/assets/` path with an empty, `.` or `..`
    /// segment is not open: only the files themselves are.
    static func isOpen(_ path: String) -> Bool {
        if ["/healthz", "/readyz", "/metrics", "/favicon.ico"].contains(path) { return true }
        guard path.hasPrefix("/assets/") else { return false }
        let segments = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        return !segments.contains { $0.isEmpty || $0 == "." || $0 == ".." }
    }

    static func isAPI(_ path: String) -> Bool { path == "/api" || path.hasPrefix("/api/") }

    /// The API's JSON error; a 401 also names both ways to send the token (RFC 9110 §11.6.1).
    static func apiRefusal(_ error: APIError) -> Response {
        var response = error.response
        if error.status == .unauthorized {
            response.headers[values: .wwwAuthenticate] = ["Bearer realm=\"\(realm)\"", "Basic realm=\"\(realm)\", charset=\"UTF-8\""]
        }
        return response
    }

    /// A plain page (the CSP forbids inline styles) that says what to do; a 401 carries the Basic
    /// challenge that makes a browser prompt for the token.
    static func pageRefusal(_ error: APIError) -> Response {
        let detail = error.detail.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
        let html = """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>\(error.status.code) \(error.status.reasonPhrase) · \(realm)</title></head>
            <body><h1>\(error.status.code) \(error.status.reasonPhrase)</h1>
            <p>\(detail).</p>\(error.status == .unauthorized ? "\n<p>Sign in with any user name and your token as the password.</p>" : "")
            </body></html>

            """
        var response = Response(status: error.status, headers: [.contentType: "text/html; charset=utf-8"],
                                body: .init(byteBuffer: ByteBuffer(string: html)))
        if error.status == .unauthorized {
            response.headers[.wwwAuthenticate] = "Basic realm=\"\(realm)\", charset=\"UTF-8\""
        }
        return response
    }
}
