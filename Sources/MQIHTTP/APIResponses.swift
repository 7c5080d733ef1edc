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

    var response: Response {
        APIResponses.json(["error": error, "detail": detail], status: status)
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

    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
        let data = (try? encoder.encode(value)) ?? Data(#"{"error":"internal","detail":"the response could not be encoded"}"#.utf8)
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
    func pathParameter(_ name: String, _ context: BasicRequestContext) throws -> String {
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

extension CaseStatus {
    /// Parses `status=` values (any case); a bad value is a 400 that lists the valid ones.
    static func parseQuery(_ text: String) throws -> CaseStatus {
        guard let status = CaseStatus(rawValue: text.uppercased()) else {
            throw APIError.badRequest("unknown status '\(text)'; expected one of \(CaseStatus.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return status
    }
}
