import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import MQICore
@testable import MQIHTTP
import MQIMetrics
import MQIStore
import MQITestSupport
import ServiceLifecycle
import Synchronization
import Testing
@testable import MQIServices

/// The case page's log panel: a step attempt's log followed live over its own event stream, with
/// the lines that match the step's failure patterns marked; and the GPU panel's last hour.
@Suite struct LogFollowTests {
    // MARK: reading a growing log

    @Test func cursorStartsAtTheTailOnALineAndWaitsForPartialLines() throws {
        let temp = try TemporaryDirectory("mqi-cursor")
        defer { temp.remove() }
        let path = temp.file("a.log")
        let head = String(repeating: "x", count: 100) + "\n"
        try Data((String(repeating: head, count: 20) + "line A\nline B\npartial").utf8).write(to: URL(fileURLWithPath: path))
        var cursor = LogCursor(from: nil)
        cursor.tailBytes = 150
        let first = cursor.read(path, final: false)
        // The tail starts mid-line: that line is dropped, and counted as not shown.
        #expect(first.lines == [String(repeating: "x", count: 100), "line A", "line B"])
        let size = UInt64(20 * 101 + 14 + 7)
        #expect(first.skippedBytes == size - 150 + UInt64(150 - 7 - 14 - 101))
        #expect(cursor.resumeOffset == size - 7, "a client resuming gets the partial line again")
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(" line\r\nlast".utf8))
        try handle.close()
        let second = cursor.read(path, final: false)
        #expect(second.lines == ["partial line"], "its \\r is dropped, like the output watcher does")
        #expect(cursor.read(path, final: true).lines == ["last"], "once the writer is done, a last line without newline counts")

