import Foundation
import MQICore
import MQIServices
import MQIStore
import MQITestSupport
import MQITransport
#if canImport(Glibc)
import Glibc
#endif

/// Section 7: `hpc.executor: slurm` on a private single-node Slurm (`scripts/slurm-cluster`, two
/// fake GPUs). The real `mqi` binary runs cases of upload → no-op → no-op (which leaves a result
/// file for the download) → download, one case at a time; a bash loop of raw `sbatch` runs the
/// same no-ops on the same cluster in the same run, waiting for each job's end with `squeue` at the communicator's poll interval. Both no-ops log
/// their start and end (`date +%s%N`) to a ledger; the submission time is the moment just before
/// `sbatch` ran (the communicator: the mtime of the run directory's `job.sh`, written right
/// before its `sbatch`; the loop: `date +%s%N` right before its `sbatch`).
enum SlurmBenchmark {
    /// One case's two latencies, in seconds.
    struct Sample {
        /// For each execute step: `sbatch` → the command's first line.
        var submitToStart: [Double]
        /// The first no-op's last line → the second no-op's first line.
        var endToNextStart: Double
    }

    static func run(cases: Int, pollSec: Double, mqi: String?, keep: Bool) async throws -> [Figure] {
        let section = "7. Slurm executor (single-node Slurm, \(cases) cases one at a time, squeue every \(fmt(pollSec)) s)"
        guard SlurmCluster.isAvailable else {
            return [.notAvailable(section, "execute step: sbatch -> command start (p50)", unit: "x", goal: "<= 1.2 x",
                                  note: "n/a (Slurm is not installed or not root; scripts/test installs it)")]
        }
        let binary = try mqi ?? MQIBinary.locate()
        progress("slurm: starting a single-node Slurm (scripts/slurm-cluster)")
        let cluster = try SlurmCluster()
        defer { cluster.stop() }
        // The daemon and the loop inherit this process's environment: SLURM_CONF points at the cluster.
        let previousConf = ProcessInfo.processInfo.environment["SLURM_CONF"]
        setenv("SLURM_CONF", cluster.confPath, 1)
        defer {
            if let previousConf { setenv("SLURM_CONF", previousConf, 1) } else { unsetenv("SLURM_CONF") }
        }

        progress("slurm: raw sbatch loop, \(cases) cases")
        let raw = try rawLoop(cases: cases, pollSec: pollSec, keep: keep)
        progress("slurm: mqi run (executor: slurm), \(cases) cases")
        let communicator = try await communicatorRun(cases: cases, pollSec: pollSec, mqi: binary, keep: keep)

        func ms(_ values: [Double], _ p: Double) -> Double? { percentile(values, p).map { $0 * 1000 } }
        let mqiSubmit = communicator.flatMap(\.submitToStart), rawSubmit = raw.flatMap(\.submitToStart)
        let mqiNext = communicator.map(\.endToNextStart), rawNext = raw.map(\.endToNextStart)
        func ratio(_ a: [Double], _ b: [Double]) -> Double? {
            guard let a = percentile(a, 50), let b = percentile(b, 50), b > 0 else { return nil }
            return a / b
        }
        func describe(_ values: [Double]) -> String {
            "p50 \(fmt(ms(values, 50) ?? 0)) ms, p90 \(fmt(ms(values, 90) ?? 0)) ms, n=\(values.count)"
        }
        let setting = "mqi run, transport local, poll_interval_sec \(fmt(pollSec)); raw: bash loop of sbatch --parsable --gres=gpu:1 --wrap, "
            + "squeue -j every \(fmt(pollSec)) s until the job leaves PD/CF/R/CG, then the next sbatch"
        return [
            .info(section, "execute step: sbatch -> command start, communicator (p50)", ms(mqiSubmit, 50), unit: "ms",
                  baseline: "raw sbatch loop \(describe(rawSubmit))", note: "communicator \(describe(mqiSubmit))"),
            .goal(section, "sbatch -> command start: communicator / raw (p50)", ratio(mqiSubmit, rawSubmit), unit: "x", limit: 1.2,
                  baseline: "\(fmt(ms(mqiSubmit, 50) ?? 0)) ms vs \(fmt(ms(rawSubmit, 50) ?? 0)) ms raw, same cluster, same run"),
            .info(section, "no-op 1 end -> no-op 2 start, communicator (p50)", ms(mqiNext, 50), unit: "ms",
                  baseline: "raw sbatch loop \(describe(rawNext))", note: "communicator \(describe(mqiNext))"),
            .goal(section, "no-op 1 end -> no-op 2 start: communicator / raw (p50)", ratio(mqiNext, rawNext), unit: "x", limit: 1.2,
                  baseline: "\(fmt(ms(mqiNext, 50) ?? 0)) ms vs \(fmt(ms(rawNext, 50) ?? 0)) ms raw", note: setting),
        ]
    }

