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

/// The operators' JSON API and dashboard pages through Hummingbird's router test client, on a real
/// SQLite file and the demo site's config.
@Suite struct APITests {
    /// A demo site's config (no cases on disk) with its store, optionally with a token file.
    struct Fixture {
        let temp: TemporaryDirectory
        let config: Config
        let store: Store
        let token = "s3cret-token-\(UUID().uuidString)"

        init(token withToken: Bool = true, maxDeliveries: Int = 5) throws {
            temp = try TemporaryDirectory("mqi-api")
            let site = try DemoSite.create(at: temp.file("site"), cases: 0)
            if withToken {
                try Data((token + "\n").utf8).write(to: URL(fileURLWithPath: temp.file("site/api-token")))
                let text = try String(contentsOfFile: site.configPath, encoding: .utf8) + "http:\n  token_file: ./api-token\n"
                try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
            }
            config = try ConfigLoader.load(path: site.configPath)
            store = try Store(path: config.state.database, maxDeliveries: maxDeliveries)
        }

        var context: APIContext {
            APIContext(store: store, conductor: Conductor(config: config), config: config, logger: CapturedLogs().logger())
        }

        func test<Value: Sendable>(_ body: @escaping @Sendable (any TestClientProtocol) async throws -> Value) async throws -> Value {
            let app = Application(router: HTTPServer.router(store: store, metrics: MQIMetrics(), readiness: { [:] }, api: context))
            return try await app.test(.router) { client in try await body(client) }
        }

        func remove() { temp.remove() }
    }

    struct Reply: Sendable {
        var status: HTTPResponse.Status
        var body: String
        var headers: HTTPFields

