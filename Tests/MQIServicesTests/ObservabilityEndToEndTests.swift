import Foundation
import Logging
import MQICore
import MQIMetrics
import MQIStore
import MQITestSupport
import MQITransport
import Synchronization
import Testing
@testable import MQIServices

/// The observability promises on a real daemon run over the demo site's stand-in scripts:
/// counters that move as cases complete and fail, a `/metrics` endpoint that passes promtool
/// while the daemon runs, JSON logs, and a fake `nvidia-smi` steering GPU reservations.
@Suite(.serialized)
struct ObservabilityEndToEndTests {
    // MARK: helpers

    /// A demo site whose MOQUI stand-in appends one ledger line per run and fails for `failCase`.
    static func site(cases: Int, gpus: [Int] = [0, 1], failCase: ((String) -> Bool)? = nil) throws
        -> (temp: TemporaryDirectory, configPath: String, config: Config, ledger: String, victim: String?) {
        let temp = try TemporaryDirectory("mqi-obs")
        let site = try DemoSite.create(at: temp.file("site"), cases: cases, gpus: gpus)
        let ledger = temp.file("ledger.txt")
        let localLogdata = temp.file("site/data/local_logdata")
        let victim = try failCase.flatMap { pick in try FileManager.default.contentsOfDirectory(atPath: localLogdata).sorted().first(where: pick) }
        var prefix = "MQI_DEMO_LEDGER=\(ShellQuote.quote(ledger)) "
        if let victim { prefix += "MQI_DEMO_FAIL_CASE=\(ShellQuote.quote(victim)) " }
        var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        let marker = "run_moqui_sim:   \""
        #expect(text.contains(marker), "the demo config's run_moqui_sim line changed; update this test")
        text = text.replacingOccurrences(of: marker, with: marker + prefix)
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        return (temp, site.configPath, try ConfigLoader.load(path: site.configPath), ledger, victim)
    }

