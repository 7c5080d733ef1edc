import Foundation
import Hummingbird
import MQICore

/// Who may change things, and, on a server bound beyond loopback, who may read: a token from
/// `http.tokens_file` (lines `name token`, one per operator) or `http.token_file` (one unnamed
/// token), sent as `Authorization: Bearer <token>` or as HTTP Basic with the token as the
/// password. Basic is there for browsers: once the operator has typed the token into the
/// browser's prompt, the pages, their `fetch()` calls and `EventSource` all send it without any
/// script. Basic's user name is ignored: the token alone identifies the operator, and the audit
/// line names the token's name, not whatever was typed as the user. Both files are read on each
/// request, so a rotated or revoked token takes effect at once. Without either, changes are
/// refused with 403 and a hint.
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

    /// What a request wants to do, for the wording of a refusal.
    enum Purpose: Sendable {
        /// Retry, cancel, replay: always needs a token.
        case change
        /// Any page or `/api` read, when the server listens beyond loopback.
        case read
    }

    /// How the token came.
    enum Scheme: Sendable, Equatable {
        case bearer
        case basic
    }

    /// Throws the 403/401 response's error unless the request carries a configured token (Bearer,
    /// or Basic with the token as the password); returns who it is.
    ///
    /// A browser sends Basic credentials by itself, also with a form another site makes it post,
    /// so a change that comes with Basic must also not come from another site's page (`Origin`,
    /// `Sec-Fetch-Site`): without this check, any page an operator visits could cancel cases.
    @discardableResult
    func check(_ request: Request, _ context: MQIRequestContext, for purpose: Purpose = .change) throws -> Caller {
        let refused = purpose == .change ? "changes through the API are disabled" : "this server listens beyond loopback (metrics.host), so reading cases needs a token, and none"
        guard isConfigured else {
            throw APIError(status: .forbidden, error: "forbidden",
                           detail: "\(refused): no token is configured. Set http.tokens_file (lines 'name token') or http.token_file in the config, restart the daemon, and send a token as 'Authorization: Bearer <token>'")
        }
        let tokens = tokens()
        guard !tokens.isEmpty else {
            let files = [tokensFile, tokenFile].compactMap { $0 }.joined(separator: ", ")
            throw APIError(status: .forbidden, error: "forbidden",
                           detail: "\(purpose == .change ? refused : "reading is refused"): the token file(s) \(files) are missing, unreadable or hold no token")
        }
        guard let header = request.headers[.authorization] else {
            let what = purpose == .change ? "this endpoint needs" : "this server listens beyond loopback (metrics.host), so reading needs"
            throw APIError(status: .unauthorized, error: "unauthorized",
                           detail: "\(what) a token from http.tokens_file or http.token_file: send 'Authorization: Bearer <token>', or HTTP Basic with the token as the password (any user name)")
        }
        guard let (scheme, presented) = Self.credentials(header) else {
            throw APIError(status: .unauthorized, error: "unauthorized",
                           detail: "the Authorization header must be 'Bearer <token>' or HTTP Basic with the token as the password")
        }
        // Every token is compared (in time independent of where they differ), not only up to the first match.
        var match: Caller?
        for candidate in tokens where Self.constantTimeEqual(presented, candidate.token) && match == nil {
            match = Caller(name: candidate.name, address: context.clientAddress)
        }
        guard let match else {
            throw APIError(status: .unauthorized, error: "unauthorized",
                           detail: scheme == .bearer ? "the bearer token is not one of the configured tokens"
                               : "the Basic password is not one of the configured tokens (http.tokens_file, http.token_file); the user name does not matter")
        }
        if purpose == .change, scheme == .basic, let site = Self.crossSite(request) {
            throw APIError(status: .forbidden, error: "forbidden",
                           detail: "a change sent with HTTP Basic credentials must come from this server's own pages, not from \(site); send 'Authorization: Bearer <token>' from a script or the command line")
        }
        return match
    }

    /// The scheme and the token of an `Authorization` value: `Bearer <token>`, or `Basic
    /// base64(user:token)` (the user name is dropped). Nil for any other scheme or a malformed value.
    static func credentials(_ header: String) -> (Scheme, String)? {
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2 else { return nil }
        let value = parts[1].trimmingCharacters(in: .whitespaces)
        switch parts[0].lowercased() {
        case "bearer":
            return value.isEmpty ? nil : (.bearer, value)
        case "basic":
            guard let data = Data(base64Encoded: value), let pair = String(data: data, encoding: .utf8),
                  let colon = pair.firstIndex(of: ":") else { return nil }
            let token = String(pair[pair.index(after: colon)...])
            return token.isEmpty ? nil : (.basic, token)
        default:
            return nil
        }
    }

    /// The other site a browser says the request comes from (`Sec-Fetch-Site` other than
    /// `same-origin`/`none`, or an `Origin` whose host and port are not the `Host` the request was
    /// sent to); nil when it comes from this server's pages or from a client that is no browser.
    static func crossSite(_ request: Request) -> String? {
        if let site = request.headers[.init("Sec-Fetch-Site")!]?.lowercased(), site != "same-origin", site != "none" {
            return "a \(site) page (Sec-Fetch-Site)"
        }
        // `Origin` is `scheme://host[:port]`; `Host` is `host[:port]`, the default port left out by browsers.
        guard let origin = request.headers[.origin] else { return nil }
        let parts = origin.lowercased().components(separatedBy: "://")
        guard parts.count == 2, let target = request.head.authority?.lowercased() else { return "the page at \(origin) (Origin)" }
        let defaultPort = parts[0] == "https" ? ":443" : ":80"
        func withoutDefaultPort(_ authority: String) -> String {
            authority.hasSuffix(defaultPort) ? String(authority.dropLast(defaultPort.count)) : authority
        }
        return withoutDefaultPort(parts[1]) == withoutDefaultPort(target) ? nil : "the page at \(origin) (Origin)"
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