        func json() throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any], "not a JSON object: \(body)")
        }
    }

    static func request(_ client: any TestClientProtocol, _ uri: String, method: HTTPRequest.Method = .get, token: String? = nil) async throws -> Reply {
        var headers: HTTPFields = [:]
        if let token { headers[.authorization] = "Bearer \(token)" }
        return try await client.execute(uri: uri, method: method, headers: headers) { response in
            Reply(status: response.status, body: String(buffer: response.body), headers: response.headers)
        }
    }

    static func ids(_ reply: Reply) throws -> [String] {
        let cases = try #require(try reply.json()["cases"] as? [[String: Any]])
        return cases.compactMap { $0["case_id"] as? String }
    }

    /// `text` percent-encoded as one path segment.
    static func segment(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~"))!
    }

    // MARK: list

    @Test func listFiltersAndPaginatesNewestFirst() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let registered = (1...7).map { "CASE-\($0)" }
        for id in registered { #expect(try await fixture.store.registerCase(id, workflow: "default_qa")) }
        #expect(try await fixture.store.registerRejectedCase("BAD-1", workflow: "default_qa", reason: "no RP*.dcm"))
        let newestFirst = (registered + ["BAD-1"]).reversed().map { $0 }

        try await fixture.test { client in
            // Three pages of 3, 3 and 2 by cursor; together every case once, newest first.
            var seen: [String] = []
            var cursor: String?
            var pages = 0
            repeat {
                let reply = try await Self.request(client, "/api/cases?limit=3" + (cursor.map { "&cursor=\(Self.segment($0))" } ?? ""))
                #expect(reply.status == .ok)
                #expect(reply.headers[.contentType]?.hasPrefix("application/json") == true)
                seen += try Self.ids(reply)
                cursor = try reply.json()["next_cursor"] as? String
                pages += 1
            } while cursor != nil && pages < 10
            #expect(pages == 3)
            #expect(seen == newestFirst)

            #expect(try Self.ids(await Self.request(client, "/api/cases?status=FAILED")) == ["BAD-1"])
            #expect(try Self.ids(await Self.request(client, "/api/cases?status=new")) == registered.reversed())
            #expect(try Self.ids(await Self.request(client, "/api/cases?q=case-")).count == 7, "q is case-insensitive")
            #expect(try Self.ids(await Self.request(client, "/api/cases?q=SE-3")) == ["CASE-3"])
            #expect(try Self.ids(await Self.request(client, "/api/cases?q=%25")) == [], "% is a literal, not a wildcard")
            #expect(try Self.ids(await Self.request(client, "/api/cases?status=NEW&q=7")) == ["CASE-7"])
            // A cursor keeps its filter's order.
            let first = try await Self.request(client, "/api/cases?status=NEW&limit=4")
            let next = try #require(try first.json()["next_cursor"] as? String)
            #expect(try Self.ids(await Self.request(client, "/api/cases?status=NEW&limit=4&cursor=\(Self.segment(next))")) == ["CASE-3", "CASE-2", "CASE-1"])

            for bad in ["/api/cases?status=DONE", "/api/cases?limit=0", "/api/cases?limit=501", "/api/cases?limit=abc", "/api/cases?cursor=not-a-cursor"] {
                let reply = try await Self.request(client, bad)
                #expect(reply.status == .badRequest, "\(bad): \(reply.status)")
                let body = try reply.json()
                #expect(body["error"] as? String == "bad_request", "\(bad): \(body)")
                #expect((body["detail"] as? String)?.isEmpty == false)
            }
        }
    }

    @Test func listQueriesUseIndexes() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        for (status, cursor) in [(CaseStatus?.none, false), (nil, true), (.failed, false), (.failed, true)] {
            let plan = try await fixture.store.casesPagePlan(status: status, withCursor: cursor).joined(separator: "; ")
            #expect(plan.contains("USING INDEX") || plan.contains("USING COVERING INDEX"), "\(status as Any) \(cursor): \(plan)")
            #expect(!plan.contains("TEMP B-TREE"), "sorts in memory: \(plan)")
        }
    }

    // MARK: one case

    @Test func caseDetailWithTimelineAndLogTailForHostileIds() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let hostile = "Q\"uote 'x' <img src=x onerror=alert(1)> é 한글 %41 ?&#"
        try await fixture.store.reconcileGPUs(configured: [0, 1])
        #expect(try await fixture.store.registerCase(hostile, workflow: "default_qa"))
        let conductor = Conductor(config: fixture.config)
        _ = try await fixture.store.conduct(.newCaseFound, caseId: hostile, conductor: conductor)
        _ = try await fixture.store.conduct(.stepSucceeded(stepIndex: 0, attempt: 1), caseId: hostile, conductor: conductor)
        // run_interpreter attempt 1 is running: its log has 300 lines.
        let logDir = (fixture.config.state.logsDir as NSString).appendingPathComponent(hostile)
        try FileManager.default.createDirectory(atPath: logDir, withIntermediateDirectories: true)
        let lines = (1...300).map { "line \($0) <of> the interpreter" }
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: (logDir as NSString).appendingPathComponent("run_interpreter.1.log")))

        try await fixture.test { client in
            let reply = try await Self.request(client, "/api/cases/\(Self.segment(hostile))")
            #expect(reply.status == .ok, "\(reply.body)")
            let body = try reply.json()
            let summary = try #require(body["case"] as? [String: Any])
            #expect(summary["case_id"] as? String == hostile)
            #expect(summary["status"] as? String == "PROCESSING")
            #expect(summary["workflow_step"] as? String == "run_interpreter")
            let timeline = try #require(body["timeline"] as? [[String: Any]])
            #expect(timeline.map { $0["step"] as? String } == ["upload_case_files", "run_interpreter"])
            #expect(timeline.map { $0["outcome"] as? String } == ["succeeded", "running"])
            #expect(timeline.first?["ended_at"] as? String != nil)
            #expect((timeline.first?["duration_sec"] as? Double).map { $0 >= 0 } == true)
            let log = try #require(body["log"] as? [String: Any])
            let tail = try #require(log["lines"] as? [String])
            #expect(tail.count == 200)
            #expect(tail.first == "line 101 <of> the interpreter")
            #expect(tail.last == "line 300 <of> the interpreter")

            let whole = try await Self.request(client, "/api/cases/\(Self.segment(hostile))/logs/run_interpreter/1")
            #expect(whole.status == .ok)
            #expect(whole.headers[.contentType]?.hasPrefix("text/plain") == true)
            #expect(whole.body.split(separator: "\n").count == 300)

            #expect(try await Self.request(client, "/api/cases/\(Self.segment(hostile))/logs/run_moqui_sim/1").status == .notFound)
            #expect(try await Self.request(client, "/api/cases/\(Self.segment(hostile))/logs/%2E%2E/1").status == .badRequest)
            #expect(try await Self.request(client, "/api/cases/\(Self.segment(hostile))/logs/a%2Fb/1").status == .badRequest)
            #expect(try await Self.request(client, "/api/cases/\(Self.segment(hostile))/logs/run_interpreter/x").status == .badRequest)

            let missing = try await Self.request(client, "/api/cases/NO-SUCH-CASE")
            #expect(missing.status == .notFound)
            #expect(try missing.json()["error"] as? String == "not_found")
            #expect(try await Self.request(client, "/api/cases/NO-SUCH-CASE/logs/run_interpreter/1").status == .notFound)

            // The page escapes the id everywhere.
            let page = try await Self.request(client, "/cases/\(Self.segment(hostile))")
            #expect(page.status == .ok)
            #expect(page.headers[.contentType]?.hasPrefix("text/html") == true)
            #expect(!page.body.contains("<img src=x"))
            #expect(page.body.contains("Q&quot;uote &#39;x&#39; &lt;img src=x onerror=alert(1)&gt; é 한글 %41 ?&amp;#"))
            #expect(page.body.contains("line 300 &lt;of&gt; the interpreter"))
            #expect(try await Self.request(client, "/cases/NO-SUCH-CASE").status == .notFound)
        }
    }

    // MARK: changes

    @Test func mutationsAreForbiddenWithoutAConfiguredToken() async throws {
        let fixture = try Fixture(token: false)
        defer { fixture.remove() }
        #expect(try await fixture.store.registerCase("CASE-1", workflow: "default_qa"))
        try await fixture.test { client in
            for uri in ["/api/cases/CASE-1/cancel", "/api/cases/CASE-1/retry", "/api/dead-letters/1/replay"] {
                let reply = try await Self.request(client, uri, method: .post, token: "anything")
                #expect(reply.status == .forbidden, "\(uri)")
                let body = try reply.json()
                #expect(body["error"] as? String == "forbidden")
                #expect((body["detail"] as? String)?.contains("http.token_file") == true, "\(body)")
            }
            // Reads stay open; the page says why there are no buttons.
            #expect(try await Self.request(client, "/api/cases/CASE-1").status == .ok)
            let page = try await Self.request(client, "/cases/CASE-1")
            #expect(page.body.contains("http.token_file"))
            #expect(!page.body.contains("data-action=\"cancel\""))
        }
        #expect(try await fixture.store.caseSummary("CASE-1")?.status == .new)
    }

    @Test func mutationsNeedTheRightBearerToken() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        #expect(try await fixture.store.registerCase("CASE-1", workflow: "default_qa"))
        let token = fixture.token
        try await fixture.test { client in
            let none = try await Self.request(client, "/api/cases/CASE-1/cancel", method: .post)
            #expect(none.status == .unauthorized)
            #expect(try none.json()["error"] as? String == "unauthorized")
            #expect(none.headers[.wwwAuthenticate] == #"Bearer realm="MQI Communicator""#, "a 401 names the scheme, and not Basic (no browser dialog)")
            #expect(try await Self.request(client, "/api/cases/CASE-1/cancel", method: .post, token: "wrong").status == .unauthorized)
            #expect(try await Self.request(client, "/api/cases/CASE-1/cancel", method: .post, token: token + "x").status == .unauthorized)
            #expect(try await Self.request(client, "/api/cases/CASE-1/cancel", method: .post, token: String(token.dropLast())).status == .unauthorized)

            // A NEW case cannot be retried (409); it can be cancelled, then retried.
            let early = try await Self.request(client, "/api/cases/CASE-1/retry", method: .post, token: token)
            #expect(early.status == .conflict, "\(early.body)")
            #expect(try early.json()["error"] as? String == "conflict")
            let cancelled = try await Self.request(client, "/api/cases/CASE-1/cancel", method: .post, token: token)
            #expect(cancelled.status == .ok, "\(cancelled.body)")
            #expect(try cancelled.json()["status"] as? String == "CANCELLED")
            #expect(try await Self.request(client, "/api/cases/CASE-1/cancel", method: .post, token: token).status == .conflict)
            let retried = try await Self.request(client, "/api/cases/CASE-1/retry", method: .post, token: token)
            #expect(retried.status == .ok, "\(retried.body)")
            #expect(try retried.json()["previous_status"] as? String == "CANCELLED")

            #expect(try await Self.request(client, "/api/cases/NO-SUCH/cancel", method: .post, token: token).status == .notFound)
            #expect(try await Self.request(client, "/api/dead-letters/12345/replay", method: .post, token: token).status == .notFound)
            #expect(try await Self.request(client, "/api/dead-letters/abc/replay", method: .post, token: token).status == .badRequest)
            // The page offers the buttons.
            #expect(try await Self.request(client, "/cases/CASE-1").body.contains("data-action=\"cancel\""))
        }
        let history = try await fixture.store.history("CASE-1").map(\.event)
        #expect(history.contains("cancel") && history.contains("retry"), "\(history)")
    }

    @Test func queuesShowDeadLettersAndReplayPutsThemBack() async throws {
        let fixture = try Fixture(maxDeliveries: 1)
        defer { fixture.remove() }
        try await fixture.store.reconcileGPUs(configured: [0, 1])
        #expect(try await fixture.store.registerCase("CASE-DL", workflow: "default_qa"))
        let claimed = try #require(try await fixture.store.claim(.conductor, owner: "test", leaseSec: 30))
        #expect(try await fixture.store.fail(claimed, error: "boom: the conductor could not decode it", retryAfter: 0))
        let token = fixture.token
        try await fixture.test { client in
            let queues = try await Self.request(client, "/api/queues")
            #expect(queues.status == .ok)
            let body = try queues.json()
            #expect((body["queues"] as? [String: Int])?["conductor_queue"] == 0, "\(body)")
            let letters = try #require(body["dead_letters"] as? [[String: Any]])
            #expect(letters.count == 1)
            #expect((letters.first?["error"] as? String)?.contains("boom: the conductor could not decode it") == true, "\(letters)")
            #expect(letters.first?["case_id"] as? String == "CASE-DL")
            let id = try #require(letters.first?["id"] as? Int)

            let replay = try await Self.request(client, "/api/dead-letters/\(id)/replay", method: .post, token: token)
            #expect(replay.status == .ok, "\(replay.body)")
            let after = try await Self.request(client, "/api/queues").json()
            #expect((after["queues"] as? [String: Int])?["conductor_queue"] == 1)
            #expect((after["dead_letters"] as? [Any])?.isEmpty == true)

            let gpus = try #require(try await Self.request(client, "/api/gpus").json()["gpus"] as? [[String: Any]])
            #expect(gpus.compactMap { $0["gpu_id"] as? Int } == [0, 1])
            #expect(gpus.allSatisfy { $0["status"] as? String == "free" })

            let summary = try await Self.request(client, "/api/summary").json()
            #expect((summary["counts"] as? [String: Int])?["NEW"] == 1)
            #expect((summary["throughput"] as? [Any])?.count == 24)

            // The overview renders, with the GPU cards and the case, and sends no CORS header.
            let overview = try await Self.request(client, "/")
            #expect(overview.status == .ok)
            #expect(overview.body.contains("data-gpu-id=\"1\""))
            #expect(overview.body.contains("data-case-id=\"CASE-DL\""))
            #expect(overview.headers[.init("Access-Control-Allow-Origin")!] == nil)
            #expect(overview.headers[.init("Content-Security-Policy")!] != nil)
            #expect(try await Self.request(client, "/assets/dashboard.js").body.contains("EventSource"))
            // The case list with its filters.
            let list = try await Self.request(client, "/cases?status=NEW&q=dl")
            #expect(list.status == .ok)
            #expect(list.body.contains("data-case-id=\"CASE-DL\""))
            #expect(list.body.contains("<option value=\"NEW\" selected>"))
            #expect(!(try await Self.request(client, "/cases?status=FAILED").body.contains("data-case-id=\"CASE-DL\"")))
            #expect(try await Self.request(client, "/cases?status=BOGUS").status == .badRequest)
        }
    }

    // MARK: 10,000 cases

    @Test(.timeLimit(.minutes(4))) func firstPageOfTenThousandCases() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        try await fixture.store.insertSyntheticCases(count: 10_000, workflow: "default_qa")
        let timings = try await APIBenchmark.time(fixture.context, requests: 200)
        print("API benchmark: \(timings)")
        #expect(timings.casesInDatabase == 10_000)
        // Figures only: speed is judged by `mqi-bench`, not by a timed test on a shared machine
        // (measured alone, debug build, 2 cores: p50 ≈ 4 ms, p99 ≈ 6–9 ms; goal p99 < 50 ms).
        let filtered = try await APIBenchmark.time(fixture.context, path: "/api/cases?status=FAILED&limit=50", requests: 100)
        print("API benchmark: \(filtered)")
        let searched = try await APIBenchmark.time(fixture.context, path: "/api/cases?q=SYN-0099&limit=50", requests: 100)
        print("API benchmark: \(searched)")
    }
}
