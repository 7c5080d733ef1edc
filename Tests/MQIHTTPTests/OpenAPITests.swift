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
}
