import Foundation
import MQICore
import MQIStore
import MQITransport
import MQITestSupport
import Testing
@testable import MQIServices

struct OutputWatcherTests {
    static let rules = OutputRules(progressPattern: #"Generating particles for \((?<done>\d+) of (?<total>\d+) batches\)"#,
                                   failurePatterns: ["FATAL ERROR", "^ERROR:"], successPattern: "Total execution time:",
                                   retryablePatterns: ["No free GPU remains"])

    /// Chunks appended to the log, and the progress after each poll (nil: unchanged).
    static let table: [(String, [String], [Int?])] = [
        ("steady", ["Generating particles for (1 of 10 batches)\n", "Generating particles for (5 of 10 batches)\n"], [34, 50]),
        ("noise between", ["GPUID 0\nUploading particles with batch.. : Particle count --> 100 with 4 batches\n", "random text\n",
                           "Generating particles for (2 of 4 batches)\n"], [nil, nil, 50]),
        ("partial line waits for its end", ["Generating particles for (3 of", " 4 batches)\n"], [nil, 60]),
        ("out of order never goes backwards", ["Generating particles for (8 of 10 batches)\n", "Generating particles for (2 of 10 batches)\n",
                                               "Generating particles for (9 of 10 batches)\n"], [62, nil, 66]),
        ("done beyond total is capped", ["Generating particles for (12 of 10 batches)\n"], [70]),
        ("zero total is ignored", ["Generating particles for (1 of 0 batches)\n"], [nil]),
        ("CRLF", ["Generating particles for (1 of 2 batches)\r\n"], [50]),
    ]

    @Test(arguments: table.indices)
    func progressFromLogLines(_ index: Int) throws {
        let (name, chunks, expected) = Self.table[index]
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let log = temp.file("step.log")
        FileManager.default.createFile(atPath: log, contents: nil)
        let watcher = OutputWatcher(path: log, rules: Self.rules, progressFrom: 30, progressTo: 70)
        let handle = try #require(FileHandle(forWritingAtPath: log))
        var seen: [Int?] = []
        for chunk in chunks {
            try handle.seekToEnd()
            try handle.write(contentsOf: Data(chunk.utf8))
            seen.append(watcher.poll())
        }
        try handle.close()
        #expect(seen == expected, "\(name)")
    }

    @Test func failureSuccessAndRetryableLines() throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let log = temp.file("step.log")
        try "GPUID 1\nERROR: No free GPU remains on this node\nTotal execution time: 3 s".write(toFile: log, atomically: true, encoding: .utf8)
        let watcher = OutputWatcher(path: log, rules: Self.rules, progressFrom: 0, progressTo: 100)
        watcher.poll()
        #expect(watcher.failureLine == "ERROR: No free GPU remains on this node")
        #expect(!watcher.sawSuccess, "the last line has no newline yet")
        watcher.poll(final: true)
        #expect(watcher.sawSuccess)
        #expect(watcher.isRetryable([watcher.failureLine ?? ""]))
        #expect(!watcher.isRetryable(["FATAL ERROR: segmentation"]))
    }
}

struct CaseValidatorTests {
    /// An RP file whose text is "plan" is written as a real RT plan: patient P-007, treatment
    /// beams 1 and 3, SETUP beam 2.
    static func write(_ files: [String: String], in dir: String) throws {
        for (relative, text) in files {
            let path = (dir as NSString).appendingPathComponent(relative)
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            if text == "plan", (relative as NSString).lastPathComponent.hasPrefix("RP") {
                try Data(plan.encoded()).write(to: URL(fileURLWithPath: path))
            } else {
                try text.write(toFile: path, atomically: true, encoding: .utf8)
            }
        }
    }

    static let plan = RTPlan(patientId: "P-007", planUID: "1.2.3", beams: [
        RTPlan.Beam(number: 1, name: "Field 1"), RTPlan.Beam(number: 2, name: "kV setup", deliveryType: "SETUP"),
        RTPlan.Beam(number: 3, name: "Field 3"),
    ])

