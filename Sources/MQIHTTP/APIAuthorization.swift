import Foundation
import Hummingbird
import MQICore

/// Who may change things: mutating endpoints need `Authorization: Bearer <token>` with a token
/// from `http.tokens_file` (lines `name token`, one per operator) or `http.token_file` (one
/// unnamed token). Both files are read on each request, so a rotated or revoked token takes
/// effect at once. Without either they are refused with 403 and a hint.
struct APIAuthorization: Sendable {
    var tokenFile: String?
    var tokensFile: String?

    init(tokenFile: String? = nil, tokensFile: String? = nil) {
        self.tokenFile = tokenFile
        self.tokensFile = tokensFile
    }

    init(_ config: HTTPConfig) {
        self.init(tokenFile: config.tokenFile, tokensFile: config.tokensFile)
    }

    var isConfigured: Bool { tokenFile != nil || tokensFile != nil }

    /// Who made a request that passed the check, for the audit line.
    struct Caller: Sendable, Equatable {
        /// The token's name in `tokens_file`; nil for `token_file`'s.
        var name: String?
        var address: String

        /// `alice from 10.1.2.3`, or `the token_file token from 10.1.2.3`.
        var description: String { "\(name ?? "the http.token_file token") from \(address)" }
    }

    /// The tokens now in the files, with their names.
    func tokens() -> [(name: String?, token: String)] {
        var tokens: [(name: String?, token: String)] = []
        if let tokenFile, let data = FileManager.default.contents(atPath: tokenFile),
           let token = String(data: data, encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines), !token.isEmpty {
            tokens.append((nil, token))
        }
        if let tokensFile, let data = FileManager.default.contents(atPath: tokensFile), let text = String(data: data, encoding: .utf8) {
            for line in text.split(whereSeparator: \.isNewline) {
                let fields = line.split(whereSeparator: \.isWhitespace)
                // `name token`; anything else (a comment, a line with one field) names nobody.
                guard fields.count == 2, !fields[0].hasPrefix("#") else { continue }
                tokens.append((String(fields[0]), String(fields[1])))
            }
        }
        return tokens
    }

    /// Throws the 403/401 response's error unless the request carries a configured token;
    /// returns who it is.
    @discardableResult
    func check(_ request: Request, _ context: MQIRequestContext) throws -> Caller {
        guard isConfigured else {
            throw APIError(status: .forbidden, error: "forbidden",
                           detail: "changes through the API are disabled: no token is configured. Set http.tokens_file (lines 'name token') or http.token_file in the config, restart the daemon, and send a token as 'Authorization: Bearer <token>'")
        }
        let tokens = tokens()
        guard !tokens.isEmpty else {
            let files = [tokensFile, tokenFile].compactMap { $0 }.joined(separator: ", ")
            throw APIError(status: .forbidden, error: "forbidden",
                           detail: "changes through the API are disabled: the token file(s) \(files) are missing, unreadable or hold no token")
        }
        guard let header = request.headers[.authorization] else {
            throw APIError(status: .unauthorized, error: "unauthorized", detail: "this endpoint needs 'Authorization: Bearer <token>' (a token in http.tokens_file or http.token_file)")
        }
        let prefix = "Bearer "
        guard header.count > prefix.count, header.lowercased().hasPrefix(prefix.lowercased()) else {
            throw APIError(status: .unauthorized, error: "unauthorized", detail: "the Authorization header must be 'Bearer <token>'")
        }
        let presented = String(header.dropFirst(prefix.count)).trimmingCharacters(in: .whitespaces)
        // Every token is compared (in time independent of where they differ), not only up to the first match.
        var match: Caller?
        for candidate in tokens where Self.constantTimeEqual(presented, candidate.token) && match == nil {
            match = Caller(name: candidate.name, address: context.clientAddress)
        }
        guard let match else {
            throw APIError(status: .unauthorized, error: "unauthorized", detail: "the bearer token is not one of the configured tokens")
        }
        return match
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
