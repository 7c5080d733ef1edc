import Foundation
import MQICore

/// Who can reach the endpoint decides who may read it: on loopback only this machine's users,
/// so reads stay open; on any other address the hospital network, so reads need a token too
/// (a patient id is personal data).
extension HTTPServer {
    /// Whether `host` (`metrics.host`) can only be reached from this machine: `localhost`, an
    /// IPv4 address in 127.0.0.0/8, `::1` (bracketed or not), or an IPv4-mapped 127.x address.
    /// Any other name counts as exposed, even one that resolves to loopback: the rule does not
    /// depend on a resolver, and a wrong guess here opens patient data, so it errs closed.
    public static func isLoopback(_ host: String) -> Bool {
        var name = host.trimmingCharacters(in: .whitespaces).lowercased()
        if name.hasPrefix("["), name.hasSuffix("]") { name = String(name.dropFirst().dropLast()) }
        if name == "localhost" { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, name, &v4) == 1 {
            return UInt32(bigEndian: v4.s_addr) >> 24 == 127
        }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, name, &v6) == 1 else { return false }
        let bytes = withUnsafeBytes(of: v6) { Array($0) }
        if bytes == Array(repeating: 0, count: 15) + [1] { return true }
        let mappedPrefix: [UInt8] = Array(repeating: 0, count: 10) + [0xff, 0xff]
        return Array(bytes[0..<12]) == mappedPrefix && bytes[12] == 127
    }

    /// Whether pages and `/api` reads need a token on an endpoint bound to `host`.
    public static func readsNeedToken(host: String) -> Bool { !isLoopback(host) }

    /// The endpoint's base URL as an operator types it: `https://` with `http.tls`, an IPv6
    /// address in brackets.
    public static func baseURL(host: String, port: Int, tls: Bool) -> String {
        let shown = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        return "\(tls ? "https" : "http")://\(shown):\(port)"
    }

    /// Checked before the daemon starts, so a setup that would expose patient data, or an HTTPS
    /// endpoint that cannot start, is refused with what to change instead of failing later or,
    /// worse, serving openly:
    /// - a `metrics.host` beyond loopback needs a readable token (`http.tokens_file` or
    ///   `http.token_file`), since every read then needs one;
    /// - `http.tls`'s certificate and key must load and belong together.
    public static func checkExposure(_ config: Config) throws {
        guard config.metrics.enabled else { return }
        if readsNeedToken(host: config.metrics.host) {
            let authorization = APIAuthorization(config.http)
            guard authorization.isConfigured else {
                throw HTTPServerError("metrics.host is \(config.metrics.host), which is reachable from other machines, and no token is configured: the dashboard and the API show patient ids, so reads then need a token. Set http.tokens_file (lines 'name token') or http.token_file, or bind metrics.host to 127.0.0.1")
            }
            guard !authorization.tokens().isEmpty else {
                let files = [config.http.tokensFile.map { "http.tokens_file \($0)" }, config.http.tokenFile.map { "http.token_file \($0)" }]
                    .compactMap { $0 }.joined(separator: ", ")
                throw HTTPServerError("metrics.host is \(config.metrics.host), which is reachable from other machines, so reads need a token, but \(files) is missing, unreadable or holds no token: write a token into it, or bind metrics.host to 127.0.0.1")
            }
        }
        if let tls = config.http.tls {
            try HTTPSConfiguration.validate(tls)
        }
    }
}