    static let good: [String: String] = [
        "RP.1.2.3.dcm": "plan",
        "2025042401501400/PlanInfo.txt": "DICOM_PATIENT_ID,P-007\nDICOM_BEAM_NUMBER,3\nTCSC_FIELD_NUMBER,3\n",
        "2025042401501400/01_150MeV.ptn": "1,2,3\n",
        "2025042401580000/PlanInfo.txt": "DICOM_PATIENT_ID,P-007\nDICOM_BEAM_NUMBER,1\n",
        "2025042401580000/01_120MeV.ptn": "1,2,3\n",
    ]

    static let broken: [(String, [String: String], String)] = [
        ("no plan", good.filter { $0.key != "RP.1.2.3.dcm" }, "no RT plan file (RP*.dcm)"),
        ("no delivery", ["RP.1.dcm": "plan"], "no delivery folder with a PlanInfo.txt"),
        ("empty PlanInfo", good.merging(["2025042401501400/PlanInfo.txt": "\n\n"]) { $1 }, "2025042401501400/PlanInfo.txt is empty"),
        ("bad line", good.merging(["2025042401580000/PlanInfo.txt": "DICOM_BEAM_NUMBER,1\nGANTRY 90\n"]) { $1 },
         "2025042401580000/PlanInfo.txt line 2: expected KEY,value, got 'GANTRY 90'"),
        ("no beam number", good.merging(["2025042401580000/PlanInfo.txt": "TCSC_FIELD_NUMBER,1\n"]) { $1 },
         "2025042401580000/PlanInfo.txt: no DICOM_BEAM_NUMBER line"),
        ("beam number not a number", good.merging(["2025042401580000/PlanInfo.txt": "DICOM_BEAM_NUMBER,one\n"]) { $1 }, "is 'one', not a number"),
        ("no ptn", good.filter { $0.key != "2025042401580000/01_120MeV.ptn" }, "delivery folder 2025042401580000 has no *.ptn layer log"),
    ]

    @Test(arguments: broken.indices)
    func brokenCasesAreRefusedWithTheirReason(_ index: Int) throws {
        let (name, files, reason) = Self.broken[index]
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        try Self.write(files, in: temp.path)
        #expect(throws: CaseValidator.Invalid.self, "\(name)") { try CaseValidator.validate(temp.path) }
        do {
            _ = try CaseValidator.validate(temp.path)
        } catch {
            #expect(error.description.contains(reason), "\(name): \(error.description)")
        }
    }

    @Test func aValidCaseYieldsPatientAndBeams() throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        try Self.write(Self.good, in: temp.path)
        #expect(try CaseValidator.validate(temp.path) == CaseDetails(patientId: "P-007", beamNumbers: [1, 3],
                                                                     planBeams: [RTPlan.Beam(number: 1, name: "Field 1"), RTPlan.Beam(number: 3, name: "Field 3")]))
    }
}

/// The MOQUI profile end to end with the real executor.
@Suite(.serialized)
struct MoquiProfileTests {
    /// A site with one step whose command is `script` (POSIX sh), on the given GPUs.
    static func site(_ script: String, gpus: [Int] = [0], extra: String = "", cases: [String] = ["CASE-1"]) throws -> (TemporaryDirectory, Config) {
        let temp = try TemporaryDirectory("mqi-moqui")
        try script.write(toFile: temp.file("engine.sh"), atomically: true, encoding: .utf8)
        try "GPUID {gpu_id}\nGPUIDS {gpu_ids}\nBeamNumbers {beam_numbers}\n".write(toFile: temp.file("tps.tmpl"), atomically: true, encoding: .utf8)
        try """
            scanner: { local_logdata: ./data, ready_marker: _CASE_READY, case_layout: moqui }
            hpc: { transport: local, gpus: [\(gpus.map(String.init).joined(separator: ","))] }
            metrics: { port: 0 }
            gpu_monitor: { enabled: false }
            retry: { initial_delay_sec: 0.2, max_delay_sec: 1 }
            workflows:
              default_qa:
                - { name: upload_case_files, type: upload, progress: 10 }
                - name: run_moqui_sim
                  type: execute
                  progress: 20
                  timeout_sec: 60
                  progress_pattern: 'Generating particles for \\((?<done>\\d+) of (?<total>\\d+) batches\\)'
                  failure_patterns: ['FATAL ERROR']
                  success_pattern: 'Total execution time:'
                  retryable_patterns: ['No free GPU remains']
                  input_files: [{ path: "{case_dir}/moqui_tps.in", template: tps.tmpl }]
            \(extra)
                - { name: download_results, type: download, progress: 90 }
            remote_commands:
              run_moqui_sim: "/bin/sh \(ShellQuote.quote(temp.file("engine.sh"))) {result_dir} {case_dir}"
            """.write(toFile: temp.file("config.yaml"), atomically: true, encoding: .utf8)
        for name in cases { try DemoSite.writeCase(named: name, in: temp.file("data"), beams: 2) }
        return (temp, try ConfigLoader.load(path: temp.file("config.yaml")))
    }

