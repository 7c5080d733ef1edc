import Foundation
import Hummingbird
import HummingbirdTesting
import MQICore
import MQIHTTP
import MQIMetrics
import MQIStore
import MQITestSupport
import MQITransport
import Testing
@testable import MQIServices

/// `/metrics`, `/healthz` and `/readyz` through Hummingbird's router test client, on a real
/// SQLite file.
@Suite struct HTTPEndpointTests {
    // MARK: fixtures

    /// A Store on a file in a fresh temp dir.
    struct Fixture {
        let temp: TemporaryDirectory
        let databasePath: String
        let store: Store

        init(maxDeliveries: Int = 5) throws {
            temp = try TemporaryDirectory("mqi-http")
            databasePath = temp.file("var/state.sqlite")
            store = try Store(path: databasePath, maxDeliveries: maxDeliveries)
        }

        func remove() { temp.remove() }
    }

    /// upload → simulate (1 GPU) → download.
    static func conductor() throws -> Conductor {
        let workflow = Workflow(name: "qa", steps: [
            WorkflowStep(name: "upload_case_files", type: .upload, progress: 10, gpuCount: 0),
            WorkflowStep(name: "run_moqui_sim", type: .execute, progress: 50, timeoutSec: 3600, gpuCount: 1,
                         command: try CommandTemplate("moqui --case {case_id} --gpu {gpu_id}")),
            WorkflowStep(name: "download_results", type: .download, progress: 90, gpuCount: 0),
        ])
        return Conductor(workflows: ["qa": workflow], uploadDir: "/hpc/upload", downloadDir: "/hpc/download")
    }

    /// Cases in several statuses and a reserved GPU: NEW 2 (CASE-B, CASE-C), PROCESSING 1 (CASE-A,
    /// uploaded and now simulating on GPU 0), FAILED 1 (CASE-D, refused); conductor_queue 3
    /// (new_case_found each), file_transfer_queue 1 and remote_executor_queue 1 (CASE-A's commands).
    static func seed(_ store: Store) async throws {
        try await store.reconcileGPUs(configured: [0, 1])
        for id in ["CASE-A", "CASE-B", "CASE-C"] {
            #expect(try await store.registerCase(id, workflow: "qa"))
        }
        #expect(try await store.registerRejectedCase("CASE-D", workflow: "qa", reason: "no RP*.dcm"))
        let conductor = try conductor()
        // CASE-A: uploaded, now running the simulation on a GPU.
        let started = try await store.conduct(.newCaseFound, caseId: "CASE-A", conductor: conductor)
        #expect(started.first?.decision.state.status == .processing)
        let running = try await store.conduct(.stepSucceeded(stepIndex: 0, attempt: 1), caseId: "CASE-A", conductor: conductor)
        #expect(running.first?.decision.state.gpuIds == [0], "\(running)")
    }

    static func client<Value: Sendable>(
        _ store: Store, _ metrics: MQIMetrics, readiness: @escaping ReadinessCheck = { [:] },
        _ body: @escaping @Sendable (any TestClientProtocol) async throws -> Value
    ) async throws -> Value {
        let app = Application(router: HTTPServer.router(store: store, metrics: metrics, readiness: readiness))
        return try await app.test(.router) { client in try await body(client) }
    }

    static func get(_ client: some TestClientProtocol, _ uri: String) async throws -> (status: HTTPResponse.Status, body: String, headers: HTTPFields) {
        try await client.execute(uri: uri, method: .get) { response in
            (response.status, String(buffer: response.body), response.headers)
        }
    }

