import Foundation
import Hummingbird
import HummingbirdTesting
import MQICore
@testable import MQIHTTP
import MQIMetrics
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// The JSON API is described by the OpenAPI document it serves: every route the router has under
/// /api is in the document, and every operation the document names is a route.
@Suite struct OpenAPITests {
    @Test func everyAPIRouteIsDocumentedAndEveryDocumentedOperationExists() async throws {
        let fixture = try APITests.Fixture()
        defer { fixture.remove() }
        let router = HTTPServer.router(store: fixture.store, metrics: MQIMetrics(), readiness: { [:] }, api: fixture.context)
        let routed = Set(router.routes.map { route -> String in
            let path = "\(route.path)".replacingOccurrences(of: #":([A-Za-z_]+)"#, with: "{$1}", options: .regularExpression)
            return "\(route.method.rawValue) \(path.hasPrefix("/") ? path : "/" + path)"
        }.filter { $0.split(separator: " ")[1].hasPrefix("/api/") })
        #expect(routed.count >= 12, "\(routed.sorted())")

        let served = try await fixture.test { client in
            try await client.execute(uri: "/api/openapi.json", method: .get) { response in
                (response.status, response.headers[.contentType], Data(buffer: response.body))
            }
        }
        #expect(served.0 == .ok)
        #expect(served.1?.hasPrefix("application/json") == true)
        let document = try #require(try JSONSerialization.jsonObject(with: served.2) as? [String: Any])
        #expect((document["openapi"] as? String)?.hasPrefix("3.1") == true)
        let paths = try #require(document["paths"] as? [String: [String: Any]])
        var documented: Set<String> = []
        for (path, operations) in paths {
            for (method, operation) in operations where ["get", "post", "put", "delete", "patch"].contains(method) {
                documented.insert("\(method.uppercased()) \(path)")
                let responses = (operation as? [String: Any])?["responses"] as? [String: Any]
                #expect(responses?.isEmpty == false, "\(method) \(path) documents no response")
            }
        }
        #expect(routed.subtracting(documented).isEmpty, "routes missing from openapi.json: \(routed.subtracting(documented).sorted())")
        #expect(documented.subtracting(routed).isEmpty, "documented but not routed: \(documented.subtracting(routed).sorted())")
        // The mutating operations say they need the bearer token.
        for path in ["/api/cases/{id}/retry", "/api/cases/{id}/cancel", "/api/dead-letters/{id}/replay"] {
            let post = try #require(paths[path]?["post"] as? [String: Any], "\(path)")
            #expect(post["security"] != nil, "\(path) does not declare its bearer token")
        }
    }

    /// The document as the package embeds it.
    static func document() throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(PackageResources.openapi_json)) as? [String: Any])
    }

    /// Every `$ref` in `value`, with where it is.
    static func references(in value: Any, at path: String = "#") -> [(ref: String, at: String)] {
        if let object = value as? [String: Any] {
            return object.sorted { $0.key < $1.key }.flatMap { key, child -> [(ref: String, at: String)] in
                if key == "$ref", let ref = child as? String { return [(ref, path)] }
                return references(in: child, at: "\(path)/\(key)")
            }
        }
        if let array = value as? [Any] { return array.enumerated().flatMap { references(in: $1, at: "\(path)/\($0)") } }
        return []
    }

    /// The object a local `$ref` (`#/components/...`) points at.
    static func resolve(_ ref: String, in document: [String: Any]) -> Any? {
        guard ref.hasPrefix("#/") else { return nil }
        var node: Any? = document
        for key in ref.dropFirst(2).split(separator: "/") { node = (node as? [String: Any])?[String(key)] }
        return node
    }

    /// The document is precise enough for schemathesis's response checks to mean something: every
    /// reference resolves, every JSON body (errors included) has a schema with its properties and
    /// no others, every operation with a path parameter documents its 400 and 404, and every
    /// mutating one its 401 and 403.
    @Test func everyResponseBodyIsDescribed() throws {
        let document = try Self.document()
        for (ref, at) in Self.references(in: document) {
            #expect(Self.resolve(ref, in: document) != nil, "\(at): \(ref) does not resolve")
        }
        let paths = try #require(document["paths"] as? [String: [String: Any]])
        for (path, operations) in paths.sorted(by: { $0.key < $1.key }) {
            for (method, value) in operations {
                let operation = try #require(value as? [String: Any])
                let name = "\(method.uppercased()) \(path)"
                #expect(operation["operationId"] is String, "\(name) has no operationId")
                var responses = try #require(operation["responses"] as? [String: Any], "\(name)")
                for (status, response) in responses {
                    if let ref = (response as? [String: Any])?["$ref"] as? String { responses[status] = Self.resolve(ref, in: document) }
                }
                for (status, response) in responses {
                    let content = try #require((response as? [String: Any])?["content"] as? [String: Any], "\(name) \(status) has no content")
                    guard path != "/api/openapi.json", let json = content["application/json"] as? [String: Any] else { continue }
                    var schema = try #require(json["schema"] as? [String: Any], "\(name) \(status)")
                    if let ref = schema["$ref"] as? String { schema = try #require(Self.resolve(ref, in: document) as? [String: Any]) }
                    #expect(schema["type"] as? String == "object", "\(name) \(status): \(schema)")
                    #expect((schema["properties"] as? [String: Any])?.isEmpty == false, "\(name) \(status): a body without its properties")
                    #expect(schema["additionalProperties"] as? Bool == false, "\(name) \(status): a body that may hold anything")
                    if !status.hasPrefix("2") {
                        #expect(json["schema"] as? [String: String] == ["$ref": "#/components/schemas/Error"], "\(name) \(status) is not an Error")
                    }
                }
                if path.contains("{") {
                    #expect(responses["400"] != nil && responses["404"] != nil, "\(name) takes a path parameter but documents no 400 or 404")
                }
                if method == "post" {
                    #expect(responses["401"] != nil && responses["403"] != nil, "\(name) changes things but documents no 401 or 403")
                }
            }
        }
    }

    /// A body JSON cannot hold (a NaN reading) is a 500 that says so, never its 200 with an error inside.
    @Test func aBodyThatCannotBeEncodedIsA500() throws {
        let response = APIResponses.json(["utilization_percent": Double.nan])
        #expect(response.status == .internalServerError)
        #expect(APIResponses.json(["utilization_percent": 1.5]).status == .ok)
    }

    /// A method a documented path does not have is a 405 that names the ones it has (RFC 9110),
    /// and a path under /api that is no operation a 404, both as the API's JSON error; schemathesis
    /// sends such requests (TRACE /api/gpus got an empty 404 before).
    @Test func otherMethodsAre405AndUnknownPathsAJSON404() async throws {
        let fixture = try APITests.Fixture()
        defer { fixture.remove() }
        let replies = try await fixture.test { client in
            var replies: [(String, HTTPResponse.Status, String?, String?, String)] = []
            for (method, uri) in [(HTTPRequest.Method.delete, "/api/gpus"), (.init("TRACE")!, "/api/cases/A%2FB/retry"), (.get, "/api/cases/A/retry"),
                                  (.put, "/api/cases/A"), (.post, "/api/cases/A/logs/run/1"), (.get, "/api/nothing-here"), (.get, "/api/cases/A/B")] {
                let reply = try await client.execute(uri: uri, method: method) { response in
                    (response.status, response.headers[.allow], response.headers[.contentType], String(buffer: response.body))
                }
                replies.append(("\(method) \(uri)", reply.0, reply.1, reply.2, reply.3))
            }
            return replies
        }
        let expected: [(HTTPResponse.Status, String?)] = [(.methodNotAllowed, "GET, HEAD"), (.methodNotAllowed, "POST"), (.methodNotAllowed, "POST"),
                                                          (.methodNotAllowed, "GET, HEAD"), (.methodNotAllowed, "GET, HEAD"), (.notFound, nil), (.notFound, nil)]
        for ((request, status, allow, contentType, body), (expectedStatus, expectedAllow)) in zip(replies, expected) {
            #expect(status == expectedStatus && allow == expectedAllow, "\(request): \(status) Allow: \(allow ?? "-") \(body)")
            #expect(contentType?.hasPrefix("application/json") == true, "\(request): \(contentType ?? "no content type")")
            let error = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: String]
            #expect(error?["error"] == (status == .methodNotAllowed ? "method_not_allowed" : "not_found") && error?["detail"]?.isEmpty == false, "\(request): \(body)")
        }
    }
}
