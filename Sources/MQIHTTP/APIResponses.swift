import Foundation
import Hummingbird
import MQICore
import MQIStore

/// An API failure as the client sees it: `{ "error": ..., "detail": ... }` with an HTTP status.
struct APIError: Error, Sendable {
    var status: HTTPResponse.Status
    /// A short, stable name (`not_found`, `conflict`, ...).
    var error: String
    /// What happened and what to do, for a person.
    var detail: String

    static func badRequest(_ detail: String) -> APIError { APIError(status: .badRequest, error: "bad_request", detail: detail) }
    static func notFound(_ detail: String) -> APIError { APIError(status: .notFound, error: "not_found", detail: detail) }
    static func conflict(_ detail: String) -> APIError { APIError(status: .conflict, error: "conflict", detail: detail) }

    /// A 401 names how to send the token (RFC 9110 §11.6.1): Bearer only, so that a browser's
    /// script that gets it does not make the browser open its own sign-in dialog (a refused read
    /// off loopback also offers Basic: `ReadAccess.apiRefusal`).
    var response: Response {
        var response = APIResponses.json(["error": error, "detail": detail], status: status)
        if status == .unauthorized { response.headers[.wwwAuthenticate] = "Bearer realm=\"\(ReadAccess.realm)\"" }
        return response
    }
}

/// JSON encoding for the API: snake_case keys from the records, ISO-8601 UTC dates with milliseconds.
enum APIResponses {
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(isoDate(date))
        }
        return encoder
    }()

    static func isoDate(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    /// A value that cannot be encoded (a NaN reading) is a 500 that says so, not its status with an error body.
    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
        guard let data = try? encoder.encode(value) else {
            return Response(status: .internalServerError, headers: [.contentType: "application/json; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: #"{"detail":"the response could not be encoded as JSON","error":"internal"}"#)))
        }
        return Response(status: status, headers: [.contentType: "application/json; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func text(_ text: String, status: HTTPResponse.Status = .ok, contentType: String = "text/plain; charset=utf-8") -> Response {
        Response(status: status, headers: [.contentType: contentType], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// Runs a handler; an `APIError` becomes its JSON response, any other error a 500 that names it.
    static func guarded(_ context: APIContext, _ body: () async throws -> Response) async -> Response {
        do {
            return try await body()
        } catch let error as APIError {
            return error.response
        } catch let error as InvalidCursor {
            return APIError.badRequest(error.description).response
        } catch {
            context.logger.error("API request failed: \(error)")
            return APIError(status: .internalServerError, error: "internal", detail: "\(error)").response
        }
    }
}

extension Request {
    /// A path parameter, percent-decoded (the router matches the raw path, so `%2F` stays inside one
    /// parameter and hostile case ids arrive intact).
    func pathParameter(_ name: String, _ context: MQIRequestContext) throws -> String {
        guard let raw = context.parameters.get(name) else { throw APIError.badRequest("missing path parameter \(name)") }
        guard let decoded = raw.removingPercentEncoding else {
            throw APIError.badRequest("path parameter \(name) is not valid percent-encoded UTF-8")
        }
        return decoded
    }

    /// A query parameter, already percent-decoded by Hummingbird; nil when absent or empty.
    func queryParameter(_ name: String) -> String? {
        guard let value = uri.queryParameters[name[...]], !value.isEmpty else { return nil }
        return String(value)
    }
}

/// The case list's filters, as the API and the dashboard read them from the query string
/// (`status`, `q`, `received_from`, `received_to`).
struct CaseListFilter: Sendable {
    var status: CaseStatus?
    var query: String?
    var receivedFrom: Date?
    var receivedTo: Date?
    /// As written in the URL, to be written back into links and the form.
    var receivedFromText: String?
    var receivedToText: String?

    var isEmpty: Bool { status == nil && query == nil && receivedFrom == nil && receivedTo == nil }

    init(_ request: Request) throws {
        status = try request.queryParameter("status").map(CaseStatus.parseQuery)
        query = request.queryParameter("q").flatMap { $0.isEmpty ? nil : $0 }
        if let query, query.count > 200 { throw APIError.badRequest("q is longer than 200 characters") }
        receivedFromText = request.queryParameter("received_from").flatMap { $0.isEmpty ? nil : $0 }
        receivedToText = request.queryParameter("received_to").flatMap { $0.isEmpty ? nil : $0 }
        receivedFrom = try receivedFromText.map { try Self.parseTime($0, name: "received_from", endOfDay: false) }
        receivedTo = try receivedToText.map { try Self.parseTime($0, name: "received_to", endOfDay: true) }
        if let receivedFrom, let receivedTo, receivedTo <= receivedFrom {
            throw APIError.badRequest("received_to (\(receivedToText ?? "")) must be after received_from (\(receivedFromText ?? ""))")
        }
    }

    /// ISO-8601: a date and time with `Z` or an offset (seconds and fractions optional), or a
    /// date alone, which means that day in this server's time zone (the clinic's): from its
    /// start for `received_from`, through its end for `received_to`.
    static func parseTime(_ text: String, name: String, endOfDay: Bool) throws -> Date {
        if text.count == 10 {
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = .current
            let parts = text.split(separator: "-").compactMap { Int($0) }
            if parts.count == 3, let day = calendar.date(from: DateComponents(year: parts[0], month: parts[1], day: parts[2])),
               calendar.component(.month, from: day) == parts[1], calendar.component(.day, from: day) == parts[2] {
                return endOfDay ? calendar.date(byAdding: .day, value: 1, to: day) ?? day : day
            }
        } else {
            for options: ISO8601DateFormatter.Options in [[.withInternetDateTime, .withFractionalSeconds], [.withInternetDateTime],
                                                          [.withFullDate, .withTime, .withColonSeparatorInTime, .withTimeZone, .withDashSeparatorInDate]] {
                let formatter = ISO8601DateFormatter()
                formatter.formatOptions = options
                if let date = formatter.date(from: text) { return date }
            }
        }
        throw APIError.badRequest("\(name) must be an ISO-8601 date (2026-12-01) or date and time with a time zone (2026-12-01T08:00:00Z, 2026-12-01T09:00:00+01:00), not '\(text)'")
    }
}

extension CaseStatus {
    /// Parses `status=` values (any case); a bad value is a 400 that lists the valid ones.
    static func parseQuery(_ text: String) throws -> CaseStatus {
        guard let status = CaseStatus(rawValue: text.uppercased()) else {
            throw APIError.badRequest("unknown status '\(text)'; expected one of \(CaseStatus.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return status
    }
}
