import Foundation
import MQICore
import MQIServices
import MQIStore
#if canImport(Glibc)
import Glibc
#endif

/// Figure 4: the real `mqi` binary against a database holding years of history.
enum ScaleBenchmark {
    static func run(cases: Int, mqi: String, keep: Bool, listRounds: Int = 7) async throws -> [Figure] {
        let section = "4. Scale (\(cases) cases in the database, the mqi binary)"
        let dir = try BenchDirectory("scale")
        defer { if !keep { dir.remove() } }
        let text = benchConfigText(gpus: 4, interpreter: "true", simulation: "true")
        let configPath = dir.file("config.yaml")
        try text.write(toFile: configPath, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.parse(text, file: configPath, baseDirectory: dir.path)
        try FileManager.default.createDirectory(atPath: config.scanner.localLogdata, withIntermediateDirectories: true)

        // Baselines in the same run: the binary doing nothing, and the daemon on an empty database.
        let help = try median((0..<3).map { _ in try timedRun(mqi, ["--help"]).seconds })
        let empty = try await startDaemon(mqi: mqi, config: configPath, log: dir.file("daemon-empty.log"))
        empty.stop()

        progress("scale: inserting \(cases) cases")
        let insertStarted = nowEpoch()
        let store = try Daemon.openStore(config)
        try await store.benchInsertFinishedCases(count: cases, workflow: "default_qa")
        let insertSeconds = nowEpoch() - insertStarted
        let failedCount = cases / 50
        let dbSize = ((try? FileManager.default.attributesOfItem(atPath: config.state.database)[.size] as? NSNumber)??.doubleValue ?? 0) / 1e6

        progress("scale: starting mqi run")
        let daemon = try await startDaemon(mqi: mqi, config: configPath, log: dir.file("daemon.log"))
        defer { daemon.stop() }

        func caseIds(_ path: String) -> Int {
            ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").components(separatedBy: "\"case_id\"").count - 1
        }
        // mqi and the sqlite3 CLI in turns, so that whatever else the machine does weighs on both.
        let sqlite3 = FileManager.default.isExecutableFile(atPath: "/usr/bin/sqlite3") ? "/usr/bin/sqlite3" : nil
        var listRuns: [(seconds: Double, cpu: Double)] = [], sqliteRuns: [(seconds: Double, cpu: Double)] = []
        for _ in 0..<listRounds {
            let run = try timedRun(mqi, ["cases", "list", "--status", "FAILED", "--json", "--config", configPath], outputPath: dir.file("failed.json"))
            guard run.status == 0 else { throw BenchError("mqi cases list exited with \(run.status)") }
            listRuns.append((run.seconds, run.cpuSeconds))
            if let sqlite3 {
                let run = try timedRun(sqlite3, ["-json", config.state.database,
                                                 "SELECT * FROM cases WHERE status = 'FAILED' ORDER BY created_at DESC, rowid DESC LIMIT 10000"],
                                       outputPath: dir.file("failed-sqlite3.json"))
                // A baseline that failed (say "database is locked": the CLI does not wait) is no baseline.
                guard run.status == 0, caseIds(dir.file("failed-sqlite3.json")) == failedCount else {
                    throw BenchError("sqlite3 exited with \(run.status) and \(caseIds(dir.file("failed-sqlite3.json"))) of \(failedCount) rows")
                }
                sqliteRuns.append((run.seconds, run.cpuSeconds))
            }
        }
        let list = median(listRuns.map(\.seconds)), listCPU = median(listRuns.map(\.cpu))
        let listed = caseIds(dir.file("failed.json"))
        let sqliteBaseline = sqliteRuns.isEmpty ? nil : median(sqliteRuns.map(\.seconds))
        let sqliteCPU = median(sqliteRuns.map(\.cpu))

        var api: Figure
        let apiStarted = nowEpoch()
        let response = httpGet(port: daemon.port, path: "/api/cases?limit=50")
        let apiSeconds = nowEpoch() - apiStarted
        switch response?.status {
        case 404?:
            api = .notAvailable(section, "GET /api/cases?limit=50 (first page)", unit: "ms", goal: "", note: "n/a (no API yet)")
        case 200?:
            var samples = [apiSeconds]
            for _ in 0..<4 {
                let t = nowEpoch()
                _ = httpGet(port: daemon.port, path: "/api/cases?limit=50")
                samples.append(nowEpoch() - t)
            }
            api = .goal(section, "GET /api/cases?limit=50 (first page, median of 5)", median(samples) * 1000, unit: "ms", limit: 200,
                        note: "first request \(fmt(apiSeconds * 1000)) ms")
        default:
            api = .notAvailable(section, "GET /api/cases?limit=50 (first page)", unit: "ms", goal: "",
                                note: "HTTP \(response.map { String($0.status) } ?? "no answer")")
        }
        let rss = peakRSSMB(daemon.pid)
        return [
            .info(section, "bulk insert (one transaction)", insertSeconds, unit: "s", note: "\(fmt(dbSize)) MB database, 6 events per case"),
            .goal(section, "daemon start -> /readyz 200", daemon.startSeconds, unit: "s", limit: 1,
                  baseline: "\(String(format: "%.2f", daemon.startSeconds / empty.startSeconds))x empty database (\(fmt(empty.startSeconds * 1000)) ms, same run)"),
            .goal(section, "mqi cases list --status FAILED --json (\(listed) cases, median of \(listRounds))", list * 1000, unit: "ms", limit: 200,
                  baseline: sqliteBaseline.map {
                      "\(String(format: "%.2f", list / $0))x sqlite3 CLI same query (\(fmt($0 * 1000)) ms, in turns with it); mqi --help \(fmt(help * 1000)) ms; "
                          + "CPU \(fmt(listCPU * 1000)) ms = \(String(format: "%.2f", listCPU / max(sqliteCPU, 1e-6)))x sqlite3's \(fmt(sqliteCPU * 1000)) ms"
                  },
                  note: listed == failedCount ? nil : "expected \(failedCount)"),
            sqliteBaseline.map { baseline in
                .goal(section, "mqi cases list --json / sqlite3 CLI, same query (wall, medians in turns)", list / baseline, unit: "x", limit: 1.5,
                      baseline: "CPU \(String(format: "%.2f", listCPU / max(sqliteCPU, 1e-6)))x; mqi --help alone \(String(format: "%.2f", help / baseline))x")
            } ?? .notAvailable(section, "mqi cases list --json / sqlite3 CLI, same query", unit: "x", goal: "<= 1.5 x", note: "n/a (no /usr/bin/sqlite3)"),
            api,
            .goal(section, "daemon peak RSS (VmHWM)", rss, unit: "MB", limit: 100,
                  baseline: empty.rss.map { "\(String(format: "%.2f", (rss ?? 0) / $0))x empty database (\(fmt($0)) MB)" }),
        ]
    }

