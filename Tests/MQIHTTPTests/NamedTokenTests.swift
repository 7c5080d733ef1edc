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

/// `http.tokens_file`: one token per operator, and every mutating request recorded in the case's
/// history with the token's name and the client's address, over a real TCP connection.
@Suite struct NamedTokenTests {
    @Test func eachOperatorHasATokenAndTheHistorySaysWhoDidWhatFromWhere() async throws {
        let temp = try TemporaryDirectory("mqi-tokens")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 0)
        let alice = "alice-\(UUID().uuidString)", bob = "bob-\(UUID().uuidString)", legacy = "legacy-\(UUID().uuidString)"
        try "# operators of the QA service\nalice \(alice)\n\nbob   \(bob)\nbroken-line-without-token\n".write(toFile: temp.file("site/tokens"), atomically: true, encoding: .utf8)
        try "\(legacy)\n".write(toFile: temp.file("site/token"), atomically: true, encoding: .utf8)
        let text = try String(contentsOfFile: site.configPath, encoding: .utf8) + "http:\n  tokens_file: ./tokens\n  token_file: ./token\n"
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: site.configPath)
        #expect(config.http.tokensFile == temp.file("site/tokens"))
        let store = try Store(path: config.state.database)
        #expect(try await store.registerCase("CASE-1", workflow: "default_qa"))
        let context = APIContext(store: store, conductor: Conductor(config: config), config: config, logger: CapturedLogs().logger())
        let app = Application(router: HTTPServer.router(store: store, metrics: MQIMetrics(), readiness: { [:] }, api: context))
        try await app.test(.live) { client in
            func post(_ path: String, _ token: String?) async throws -> HTTPResponse.Status {
                var headers: HTTPFields = [:]
                if let token { headers[.authorization] = "Bearer \(token)" }
                return try await client.execute(uri: path, method: .post, headers: headers) { $0.status }
            }
            #expect(try await post("/api/cases/CASE-1/cancel", "broken-line-without-token") == .unauthorized)
            #expect(try await post("/api/cases/CASE-1/cancel", "alice") == .unauthorized, "a name is not a token")
            #expect(try await post("/api/cases/CASE-1/cancel", alice) == .ok)
            #expect(try await post("/api/cases/CASE-1/retry", bob) == .ok)
            #expect(try await post("/api/cases/CASE-1/cancel", legacy) == .ok)
            // Revoking bob's line takes effect at once (the file is read on each request).
            try "alice \(alice)\n".write(toFile: temp.file("site/tokens"), atomically: true, encoding: .utf8)
            #expect(try await post("/api/cases/CASE-1/retry", bob) == .unauthorized)
            #expect(try await post("/api/cases/CASE-1/retry", alice) == .ok)
        }
        let audit = try await store.history("CASE-1").filter { $0.event == "operator" }.map(\.message)
        #expect(audit == ["cancel by alice from 127.0.0.1", "retry by bob from 127.0.0.1",
                          "cancel by the http.token_file token from 127.0.0.1", "retry by alice from 127.0.0.1"], "\(audit)")
        // The cancel's own history line names the operator too.
        #expect(try await store.history("CASE-1").contains { $0.event == "cancel" && $0.message.contains("by alice") })
    }
}
