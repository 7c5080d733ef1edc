import Foundation
import Logging
import MQICore
import MQIStore
import MQITestSupport
import MQITransport
import Synchronization
import Testing
@testable import MQIServices

/// `scanner.case_depth`: cases `N` levels below `local_logdata` (the clinic's
/// `<room>/<patient_id>/<study_uid>/`), ids with `/`, and `scanner.marker_timeout_min`.
@Suite struct CaseDepthTests {
    struct Fixture {
        let temp: TemporaryDirectory
        let store: Store
        let logs = CapturedLogs()
        var root: String { temp.file("logdata") }
        var database: String { temp.file("state.sqlite") }

        init() throws {
            temp = try TemporaryDirectory("mqi-depth")
            store = try Store(path: temp.file("state.sqlite"))
            try FileManager.default.createDirectory(atPath: temp.file("logdata"), withIntermediateDirectories: true)
        }

        func scanner(depth: Int, timeoutMin: Double = 60, waitList: Bool = false, now: @escaping @Sendable () -> Date = { Date() }) -> CaseScanner {
            CaseScanner(config: ScannerConfig(localLogdata: root, readyMarker: "_CASE_READY", quietPeriodSec: 0, rescanIntervalSec: 30,
                                              workflow: "default_qa", caseDepth: depth, markerTimeoutMin: timeoutMin),
                        store: store, logger: logs.logger(), waitListPath: waitList ? MarkerWaitList.path(database: database) : nil, now: now)
        }

        func write(_ relative: String, _ text: String = "data\n") throws {
            let path = (root as NSString).appendingPathComponent(relative)
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: path, atomically: false, encoding: .utf8)
        }

