import Foundation
import Hummingbird

/// Serves the metrics at `/` to a client whose `Accept` prefers the Prometheus text format or
/// OpenMetrics to HTML (Prometheus's scraper), so `http://host:8000/` works as a scrape target;
/// browsers, and clients that send no `Accept`, get the dashboard. Both answers say
/// `Vary: Accept`. It runs before `ReadAccess`, so the scrape of `/` stays open like `/metrics`
/// on a server bound beyond loopback (no metric label carries a case or patient id); the
/// dashboard at `/` still needs the token there.
struct MetricsAtRoot<Context: RequestContext>: RouterMiddleware {
    let exposition: @Sendable () async throws -> Response

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard request.uri.path == "/", request.method == .get else { return try await next(request, context) }
        var response: Response
        if ScrapeNegotiation.prefersMetrics(accept: request.headers[values: .accept].joined(separator: ",")) {
            response = try await exposition()
        } else {
            response = try await next(request, context)
        }
        response.headers[.vary] = "Accept"
        return response
    }
}

/// Content negotiation between the dashboard (HTML) and the metrics (`text/plain;
/// version=0.0.4` or `application/openmetrics-text`) by the `Accept` header's q-values
/// (RFC 9110 §12.5.1).
public enum ScrapeNegotiation {
    /// Whether an `Accept` header value ranks a metrics format above HTML. Ties, an absent or
    /// empty header and `*/*` go to the dashboard.
    public static func prefersMetrics(accept: String) -> Bool {
        let ranges = mediaRanges(accept)
        guard !ranges.isEmpty else { return false }
        let metrics = max(quality(of: "text/plain", in: ranges), quality(of: "application/openmetrics-text", in: ranges))
        return metrics > 0 && metrics > quality(of: "text/html", in: ranges)
    }

    struct MediaRange: Equatable {
        var type: String
        var subtype: String
        var q: Double
    }

    /// `type/subtype;param=value;q=0.5, ...` lower-cased; parameters other than `q` are ignored.
    static func mediaRanges(_ accept: String) -> [MediaRange] {
        accept.split(separator: ",").compactMap { element in
            let parts = element.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            guard let name = parts.first, !name.isEmpty else { return nil }
            let pieces = name.split(separator: "/", omittingEmptySubsequences: false)
            guard pieces.count == 2, !pieces[0].isEmpty, !pieces[1].isEmpty else { return nil }
            var q = 1.0
            for parameter in parts.dropFirst() where parameter.hasPrefix("q=") {
                q = Double(parameter.dropFirst(2)).map { min(1, max(0, $0)) } ?? 0
            }
            return MediaRange(type: String(pieces[0]), subtype: String(pieces[1]), q: q)
        }
    }

    /// The q-value of `mediaType` (`type/subtype`): from the most specific ranges that match it
    /// (`type/subtype`, else `type/*`, else `*/*`), the highest; 0 when none does.
    static func quality(of mediaType: String, in ranges: [MediaRange]) -> Double {
        let pieces = mediaType.split(separator: "/").map(String.init)
        let exact = ranges.filter { $0.type == pieces[0] && $0.subtype == pieces[1] }
        if !exact.isEmpty { return exact.map(\.q).max() ?? 0 }
        let type = ranges.filter { $0.type == pieces[0] && $0.subtype == "*" }
        if !type.isEmpty { return type.map(\.q).max() ?? 0 }
        return ranges.filter { $0.type == "*" && $0.subtype == "*" }.map(\.q).max() ?? 0
    }
}
