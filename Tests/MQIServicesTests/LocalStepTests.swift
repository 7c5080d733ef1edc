import Foundation
import MQICore
import MQIStore
import MQITransport
import MQITestSupport
import Testing
@testable import MQIServices

/// `type: local` steps: run on the communicator's machine in `results_dir/<case_id>` after the
/// results are there, with an execute step's logs, patterns and adoption after kill -9. The real
/// `mqi` binary, the local transport, a real SQLite file.
@Suite(.serialized)
struct LocalStepTests {
    struct Site {
        let temp: TemporaryDirectory
        var config: String { temp.file("config.yaml") }
        var ledger: String { temp.file("ledger.txt") }

        /// The local step `report` sleeps `reportSeconds`, lists the results into `report.txt`
        /// and prints the placeholders it was given.
        init(reportSeconds: Double = 0, extraStepKeys: String = "") throws {
            temp = try TemporaryDirectory("mqi-local-step")
            let ledger = ShellQuote.quote(self.ledger)
            try SampleConfigs.localSite(simCommand: "mkdir -p {result_dir} && echo dose > {result_dir}/dose.txt", localStep: (
                name: "make_report", keys: "timeout_sec: 60, success_pattern: \"^report done\", \(extraStepKeys)",
                command: "echo \"$MQI_CASE_ID start $(date +%s%N) $$\" >> \(ledger); sleep \(reportSeconds); ls > report.txt; echo dir={results_dir} pwd=$(pwd); echo report done"
            ), retryAttempts: 3).write(toFile: config, atomically: true, encoding: .utf8)
            try FileManager.default.createDirectory(atPath: temp.file("data"), withIntermediateDirectories: true)
        }

        func addCase(_ name: String) throws {
            let dir = temp.file("data/\(name)")
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try "x\n".write(toFile: dir + "/PlanInfo.txt", atomically: true, encoding: .utf8)
            try "".write(toFile: dir + "/_CASE_READY", atomically: true, encoding: .utf8)
        }

        func starts(_ caseId: String) -> Int {
            ((try? String(contentsOfFile: ledger, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.hasPrefix("\(caseId) start") }.count
        }

        func store() throws -> Store { try Store(path: temp.file("var/mqi.sqlite")) }
    }

    @Test(.timeLimit(.minutes(4)))
    func aLocalStepRunsInTheCasesResultsAfterTheDownload() async throws {
        let site = try Site()
        defer { site.temp.remove() }
        try site.addCase("CASE-1")
        let daemon = try MQIProcess(["run", "--config", site.config, "--log-format", "text"], output: site.temp.file("daemon.log"))
        defer { daemon.signal(SIGKILL) }
        let store = try site.store()
        #expect(await eventually(within: 60) { (try? await store.caseSummary("CASE-1"))??.status == .completed }, "\(daemon.output.suffix(3000))")
        let results = site.temp.file("var/results/CASE-1")
        // It ran after the download, in the case's results, beside them.
        let report = try String(contentsOfFile: results + "/report.txt", encoding: .utf8)
        #expect(report.contains("dose.txt"), "report.txt: \(report)")
        let log = try String(contentsOfFile: site.temp.file("var/logs/CASE-1/make_report.1.log"), encoding: .utf8)
        #expect(log.contains("dir=\(results) pwd=\(results)"), "\(log)")
        #expect(log.contains("report done"))
        #expect(site.starts("CASE-1") == 1)
        // Its bookkeeping is outside the case's results, which still verify.
        #expect(FileManager.default.fileExists(atPath: site.temp.file("var/results/.mqi-runs/CASE-1/make_report.1/exit_code")))
        #expect(ResultManifest.verify(results) == nil)
    }

    @Test(.timeLimit(.minutes(4)))
    func aLocalStepIsAdoptedAfterKillMinusNineNotRunAgain() async throws {
        let site = try Site(reportSeconds: 4)
        defer { site.temp.remove() }
        try site.addCase("CASE-2")
        let first = try MQIProcess(["run", "--config", site.config, "--log-format", "text"], output: site.temp.file("daemon-1.log"))
        #expect(await eventually(within: 60) { site.starts("CASE-2") == 1 }, "\(first.output.suffix(3000))")
        first.signal(SIGKILL)
        _ = await first.wait(upTo: 10)
        let second = try MQIProcess(["run", "--config", site.config, "--log-format", "text"], output: site.temp.file("daemon-2.log"))
        defer { second.signal(SIGKILL) }
        let store = try site.store()
        #expect(await eventually(within: 60) { (try? await store.caseSummary("CASE-2"))??.status == .completed }, "\(second.output.suffix(3000))")
        #expect(site.starts("CASE-2") == 1, "the local step ran \(site.starts("CASE-2")) times")
        #expect(second.output.contains("adopt"), "\(second.output.suffix(2000))")
    }

    @Test func configErrorsNameTheLocalStep() throws {
        func errors(_ yaml: String) -> String {
            do {
                _ = try ConfigLoader.parse(yaml, file: "config.yaml", baseDirectory: "/srv/mqi")
                return ""
            } catch {
                return "\(error)"
            }
        }
        let early = errors("""
            scanner: { local_logdata: ./data }
            workflows:
              w:
                - { name: report, type: local }
                - { name: download_results, type: download }
            remote_commands:
              report: "make-report"
            """)
        #expect(early.contains("config.yaml:4:") && early.contains("put it after a download step"), "\(early)")
        let gpu = errors("""
            scanner: { local_logdata: ./data }
            workflows:
              w:
                - { name: download_results, type: download }
                - { name: report, type: local, gpus: 1 }
            remote_commands:
              report: "make-report {results_dir}"
            """)
        #expect(gpu.contains("config.yaml:5:") && gpu.contains("takes no HPC GPU"), "\(gpu)")
        let missing = errors("""
            scanner: { local_logdata: ./data }
            workflows:
              w:
                - { name: download_results, type: download }
                - { name: report, type: local }
            """)
        #expect(missing.contains("local step 'report' has no command"), "\(missing)")
    }
}
