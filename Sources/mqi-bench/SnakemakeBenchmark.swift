import Foundation
import MQICore
import MQIServices
import MQIStore

/// Figure 8: the same work under Snakemake and under `mqi run --exit-when-idle`, side by side in
/// one run: `cases` cases, each the 4-step chain (upload = copy the case directory, two no-op
/// commands, download = copy the result back), `cores` jobs at a time in Snakemake and as many
/// GPUs in mqi. Wall time from process start to exit for both.
///
/// Snakemake is installed with pip into a venv under the user's cache directory
/// (`~/.cache/mqi-bench/snakemake-<version>-venv`, reused when present), outside the measurement.
enum SnakemakeBenchmark {
    /// Pinned: checked to install and run with Python 3.11 (Snakemake 9 needs >= 3.11).
    static let version = "9.27.1"
    /// mqi's wall over Snakemake's.
    static let goal = 0.15

    static func run(cases: Int, cores: Int, rounds: Int, mqi: String, keep: Bool) async throws -> [Figure] {
        let section = "8. Snakemake side by side (\(cases) cases x 4 steps, no-op commands, \(cores) at a time)"
        let name = "mqi run --exit-when-idle wall / snakemake --cores \(cores) wall"
        let snakemake: String
        let install: Double?
        do {
            (snakemake, install) = try venv()
        } catch {
            return [.notAvailable(section, name, unit: "x", goal: "<= \(goal) x", note: "n/a (no Snakemake: \(error))")]
        }

        var smkRuns: [(wall: Double, cpu: Double)] = []
        var mqiRuns: [MQIRun] = []
        let dir = try BenchDirectory("snakemake")
        defer { if !keep { dir.remove() } }
        // Page cache and the Python byte code warm for both, outside the measurement.
        _ = try timedRun(snakemake, ["--version"])
        _ = try timedRun(mqi, ["--help"])
        for round in 1...rounds {
            // Alternating which goes first, so neither always runs on a machine the other has just warmed.
            let order = round % 2 == 1 ? ["snakemake", "mqi"] : ["mqi", "snakemake"]
            for tool in order {
                progress("snakemake: round \(round) of \(rounds), \(tool)")
                let site = dir.file("\(tool)-\(round)")
                try writeSite(site, cases: cases, cores: cores, cleanup: false)
                if tool == "snakemake" {
                    smkRuns.append(try runSnakemake(snakemake, site: site, cores: cores, cases: cases))
                } else {
                    mqiRuns.append(try await runMQI(mqi, site: site, cases: cases))
                }
            }
        }
        // mqi as configured by default: it also removes each case's copies on the HPC once its
        // results are verified (hpc.cleanup: after_download), which the Snakefile does not do.
        progress("snakemake: mqi with hpc.cleanup: after_download")
        let withCleanupSite = dir.file("mqi-cleanup")
        try writeSite(withCleanupSite, cases: cases, cores: cores, cleanup: true)
        let withCleanup = try await runMQI(mqi, site: withCleanupSite, cases: cases)

        let smk = ScaleBenchmark.median(smkRuns.map(\.wall)), smkCPU = ScaleBenchmark.median(smkRuns.map(\.cpu))
        let mqiCPU = ScaleBenchmark.median(mqiRuns.map(\.cpu))
        let middle = mqiRuns.sorted { $0.wall < $1.wall }[mqiRuns.count / 2]
        let steps = Double(cases * 4)
        let venvNote = install.map { "venv installed in \(fmt($0)) s, not measured" } ?? "venv reused"
        return [
            .info(section, "snakemake --cores \(cores) wall (median of \(rounds))", smk, unit: "s",
                  note: "Snakemake \(version) (\(venvNote): \(venvDirectory())); \(fmt(steps / smk)) steps/s; runs \(smkRuns.map { fmt($0.wall) }.joined(separator: ", ")) s; CPU \(fmt(smkCPU)) s with its jobs"),
            .info(section, "mqi run --exit-when-idle wall (median of \(rounds))", middle.wall, unit: "s",
                  note: "hpc.cleanup: never (the Snakefile removes nothing either); \(fmt(steps / middle.wall)) steps/s; runs \(mqiRuns.map { fmt($0.wall) }.joined(separator: ", ")) s; CPU \(fmt(mqiCPU)) s with its commands (\(String(format: "%.2f", mqiCPU / max(smkCPU, 1e-6)))x Snakemake's)"),
            .goal(section, name, middle.wall / smk, unit: "x", limit: goal,
                  baseline: "\(String(format: "%.1f", smk / middle.wall))x faster than Snakemake \(version), same run"),
            .info(section, "  of which: mqi process start -> first case registered", middle.startUp * 1000, unit: "ms",
                  note: "start-up and the first scan (the median run)"),
            .info(section, "  of which: first case registered -> last COMPLETED", middle.work * 1000, unit: "ms",
                  note: "\(fmt(steps / middle.work)) steps/s while working; \(String(format: "%.3f", (middle.startUp + middle.work) / smk)) x Snakemake's wall up to here"),
            .info(section, "  of which: last COMPLETED -> idle seen (--exit-when-idle)", middle.idleSeen.map { $0 * 1000 }, unit: "ms",
                  note: "the IdleWatcher looks as soon as the Conductor's queue drains: idle, a scan, idle again"),
            .info(section, "  of which: idle seen -> process exit", middle.idleSeen.map { (middle.exit - $0) * 1000 }, unit: "ms",
                  note: "graceful shutdown of the service group"),
            .info(section, "mqi run --exit-when-idle wall with hpc.cleanup: after_download (the default)", withCleanup.wall, unit: "s",
                  note: "last COMPLETED -> exit \(fmt(withCleanup.exit * 1000)) ms: the cleanup wakes on each finished download and the idle check follows it; \(String(format: "%.3f", withCleanup.wall / smk)) x Snakemake"),
        ]
    }

