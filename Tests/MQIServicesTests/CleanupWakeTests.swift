import Foundation
import MQICore
@testable import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// `hpc.cleanup: after_download` cleans a case as soon as it completes, not at the next periodic
/// sweep: with the sweep set to an hour (after its first, at start, when nothing is finished), the
/// daemon over the local transport removes each case's HPC directories right after its download
/// and `--exit-when-idle` ends it right after the last cleanup. Before, the daemon would wait an
/// hour here.
@Suite(.serialized)
struct CleanupWakeTests {
    @Test(.timeLimit(.minutes(3)))
    func aCompletedCaseIsCleanedAtOnceAndTheIdleExitFollows() async throws {
        let temp = try TemporaryDirectory("mqi-cleanup-wake")
        defer { temp.remove() }
        try """
            scanner: { local_logdata: ./data, ready_marker: _CASE_READY, rescan_interval_sec: 5 }
            state: { database: ./var/mqi.sqlite, pid_file: ./var/mqi.pid, logs_dir: ./var/logs }
            hpc: { transport: local, gpus: [0, 1], cleanup: after_download }
            conductor:
              remote_paths: { upload_dir: ./hpc/upload, download_dir: ./hpc/download }
              results_dir: ./var/results
            workflows:
              default_qa:
                - { name: upload_case_files, type: upload,   progress: 10 }
                - { name: run_moqui_sim,     type: execute,  progress: 50 }
                - { name: download_results,  type: download, progress: 90 }
            remote_commands:
              run_moqui_sim: mkdir -p {result_dir} && echo dose > {result_dir}/dose.txt
            retry: { max_attempts: 3, initial_delay_sec: 0.1, max_delay_sec: 1, multiplier: 2 }
            metrics: { enabled: false }
            gpu_monitor: { enabled: false }
            """.write(toFile: temp.file("config.yaml"), atomically: true, encoding: .utf8)
        let cases = (1...4).map { "CASE-\($0)" }
        for caseId in cases {
            let caseDir = temp.file("data/\(caseId)")
            try FileManager.default.createDirectory(atPath: caseDir, withIntermediateDirectories: true)
            try "DICOM_BEAM_NUMBER,1\n".write(toFile: caseDir + "/PlanInfo.txt", atomically: true, encoding: .utf8)
            try "".write(toFile: caseDir + "/_CASE_READY", atomically: true, encoding: .utf8)
        }
        let config = try ConfigLoader.load(path: temp.file("config.yaml"))
        var daemon = Daemon(config: config, logger: CapturedLogs().logger(), exitWhenIdle: true)
        daemon.cleanupIntervalSec = 3600
        try await daemon.run()
        let exited = Date()

        let store = try Daemon.openStore(config)
        let rows = try await store.pool.read { db in
            try SQLRow.fetchAll(db, sql: "SELECT case_id, status, finished_at, remote_cleaned_at FROM cases ORDER BY case_id")
        }
        #expect(rows.map { $0["case_id"] as String } == cases)
        var lastCleaned = Date.distantPast
        for row in rows {
            let caseId: String = row["case_id"]
            #expect(row["status"] as String == "COMPLETED", "\(caseId)")
            let finished = try #require(row["finished_at"] as Date?, "\(caseId)")
            let cleaned = try #require(row["remote_cleaned_at"] as Date?, "\(caseId) was not cleaned up")
            // At once: the look follows the Conductor's decision (within ms; the sweep is hourly, and a
            // full suite on 2 cores has held this up for over 3 s).
            #expect(cleaned.timeIntervalSince(finished) < 60, "\(caseId): cleaned \(cleaned.timeIntervalSince(finished)) s after COMPLETED")
            lastCleaned = max(lastCleaned, cleaned)
            for directory in [config.conductor.uploadDir, config.conductor.downloadDir] {
                #expect(!FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent(caseId)), "\(caseId) in \(directory)")
            }
            #expect(FileManager.default.fileExists(atPath: config.conductor.resultsDir + "/\(caseId)/dose.txt"), "\(caseId)'s results")
        }
        // The idle exit follows the last cleanup at once (the graceful shutdown included).
        #expect(exited.timeIntervalSince(lastCleaned) < 60, "exited \(exited.timeIntervalSince(lastCleaned)) s after the last cleanup")
    }
}