    @Test(.timeLimit(.minutes(3)))
    func aFatalErrorLineKillsTheHungEngineWithinSeconds() async throws {
        let (temp, config) = try Self.site("""
            echo $$ > "$2/engine.pid"
            echo "Generating particles for (1 of 4 batches)"
            echo "FATAL ERROR: CUDA error: an illegal memory access was encountered"
            sleep 600
            """)
        defer { temp.remove() }
        let started = Date()
        try await Daemon(config: config, logger: CapturedLogs().logger(), exitWhenIdle: true).run()
        // Seconds instead of the engine's 600 s hang (alone ≈ 0.7 s; the whole suite in parallel
        // on 2 cores has taken 15 s).
        #expect(Date().timeIntervalSince(started) < 90, "the hung engine sleeps 600 s; under the whole suite's load the kill took 45 s once")
        let store = try Daemon.openStore(config)
        let summary = try #require(try await store.caseSummary("CASE-1"))
        #expect(summary.status == .failed)
        #expect(summary.failureClass == .permanent)
        #expect(summary.error?.contains("FATAL ERROR: CUDA error") == true, "\(summary.error ?? "")")
        #expect(try await store.gpus().allSatisfy { $0.status == .free })
        let pidText = try String(contentsOfFile: config.conductor.uploadDir + "/CASE-1/engine.pid", encoding: .utf8)
        let pid = try #require(Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(!LocalStepExecutor.processAlive(pid), "the engine's process is gone")
        // The failure was seen from the log line, long before the 600 s sleep or the 60 s timeout.
        let history = try await store.history("CASE-1")
        let failedAt = try #require(history.last { $0.status == .failed }?.at)
        let simStarted = try #require(history.first { $0.message.contains("starting run_moqui_sim") }?.at)
        // (alone well under a second; the whole suite in parallel on 2 cores has taken 5 s)
        #expect(failedAt.timeIntervalSince(simStarted) < 40, "the engine sleeps 600 s and the step times out after 60 s")
    }

    @Test(.timeLimit(.minutes(3)))
    func exitZeroWithoutTheSuccessLineFails() async throws {
        let (temp, config) = try Self.site("mkdir -p \"$1\"; echo 'Generating particles for (4 of 4 batches)'; exit 0\n")
        defer { temp.remove() }
        try await Daemon(config: config, logger: CapturedLogs().logger(), exitWhenIdle: true).run()
        let summary = try #require(try await Daemon.openStore(config).caseSummary("CASE-1"))
        #expect(summary.status == .failed)
        #expect(summary.error?.contains("engine exited 0 but never reported completion") == true, "\(summary.error ?? "")")
    }