    static func median(_ values: [Double]) -> Double { percentile(values, 50) ?? 0 }

    /// A running `mqi run`: its pid, HTTP port and how long it took to answer /readyz with 200.
    final class Running {
        let process: Process
        let port: Int
        let startSeconds: Double
        var rss: Double?

        init(process: Process, port: Int, startSeconds: Double) {
            self.process = process
            self.port = port
            self.startSeconds = startSeconds
        }

        var pid: Int32 { process.processIdentifier }

        func stop() {
            guard process.isRunning else { return }
            rss = peakRSSMB(pid)
            process.terminate()
            let deadline = nowEpoch() + 10
            while process.isRunning, nowEpoch() < deadline { usleep(10_000) }
            if process.isRunning { kill(pid, SIGKILL) }
        }
    }

    static func startDaemon(mqi: String, config: String, log: String) async throws -> Running {
        FileManager.default.createFile(atPath: log, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: mqi)
        process.arguments = ["run", "--config", config, "--log-format", "json"]
        process.standardOutput = FileHandle(forWritingAtPath: log)
        process.standardError = FileHandle(forWritingAtPath: log)
        process.standardInput = FileHandle.nullDevice
        let started = nowEpoch()
        try process.run()
        var port: Int?
        while nowEpoch() - started < 30 {
            guard process.isRunning else {
                throw BenchError("mqi run exited with \(process.terminationStatus): \((try? String(contentsOfFile: log, encoding: .utf8))?.suffix(2000) ?? "")")
            }
            if port == nil, let text = try? String(contentsOfFile: log, encoding: .utf8), let range = text.range(of: "/readyz on http://") {
                let rest = text[range.upperBound...]
                if let colon = rest.firstIndex(of: ":") {
                    port = Int(rest[rest.index(after: colon)...].prefix { $0.isNumber })
                }
            }
            if let port, httpGet(port: port, path: "/readyz", timeoutSec: 2)?.status == 200 {
                return Running(process: process, port: port, startSeconds: nowEpoch() - started)
            }
            usleep(2_000)
        }
        process.terminate()
        throw BenchError("mqi run did not become ready within 30 s; see \(log)")
    }
}