        var resumed = LogCursor(from: size - 7)
        #expect(resumed.read(path, final: true).lines == ["partial line", "last"])
    }

    @Test func cursorBoundsLongLinesAndJumpsOverABacklog() throws {
        let temp = try TemporaryDirectory("mqi-cursor")
        defer { temp.remove() }
        let path = temp.file("b.log")
        try Data((String(repeating: "y", count: 40) + "\nok\n").utf8).write(to: URL(fileURLWithPath: path))
        var cursor = LogCursor(from: 0)
        cursor.maxLineBytes = 10
        let lines = cursor.read(path, final: false).lines
        #expect(lines.count == 2 && lines[0] == String(repeating: "y", count: 10) + " …" && lines[1] == "ok", "\(lines)")

        var behind = LogCursor(from: 0)
        behind.maxBacklog = 100
        behind.tailBytes = 30
        try Data((0..<50).map { "row \($0)\n" }.joined().utf8).write(to: URL(fileURLWithPath: path))
        let chunk = behind.read(path, final: false)
        #expect(chunk.skippedBytes > 0)
        #expect(chunk.lines.last == "row 49")
        #expect(chunk.lines.count <= 5, "\(chunk.lines)")
    }

    @Test func failureLinesAreTheStepsPatternsAndBeamRunsUseTheirStep() throws {
        let fixture = try APITests.Fixture(token: false)
        defer { fixture.remove() }
        let sim = FailureLineMatcher(config: fixture.config, workflow: "default_qa", logStep: "run_moqui_sim")
        let beam = FailureLineMatcher(config: fixture.config, workflow: "default_qa", logStep: "run_moqui_sim.2")
        let lines = ["Generating particles for (1 of 10 batches)", "FATAL ERROR: CUDA error", "  ERROR: indented", "ERROR: at the start", "Segmentation fault (core dumped)"]
        #expect(sim.failures(in: lines) == [1, 3, 4])
        #expect(beam.failures(in: lines) == [1, 3, 4])
        #expect(FailureLineMatcher(config: fixture.config, workflow: "default_qa", logStep: "run_interpreter").failures(in: lines) == [],
                "a step without failure_patterns marks nothing")
        #expect(LogStepName("run_moqui_sim.2") == LogStepName("run_moqui_sim.2"))
        #expect(LogStepName("run_moqui_sim.2")?.step == "run_moqui_sim")
        #expect(LogStepName("run_moqui_sim") == nil)
    }

    // MARK: the stream

    /// A case at run_moqui_sim attempt 1 with a log; returns the log's path.
    static func caseAtSimulation(_ fixture: APITests.Fixture, _ id: String) async throws -> String {
        try await fixture.store.reconcileGPUs(configured: [0, 1])
        #expect(try await fixture.store.registerCase(id, workflow: "default_qa"))
        let conductor = Conductor(config: fixture.config)
        _ = try await fixture.store.conduct(.newCaseFound, caseId: id, conductor: conductor)
        _ = try await fixture.store.conduct(.stepSucceeded(stepIndex: 0, attempt: 1), caseId: id, conductor: conductor)
        _ = try await fixture.store.conduct(.stepSucceeded(stepIndex: 1, attempt: 1), caseId: id, conductor: conductor)
        let summary = try #require(try await fixture.store.caseSummary(id))
        #expect(summary.status == .processing && summary.workflowStep == "run_moqui_sim", "\(summary)")
        let directory = (fixture.config.state.logsDir as NSString).appendingPathComponent(id)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = (directory as NSString).appendingPathComponent("run_moqui_sim.\(summary.attempt).log")
        try Data("MOQUI start\nFATAL ERROR: first <b>bad</b>\n".utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// The events of an SSE body: (event, id, data).
    static func events(_ body: String) -> [(event: String, id: String?, data: String)] {
        body.components(separatedBy: "\n\n").compactMap { block in
            var event = "message", id: String?, data: String?
            for line in block.split(separator: "\n") {
                if line.hasPrefix("event: ") { event = String(line.dropFirst(7)) }
                if line.hasPrefix("id: ") { id = String(line.dropFirst(4)) }
                if line.hasPrefix("data: ") { data = String(line.dropFirst(6)) }
            }
            return data.map { (event, id, $0) }
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func streamSendsTheTailThenWhatIsAppendedWhileTheAttemptRunsThenEnds() async throws {
        let fixture = try APITests.Fixture(token: false)
        defer { fixture.remove() }
        let id = "CASE live/1"
        let path = try await Self.caseAtSimulation(fixture, id)
        let store = fixture.store, config = fixture.config
        let attempt = try #require(try await store.caseSummary(id)).attempt
        // While the stream is open: lines are appended, then the attempt ends (the last line
        // without its newline).
        let writer = Task {
            try await Task.sleep(for: .milliseconds(1200))
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
            try handle.seekToEnd()
            try handle.write(contentsOf: Data("Generating particles for (5 of 10 batches)\nERROR: later\nno newline".utf8))
            try handle.close()
            try await Task.sleep(for: .milliseconds(1200))
            _ = try await store.conduct(.stepSucceeded(stepIndex: 2, attempt: attempt), caseId: id, conductor: Conductor(config: config))
        }
        let started = Date()
        let reply = try await fixture.test { client in
            try await APITests.request(client, "/api/cases/\(APITests.segment(id))/logs/run_moqui_sim/\(attempt)/stream")
        }
        try await writer.value
        #expect(Date().timeIntervalSince(started) >= 2, "the stream ended before the attempt did")
        #expect(reply.status == .ok)
        #expect(reply.headers[.contentType]?.hasPrefix("text/event-stream") == true)
        let events = Self.events(reply.body)
        let logs = events.filter { $0.event == "log" }
        #expect(logs.count >= 2, "the tail and what came later are separate events: \(reply.body)")
        var lines: [String] = [], failures: [String] = []
        for event in logs {
            let data = try #require(try JSONSerialization.jsonObject(with: Data(event.data.utf8)) as? [String: Any])
            let chunk = try #require(data["lines"] as? [String])
            for index in try #require(data["failures"] as? [Int]) { failures.append(chunk[index]) }
            lines += chunk
            #expect(event.id.flatMap { UInt64($0) } != nil, "each log event has the byte offset as its id")
        }
        #expect(lines == ["MOQUI start", "FATAL ERROR: first <b>bad</b>", "Generating particles for (5 of 10 batches)", "ERROR: later", "no newline"])
        #expect(failures == ["FATAL ERROR: first <b>bad</b>", "ERROR: later"])
        #expect(events.last?.event == "end", "\(reply.body)")

        // A finished attempt: the whole (short) log at once, then end; from an offset, only what follows.
        let again = try await fixture.test { client in
            try await APITests.request(client, "/api/cases/\(APITests.segment(id))/logs/run_moqui_sim/\(attempt)/stream")
        }
        #expect(Self.events(again.body).map(\.event) == ["log", "end"], "\(again.body)")
        let offset = "MOQUI start\n".utf8.count
        let resumed = try await fixture.test { client in
            try await APITests.request(client, "/api/cases/\(APITests.segment(id))/logs/run_moqui_sim/\(attempt)/stream?from=\(offset)")
        }
        #expect(resumed.body.contains("FATAL ERROR") && !resumed.body.contains("MOQUI start"), "\(resumed.body)")

        try await fixture.test { client async throws in
            let base = "/api/cases/\(APITests.segment(id))/logs"
            #expect(try await APITests.request(client, "\(base)/run_moqui_sim/9/stream").status == .notFound, "no such attempt, and not running")
            #expect(try await APITests.request(client, "\(base)/%2E%2E/1/stream").status == .badRequest)
            #expect(try await APITests.request(client, "\(base)/run_moqui_sim/x/stream").status == .badRequest)
            #expect(try await APITests.request(client, "\(base)/run_moqui_sim/1/stream?from=-1").status == .badRequest)
            #expect(try await APITests.request(client, "/api/cases/NO-SUCH/logs/run_moqui_sim/1/stream").status == .notFound)
        }
    }

    /// A log followed while the daemon stops does not hold up its graceful shutdown: the stream
    /// closes within a poll interval (without `end`: the client resumes after a restart).
    @Test(.enabled(if: HTTPExposureTests.curl != nil, "curl is needed"), .timeLimit(.minutes(3)))
    func anOpenStreamDoesNotHoldUpGracefulShutdown() async throws {
        let fixture = try APITests.Fixture(token: false)
        defer { fixture.remove() }
        let id = "CASE-shutdown"
        _ = try await Self.caseAtSimulation(fixture, id)
        let port = Mutex<Int?>(nil)
        let app = Application(router: HTTPServer.router(store: fixture.store, metrics: MQIMetrics(), readiness: { [:] }, api: fixture.context),
                              configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { channel in port.withLock { $0 = channel.localAddress?.port } })
        let group = ServiceGroup(configuration: .init(services: [app], logger: Logger(label: "test")))
        let server = Task { try await group.run() }
        #expect(await eventually(within: 20) { port.withLock { $0 } != nil })
        let url = "http://127.0.0.1:\(try #require(port.withLock { $0 }))/api/cases/\(id)/logs/run_moqui_sim/1/stream"
        let out = fixture.temp.file("curl.out")
        let curl = Process()
        curl.executableURL = URL(fileURLWithPath: try #require(HTTPExposureTests.curl))
        curl.arguments = ["--silent", "--no-buffer", "--max-time", "30", "--output", out, url]
        try curl.run()
        defer { if curl.isRunning { curl.terminate() } }
        #expect(await eventually(within: 20) { ((try? String(contentsOfFile: out, encoding: .utf8)) ?? "").contains("event: log") }, "no log event")
        let stopping = Date()
        await group.triggerGracefulShutdown()
        _ = try? await server.value
        #expect(Date().timeIntervalSince(stopping) < 15, "the shutdown (a stream holding it up would last until curl's 30 s) waited \(Date().timeIntervalSince(stopping)) s for the stream")
        #expect(await eventually(within: 5) { !curl.isRunning }, "the stream stayed open")
        #expect(!((try? String(contentsOfFile: out, encoding: .utf8)) ?? "").contains("event: end"), "an interrupted stream does not say end")
    }

    @Test func casePageMarksFailureLinesAndLinksEveryAttempt() async throws {
        let fixture = try APITests.Fixture(token: false)
        defer { fixture.remove() }
        let id = "CASE-page"
        let path = try await Self.caseAtSimulation(fixture, id)
        // An earlier beam run's log too: one click away.
        try Data("Beam 1\nSegmentation fault\n".utf8).write(to: URL(fileURLWithPath: (path as NSString).deletingLastPathComponent + "/run_moqui_sim.1.1.log"))
        try await fixture.test { client in
            let page = try await APITests.request(client, "/cases/\(id)")
            #expect(page.status == .ok)
            #expect(page.body.contains(#"<mark class="log-fail" data-failure="true" title="matches a failure pattern of this step">FATAL ERROR: first &lt;b&gt;bad&lt;/b&gt;</mark>"#), "\(page.body)")
            #expect(page.body.contains(#"data-live="true""#), "the running attempt's log is followed")
            #expect(page.body.contains(#"data-failure-lines="1""#))
            #expect(page.body.contains("run_moqui_sim · beam 1 #1"))
            #expect(page.body.contains("/cases/CASE-page?log=run_moqui_sim.1&amp;attempt=1#log"))
            // That link shows the beam's log, server-side marked, and not live.
            let beam = try await APITests.request(client, "/cases/\(id)?log=run_moqui_sim.1&attempt=1")
            #expect(beam.body.contains(#"data-failure="true" title="matches a failure pattern of this step">Segmentation fault</mark>"#), "\(beam.body)")
            #expect(beam.body.contains(#"data-live="false""#))
            let api = try await APITests.request(client, "/api/cases/\(id)")
            let logs = try #require(try api.json()["logs"] as? [[String: Any]])
            #expect(Set(logs.compactMap { $0["step"] as? String }) == ["run_moqui_sim", "run_moqui_sim.1"])
        }
    }

    // MARK: GPU history

    @Test func gpuHistoryIsBoundedByWindowAndCapacity() {
        let history = GPUHistory(window: 60, capacity: 5)
        let start = Date(timeIntervalSince1970: 1_000_000)
        for second in 0..<10 {
            history.record(gpuId: 0, GPUHistorySample(at: start.addingTimeInterval(Double(second)), utilizationPercent: Double(second),
                                                      memoryUsedMB: 100, memoryTotalMB: 1000))
        }
        #expect(history.samples(gpuId: 0, now: start.addingTimeInterval(10)).map(\.utilizationPercent) == [5, 6, 7, 8, 9])
        history.record(gpuId: 0, GPUHistorySample(at: start.addingTimeInterval(100), utilizationPercent: 50, memoryUsedMB: nil, memoryTotalMB: nil))
        #expect(history.samples(gpuId: 0, now: start.addingTimeInterval(100)).count == 1, "older than the window: dropped")
        #expect(history.samples(gpuId: 1).isEmpty)

        let many = GPUHistory(window: 100, capacity: 1000)
        for second in 0..<100 {
            many.record(gpuId: 3, GPUHistorySample(at: start.addingTimeInterval(Double(second)), utilizationPercent: 10, memoryUsedMB: 5, memoryTotalMB: 10))
        }
        let summary = many.summary(gpuId: 3, points: 10, now: start.addingTimeInterval(100))
        #expect(summary.count == 10)
        #expect(summary.allSatisfy { $0.utilizationPercent == 10 && $0.memoryUsedMB == 5 })
    }

    @Test func gpuPanelDrawsTheLastHourAndTheAPIServesIt() async throws {
        let fixture = try APITests.Fixture(token: false)
        defer { fixture.remove() }
        _ = try await fixture.store.reconcileGPUs(configured: [0, 1])
        let history = GPUHistory()
        let now = Date()
        for minute in 0..<30 {
            history.record(gpuId: 0, GPUHistorySample(at: now.addingTimeInterval(Double(minute - 30) * 60), utilizationPercent: Double(minute * 3),
                                                      memoryUsedMB: 1200, memoryTotalMB: 81559))
        }
        var context = fixture.context
        context.gpuHistory = history
        let app = Application(router: HTTPServer.router(store: fixture.store, metrics: MQIMetrics(), readiness: { [:] }, api: context))
        try await app.test(.router) { client in
            let page = try await APITests.request(client, "/")
            #expect(page.status == .ok)
            let card = try #require(page.body.range(of: #"data-gpu-id="0""#).map { String(page.body[$0.lowerBound...].prefix(2500)) })
            #expect(card.contains(#"data-points="30""#), "\(card)")
            let points = try #require(card.firstMatch(of: #/class="spark-util" points="([^"]*)"/#)).1.split(separator: " ")
            #expect(points.count == 30)
            #expect(points.last.map { $0.hasPrefix("2") } == true, "the newest reading is at the right: \(points)")
            #expect(page.body.contains("No reading in the last hour yet."), "GPU 1 has no reading")

            let reply = try await APITests.request(client, "/api/gpus/0/history")
            #expect(reply.status == .ok)
            let body = try reply.json()
            #expect(body["gpu_id"] as? Int == 0 && body["window_sec"] as? Int == 3600)
            let samples = try #require(body["samples"] as? [[String: Any]])
            #expect(samples.count == 30)
            #expect(samples.last?["utilization_percent"] as? Double == 87)
            #expect(samples.last?["memory_total_mb"] as? Double == 81559)
            #expect(try await APITests.request(client, "/api/gpus/1/history").json()["samples"] as? [Any] != nil)
            let averaged = try await APITests.request(client, "/api/gpus/0/history?points=10").json()["samples"] as? [[String: Any]]
            #expect(averaged?.count == 10, "30 readings over 30 min in 10 spans")
            #expect(try await APITests.request(client, "/api/gpus/0/history?points=0").status == .badRequest)
            #expect(try await APITests.request(client, "/api/gpus/7/history").status == .notFound)
            #expect(try await APITests.request(client, "/api/gpus/x/history").status == .badRequest)
        }
    }
}
