import Foundation
import Hummingbird
import HummingbirdTesting
import MQICore
import MQIHTTP
import MQIMetrics
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// Case ids with `/` (`scanner.case_depth` > 1) through a live server: real HTTP requests whose
/// path holds the id percent-encoded as one segment.
@Suite struct NestedCaseIdTests {
    static let id = "G1/5506119/1.2.840.113619.2.55.3.1"
    static var encoded: String { APITests.segment(id) }

    @Test func apiDashboardAndLogsServeACaseWhoseIdHasSlashes() async throws {
        let fixture = try APITests.Fixture()
        defer { fixture.remove() }
        #expect(Self.encoded == "G1%2F5506119%2F1.2.840.113619.2.55.3.1")
        #expect(try await fixture.store.registerCase(Self.id, workflow: "default_qa"))
        #expect(try await fixture.store.registerCase("G1/5506119/1.2.840.113619.2.55.3.2", workflow: "default_qa"))
        let logDirectory = [fixture.config.state.logsDir, Self.id].reduce("") { ($0 as NSString).appendingPathComponent($1) }
        try FileManager.default.createDirectory(atPath: logDirectory, withIntermediateDirectories: true)
        try "interpreting beam 1\ndone\n".write(toFile: (logDirectory as NSString).appendingPathComponent("run_interpreter.1.log"), atomically: true, encoding: .utf8)

        let app = Application(router: HTTPServer.router(store: fixture.store, metrics: MQIMetrics(), readiness: { [:] }, api: fixture.context),
                              configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            let detail = try await APITests.request(client, "/api/cases/\(Self.encoded)")
            #expect(detail.status == .ok, "\(detail.body)")
            let body = try detail.json()
            #expect((body["case"] as? [String: Any])?["case_id"] as? String == Self.id || body["case_id"] as? String == Self.id, "\(body)")

            // The other study of the same patient is another case; the patient folder is none.
            #expect(try await APITests.request(client, "/api/cases/\(APITests.segment("G1/5506119/1.2.840.113619.2.55.3.2"))").status == .ok)
            #expect(try await APITests.request(client, "/api/cases/\(APITests.segment("G1/5506119"))").status == .notFound)
            // Unencoded slashes are other routes, never this case.
            #expect(try await APITests.request(client, "/api/cases/\(Self.id)").status != .ok)

            let log = try await APITests.request(client, "/api/cases/\(Self.encoded)/logs/run_interpreter/1")
            #expect(log.status == .ok && log.body.contains("interpreting beam 1"), "\(log.status) \(log.body)")
            for escaping in ["G1%2F..%2F..%2Fetc", "..%2F5506119%2Fx", "G1%2F%2Fx"] {
                let refused = try await APITests.request(client, "/api/cases/\(escaping)/logs/run_interpreter/1")
                #expect(refused.status == .badRequest, "\(escaping): \(refused.status) \(refused.body)")
            }

            let page = try await APITests.request(client, "/cases/\(Self.encoded)")
            #expect(page.status == .ok)
            #expect(page.body.contains(Self.id))
            let list = try await APITests.request(client, "/cases")
            #expect(list.body.contains("href=\"/cases/\(Self.encoded)\""), "the dashboard links the case with its id encoded")
        }
    }
}
