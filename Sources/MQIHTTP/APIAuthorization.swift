import Foundation
import Hummingbird
import MQICore

/// Who may change things: mutating endpoints need `Authorization: Bearer <token>` with the token
/// read from `http.token_file` (read on each request, so a rotated token takes effect at once).
/// Without a token file they are refused with 403 and a hint.
struct APIAuthorization: Sendable {
    var tokenFile: String?

    var isConfigured: Bool { tokenFile != nil }

    /// Throws the 403/401 response's error unless the request carries the configured token.
    func check(_ request: Request) throws {
        guard let tokenFile else {
            throw APIError(status: .forbidden, error: "forbidden",
                           detail: "changes through the API are disabled: no token is configured. Set http.token_file in the config to a file holding a secret token, restart the daemon, and send it as 'Authorization: Bearer <token>'")
        }
        guard let data = FileManager.default.contents(atPath: tokenFile),
              let token = String(data: data, encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines), !token.isEmpty else {
            throw APIError(status: .forbidden, error: "forbidden",
                           detail: "changes through the API are disabled: the token file \(tokenFile) (http.token_file) is missing, unreadable or empty")
        }
        guard let header = request.headers[.authorization] else {
            throw APIError(status: .unauthorized, error: "unauthorized", detail: "this endpoint needs 'Authorization: Bearer <token>' (the token in http.token_file)")
        }
        let prefix = "Bearer "
        guard header.count > prefix.count, header.lowercased().hasPrefix(prefix.lowercased()) else {
            throw APIError(status: .unauthorized, error: "unauthorized", detail: "the Authorization header must be 'Bearer <token>'")
        }
        let presented = String(header.dropFirst(prefix.count)).trimmingCharacters(in: .whitespaces)
        guard Self.constantTimeEqual(presented, token) else {
            throw APIError(status: .unauthorized, error: "unauthorized", detail: "the bearer token is not the one in http.token_file")
        }
    }

    /// Compares in time that depends only on the lengths, not on where the first difference is.
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var difference = UInt8(truncatingIfNeeded: x.count ^ y.count)
        if x.count != y.count { difference |= 1 }
        let count = max(x.count, y.count)
        for index in 0..<count {
            let left = index < x.count ? x[index] : 0
            let right = index < y.count ? y[index] : 0
            difference |= left ^ right
        }
        return difference == 0
    }
}
