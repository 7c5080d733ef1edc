import Foundation
import MQICore
import MQIServices
import MQIStore
import MQITestSupport
import MQITransport
import Testing

/// Retention: the HPC cleanup of completed cases (`hpc.cleanup`), run directories outside the
/// case directory, and `mqi prune` of old step logs and history, with the real binary.
struct RetentionTests {
    /// A crash-safety site whose config says `hpc.cleanup: <cleanup>` (nil: the default).
    static func site(cases: Int, cleanup: String?) throws -> CrashSafetyTests.Site {
        let site = try CrashSafetyTests.Site(cases: cases, gpus: [0, 1])
        if let cleanup {
            let text = try String(contentsOfFile: site.config, encoding: .utf8)
                .replacingOccurrences(of: "hpc: { transport: local,", with: "hpc: { transport: local, cleanup: \(cleanup),")
            try text.write(toFile: site.config, atomically: true, encoding: .utf8)
        }
        return site
    }

    @Test(.timeLimit(.minutes(3)), arguments: [nil, "after_download", "never"])
    func aCompletedCasesHPCDirectoriesAreRemovedAfterDownloadOrKeptWithNever(cleanup: String?) async throws {
        let site = try Self.site(cases: 2, cleanup: cleanup)
        defer { site.temp.remove() }
        let run = try site.run(["--exit-when-idle"], tag: "run")
        #expect(await run.wait(upTo: 120) == 0, "\(run.output.suffix(2000))")
        try await site.expectCleanFinish(cases: 2)
        let store = try site.store()
        let files = FileManager.default
        for caseId in ["CASE-001", "CASE-002"] {
            let upload = site.temp.file("hpc/upload/\(caseId)"), download = site.temp.file("hpc/download/\(caseId)")
            let runs = site.temp.file("hpc/upload/.mqi-runs/\(caseId)")
            #expect(ResultManifest.verify(site.temp.file("var/results/\(caseId)")) == nil, "the results stay, verified")
            let history = try await store.history(caseId)
            if cleanup == "never" {
                #expect((try? files.contentsOfDirectory(atPath: upload))?.isEmpty == false, "\(caseId): upload dir kept")
                #expect(files.fileExists(atPath: download + "/dose.txt"))
                // Run directories live outside the case directory.
                #expect(files.fileExists(atPath: runs + "/run_interpreter.1/exit_code"))
                #expect(files.fileExists(atPath: runs + "/run_moqui_sim.1/exit_code"))
                #expect(!files.fileExists(atPath: upload + "/.mqi"))
                #expect(!history.contains { $0.event == "remote_cleanup" })
            } else {
                #expect(!files.fileExists(atPath: upload), "\(caseId): upload dir removed")
                #expect(!files.fileExists(atPath: download), "\(caseId): download dir removed")
                #expect(!files.fileExists(atPath: runs), "\(caseId): run directories removed")
                let entry = history.first { $0.event == "remote_cleanup" }
                #expect(entry?.message.contains(upload) == true && entry?.message.contains(runs) == true, "\(history)")
                #expect(try await store.caseSummary(caseId)?.status == .completed)
            }
        }
    }

    static func sqlite(_ database: String, _ sql: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["sqlite3", database, sql]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "sqlite3 \(sql)")
    }

    @Test(.timeLimit(.minutes(3)), .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/sqlite3"), "needs the sqlite3 CLI"))
    func pruneDryRunReportsAndPruneRemovesOnlyOldLogsAndHistory() async throws {
        let site = try Self.site(cases: 3, cleanup: "never")
        defer { site.temp.remove() }
        let run = try site.run(["--exit-when-idle"], tag: "run")
        #expect(await run.wait(upTo: 120) == 0, "\(run.output.suffix(2000))")
        try await site.expectCleanFinish(cases: 3)
        // CASE-001 finished 400 days ago (logs and history go), CASE-002 100 days ago (logs go,
        // history stays), CASE-003 just now (everything stays).
        let database = site.temp.file("var/mqi.sqlite")
        for (caseId, days) in [("CASE-001", 400), ("CASE-002", 100)] {
            try Self.sqlite(database, "UPDATE cases SET finished_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '-\(days) days') WHERE case_id = '\(caseId)'")
        }
        let store = try site.store()
        let logs = site.temp.file("var/logs")
        var before: [String: Int] = [:]
        for caseId in ["CASE-001", "CASE-002", "CASE-003"] {
            #expect(FileManager.default.fileExists(atPath: "\(logs)/\(caseId)/run_moqui_sim.1.log"))
            before[caseId] = try await store.history(caseId).count
            #expect(before[caseId, default: 0] > 0)
        }

        let dry = try MQIProcess(["prune", "--config", site.config, "--dry-run"], output: site.temp.file("dry.log"))
        #expect(await dry.wait(upTo: 30) == 0, "\(dry.output)")
        let dryLines = dry.output.split(separator: "\n").map(String.init)
        #expect(dryLines.contains { $0.hasPrefix("would remove 2 step log directories (4 files") }, "\(dry.output)")
        #expect(dryLines.contains("  log \(logs)/CASE-001") && dryLines.contains("  log \(logs)/CASE-002"), "\(dry.output)")
        #expect(!dry.output.contains("CASE-003"), "\(dry.output)")
        #expect(dryLines.contains { $0.hasPrefix("would remove \(before["CASE-001"]!) history events of 1 case ") }, "\(dry.output)")
        #expect(dryLines.contains("  events CASE-001: \(before["CASE-001"]!)"), "\(dry.output)")
        for caseId in ["CASE-001", "CASE-002", "CASE-003"] {
            #expect(FileManager.default.fileExists(atPath: "\(logs)/\(caseId)"), "a dry run removes nothing")
            #expect(try await store.history(caseId).count == before[caseId])
        }

        let prune = try MQIProcess(["prune", "--config", site.config], output: site.temp.file("prune.log"))
        #expect(await prune.wait(upTo: 30) == 0, "\(prune.output)")
        #expect(prune.output.contains("removed 2 step log directories (4 files"), "\(prune.output)")
        #expect(prune.output.contains("removed \(before["CASE-001"]!) history events of 1 case "), "\(prune.output)")
        #expect(!FileManager.default.fileExists(atPath: "\(logs)/CASE-001"))
        #expect(!FileManager.default.fileExists(atPath: "\(logs)/CASE-002"))
        #expect(FileManager.default.fileExists(atPath: "\(logs)/CASE-003/run_moqui_sim.1.log"))
        #expect(try await store.history("CASE-001").isEmpty)
        #expect(try await store.history("CASE-002").count == before["CASE-002"])
        #expect(try await store.history("CASE-003").count == before["CASE-003"])
        // The case rows stay.
        #expect(try await store.cases().filter { $0.status == .completed }.count == 3)

        let again = try MQIProcess(["prune", "--config", site.config], output: site.temp.file("again.log"))
        #expect(await again.wait(upTo: 30) == 0, "\(again.output)")
        #expect(again.output.contains("removed 0 step log directories") && again.output.contains("removed 0 history events"), "\(again.output)")
    }
}