    // MARK: the venv

    static func venvDirectory() -> String {
        let environment = ProcessInfo.processInfo.environment
        let cache = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (NSHomeDirectory() as NSString).appendingPathComponent(".cache")
        return [cache, "mqi-bench", "snakemake-\(version)-venv"].reduce("") { ($0 as NSString).appendingPathComponent($1) }
    }

    /// The venv's `snakemake`, and the seconds an install took (nil when the venv was reused).
    static func venv() throws -> (String, Double?) {
        let directory = venvDirectory()
        let snakemake = (directory as NSString).appendingPathComponent("bin/snakemake")
        if installedVersion(snakemake) == version { return (snakemake, nil) }
        progress("snakemake: creating \(directory) (python3 -m venv; pip install snakemake==\(version)); not measured")
        let started = nowEpoch()
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: (directory as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let log = (directory as NSString).deletingLastPathComponent + "/snakemake-\(version)-install.log"
        let made = try timedRun("/usr/bin/env", ["python3", "-m", "venv", directory], outputPath: log, errorsToOutput: true)
        guard made.status == 0 else { throw BenchError("python3 -m venv (python3 on PATH) failed (exit \(made.status)); see \(log)") }
        let pip = (directory as NSString).appendingPathComponent("bin/pip")
        let installed = try timedRun(pip, ["install", "--disable-pip-version-check", "-q", "snakemake==\(version)"],
                                     outputPath: log, errorsToOutput: true, append: true)
        guard installed.status == 0, installedVersion(snakemake) == version else {
            try? FileManager.default.removeItem(atPath: directory)
            throw BenchError("pip install snakemake==\(version) failed (exit \(installed.status)); see \(log)")
        }
        return (snakemake, nowEpoch() - started)
    }

    static func installedVersion(_ snakemake: String) -> String? {
        guard FileManager.default.isExecutableFile(atPath: snakemake) else { return nil }
        let out = NSTemporaryDirectory() + "mqi-bench-snakemake-version-\(ProcessInfo.processInfo.processIdentifier)"
        defer { try? FileManager.default.removeItem(atPath: out) }
        guard let run = try? timedRun(snakemake, ["--version"], outputPath: out), run.status == 0 else { return nil }
        return (try? String(contentsOfFile: out, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    // MARK: the site

    /// One site for one run of one tool: `data/<case>` in the clinic layout with its ready
    /// marker, the result the no-op simulation "produced" in `hpc/download/<case>`, mqi's
    /// config (`cores` GPUs, `true` as both execute commands) and the equivalent Snakefile.
    static func writeSite(_ path: String, cases: Int, cores: Int, cleanup: Bool) throws {
        var config = benchConfigText(gpus: cores, interpreter: "true", simulation: "true")
        if !cleanup {
            config = config.replacingOccurrences(of: "hpc: { transport: local,", with: "hpc: { transport: local, cleanup: never,")
        }
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try config.write(toFile: (path as NSString).appendingPathComponent("config.yaml"), atomically: true, encoding: .utf8)
        let ids = (1...cases).map { String(format: "BENCH-%05d", $0) }
        for id in ids {
            try DemoSite.writeCase(named: id, in: (path as NSString).appendingPathComponent("data"), beams: 1)
            let result = [path, "hpc/download", id].reduce("") { ($0 as NSString).appendingPathComponent($1) }
            try FileManager.default.createDirectory(atPath: result, withIntermediateDirectories: true)
            try Data("dose of \(id)\n".utf8).write(to: URL(fileURLWithPath: (result as NSString).appendingPathComponent("dose.txt")))
        }
        try (ids.joined(separator: "\n") + "\n").write(toFile: (path as NSString).appendingPathComponent("cases.txt"), atomically: true, encoding: .utf8)
        try snakefile.write(toFile: (path as NSString).appendingPathComponent("Snakefile"), atomically: true, encoding: .utf8)
    }

    /// mqi's 4 steps as Snakemake rules. Snakemake tracks files, so each no-op command also
    /// touches its output (mqi's wrapper likewise records each command's exit in its run
    /// directory); the upload and download copy the same directories mqi copies.
    static let snakefile = """
        CASES = [line.strip() for line in open("cases.txt") if line.strip()]

        rule all:
            input: expand("var/results/{case}", case=CASES)

        rule upload_case_files:
            input: "data/{case}/_CASE_READY"
            output: directory("hpc/upload/{case}")
            shell: "cp -R data/{wildcards.case} {output}"

        rule run_interpreter:
            input: "hpc/upload/{case}"
            output: "run/{case}/run_interpreter.done"
            shell: "true; touch {output}"

        rule run_moqui_sim:
            input: "run/{case}/run_interpreter.done"
            output: "run/{case}/run_moqui_sim.done"
            shell: "true; touch {output}"

        rule download_results:
            input: "run/{case}/run_moqui_sim.done"
            output: directory("var/results/{case}")
            shell: "cp -R hpc/download/{wildcards.case} {output}"

        """

    // MARK: the runs

    /// `snakemake --cores N --snakefile Snakefile` in the site (defaults otherwise: its lock and
    /// `.snakemake` metadata are its durable state, as the database is mqi's; log to a file).
    static func runSnakemake(_ snakemake: String, site: String, cores: Int, cases: Int) throws -> (wall: Double, cpu: Double) {
        let log = (site as NSString).appendingPathComponent("snakemake.log")
        let run = try timedRun(snakemake, ["--cores", String(cores), "--snakefile", "Snakefile"], outputPath: log,
                               errorsToOutput: true, directory: site)
        let results = (try? FileManager.default.contentsOfDirectory(atPath: (site as NSString).appendingPathComponent("var/results"))) ?? []
        guard run.status == 0, results.count == cases else {
            throw BenchError("snakemake exited with \(run.status) and \(results.count) of \(cases) results; see \(log)")
        }
        return (run.seconds, run.cpuSeconds)
    }

    /// One `mqi run`: its wall and where the time went, in seconds.
    struct MQIRun {
        var wall: Double
        /// Process start to the first case's registration.
        var startUp: Double
        /// First registration to the last COMPLETED.
        var work: Double
        /// Last COMPLETED to process exit.
        var exit: Double
        /// Last COMPLETED to the IdleWatcher's "nothing left to do" line (nil without it).
        var idleSeen: Double?
        /// CPU seconds of the daemon and the commands it waited for.
        var cpu: Double
    }

    /// `mqi run --config config.yaml --exit-when-idle --log-format json` in the site.
    static func runMQI(_ mqi: String, site: String, cases: Int) async throws -> MQIRun {
        let log = (site as NSString).appendingPathComponent("daemon.log")
        let started = nowEpoch()
        let run = try timedRun(mqi, ["run", "--config", "config.yaml", "--exit-when-idle", "--log-format", "json"], outputPath: log,
                               errorsToOutput: true, directory: site)
        let ended = started + run.seconds
        let configPath = (site as NSString).appendingPathComponent("config.yaml")
        let config = try ConfigLoader.parse(try String(contentsOfFile: configPath, encoding: .utf8), file: configPath, baseDirectory: site)
        let times = try await Daemon.openStore(config).benchCaseTimes()
        let completed = times.values.filter { $0.status == CaseStatus.completed.rawValue }
        guard run.status == 0, completed.count == cases, let last = completed.compactMap({ $0.finished?.timeIntervalSince1970 }).max(),
              let first = times.values.map({ $0.created.timeIntervalSince1970 }).min() else {
            throw BenchError("mqi run exited with \(run.status) and \(completed.count) of \(cases) cases COMPLETED; see \(log)")
        }
        return MQIRun(wall: run.seconds, startUp: first - started, work: last - first, exit: ended - last,
                      idleSeen: logTime(log, containing: "nothing left to do").map { $0 - last }, cpu: run.cpuSeconds)
    }

    /// The `timestamp` of the first JSON log line whose message contains `text`.
    static func logTime(_ log: String, containing text: String) -> Double? {
        let lines = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n")
        guard let line = lines.first(where: { $0.contains(text) }),
              let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let stamp = object["timestamp"] as? String,
              let date = try? Date(stamp, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)) else { return nil }
        return date.timeIntervalSince1970
    }
}