    /// The baseline: for each case, `sbatch` no-op a, wait (squeue every `pollSec`) until it has
    /// left the queue, then `sbatch` no-op b and wait again.
    static func rawLoop(cases: Int, pollSec: Double, keep: Bool) throws -> [Sample] {
        let dir = try BenchDirectory("slurm-raw")
        defer { if !keep { dir.remove() } }
        let ledger = dir.file("ledger.txt")
        _ = FileManager.default.createFile(atPath: ledger, contents: nil)
        let script = dir.file("raw.sh")
        // The same line format as `ledgerCommand` (STEP CASE GPU NS), plus `STEP.submit` lines.
        try """
            #!/bin/bash
            ledger=$1; n=$2; poll=$3
            for i in $(seq 1 "$n"); do
              c=raw$i
              for s in a b; do
                echo "$s.submit $c 0 $(date +%s%N)" >> "$ledger"
                id=$(sbatch --parsable --no-requeue --gres=gpu:1 --output=/dev/null \\
                  --wrap "echo $s $c 0 \\$(date +%s%N) >> '$ledger'; echo $s.end $c 0 \\$(date +%s%N) >> '$ledger'") || exit 3
                id=${id%%;*}
                while [ -n "$(squeue -h -j "$id" -t PD,CF,R,CG -o %T 2>/dev/null)" ]; do sleep "$poll"; done
              done
            done

            """.write(toFile: script, atomically: true, encoding: .utf8)
        let result = try timedRun("/bin/bash", [script, ledger, String(cases), fmt(pollSec)], outputPath: dir.file("raw.out"))
        guard result.status == 0 else { throw BenchError("slurm: the raw sbatch loop exited \(result.status); see \(dir.path) (--keep)") }
        let entries = readLedger(ledger)
        func time(_ step: String, _ caseId: String) -> Double? { entries.first { $0.step == step && $0.caseId == caseId }?.start }
        return (1...cases).compactMap { i in
            let c = "raw\(i)"
            guard let aSubmit = time("a.submit", c), let a = time("a", c), let aEnd = time("a.end", c),
                  let bSubmit = time("b.submit", c), let b = time("b", c) else { return nil }
            return Sample(submitToStart: [a - aSubmit, b - bSubmit], endToNextStart: b - aEnd)
        }
    }