    static func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "not a JSON object: \(text)")
    }

    // MARK: /healthz

    @Test func healthzAnswers200() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let (status, body, headers) = try await Self.client(fixture.store, MQIMetrics()) { try await Self.get($0, "/healthz") }
        #expect(status == .ok)
        #expect(try Self.json(body)["status"] as? String == "ok")
        #expect(headers[.contentType]?.hasPrefix("application/json") == true)
        #expect(headers[.cacheControl] == "no-store")
    }

    // MARK: /metrics

    static let requiredFamilies: [(name: String, type: String)] = [
        ("mqi_cases_received_total", "counter"),
        ("mqi_cases_completed_total", "counter"),
        ("mqi_cases_failed_total", "counter"),
        ("mqi_active_jobs", "gauge"),
        ("mqi_task_execution_duration_seconds", "histogram"),
        ("mqi_gpu_utilization_percent", "gauge"),
        ("mqi_cases", "gauge"),
        ("mqi_queue_depth", "gauge"),
        ("mqi_dead_letters", "gauge"),
        ("mqi_gpu_memory_used_bytes", "gauge"),
        ("mqi_gpu_reserved", "gauge"),
        ("mqi_step_retries_total", "counter"),
        ("mqi_transfer_bytes_total", "counter"),
        ("mqi_ssh_connections_opened_total", "counter"),
    ]

    /// A registry where every labelled family has at least one series.
    static func populatedMetrics() -> MQIMetrics {
        let metrics = MQIMetrics()
        metrics.casesReceived.increment()
        metrics.casesReceived.increment()
        metrics.casesCompleted.increment()
        metrics.activeJobs.increment()
        metrics.sshConnectionsOpened.increment()
        metrics.taskDuration(type: .execute, step: "run_moqui_sim").record(12.5)
        metrics.taskDuration(type: .execute, step: "run_moqui_sim").record(0.07)
        metrics.taskDuration(type: .upload, step: "upload_case_files").record(1.2)
        metrics.gpuUtilization(0).set(to: 37.5)
        metrics.gpuMemoryUsed(0).set(to: 20_000 * 1_048_576)
        metrics.stepRetries(step: "upload_case_files").increment()
        metrics.transferBytes(direction: "upload").increment(by: Int64(262_144_000))
        metrics.transferBytes(direction: "download").increment(by: Int64(4096))
        return metrics
    }

    @Test func metricsHaveHelpTypeAndEveryRequiredFamily() async throws {
        let fixture = try Fixture(maxDeliveries: 1)
        defer { fixture.remove() }
        try await Self.seed(fixture.store)
        // A new_case_found delivered once and given back: with max 1 delivery it is a dead letter.
        let claimed = try #require(try await fixture.store.claim(.conductor, owner: "test", leaseSec: 60))
        #expect(try await fixture.store.fail(claimed, error: "boom", retryAfter: 0))

        let (status, text, headers) = try await Self.client(fixture.store, Self.populatedMetrics()) { try await Self.get($0, "/metrics") }
        #expect(status == .ok)
        #expect(headers[.contentType]?.hasPrefix("text/plain; version=0.0.4") == true, "\(headers)")
        for family in Self.requiredFamilies {
            #expect(text.contains("\n# HELP \(family.name) ") || text.hasPrefix("# HELP \(family.name) "), "no HELP for \(family.name)")
            #expect(text.contains("# TYPE \(family.name) \(family.type)\n"), "no TYPE \(family.type) for \(family.name)")
        }
        let samples = Exposition(text)
        #expect(samples["mqi_cases_received_total"] == 2)
        #expect(samples["mqi_cases_completed_total"] == 1)
        #expect(samples["mqi_cases_failed_total"] == 0)
        #expect(samples["mqi_active_jobs"] == 1)
        #expect(samples["mqi_ssh_connections_opened_total"] == 1)
        #expect(samples[#"mqi_task_execution_duration_seconds_count{task_type="execute:run_moqui_sim"}"#] == 2)
        #expect(abs((samples[#"mqi_task_execution_duration_seconds_sum{task_type="execute:run_moqui_sim"}"#] ?? 0) - 12.57) < 1e-9)
        #expect(samples[#"mqi_task_execution_duration_seconds_bucket{task_type="execute:run_moqui_sim",le="0.1"}"#] == 1)
        #expect(samples[#"mqi_task_execution_duration_seconds_bucket{task_type="execute:run_moqui_sim",le="+Inf"}"#] == 2)
        #expect(samples[#"mqi_task_execution_duration_seconds_count{task_type="upload:upload_case_files"}"#] == 1)
        #expect(samples[#"mqi_gpu_utilization_percent{gpu_id="0"}"#] == 37.5)
        #expect(samples[#"mqi_gpu_memory_used_bytes{gpu_id="0"}"#] == Double(20_000 * 1_048_576))
        #expect(samples[#"mqi_step_retries_total{step="upload_case_files"}"#] == 1)
        #expect(samples[#"mqi_transfer_bytes_total{direction="upload"}"#] == 262_144_000)
        #expect(samples[#"mqi_transfer_bytes_total{direction="download"}"#] == 4096)

        // Read from the database at scrape time.
        #expect(samples[#"mqi_cases{status="NEW"}"#] == 2)
        #expect(samples[#"mqi_cases{status="PROCESSING"}"#] == 1)
        #expect(samples[#"mqi_cases{status="FAILED"}"#] == 1)
        #expect(samples[#"mqi_cases{status="COMPLETED"}"#] == 0)
        #expect(samples[#"mqi_cases{status="PENDING_RESOURCE"}"#] == 0)
        #expect(samples[#"mqi_cases{status="CANCELLED"}"#] == 0)
        // 3 new_case_found − 1 dead-lettered; CASE-A's upload then execute command.
        #expect(samples[#"mqi_queue_depth{queue="conductor_queue"}"#] == 2)
        #expect(samples[#"mqi_queue_depth{queue="file_transfer_queue"}"#] == 1)
        #expect(samples[#"mqi_queue_depth{queue="remote_executor_queue"}"#] == 1)
        #expect(samples["mqi_dead_letters"] == 1)
        #expect(samples[#"mqi_gpu_reserved{gpu_id="0"}"#] == 1)
        #expect(samples[#"mqi_gpu_reserved{gpu_id="1"}"#] == 0)
    }

    /// `mqi_cases` comes from the database, so a new process (new registry, new Store on the same
    /// file) reports the same numbers at once.
    @Test func caseGaugesAreRightAfterARestart() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        try await Self.seed(fixture.store)
        let reopened = try Store(path: fixture.databasePath)
        let (_, text, _) = try await Self.client(reopened, MQIMetrics()) { try await Self.get($0, "/metrics") }
        let samples = Exposition(text)
        #expect(samples[#"mqi_cases{status="NEW"}"#] == 2)
        #expect(samples[#"mqi_cases{status="PROCESSING"}"#] == 1)
        #expect(samples[#"mqi_cases{status="FAILED"}"#] == 1)
        #expect(samples[#"mqi_gpu_reserved{gpu_id="0"}"#] == 1)
        #expect(samples["mqi_cases_received_total"] == 0, "counters are per process")
    }

    @Test func gaugesFollowTheDatabaseBetweenScrapes() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let metrics = MQIMetrics()
        let store = fixture.store
        try await Self.client(store, metrics) { client in
            var samples = Exposition(try await Self.get(client, "/metrics").body)
            #expect(samples[#"mqi_cases{status="NEW"}"#] == 0)
            try await store.registerCase("CASE-X", workflow: "qa")
            samples = Exposition(try await Self.get(client, "/metrics").body)
            #expect(samples[#"mqi_cases{status="NEW"}"#] == 1)
            #expect(samples[#"mqi_queue_depth{queue="conductor_queue"}"#] == 1)
        }
    }

    @Test(.enabled(if: Promtool.path != nil, "promtool is not installed (Debian package `prometheus`); scripts/test installs it"))
    func metricsPassPromtool() async throws {
        let fixture = try Fixture(maxDeliveries: 1)
        defer { fixture.remove() }
        try await Self.seed(fixture.store)
        let populated = try await Self.client(fixture.store, Self.populatedMetrics()) { try await Self.get($0, "/metrics").body }
        let check = try Promtool.checkMetrics(populated)
        #expect(check.status == 0, "promtool check metrics failed (\(check.status)):\n\(check.output)\n--- input ---\n\(populated)")
        // A fresh daemon before anything happened.
        let fresh = try await Self.client(fixture.store, MQIMetrics()) { try await Self.get($0, "/metrics").body }
        let freshCheck = try Promtool.checkMetrics(fresh)
        #expect(freshCheck.status == 0, "promtool check metrics failed (\(freshCheck.status)):\n\(freshCheck.output)\n--- input ---\n\(fresh)")
    }

    /// The checker itself catches what it should (so a passing check means something).
    @Test(.enabled(if: Promtool.path != nil, "promtool is not installed (Debian package `prometheus`)"))
    func promtoolRejectsAMetricWithoutHelp() throws {
        let check = try Promtool.checkMetrics("# TYPE mqi_x_total counter\nmqi_x_total 1\n")
        #expect(check.status != 0, "\(check.output)")
    }

    // MARK: /readyz

    @Test func readyzIs200WithAWritableDatabaseAndAWorkingTransport() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let readiness = Readiness(store: fixture.store, runner: LocalCommandRunner())
        let (status, body, _) = try await Self.client(fixture.store, MQIMetrics(), readiness: { await readiness.problems() }) {
            try await Self.get($0, "/readyz")
        }
        #expect(status == .ok, "\(body)")
        #expect(try Self.json(body)["status"] as? String == "ready")
    }

    /// Tests run as root, for whom file modes do not stop writes, and an open SQLite connection
    /// keeps writing to a file that was deleted or replaced. So the database is damaged under the
    /// open Store instead: its header, WAL and shared-memory index overwritten, as a failing disk
    /// or a stray process would. Verified to make the real `Store.checkWritable()` throw
    /// ("file is not a database").
    @Test func readyzIs503NamingTheDatabaseWhenItIsNotWritable() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        try await Self.seed(fixture.store)
        try await fixture.store.checkWritable()
        try Self.sabotage(fixture.databasePath)
        await #expect(throws: (any Error).self) { try await fixture.store.checkWritable() }

        let readiness = Readiness(store: fixture.store, runner: LocalCommandRunner())
        let (status, body, headers) = try await Self.client(fixture.store, MQIMetrics(), readiness: { await readiness.problems() }) {
            try await Self.get($0, "/readyz")
        }
        #expect(status == .serviceUnavailable)
        #expect(headers[.contentType]?.hasPrefix("application/json") == true)
        let object = try Self.json(body)
        #expect(object["status"] as? String == "not ready")
        let reasons = try #require(object["reasons"] as? [String: String], "\(body)")
        #expect(reasons.keys.sorted() == ["database"], "\(reasons)")
        #expect(reasons["database"]?.contains("not writable") == true, "\(reasons)")
    }

    static func sabotage(_ path: String) throws {
        func overwrite(_ file: String, _ bytes: [UInt8]) throws {
            guard FileManager.default.fileExists(atPath: file) else { return }
            let handle = try #require(FileHandle(forUpdatingAtPath: file))
            defer { try? handle.close() }
            try handle.write(contentsOf: Data(bytes))
        }
        try overwrite(path, Array("not a database: damaged by a test".utf8) + [UInt8](repeating: 0x58, count: 4096))
        try overwrite(path + "-wal", [UInt8](repeating: 0x58, count: 32))
        try overwrite(path + "-shm", [UInt8](repeating: 0xFF, count: 136))
    }

    /// A full disk is the common way a clinic PC's database stops being writable. A small tmpfs
    /// is filled up under the open Store (needs root and mount rights; skipped elsewhere).
    @Test(.enabled(if: TmpfsMount.available, "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)"), .timeLimit(.minutes(3)))
    func readyzIs503WhenTheDiskIsFull() async throws {
        let temp = try TemporaryDirectory("mqi-full")
        defer { temp.remove() }
        let mount = try TmpfsMount(at: temp.file("mnt"), sizeKB: 4096)
        defer { mount.unmount() }
        let store = try Store(path: (mount.path as NSString).appendingPathComponent("state.sqlite"))
        try await Self.seed(store)
        mount.fill()
        // The disk is full: a real write fails...
        await #expect(throws: (any Error).self) { try await store.registerCase("CASE-FULL", workflow: "qa") }
        // ...so the probe must say so.
        let readiness = Readiness(store: store, runner: LocalCommandRunner())
        let problems = await readiness.problems()
        #expect(problems["database"] != nil, "\(problems)")
    }

    struct StubRunner: CommandRunner {
        var result: @Sendable () throws -> CommandResult
        func capture(_ command: String, timeoutSec: Double) async throws -> CommandResult { try result() }
    }

    @Test(arguments: [
        ("unreachable", StubRunner { throw TransportError("ssh: connect to host hpc01 port 22: Connection refused", transient: true) }),
        ("exited", StubRunner { CommandResult(status: 255, output: "kex_exchange_identification: Connection closed by remote host") }),
    ])
    func readyzIs503NamingTheTransportWhenItFails(_ expected: String, _ runner: StubRunner) async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let readiness = Readiness(store: fixture.store, runner: runner)
        let (status, body, _) = try await Self.client(fixture.store, MQIMetrics(), readiness: { await readiness.problems() }) {
            try await Self.get($0, "/readyz")
        }
        #expect(status == .serviceUnavailable)
        let reasons = try #require(try Self.json(body)["reasons"] as? [String: String], "\(body)")
        #expect(reasons.keys.sorted() == ["transport"], "\(reasons)")
        #expect(reasons["transport"]?.contains(expected == "exited" ? "255" : "unreachable") == true, "\(reasons)")
    }

    @Test func readyzListsEveryProblem() async throws {
        let fixture = try Fixture()
        defer { fixture.remove() }
        let (status, body, _) = try await Self.client(fixture.store, MQIMetrics(), readiness: { ["database": "not writable: disk I/O error", "scanner": "not running"] }) {
            try await Self.get($0, "/readyz")
        }
        #expect(status == .serviceUnavailable)
        let reasons = try #require(try Self.json(body)["reasons"] as? [String: String])
        #expect(reasons == ["database": "not writable: disk I/O error", "scanner": "not running"])
    }
}

