import Foundation
import Hummingbird
import HummingbirdTesting
import MQICore
import MQIHTTP
import MQIMetrics
import MQIStore
import MQITestSupport
import Synchronization
import Testing
@testable import MQIServices

/// `/` as a Prometheus scrape target (content negotiation on `Accept`) and the gauges the alerting
/// rules need: free space under the state directory, how long the oldest case has waited for a
/// GPU, GPU health. Through Hummingbird's router test client on a demo site's config and a real
/// SQLite file.
@Suite struct ScrapeAtRootTests {
    /// A demo site's config (no cases) with its store, served with the API and the dashboard as
    /// the daemon serves them.
    struct Fixture {
        let temp: TemporaryDirectory
        let config: Config
        let store: Store
        let metrics = MQIMetrics()

        init() throws {
            temp = try TemporaryDirectory("mqi-scrape")
            let site = try DemoSite.create(at: temp.file("site"), cases: 0)
            config = try ConfigLoader.load(path: site.configPath)
            store = try Store(path: config.state.database)
        }

        func test<Value: Sendable>(api withAPI: Bool = true, _ body: @escaping @Sendable (any TestClientProtocol) async throws -> Value) async throws -> Value {
            let api = withAPI ? APIContext(store: store, conductor: Conductor(config: config), config: config, logger: CapturedLogs().logger()) : nil
            let app = Application(router: HTTPServer.router(store: store, metrics: metrics, readiness: { [:] }, api: api))
            return try await app.test(.router) { client in try await body(client) }
        }

        func remove() { temp.remove() }
    }

    struct Reply: Sendable {
        var status: HTTPResponse.Status
        var body: String
        var headers: HTTPFields
    }

    static func get(_ client: any TestClientProtocol, _ uri: String, accept: String?) async throws -> Reply {
        var headers: HTTPFields = [:]
        if let accept { headers[.accept] = accept }
        return try await client.execute(uri: uri, method: .get, headers: headers) { response in
            Reply(status: response.status, body: String(buffer: response.body), headers: response.headers)
        }
    }