    /// The communicator: `mqi run` on a site with `executor: slurm`; cases are dropped one at a
    /// time, each after the previous one has finished.
    static func communicatorRun(cases: Int, pollSec: Double, mqi: String, keep: Bool) async throws -> [Sample] {
        let dir = try BenchDirectory("slurm-mqi")
        defer { if !keep { dir.remove() } }
        let ledger = dir.file("ledger.txt")
        _ = FileManager.default.createFile(atPath: ledger, contents: nil)
        // hpc.cleanup: never: the figures read each attempt's job.sh after COMPLETED, and the
        // cleanup now removes a case's run directories as soon as its download is verified.
        let text = """
            scanner: { local_logdata: ./data, ready_marker: _CASE_READY, rescan_interval_sec: 1 }
            state: { database: ./var/mqi.sqlite, pid_file: ./var/mqi.pid, logs_dir: ./var/logs }
            hpc: { transport: local, executor: slurm, cleanup: never, slurm: { max_jobs: 32, poll_interval_sec: \(fmt(pollSec)) } }
            conductor:
              remote_paths: { upload_dir: ./hpc/upload, download_dir: ./hpc/download }
              results_dir: ./var/results
            workflows:
              default_qa:
                - { name: upload_case_files, type: upload,   progress: 10 }
                - { name: run_interpreter,   type: execute,  progress: 30, gpus: 1 }
                - { name: run_moqui_sim,     type: execute,  progress: 70, gpus: 1 }
                - { name: download_results,  type: download, progress: 90 }
            remote_commands:
              run_interpreter: \(yamlQuote(ledgerCommand(step: "a", ledger: ledger)))
              run_moqui_sim: \(yamlQuote(ledgerCommand(step: "b", ledger: ledger, tail: "mkdir -p {result_dir} && echo dose > {result_dir}/dose.txt")))
            retry: { max_attempts: 3, initial_delay_sec: 0.1, max_delay_sec: 1, multiplier: 2 }
            metrics: { port: 0 }
            gpu_monitor: { enabled: false }

            """
        let configPath = dir.file("config.yaml")
        try text.write(toFile: configPath, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.parse(text, file: configPath, baseDirectory: dir.path)
        try FileManager.default.createDirectory(atPath: config.scanner.localLogdata, withIntermediateDirectories: true)
        let daemon = try await ScaleBenchmark.startDaemon(mqi: mqi, config: configPath, log: dir.file("daemon.log"))
        defer { daemon.stop() }
        let store = try Daemon.openStore(config)
        let runs = RunDirectories(uploadDir: config.conductor.uploadDir).caseRuns

        var samples: [Sample] = []
        for i in 1...cases {
            let caseId = String(format: "SLURM%03d", i)
            let caseDir = (config.scanner.localLogdata as NSString).appendingPathComponent(caseId)
            try FileManager.default.createDirectory(atPath: caseDir, withIntermediateDirectories: true)
            try "x\n".write(toFile: caseDir + "/PlanInfo.txt", atomically: true, encoding: .utf8)
            _ = FileManager.default.createFile(atPath: caseDir + "/_CASE_READY", contents: nil)
            let deadline = nowEpoch() + 120
            var status: CaseStatus?
            while nowEpoch() < deadline {
                status = try await store.caseSummary(caseId)?.status
                if status == .completed || status == .failed { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            guard status == .completed else {
                throw BenchError("slurm: case \(caseId) ended \(status.map { "\($0)" } ?? "unfinished after 120 s"), not COMPLETED; see \(dir.path) (--keep)")
            }
            let entries = readLedger(ledger)
            func time(_ step: String) -> Double? { entries.last { $0.step == step && $0.caseId == caseId }?.start }
            // The last attempt's job.sh: written by the submit script right before its sbatch.
            func submitted(_ step: String) -> Double? {
                let root = runs(caseId)
                let attempts = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).filter { $0.hasPrefix(step + ".") }
                guard let last = attempts.max(by: { (Int($0.split(separator: ".").last ?? "") ?? 0) < (Int($1.split(separator: ".").last ?? "") ?? 0) })
                else { return nil }
                return mtime((root as NSString).appendingPathComponent(last + "/job.sh"))
            }
            guard let aSubmit = submitted("run_interpreter"), let a = time("a"), let aEnd = time("a.end"),
                  let bSubmit = submitted("run_moqui_sim"), let b = time("b") else {
                throw BenchError("slurm: case \(caseId) left no ledger line or job.sh; see \(dir.path) (--keep)")
            }
            samples.append(Sample(submitToStart: [a - aSubmit, b - bSubmit], endToNextStart: b - aEnd))
        }
        return samples
    }
}