    @Test(.timeLimit(.minutes(3)))
    func retryableFailuresRetryUpToTheLimitWithFreshInputFiles() async throws {
        // Fails with a retryable error on attempts 1 and 2, succeeds on 3; each attempt logs the
        // moqui_tps.in it was given.
        let (temp, config) = try Self.site("""
            cat "$2/moqui_tps.in"
            n=$(cat "$2/tries" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "$2/tries"
            if [ $n -lt 3 ]; then echo "ERROR: No free GPU remains"; exit 1; fi
            mkdir -p "$1"; echo dose > "$1/dose.txt"
            echo "Generating particles for (4 of 4 batches)"; echo "Total execution time: 1 s"
            """, gpus: [3], extra: "      max_step_retries: 2")
        defer { temp.remove() }
        try await Daemon(config: config, logger: CapturedLogs().logger(), exitWhenIdle: true).run()
        let store = try Daemon.openStore(config)
        let summary = try #require(try await store.caseSummary("CASE-1"))
        #expect(summary.status == .completed, "\(summary.error ?? "")")
        #expect(summary.attempt == 1, "download_results is attempt 1 of its own step")
        for attempt in 1...3 {
            let log = try String(contentsOfFile: config.state.logsDir + "/CASE-1/run_moqui_sim.\(attempt).log", encoding: .utf8)
            #expect(log.hasPrefix("GPUID 3\nGPUIDS 3\nBeamNumbers 1,2\n"), "attempt \(attempt): \(log)")
        }
        #expect(try await store.history("CASE-1").contains { $0.message.contains("retryable error") })
    }

    @Test(.timeLimit(.minutes(3)))
    func retryableFailuresGiveUpAfterTheLimit() async throws {
        let (temp, config) = try Self.site("echo 'ERROR: No free GPU remains'; exit 1\n", extra: "      max_step_retries: 1")
        defer { temp.remove() }
        try await Daemon(config: config, logger: CapturedLogs().logger(), exitWhenIdle: true).run()
        let summary = try #require(try await Daemon.openStore(config).caseSummary("CASE-1"))
        #expect(summary.status == .failed)
        #expect(summary.failureClass == .retryable)
        #expect(summary.attempt == 2)
    }

    @Test(.timeLimit(.minutes(3)))
    func anInvalidCaseFailsBeforeUploadWithItsReason() async throws {
        let (temp, config) = try Self.site("exit 0\n")
        defer { temp.remove() }
        try FileManager.default.removeItem(atPath: config.scanner.localLogdata + "/CASE-1")
        try DemoSite.writeCase(named: "NO-BEAMS", in: config.scanner.localLogdata, beams: 0)
        try await Daemon(config: config, logger: CapturedLogs().logger(), exitWhenIdle: true).run()
        let summary = try #require(try await Daemon.openStore(config).caseSummary("NO-BEAMS"))
        #expect(summary.status == .failed)
        #expect(summary.error == "invalid case: no delivery folder with a PlanInfo.txt in the case")
        #expect(!FileManager.default.fileExists(atPath: config.conductor.uploadDir + "/NO-BEAMS"))
    }

    @Test(.timeLimit(.minutes(3)))
    func progressMovesWhileTheEngineRuns() async throws {
        let (temp, config) = try Self.site("""
            for k in 1 2 3 4 5 6 7 8; do echo "Generating particles for ($k of 8 batches)"; sleep 0.5; done
            mkdir -p "$1"; echo dose > "$1/dose.txt"; echo "Total execution time: 4 s"
            """)
        defer { temp.remove() }
        let store = try Daemon.openStore(config)
        let seen = ProgressLog()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await Daemon(config: config, logger: CapturedLogs().logger(), exitWhenIdle: true).run() }
            group.addTask {
                for _ in 0..<200 {
                    if let summary = try await store.caseSummary("CASE-1") { seen.add(summary.progress) }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            try await group.next()
            group.cancelAll()
        }
        let values = seen.values
        #expect(values == values.sorted(), "progress never goes backwards: \(values)")
        let during = Set(values.filter { $0 > 20 && $0 < 90 })
        #expect(during.count >= 2, "progress moved between the step's 20 and the next step's 90: \(Set(values).sorted())")
    }
}

import Synchronization

final class ProgressLog: Sendable {
    private let list = Mutex<[Int]>([])
    func add(_ value: Int) { list.withLock { $0.append(value) } }
    var values: [Int] { list.withLock { $0 } }
}