        func caseIds() async throws -> [String] {
            try await store.caseIds().sorted()
        }
    }

    /// One layout: what is on disk, at which depth, and which case ids it makes.
    struct Layout: Sendable, CustomTestStringConvertible {
        var name: String
        var depth: Int
        var files: [String]
        var cases: [String]
        var testDescription: String { name }
    }

    static let layouts: [Layout] = [
        Layout(name: "depth 1: each immediate subdirectory", depth: 1,
               files: ["CASE-1/RP.1.dcm", "CASE-1/_CASE_READY", "CASE-2/RP.2.dcm"], cases: ["CASE-1"]),
        Layout(name: "depth 3: room/patient/study", depth: 3,
               files: ["G1/5506119/1.2.840.113619.2.55.3.1/RP.1.dcm", "G1/5506119/1.2.840.113619.2.55.3.1/_CASE_READY",
                       "G2/7700001/1.2.3/2025042401501400/PlanInfo.txt", "G2/7700001/1.2.3/_CASE_READY"],
               cases: ["G1/5506119/1.2.840.113619.2.55.3.1", "G2/7700001/1.2.3"]),
        Layout(name: "depth 3: folders at shallower levels are never cases, whatever they hold", depth: 3,
               files: ["G1/RP.1.dcm", "G1/_CASE_READY", "G1/5506119/RP.1.dcm", "G1/5506119/_CASE_READY"], cases: []),
        Layout(name: "depth 3: a marker one level too deep (in a beam folder) does not make a case", depth: 3,
               files: ["G1/5506119/1.2.3/2025042401501400/_CASE_READY"], cases: []),
        Layout(name: "depth 3: a marker at the wrong level does not make the study below it a case", depth: 3,
               files: ["G1/5506119/_CASE_READY", "G1/5506119/1.2.3/RP.1.dcm"], cases: []),
        Layout(name: "depth 3: a file where a level's folder should be is skipped", depth: 3,
               files: ["G1/5506119/notes.txt", "G1/readme.txt", "G1/5506119/1.2.3/_CASE_READY"], cases: ["G1/5506119/1.2.3"]),
        Layout(name: "depth 3: hidden or temporary names refused at every level", depth: 3,
               files: [".sync/5506119/1.2.3/_CASE_READY", "G1/.partial/1.2.3/_CASE_READY", "G1/5506119/.1.2.3/_CASE_READY",
                       "G1/5506119/1.2.4/_CASE_READY"],
               cases: ["G1/5506119/1.2.4"]),
        Layout(name: "depth 3: hostile but legal names are taken as they are, at every level", depth: 3,
               files: ["G1 'x'/$(touch pwned);`id`/ünï ☢/_CASE_READY"], cases: ["G1 'x'/$(touch pwned);`id`/ünï ☢"]),
        Layout(name: "depth 2: room/patient", depth: 2,
               files: ["G2/P1/_CASE_READY", "G2/P2/RP.1.dcm"], cases: ["G2/P1"]),
    ]

    @Test(arguments: layouts)
    func layoutMakesExactlyTheseCases(_ layout: Layout) async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        for file in layout.files {
            try fixture.write(file, file.hasSuffix("_CASE_READY") ? "" : "data\n")
        }
        let scanner = fixture.scanner(depth: layout.depth)
        let result = await scanner.scan()
        #expect(result.registered == layout.cases.count)
        #expect(try await fixture.caseIds() == layout.cases.sorted())
        // A second pass changes nothing.
        #expect(await scanner.scan().registered == 0)
    }

    @Test func shallowerLevelsAreWarnedAboutOnceNamingTheLevel() async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        try fixture.write("G1/5506119/_CASE_READY", "")
        try fixture.write("G1/.partial/1.2.3/_CASE_READY", "")
        let scanner = fixture.scanner(depth: 3)
        await scanner.scan()
        await scanner.scan()
        let warnings = fixture.logs.messages(at: .warning)
        #expect(warnings.filter { $0.contains("ignoring the ready marker 'G1/5506119/_CASE_READY'") && $0.contains("3 levels") }.count == 1, "\(warnings)")
        #expect(warnings.filter { $0.contains("'G1/.partial'") && $0.contains("hidden or temporary") }.count == 1, "\(warnings)")
    }

    @Test func aNewStudyForAKnownPatientIsANewCase() async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        let scanner = fixture.scanner(depth: 3)
        try fixture.write("G1/5506119/1.2.3.1/RP.1.dcm")
        try fixture.write("G1/5506119/1.2.3.1/_CASE_READY", "")
        #expect(await scanner.scan().registered == 1)
        // The same patient comes back for another plan (another study), in another room too.
        try fixture.write("G1/5506119/1.2.3.2/RP.2.dcm")
        try fixture.write("G1/5506119/1.2.3.2/_CASE_READY", "")
        try fixture.write("G2/5506119/1.2.3.3/_CASE_READY", "")
        #expect(await scanner.scan().registered == 2)
        #expect(try await fixture.caseIds() == ["G1/5506119/1.2.3.1", "G1/5506119/1.2.3.2", "G2/5506119/1.2.3.3"])
        #expect(await scanner.scan().registered == 0)
    }

    @Test(.timeLimit(.minutes(3)))
    func inotifyFindsACaseCreatedThreeLevelsDownPromptly() async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        let scanner = CaseScanner(config: ScannerConfig(localLogdata: fixture.root, readyMarker: "_CASE_READY", quietPeriodSec: 0,
                                                        rescanIntervalSec: 600, workflow: "default_qa", caseDepth: 3),
                                  store: fixture.store, logger: fixture.logs.logger())
        let running = Task { try await scanner.run() }
        defer { running.cancel() }
        try await Task.sleep(for: .milliseconds(300))
        // Levels appear one after another, as a copy creates them; the marker comes last.
        try FileManager.default.createDirectory(atPath: fixture.root + "/G3", withIntermediateDirectories: true)
        try await Task.sleep(for: .milliseconds(100))
        try fixture.write("G3/5506119/1.2.9/RP.1.dcm")
        try await Task.sleep(for: .milliseconds(100))
        try fixture.write("G3/5506119/1.2.9/_CASE_READY", "")
        // The rescan interval is 10 minutes: only inotify can find it this soon.
        let found = try await eventually(within: 90) { try await fixture.store.caseExists("G3/5506119/1.2.9") }
        #expect(found)
    }

    // MARK: marker timeout

    @Test func aCaseWaitingPastTheMarkerTimeoutGetsOneWarningAndIsListed() async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        let clock = Mutex(Date().addingTimeInterval(-61 * 60))
        let now: @Sendable () -> Date = { clock.withLock { $0 } }
        let id = "G1/5506119/1.2.840.113619.2.55.3.7"
        try fixture.write(id + "/RP.1.dcm")
        var scanner = fixture.scanner(depth: 3, timeoutMin: 60, waitList: true, now: now)
        var result = await scanner.scan()
        #expect(result.registered == 0 && result.waitingForMarker == 1)
        #expect(result.nextCheck.map { abs($0 - 3600) < 1 } == true, "the scan comes back when the timeout is due: \(String(describing: result.nextCheck))")
        let listPath = MarkerWaitList.path(database: fixture.database)
        var list = try #require(MarkerWaitList.read(from: listPath))
        #expect(list.cases.map(\.caseId) == [id] && list.marker == "_CASE_READY" && list.timeoutMin == 60)
        #expect(list.cases.first?.warned == false)
        func timeoutWarnings() -> [Logger.Level: [String]] {
            var found: [Logger.Level: [String]] = [:]
            for record in fixture.logs.all where record.message.contains("waited") {
                found[record.level, default: []].append(record.message)
            }
            return found
        }
        clock.withLock { $0 = $0.addingTimeInterval(30 * 60) }
        await scanner.scan()
        #expect(timeoutWarnings().isEmpty)

        clock.withLock { $0 = $0.addingTimeInterval(31 * 60) }
        result = await scanner.scan()
        #expect(result.registered == 0 && result.waitingForMarker == 1)
        let warnings = timeoutWarnings()[.warning] ?? []
        #expect(warnings.count == 1)
        #expect(warnings.first?.contains(id) == true && warnings.first?.contains("61 min") == true
                && warnings.first?.contains("_CASE_READY") == true, "\(warnings)")
        #expect(fixture.logs.all.first { $0.message.contains("waited") }?.metadata["case_id"] == id)
        await scanner.scan()
        #expect((timeoutWarnings()[.warning] ?? []).count == 1, "one WARNING, not one per scan")

        // A restarted daemon keeps the waiting time and does not warn again.
        scanner = fixture.scanner(depth: 3, timeoutMin: 60, waitList: true, now: now)
        await scanner.scan()
        #expect((timeoutWarnings()[.warning] ?? []).count == 1, "one WARNING, not one per daemon start")
        list = try #require(MarkerWaitList.read(from: listPath))
        #expect(list.cases.first?.warned == true)
        #expect(list.isOverdue(try #require(list.cases.first), now: Date()))

        // `mqi status` (another process) lists it as waiting, over the timeout.
        let config = try Self.writeConfig(fixture)
        let status = try await Self.mqi(["status", "--config", config], in: fixture.temp)
        #expect(status.code == 0, "\(status.output)")
        #expect(status.output.contains("waiting for _CASE_READY"), "\(status.output)")
        #expect(status.output.contains(id) && status.output.contains("OVER scanner.marker_timeout_min (60)"), "\(status.output)")
        let json = try await Self.mqi(["status", "--config", config, "--json"], in: fixture.temp)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any], "\(json.output)")
        let waiting = try #require(object["waiting_for_marker"] as? [[String: Any]])
        #expect(waiting.first?["case_id"] as? String == id && waiting.first?["overdue"] as? Bool == true)

        // Once the marker is there, the case is taken and leaves the list.
        try fixture.write(id + "/_CASE_READY", "")
        result = await scanner.scan()
        #expect(result.registered == 1 && result.waitingForMarker == 0)
        #expect(try #require(MarkerWaitList.read(from: listPath)).cases.isEmpty)
        let after = try await Self.mqi(["status", "--config", config], in: fixture.temp)
        #expect(!after.output.contains("waiting for"), "\(after.output)")
    }

    @Test func aFractionalMarkerTimeoutWorksOnTheRealClock() async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        try fixture.write("G1/P/S/RP.1.dcm")
        let scanner = fixture.scanner(depth: 3, timeoutMin: 0.005)   // 0.3 s
        let first = await scanner.scan()
        #expect(first.nextCheck.map { $0 <= 0.3 } == true)
        try await Task.sleep(for: .milliseconds(400))
        await scanner.scan()
        await scanner.scan()
        #expect(fixture.logs.messages(at: .warning).filter { $0.contains("G1/P/S") && $0.contains("ready marker") }.count == 1)
    }

    // MARK: end to end

    @Test(.timeLimit(.minutes(3)))
    func depthThreeCasesCompleteWithNestedResultsLogsAndCLI() async throws {
        let temp = try TemporaryDirectory("mqi-depth-e2e")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 0, gpus: [0, 1])
        var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        #expect(text.contains("  ready_marker: _CASE_READY\n"))
        text = text.replacingOccurrences(of: "  ready_marker: _CASE_READY\n", with: "  ready_marker: _CASE_READY\n  case_depth: 3\n")
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        var config = try ConfigLoader.load(path: site.configPath)
        #expect(config.scanner.caseDepth == 3)
        config.gpuMonitor.enabled = false
        config.metrics.enabled = false
        let logdata = config.scanner.localLogdata
        let ids = ["G1/5506119/1.2.840.113619.2.55.3.101", "G1/5506119/1.2.840.113619.2.55.3.102", "G2/7700001/1.2.840.113619.2.55.3.103"]
        for id in ids {
            let parent = (logdata as NSString).appendingPathComponent((id as NSString).deletingLastPathComponent)
            try DemoSite.writeCase(named: (id as NSString).lastPathComponent, in: parent, beams: 2)
        }
        let logs = CapturedLogs()
        try await Daemon(config: config, logger: logs.logger(level: .info), exitWhenIdle: true).run()

        let store = try Daemon.openStore(config)
        let cases = try await store.cases()
        #expect(cases.map(\.caseId).sorted() == ids)
        #expect(cases.allSatisfy { $0.status == .completed }, "\(cases.map { "\($0.caseId): \($0.status) \($0.error ?? "")" })")
        for id in ids {
            let results = (config.conductor.resultsDir as NSString).appendingPathComponent(id)
            let files = (try? FileManager.default.contentsOfDirectory(atPath: results)) ?? []
            #expect(files.contains("moqui_summary.txt") && files.contains { $0.hasPrefix("RTDOSE") }, "results of \(id): \(files)")
            #expect(ResultManifest.verify(results) == nil)
            let log = [config.state.logsDir, id, "run_moqui_sim.1.log"].reduce("") { ($0 as NSString).appendingPathComponent($1) }
            #expect(FileManager.default.fileExists(atPath: log), "no step log at \(log)")
        }
        #expect(!logs.all.contains { $0.level >= .warning }, "\(logs.all.filter { $0.level >= .warning }.map(\.message))")

        // The CLI takes the id with its slashes.
        let show = try await Self.mqi(["cases", "show", ids[0], "--config", site.configPath], in: temp)
        #expect(show.code == 0, "\(show.output)")
        #expect(show.output.contains(ids[0]) && show.output.contains("COMPLETED"), "\(show.output)")
        let showJSON = try await Self.mqi(["cases", "show", ids[2], "--config", site.configPath, "--json"], in: temp)
        let detail = try #require(try JSONSerialization.jsonObject(with: Data(showJSON.output.utf8)) as? [String: Any], "\(showJSON.output)")
        #expect((detail["case"] as? [String: Any])?["case_id"] as? String == ids[2], "\(showJSON.output)")
        let missing = try await Self.mqi(["cases", "show", "G1/5506119", "--config", site.configPath], in: temp)
        #expect(missing.code != 0, "a patient folder is not a case: \(missing.output)")

        // A database rebuilt from scratch re-scans: nested results are found, verified, and the
        // cases are recorded COMPLETED without running again.
        try FileManager.default.moveItem(atPath: config.state.database, toPath: config.state.database + ".old")
        for suffix in ["-wal", "-shm"] { try? FileManager.default.removeItem(atPath: config.state.database + suffix) }
        try await Daemon(config: config, logger: logs.logger(level: .info), exitWhenIdle: true).run()
        let rebuilt = try Daemon.openStore(config)
        for id in ids {
            #expect(try await rebuilt.caseState(id)?.status == .completed)
            let history = try await rebuilt.history(id)
            #expect(history.contains { $0.message.contains("not run again") }, "\(id): \(history.map(\.message))")
        }
    }

    /// A config whose database is the fixture's (so the CLI reads the same wait list).
    static func writeConfig(_ fixture: Fixture) throws -> String {
        let path = fixture.temp.file("config.yaml")
        try """
            scanner:
              local_logdata: ./logdata
              ready_marker: _CASE_READY
              case_depth: 3
              marker_timeout_min: 60
            state:
              database: ./state.sqlite
              pid_file: ./mqi.pid
              logs_dir: ./logs
            conductor:
              remote_paths: { upload_dir: ./hpc/upload, download_dir: ./hpc/download }
              results_dir: ./results
            workflows:
              default_qa:
                - { name: upload_case_files, type: upload, progress: 10 }
                - { name: download_results, type: download, progress: 90 }
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Runs the `mqi` binary to its end.
    static func mqi(_ arguments: [String], in temp: TemporaryDirectory) async throws -> (code: Int32?, output: String) {
        let process = try MQIProcess(arguments, output: temp.file("mqi-\(UUID().uuidString.prefix(6)).out"))
        let code = await process.wait(upTo: 30)
        return (code, process.output)
    }

    // MARK: config

    @Test func configKeysAreReadAndCheckedWithTheirLine() throws {
        let temp = try TemporaryDirectory("mqi-depth-config")
        defer { temp.remove() }
        func load(_ scanner: String) throws -> Config {
            let path = temp.file("config-\(UUID().uuidString.prefix(6)).yaml")
            try """
                scanner:
                  local_logdata: ./logdata
                \(scanner)
                workflows:
                  default_qa:
                    - { name: upload_case_files, type: upload, progress: 10 }
                """.write(toFile: path, atomically: true, encoding: .utf8)
            return try ConfigLoader.load(path: path)
        }
        let defaults = try load("  ready_marker: _CASE_READY")
        #expect(defaults.scanner.caseDepth == 1 && defaults.scanner.markerTimeoutMin == 60)
        let set = try load("  case_depth: 3\n  marker_timeout_min: 0.5")
        #expect(set.scanner.caseDepth == 3 && set.scanner.markerTimeoutMin == 0.5)
        for (text, expected) in [("  case_depth: 0", ":3:15: scanner.case_depth: must be between 1 and 8"),
                                 ("  case_depth: two", ":3:15: scanner.case_depth: expected an integer"),
                                 ("  marker_timeout_min: 0", ":3:23: scanner.marker_timeout_min: must be greater than 0"),
                                 ("  case_dept: 3", ":3:3: scanner.case_dept:")] {
            do {
                _ = try load(text)
                Issue.record("accepted \(text)")
            } catch {
                #expect("\(error)".contains(expected), "\(text): \(error)")
            }
        }
    }
}