    /// (case dir name, GPU) per MOQUI stand-in run.
    static func ledger(_ path: String) -> [(caseName: String, gpu: Int)] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ")
            guard parts.count >= 4, let gpu = Int(parts[parts.count - 3]) else { return nil }
            return ((parts.dropLast(3).joined(separator: " ") as NSString).lastPathComponent, gpu)
        }
    }

    /// The GPU each interpreter run used, from its step log ("Using GPU N").
    static func interpreterGPUs(logsDir: String) -> [String: Int] {
        var gpus: [String: Int] = [:]
        for caseName in (try? FileManager.default.contentsOfDirectory(atPath: logsDir)) ?? [] {
            let log = (logsDir as NSString).appendingPathComponent("\(caseName)/run_interpreter.1.log")
            guard let text = try? String(contentsOfFile: log, encoding: .utf8),
                  let match = text.firstMatch(of: #/Using GPU (\d+)/#) else { continue }
            gpus[caseName] = Int(match.1)
        }
        return gpus
    }

    /// A logger that both captures records in memory and writes JSON lines to `path` through the
    /// real handler (with the repeat filter), like `mqi serve`.
    static func logger(_ logs: CapturedLogs, jsonTo path: String) throws -> (Logger, FileHandle) {
        FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try #require(FileHandle(forWritingAtPath: path))
        let sink = LogSink(handle)
        let repeats = RepeatFilter()
        let captured = logs.logger("mqi", level: .info).handler
        return (Logger(label: "mqi") { label in
            MultiplexLogHandler([captured, MQILogHandler(label: label, level: .info, format: .json, sink: sink, repeats: repeats)])
        }, handle)
    }

    /// Runs a process without blocking a cooperative thread; nil status when it timed out.
    static func run(_ executable: String, _ arguments: [String], input: String? = nil, timeout: Double = 20) async throws -> (status: Int32?, output: String) {
        let temp = try TemporaryDirectory("mqi-proc")
        defer { temp.remove() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let outputPath = temp.file("out")
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        defer { try? output.close() }
        process.standardOutput = output
        process.standardError = output
        if let input {
            let inputPath = temp.file("in")
            try Data(input.utf8).write(to: URL(fileURLWithPath: inputPath))
            process.standardInput = try FileHandle(forReadingFrom: URL(fileURLWithPath: inputPath))
        }
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning {
            process.terminate()
            return (nil, (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "")
        }
        return (process.terminationStatus, (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "")
    }

    static let promtool: String? = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Sample values keyed by the series as printed (`name{label="value"}`).
    static func samples(_ text: String) -> [String: Double] {
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " ") else { continue }
            values[String(line[..<space])] = Double(line[line.index(after: space)...])
        }
        return values
    }

    // MARK: counters, /metrics and logs on a real run

    @Test(.timeLimit(.minutes(3)))
    func countersMoveAsCasesCompleteAndFail() async throws {
        let site = try Self.site(cases: 4, failCase: { $0.hasPrefix("DEMO-002") })
        defer { site.temp.remove() }
        let victim = try #require(site.victim)
        let logs = CapturedLogs()
        let (logger, logHandle) = try Self.logger(logs, jsonTo: site.temp.file("mqi.log"))
        defer { try? logHandle.close() }
        let metrics = MQIMetrics()
        let port = Mutex<Int?>(nil)
        // One reading at start feeds the GPU gauges; no more, so the shutdown never meets a reading
        // in flight (that crashes the daemon: see `shutdownDuringANvidiaSMIReadingIsClean`).
        var config = site.config
        config.gpuMonitor.intervalSec = 600
        let daemon = Daemon(config: config, logger: logger, exitWhenIdle: true, metrics: metrics, onListening: { bound in
            port.withLock { $0 = bound }
        })
        let run = Task { try await daemon.run() }

        // While it runs: a real HTTP scrape, checked by promtool.
        // 60 s: at the suite's start, with every suite starting at once on 2 cores, 20 s was not enough in CI.
        #expect(await eventually(within: 60) { port.withLock { $0 } != nil }, "the HTTP server never reported its port")
        var scraped = ""
        if let bound = port.withLock({ $0 }) {
            let curl = try await Self.run("/usr/bin/curl", ["-sS", "--max-time", "10", "-D", "-", "http://127.0.0.1:\(bound)/metrics"])
            #expect(curl.status == 0, "\(curl.output)")
            #expect(curl.output.hasPrefix("HTTP/1.1 200"), "\(curl.output.prefix(300))")
            #expect(curl.output.lowercased().contains("content-type: text/plain; version=0.0.4"))
            scraped = curl.output.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
            #expect(scraped.contains("# TYPE mqi_cases_received_total counter"))
            if let promtool = Self.promtool {
                let check = try await Self.run(promtool, ["check", "metrics"], input: scraped)
                #expect(check.status == 0, "promtool check metrics (live scrape):\n\(check.output)\n--- input ---\n\(scraped)")
            }
            let health = try await Self.run("/usr/bin/curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(bound)/healthz"])
            #expect(health.output == "200")
            let ready = try await Self.run("/usr/bin/curl", ["-sS", "-w", " %{http_code}", "http://127.0.0.1:\(bound)/readyz"])
            #expect(ready.output.hasSuffix(" 200"), "\(ready.output)")
        }
        try await run.value

        let store = try Daemon.openStore(site.config)
        let final = try await metrics.render(from: store)
        let values = Self.samples(final)
        #expect(values["mqi_cases_received_total"] == 4, "\(final)")
        #expect(values["mqi_cases_completed_total"] == 3)
        #expect(values["mqi_cases_failed_total"] == 1)
        #expect(values["mqi_active_jobs"] == 0)
        #expect(values[#"mqi_cases{status="COMPLETED"}"#] == 3)
        #expect(values[#"mqi_cases{status="FAILED"}"#] == 1)
        #expect(values[#"mqi_queue_depth{queue="conductor_queue"}"#] == 0)
        #expect(values["mqi_dead_letters"] == 0)
        #expect(values[#"mqi_task_execution_duration_seconds_count{task_type="upload:upload_case_files"}"#] == 4)
        #expect(values[#"mqi_task_execution_duration_seconds_count{task_type="execute:run_interpreter"}"#] == 4)
        #expect(values[#"mqi_task_execution_duration_seconds_count{task_type="execute:run_moqui_sim"}"#] == 4)
        #expect(values[#"mqi_task_execution_duration_seconds_count{task_type="download:download_results"}"#] == 3)
        #expect((values[#"mqi_task_execution_duration_seconds_sum{task_type="execute:run_moqui_sim"}"#] ?? 0) > 1, "the stand-in runs ~1.5 s")
        #expect((values[#"mqi_transfer_bytes_total{direction="upload"}"#] ?? 0) > 0, "\(final)")
        #expect((values[#"mqi_transfer_bytes_total{direction="download"}"#] ?? 0) > 0)
        // The demo's stand-in nvidia-smi fed the GPU gauges.
        #expect(values[#"mqi_gpu_utilization_percent{gpu_id="0"}"#] != nil)
        #expect(values[#"mqi_gpu_memory_used_bytes{gpu_id="1"}"#] != nil)
        #expect(values[#"mqi_gpu_reserved{gpu_id="0"}"#] == 0)
        if let promtool = Self.promtool {
            let check = try await Self.run(promtool, ["check", "metrics"], input: final)
            #expect(check.status == 0, "promtool check metrics (after the run):\n\(check.output)")
        }
        #expect(try await store.caseSummary(victim)?.status == .failed)

        // Every line the daemon wrote is one JSON object with the required fields.
        let lines = try String(contentsOfFile: site.temp.file("mqi.log"), encoding: .utf8).split(separator: "\n")
        #expect(lines.count >= 10)
        var withCase = 0
        var fullyTagged: Substring?
        var stepLinesWithoutCase: [Substring] = []
        for line in lines {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(line)")
            for field in ["timestamp", "level", "message", "logger_name", "module", "funcName", "lineno"] {
                #expect(object[field] != nil, "\(field) missing in \(line)")
            }
            if object["case_id"] != nil { withCase += 1 }
            if ["case_id", "step", "attempt", "gpu_id", "correlation_id"].allSatisfy({ object[$0] != nil }) { fullyTagged = fullyTagged ?? line }
            if (object["message"] as? String)?.wholeMatch(of: #/running \S+ attempt \d+/#) != nil, object["case_id"] == nil {
                stepLinesWithoutCase.append(line)
            }
        }
        #expect(fullyTagged != nil, "a worker's line carries case_id, step, attempt, gpu_id and correlation_id")
        #expect(stepLinesWithoutCase.count == 0, "step lines without case_id, e.g. \(stepLinesWithoutCase.first ?? "")")
        #expect(withCase >= 8, "case lines carry case_id")
        let failure = lines.first { $0.contains("\"level\":\"ERROR\"") && $0.contains(victim) }
        #expect(failure != nil, "the failed case is logged as an ERROR with its case_id")
        print("sample /metrics scraped while the daemon ran:\n\(scraped.split(separator: "\n").filter { $0.contains("mqi_cases") || $0.contains("queue_depth") }.joined(separator: "\n"))")
        print("sample log lines:\n\(fullyTagged ?? stepLinesWithoutCase.first ?? "")\n\(failure ?? "")")
    }

    // MARK: GPU monitor with a fake nvidia-smi

    /// A fake `nvidia-smi` whose output is chosen by the word in `state`.
    static func fakeNvidiaSMI(in temp: TemporaryDirectory) throws -> (script: String, state: String) {
        let state = temp.file("nvidia-smi.state")
        let script = temp.file("nvidia-smi.sh")
        try "busy0\n".write(toFile: state, atomically: true, encoding: .utf8)
        try """
            #!/bin/sh
            # Fake nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu --format=csv,noheader,nounits
            # `read` is a builtin: no child process, so a reading takes a few ms.
            read -r mode < \(ShellQuote.quote(state))
            case "$mode" in
            busy0)
                echo "0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 87, 20000, 81559, 61"
                echo "1, GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31, NVIDIA H100 80GB HBM3, 0, 0, 81559, 31" ;;
            idle)
                echo "0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 0, 3, 81559, 33"
                echo "1, GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31, NVIDIA H100 80GB HBM3, 0, 0, 81559, 31" ;;
            missing0)
                echo "Unable to determine the device handle for GPU0000:19:00.0: Unknown Error"
                echo "1, GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31, NVIDIA H100 80GB HBM3, 0, 0, 81559, 31" ;;
            garbage)
                printf 'xx\\001\\377 ,,, not csv\\n%s\\n' 'zzzzzzzzzz' ;;
            slowonce0)
                # The first reading takes a second (nvidia-smi's first call on a cold driver); later ones are quick.
                [ -e \(ShellQuote.quote(state)).slow-done ] || { sleep 1; : > \(ShellQuote.quote(state)).slow-done; }
                echo "0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 87, 20000, 81559, 61"
                echo "1, GPU-0b6e41d2-7a93-c5f8-1e2d-8b4a6c0f9e31, NVIDIA H100 80GB HBM3, 0, 0, 81559, 31" ;;
            slow)
                sleep 3
                echo "0, GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7, NVIDIA H100 80GB HBM3, 0, 3, 81559, 33" ;;
            broken)
                echo "Failed to initialize NVML: Driver/library version mismatch"
                exit 9 ;;
            esac

            """.write(toFile: script, atomically: true, encoding: .utf8)
        return (script, state)
    }

    static func setFake(_ state: String, _ word: String) throws {
        try (word + "\n").write(toFile: state, atomically: true, encoding: .utf8)
    }

    /// One reading by the real monitor before the daemon starts, as a daemon that has been running
    /// for a while has made. (A daemon's very first reading races with its first reservations:
    /// see `aBusyGPUIsNotReservedBeforeTheFirstReading`.)
    static func readGPUsOnce(_ config: Config) async throws -> [GPUSample]? {
        let store = try Daemon.openStore(config)
        try await store.reconcileGPUs(configured: config.hpc.gpus)
        return await GPUMonitor(config: config.gpuMonitor, runner: LocalCommandRunner(), store: store, conductor: Conductor(config: config),
                                metrics: MQIMetrics(), logger: CapturedLogs().logger()).poll()
    }

    @Test(.timeLimit(.minutes(3)))
    func aGPUBusyWithAForeignProcessIsNotReservedUntilItFreesUp() async throws {
        let site = try Self.site(cases: 3)
        defer { site.temp.remove() }
        let fake = try Self.fakeNvidiaSMI(in: site.temp)
        // The monitor configured through the YAML, as an operator would. Its interval is long on
        // purpose: a SIGTERM/shutdown while a reading is in flight crashes the daemon (see
        // `shutdownDuringANvidiaSMIReadingIsClean`), and these daemons stop by themselves; each run
        // still reads at start.
        var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        let block = try #require(text.range(of: "gpu_monitor:"), "the demo config has no gpu_monitor block")
        text = String(text[..<block.lowerBound]) + """
            gpu_monitor: { command: "/bin/sh \(fake.script)", interval_sec: 30, busy_memory_mb: 500 }

            """
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: site.configPath)
        #expect(config.gpuMonitor.intervalSec == 30)
        #expect(config.gpuMonitor.busyMemoryMB == 500)
        #expect(config.hpc.gpus == [0, 1])

        // Phase 1: GPU 0 is used by someone else (20000 MiB): everything runs on GPU 1.
        #expect(try await Self.readGPUsOnce(config)?.map(\.index) == [0, 1])
        let logs = CapturedLogs()
        let metrics = MQIMetrics()
        try await Daemon(config: config, logger: logs.logger(level: .info), exitWhenIdle: true, metrics: metrics).run()
        let store = try Daemon.openStore(config)
        let cases = try await store.cases()
        #expect(cases.count == 3 && cases.allSatisfy { $0.status == .completed }, "\(cases.map { "\($0.caseId) \($0.status) \($0.error ?? "")" })")
        let firstRuns = Self.ledger(site.ledger)
        #expect(firstRuns.count == 3)
        #expect(firstRuns.allSatisfy { $0.gpu == 1 }, "MOQUI ran on \(firstRuns)")
        let firstInterpreters = Self.interpreterGPUs(logsDir: config.state.logsDir)
        #expect(firstInterpreters.count == 3 && firstInterpreters.values.allSatisfy { $0 == 1 }, "interpreter ran on \(firstInterpreters)")
        var gpus = try await store.gpus()
        #expect(gpus.map(\.health) == [.busy, .ok], "\(gpus)")
        #expect(gpus.allSatisfy { $0.status == .free && $0.reservedBy == nil })
        #expect(gpus.first?.memoryUsedMB == 20000)
        #expect(gpus.first?.name == "NVIDIA H100 80GB HBM3")
        #expect(gpus.first?.uuid == "GPU-5a3b8f2e-9c41-7d06-e2b8-41f0c3a9d6e7")
        #expect(gpus.first?.utilizationPercent == 87)
        #expect(gpus.first?.temperatureC == 61)
        #expect(gpus.first?.lastSeen != nil)
        let values = Self.samples(try await metrics.render(from: store))
        #expect(values[#"mqi_gpu_memory_used_bytes{gpu_id="0"}"#] == Double(20000 * 1_048_576))
        #expect(values[#"mqi_gpu_utilization_percent{gpu_id="0"}"#] == 87)
        #expect(values[#"mqi_gpu_utilization_percent{gpu_id="1"}"#] == 0)

        // Phase 2: GPU 0 frees up; new cases use it again.
        try Self.setFake(fake.state, "idle")
        for number in [11, 12] {
            try DemoSite.writeCase(named: DemoSite.caseID(number), in: config.scanner.localLogdata)
        }
        let secondLogs = CapturedLogs()
        try await Daemon(config: config, logger: secondLogs.logger(level: .info), exitWhenIdle: true).run()
        gpus = try await store.gpus()
        #expect(gpus.map(\.health) == [.ok, .ok], "\(gpus)")
        #expect(try await store.cases().allSatisfy { $0.status == .completed })
        let secondRuns = Self.ledger(site.ledger).dropFirst(3)
        let secondInterpreters = Self.interpreterGPUs(logsDir: config.state.logsDir).filter { name, _ in name.hasPrefix("DEMO-011") || name.hasPrefix("DEMO-012") }
        #expect(secondRuns.count == 2)
        #expect(secondRuns.contains { $0.gpu == 0 } || secondInterpreters.values.contains(0),
                "GPU 0 is used again: MOQUI \(Array(secondRuns)), interpreter \(secondInterpreters)")
        #expect(secondLogs.messages(at: .info).contains { $0.contains("GPU 0 is available again") }, "\(secondLogs.messages(at: .info))")

        // Phase 3, one reading at a time: a GPU that vanishes is marked missing, garbage and a
        // failing nvidia-smi are WARNINGs, never a crash, and a good reading brings it back.
        let monitorLogs = CapturedLogs()
        let monitor = GPUMonitor(config: config.gpuMonitor, runner: LocalCommandRunner(), store: store, conductor: Conductor(config: config),
                                 metrics: MQIMetrics(), logger: monitorLogs.logger(level: .info))
        try Self.setFake(fake.state, "missing0")
        let missing = await monitor.poll()
        #expect(missing?.map(\.index) == [1])
        gpus = try await store.gpus()
        #expect(gpus.map(\.health) == [.missing, .ok], "\(gpus)")
        #expect(monitorLogs.messages(at: .warning).contains { $0.contains("Unable to determine the device handle") })
        #expect(monitorLogs.messages(at: .warning).contains { $0.contains("GPU 0 is not listed") }, "\(monitorLogs.messages(at: .warning))")

        try Self.setFake(fake.state, "broken")
        #expect(await monitor.poll() == nil)
        #expect(monitorLogs.messages(at: .warning).contains { $0.contains("status 9") && $0.contains("Driver/library version mismatch") },
                "\(monitorLogs.messages(at: .warning))")

        try Self.setFake(fake.state, "garbage")
        let before = monitorLogs.messages(at: .warning).count
        _ = await monitor.poll()
        #expect(monitorLogs.messages(at: .warning).dropFirst(before).contains { $0.contains("not understood") }, "\(monitorLogs.messages(at: .warning))")

        try Self.setFake(fake.state, "idle")
        #expect(await monitor.poll()?.map(\.index) == [0, 1])
        gpus = try await store.gpus()
        #expect(gpus.map(\.health) == [.ok, .ok], "\(gpus)")
    }

    /// A GPU the monitor marks busy while a case waits for it: the waiting case starts as soon as
    /// a reading shows it free again (the monitor dispatches pending cases), without waiting for
    /// another case to release a GPU. The reading that sees it free is taken here with the same
    /// `GPUMonitor.poll()` the daemon's loop runs (the daemon's own loop is slowed down: a
    /// shutdown during a reading crashes it, see `shutdownDuringANvidiaSMIReadingIsClean`).
    @Test(.timeLimit(.minutes(4)))
    func aCaseWaitingForABusyGPUStartsWhenItFreesUp() async throws {
        let site = try Self.site(cases: 1, gpus: [0])
        defer { site.temp.remove() }
        let fake = try Self.fakeNvidiaSMI(in: site.temp)
        var config = site.config
        config.gpuMonitor = GPUMonitorConfig(enabled: true, intervalSec: 60, command: "/bin/sh \(ShellQuote.quote(fake.script))", busyMemoryMB: 500)
        _ = try await Self.readGPUsOnce(config)
        let store = try Daemon.openStore(config)
        #expect(try await store.gpus().map(\.health) == [.busy])
        let logs = CapturedLogs()
        let run = Task { try await Daemon(config: config, logger: logs.logger(level: .info), exitWhenIdle: true).run() }
        // The case reaches a GPU step and waits: GPU 0 (the only one) is busy on the hardware.
        let waiting = await eventually(within: 30) {
            (try? await store.cases().first?.status) == .pendingResource
        }
        let current = try await store.cases().first
        #expect(waiting, "\(String(describing: current))")
        try await Task.sleep(for: .seconds(1))
        #expect(try await store.cases().first?.status == .pendingResource, "still waiting while GPU 0 is busy")
        #expect(Self.ledger(site.ledger).isEmpty)

        try Self.setFake(fake.state, "idle")
        let monitorLogs = CapturedLogs()
        let monitor = GPUMonitor(config: config.gpuMonitor, runner: LocalCommandRunner(), store: store, conductor: Conductor(config: config),
                                 metrics: MQIMetrics(), logger: monitorLogs.logger(level: .info))
        #expect(await monitor.poll()?.map(\.index) == [0, 1])
        #expect(monitorLogs.messages(at: .info).contains { $0.contains("GPU 0 is available again") })
        #expect(try await store.cases().first?.status == .processing, "dispatched by the reading that saw GPU 0 free")
        try await run.value
        #expect(try await store.cases().first?.status == .completed)
        #expect(Self.ledger(site.ledger).map(\.gpu) == [0])
    }

    /// At start-up the scanner registers ready cases at once and the conductor reserves GPUs,
    /// while the monitor's first nvidia-smi reading is still on its way: a GPU busy with a foreign
    /// process is handed out before anyone looked. (nvidia-smi takes ~1 s here; on a real host it
    /// takes 0.1–2 s, over ssh more.) Once reserved, the GPU is never seen free-and-busy, because
    /// a release hands it straight to the next waiting case.
    @Test(.timeLimit(.minutes(4)))
    func aBusyGPUIsNotReservedBeforeTheFirstReading() async throws {
        let site = try Self.site(cases: 1)
        defer { site.temp.remove() }
        let fake = try Self.fakeNvidiaSMI(in: site.temp)
        try Self.setFake(fake.state, "slowonce0")
        var config = site.config
        config.gpuMonitor = GPUMonitorConfig(enabled: true, intervalSec: 60, command: "/bin/sh \(ShellQuote.quote(fake.script))", busyMemoryMB: 500)
        try await Daemon(config: config, logger: CapturedLogs().logger(level: .info), exitWhenIdle: true).run()
        let store = try Daemon.openStore(config)
        #expect(try await store.cases().allSatisfy { $0.status == .completed })
        let used = Set(Self.ledger(site.ledger).map(\.gpu)).union(Self.interpreterGPUs(logsDir: config.state.logsDir).values)
        #expect(used == [1], "steps ran on GPU(s) \(used.sorted())")
    }

    /// SIGTERM while nvidia-smi is being read (it can take seconds on a loaded host, more over ssh)
    /// must stop the daemon cleanly. Run as a real `mqi run` process, since the failure is a crash.
    @Test(.timeLimit(.minutes(4)))
    func shutdownDuringANvidiaSMIReadingIsClean() async throws {
        let site = try Self.site(cases: 0)
        defer { site.temp.remove() }
        let fake = try Self.fakeNvidiaSMI(in: site.temp)
        try Self.setFake(fake.state, "slow")
        var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        let block = try #require(text.range(of: "gpu_monitor:"))
        text = String(text[..<block.lowerBound]) + "gpu_monitor: { command: \"/bin/sh \(fake.script)\", interval_sec: 0.2 }\n"
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        let daemon = try MQIProcess(["run", "--config", site.configPath, "--log-format", "text"], output: site.temp.file("daemon.log"))
        let started = await eventually(within: 30) { daemon.output.contains("mqi daemon started") }
        #expect(started, "\(daemon.output)")
        try await Task.sleep(for: .milliseconds(500))  // the first reading (3 s) is in flight
        daemon.signal(SIGTERM)
        let status = await daemon.wait(upTo: 30)
        if status == nil { daemon.signal(SIGKILL) }
        let signal = daemon.terminationSignal
        #expect(status == 0 && signal == nil, "exit status \(String(describing: status)), signal \(String(describing: signal)); output:\n\(daemon.output.suffix(600))")
    }
}