    /// The exposition without the state-disk samples, whose values move between two scrapes
    /// whenever anything on that file system writes.
    static func withoutDiskSamples(_ text: String) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("mqi_state_disk_free_") }.joined(separator: "\n")
    }

    /// What scrapers send. Prometheus 2.42 (Debian 12's) and 2.5x, Prometheus 3, Prometheus 2
    /// before OpenMetrics, and someone asking for the text format by hand.
    static let scraperAccepts = [
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1",
        "text/plain; version=0.0.4",
        "application/openmetrics-text",
    ]

    /// What browsers and other clients send; nil: no `Accept` header at all.
    static let browserAccepts: [String?] = [
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        "*/*",
        "",
        nil,
    ]

    // MARK: / as a scrape target

    @Test(arguments: scraperAccepts)
    func aScrapeOfTheRootGetsTheMetrics(_ accept: String) async throws {
        let promtool = try #require(Promtool.path, "promtool is missing: scripts/test installs it (Debian package prometheus)")
        let fixture = try Fixture()
        defer { fixture.remove() }
        try await HTTPEndpointTests.seed(fixture.store)
        let (root, metrics) = try await fixture.test { client in
            (try await Self.get(client, "/", accept: accept), try await Self.get(client, "/metrics", accept: nil))
        }
        #expect(root.status == .ok)
        #expect(root.headers[.contentType] == "text/plain; version=0.0.4; charset=utf-8")
        #expect(root.headers[.vary] == "Accept")
        #expect(metrics.headers[.contentType] == root.headers[.contentType])
        // The same exposition as /metrics (a second scrape of the same state).
        #expect(Self.withoutDiskSamples(root.body) == Self.withoutDiskSamples(metrics.body))
        #expect(root.body.contains("# HELP mqi_cases_received_total "))
        #expect(Exposition(root.body)[#"mqi_cases{status="NEW"}"#] == 2)
        let disk = "mqi_state_disk_free_bytes{path=\"\(fixture.config.state.localDirectory)\"}"
        #expect(Exposition(root.body)[disk] != nil, "\(root.body)")
        #expect(Exposition(metrics.body)[disk] != nil)
        let check = try Promtool.checkMetrics(root.body)
        #expect(check.status == 0, "\(promtool) check metrics failed (\(check.status)):\n\(check.output)\n--- input ---\n\(root.body)")
    }

    @Test(arguments: browserAccepts)
    func aBrowserAtTheRootGetsTheDashboard(_ accept: String?) async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let reply = try await fixture.test { client in try await Self.get(client, "/", accept: accept) }
        #expect(reply.status == .ok)
        #expect(reply.headers[.contentType]?.hasPrefix("text/html") == true, "\(reply.headers)")
        #expect(reply.headers[.vary] == "Accept")
        #expect(reply.body.contains("<html"), "\(reply.body.prefix(200))")
        #expect(!reply.body.contains("mqi_cases_received_total"))
    }

    /// Without the API (no dashboard), `/` still answers a scrape; anything else there is a 404.
    @Test func theRootAnswersAScrapeWithoutTheDashboard() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let (scrape, browser) = try await fixture.test(api: false) { client in
            (try await Self.get(client, "/", accept: Self.scraperAccepts[0]), try await Self.get(client, "/", accept: Self.browserAccepts[0]))
        }
        #expect(scrape.status == .ok)
        #expect(scrape.body.contains("# TYPE mqi_cases gauge"))
        #expect(browser.status == .notFound)
    }

    @Test(arguments: [
        ("text/plain", true),
        ("text/plain;q=0.5, text/html", false),
        ("text/html;q=0.4, text/plain;version=0.0.4;q=0.5", true),
        ("text/*", false),
        ("text/*;q=0.5, text/html;q=0.4", true),
        ("application/openmetrics-text;q=0", false),
        ("TEXT/PLAIN; VERSION=0.0.4", true),
        ("application/json", false),
        ("*/*;q=0.1, text/html;q=0", true),
        ("garbage", false),
        (",,;", false),
        ("text/plain;q=abc", false),
    ])
    func negotiation(_ accept: String, _ metrics: Bool) {
        #expect(ScrapeNegotiation.prefersMetrics(accept: accept) == metrics, "\(accept)")
    }

    // MARK: gauges for the alerts

    @Test func theStateDiskGaugesDescribeTheStateDirectory() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let directory = fixture.config.state.localDirectory
        #expect(directory == (fixture.config.state.database as NSString).deletingLastPathComponent)
        // What Foundation says about the same file system (statvfs too), read just before and just
        // after the scrape: other tests write to this disk meanwhile (CI saw 546 MB go between
        // one scrape and one read), so the gauge must lie between the two, give or take 64 MB.
        func foundation() throws -> (size: Double, available: Double) {
            let attributes = try FileManager.default.attributesOfFileSystem(forPath: directory)
            return (try #require((attributes[.systemSize] as? NSNumber)?.doubleValue), try #require((attributes[.systemFreeSize] as? NSNumber)?.doubleValue))
        }
        let before = try foundation()
        let body = try await fixture.test { client in try await Self.get(client, "/metrics", accept: nil).body }
        let after = try foundation()
        let samples = Exposition(body)
        let free = try #require(samples["mqi_state_disk_free_bytes{path=\"\(directory)\"}"], "\(body)")
        let ratio = try #require(samples["mqi_state_disk_free_ratio{path=\"\(directory)\"}"])
        let low = min(before.available, after.available) - 64 * 1_048_576, high = max(before.available, after.available) + 64 * 1_048_576
        #expect(free > 0 && free >= low && free <= high, "gauge \(free), Foundation \(before.available) before and \(after.available) after")
        #expect(ratio > 0 && ratio <= 1)
        #expect(ratio >= low / after.size - 0.001 && ratio <= high / after.size + 0.001, "gauge \(ratio), Foundation \(after.available / after.size) after")
        #expect(body.contains("# HELP mqi_state_disk_free_ratio "))
    }

    /// The oldest PENDING_RESOURCE case's wait, from its history: it starts when the case entered
    /// the status, and moves to the next case when that one gets its GPU.
    @Test func theOldestPendingWaitIsReadFromTheHistory() async throws {
        let temp = try TemporaryDirectory("mqi-pending")
        defer { temp.remove() }
        let clock = Mutex(Date().addingTimeInterval(-1800))
        let store = try Store(path: temp.file("state.sqlite"), now: { clock.withLock { $0 } })
        let conductor = try HTTPEndpointTests.conductor()
        let metrics = MQIMetrics()
        func render() async throws -> Exposition { Exposition(try await metrics.render(from: store)) }
        func start(_ id: String) async throws -> CaseStatus? {
            #expect(try await store.registerCase(id, workflow: "qa"))
            _ = try await store.conduct(.newCaseFound, caseId: id, conductor: conductor)
            return try await store.conduct(.stepSucceeded(stepIndex: 0, attempt: 1), caseId: id, conductor: conductor).first?.decision.state.status
        }
        try await store.reconcileGPUs(configured: [0])
        #expect(try await render()["mqi_oldest_pending_resource_seconds"] == 0)
        // 30 min ago: one case takes the only GPU, the next waits for it.
        #expect(try await start("CASE-RUN") == .processing)
        #expect(try await start("CASE-A") == .pendingResource)
        // 10 min ago: another case waits, and the first one's progress is written.
        clock.withLock { $0 = Date().addingTimeInterval(-600) }
        #expect(try await start("CASE-B") == .pendingResource)
        var oldest = try #require(try await render()["mqi_oldest_pending_resource_seconds"])
        #expect(abs(oldest - 1800) < 120, "\(oldest)")  // 1800 against 600 (CASE-B); a loaded suite has taken 33 s here
        #expect(try await render()["mqi_oldest_pending_resource_seconds"].map { abs($0 - 1800) < 120 } == true, "a second scrape (cached history)")
        // The running case's simulation ends: its GPU goes to CASE-A, and CASE-B is the oldest.
        clock.withLock { $0 = Date() }
        _ = try await store.conduct(.stepSucceeded(stepIndex: 1, attempt: 1), caseId: "CASE-RUN", conductor: conductor)
        _ = try await store.dispatchPending(conductor: conductor)
        #expect(try await store.caseSummary("CASE-A")?.status == .processing)
        oldest = try #require(try await render()["mqi_oldest_pending_resource_seconds"])
        #expect(abs(oldest - 600) < 30, "\(oldest)")
        // CASE-B gets it in turn: nothing waits.
        _ = try await store.conduct(.stepSucceeded(stepIndex: 1, attempt: 1), caseId: "CASE-A", conductor: conductor)
        _ = try await store.dispatchPending(conductor: conductor)
        #expect(try await store.caseSummary("CASE-B")?.status == .processing)
        #expect(try await render()["mqi_oldest_pending_resource_seconds"] == 0)
    }

    @Test func gpuHealthIsOneForTheCurrentState() async throws {
        let temp = try TemporaryDirectory("mqi-gpu-health")
        defer { temp.remove() }
        let store = try Store(path: temp.file("state.sqlite"))
        try await store.reconcileGPUs(configured: [0, 1])
        let metrics = MQIMetrics()
        var samples = Exposition(try await metrics.render(from: store))
        #expect(samples[#"mqi_gpu_health{gpu_id="0",health="ok"}"#] == 1)
        #expect(samples[#"mqi_gpu_health{gpu_id="0",health="missing"}"#] == 0)
        // nvidia-smi lists GPU 1 only, busy with a foreign process.
        try await store.recordGPUTelemetry([GPUSample(index: 1, utilizationPercent: 90, memoryUsedMB: 20_000, memoryTotalMB: 81_559)], busyMemoryMB: 1024)
        samples = Exposition(try await metrics.render(from: store))
        #expect(samples[#"mqi_gpu_health{gpu_id="0",health="missing"}"#] == 1)
        #expect(samples[#"mqi_gpu_health{gpu_id="0",health="ok"}"#] == 0)
        #expect(samples[#"mqi_gpu_health{gpu_id="1",health="busy"}"#] == 1)
        #expect(samples[#"mqi_gpu_health{gpu_id="1",health="ok"}"#] == 0)
        #expect(samples[#"mqi_gpu_health{gpu_id="1",health="missing"}"#] == 0)
    }
}