// MARK: - helpers

/// Sample values of a Prometheus text exposition, keyed by the series as printed
/// (`name{label="value",...}`).
struct Exposition {
    var values: [String: Double] = [:]

    init(_ text: String) {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " ") else { continue }
            let value = line[line.index(after: space)...]
            values[String(line[..<space])] = value == "+Inf" ? .infinity : Double(value)
        }
    }

    subscript(_ series: String) -> Double? { values[series] }
}

/// `promtool check metrics`, the checker Prometheus ships (Debian package `prometheus`).
enum Promtool {
    static let path: String? = ["/usr/bin/promtool", "/usr/local/bin/promtool", "/bin/promtool"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    static func checkMetrics(_ text: String) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(path))
        process.arguments = ["check", "metrics"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        let inputFile = FileManager.default.temporaryDirectory.appendingPathComponent("mqi-promtool-\(UUID().uuidString).txt")
        try Data(text.utf8).write(to: inputFile)
        defer { try? FileManager.default.removeItem(at: inputFile) }
        process.standardInput = try FileHandle(forReadingFrom: inputFile)
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}

/// A small tmpfs mounted for one test, so it can be filled up.
struct TmpfsMount {
    let path: String

    static let available: Bool = {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/bin/mount") else { return false }
        guard let temp = try? TemporaryDirectory("mqi-mount-probe") else { return false }
        defer { temp.remove() }
        guard let mount = try? TmpfsMount(at: temp.file("m"), sizeKB: 64) else { return false }
        mount.unmount()
        return true
    }()

    init(at path: String, sizeKB: Int) throws {
        self.path = path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        guard Self.run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(sizeKB)k", "tmpfs", path]) == 0 else {
            throw TestSupportError("cannot mount a tmpfs on \(path)")
        }
    }

    /// Writes a file until the filesystem is full.
    func fill() {
        _ = Self.run("/bin/sh", ["-c", "dd if=/dev/zero of=\(ShellQuote.quote((path as NSString).appendingPathComponent("filler"))) bs=4096 2>/dev/null"])
    }

    func unmount() {
        _ = Self.run("/bin/umount", ["-l", path])
    }

    @discardableResult
    static func run(_ executable: String, _ arguments: [String]) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return -1 }
        process.waitUntilExit()
        return process.terminationStatus
    }
}
