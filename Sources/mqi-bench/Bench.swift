import ArgumentParser
import Foundation

/// `swift run -c release mqi-bench [--quick] [--json FILE]`: the figures that say how fast and
/// how light the communicator is, each with its goal, measured side by side in one run.
@main
struct MQIBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mqi-bench",
        abstract: "Measure orchestration overhead, detection latency, GPU scheduling, scale, SSH, beam and Slurm figures, and mqi beside Snakemake.")

    @Flag(help: "Smaller runs (under 5 minutes): 200 cases for the orchestration figure, 20 for GPU scheduling.")
    var quick = false
    @Option(help: "Also write the figures as JSON to this file.")
    var json: String?
    @Option(help: "Run only these sections (comma-separated: orchestration, detection, gpu, scale, ssh, beams, slurm, snakemake, logging, postgres; slurm skips itself without Slurm, snakemake without python3 and pip (it installs Snakemake into a venv under ~/.cache/mqi-bench once); postgres is run only when named).")
    var only: String?
    @Flag(help: "Keep the temporary directories (for inspection).")
    var keep = false
    @Option(help: "The mqi binary (default: next to this executable).")
    var mqi: String?

    func run() async throws {
        let sections = Set((only ?? "orchestration,detection,gpu,scale,ssh,beams,slurm,snakemake,logging").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        let started = nowEpoch()
        var figures: [Figure] = []
        if sections.contains("orchestration") {
            figures += try await DaemonBenchmarks.orchestration(cases: quick ? 200 : 1000, keep: keep)
        }
        if sections.contains("detection") {
            figures += try await DaemonBenchmarks.detection(cases: 200, intervalMs: 20, keep: keep)
        }
        if sections.contains("gpu") {
            figures += try await DaemonBenchmarks.gpuScheduling(cases: quick ? 20 : 40, gpus: 4, simSeconds: 1, keep: keep)
        }
        if sections.contains("scale") {
            let binary = try mqi ?? MQIBinary.locate()
            figures += try await ScaleBenchmark.run(cases: 100_000, mqi: binary, keep: keep)
        }
        if sections.contains("ssh") {
            figures += await SSHFigures.run(quick: quick)
            figures += await SSHSessionFigures.run(quick: quick)
        }
        if sections.contains("beams") {
            figures += try await BeamBenchmark.run(beams: 4, gpus: 4, secondsPerBeam: 1, rounds: quick ? 3 : 5, keep: keep)
        }
        if sections.contains("slurm") {
            figures += try await SlurmBenchmark.run(cases: quick ? 10 : 30, pollSec: 0.5, mqi: mqi, keep: keep)
        }
        if sections.contains("snakemake") {
            let binary = try mqi ?? MQIBinary.locate()
            figures += try await SnakemakeBenchmark.run(cases: 50, cores: 2, rounds: quick ? 1 : 3, mqi: binary, keep: keep)
        }
        if sections.contains("logging") {
            figures += try LogFigures.run()
        }
        if sections.contains("postgres") {
            figures += try await DaemonBenchmarks.postgres(cases: quick ? 100 : 300, keep: keep)
        }
        let total = nowEpoch() - started
        print(Table.render(figures, title: "mqi-bench\(quick ? " --quick" : "") on \(ProcessInfo.processInfo.activeProcessorCount) cores, \(fmt(total)) s"))
        if let json {
            struct Report: Encodable {
                var quick: Bool
                var cores: Int
                var seconds: Double
                var date: Date
                var figures: [Figure]
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            encoder.dateEncodingStrategy = .iso8601
            let data = try encoder.encode(Report(quick: quick, cores: ProcessInfo.processInfo.activeProcessorCount, seconds: total, date: Date(), figures: figures))
            try data.write(to: URL(fileURLWithPath: json))
        }
    }
}

/// Finds the `mqi` binary in the same build directory as this executable, building it (outside
/// any measurement) when it is missing or older than this executable.
enum MQIBinary {
    static func locate() throws -> String {
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        let directory = (me as NSString).deletingLastPathComponent
        let candidate = (directory as NSString).appendingPathComponent("mqi")
        let fresh = { () -> Bool in
            guard let binary = mtime(candidate), let bench = mtime(me) else { return false }
            return binary >= bench - 120
        }
        if FileManager.default.isExecutableFile(atPath: candidate), fresh() { return candidate }
        // .../<package>/.build/<triple>/<configuration>/mqi-bench
        var root = directory
        while root != "/", !FileManager.default.fileExists(atPath: (root as NSString).appendingPathComponent("Package.swift")) {
            root = (root as NSString).deletingLastPathComponent
        }
        guard root != "/" else {
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
            throw BenchError("no mqi binary next to \(me); pass --mqi PATH")
        }
        let configuration = directory.contains("/debug") ? "debug" : "release"
        progress("building the mqi binary (swift build -c \(configuration) --product mqi); not measured")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["swift", "build", "-c", configuration, "--product", "mqi"]
        process.currentDirectoryURL = URL(fileURLWithPath: root)
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0, FileManager.default.isExecutableFile(atPath: candidate) else {
            throw BenchError("could not build the mqi binary; run `swift build -c \(configuration) --product mqi` or pass --mqi PATH")
        }
        return candidate
    }
}

enum Table {
    static func render(_ figures: [Figure], title: String) -> String {
        var lines = [title, ""]
        var sections: [String] = []
        for figure in figures where !sections.contains(figure.section) { sections.append(figure.section) }
        let header = ["figure", "value", "goal", "result", "baseline / note"]
        var rows: [[String]] = []
        var sectionRows: [(String, Int)] = []
        for section in sections {
            sectionRows.append((section, rows.count))
            for figure in figures where figure.section == section {
                let value = figure.value.map { figure.unit == "x" ? String(format: "%.3f x", $0) : "\(fmt($0)) \(figure.unit)" } ?? (figure.note?.hasPrefix("n/a") == true ? figure.note! : "n/a")
                let extra = [figure.baseline, figure.value == nil && figure.note?.hasPrefix("n/a") == true ? nil : figure.note]
                    .compactMap { $0 }.joined(separator: "; ")
                rows.append([figure.name, value, figure.goal.isEmpty ? "-" : figure.goal, figure.verdict.rawValue, extra])
            }
        }
        var widths = header.map(\.count)
        for row in rows { for (index, cell) in row.enumerated() where index < 4 { widths[index] = max(widths[index], cell.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index < 4 ? "| " + cell.padding(toLength: widths[index], withPad: " ", startingAt: 0) + " " : "| " + cell
            }.joined()
        }
        lines.append(line(header))
        lines.append(line(widths.prefix(4).map { String(repeating: "-", count: $0) } + ["---"]))
        var next = 0
        for (section, start) in sectionRows {
            let end = sectionRows.first { $0.1 > start }?.1 ?? rows.count
            lines.append("| **" + section + "**")
            while next < end {
                lines.append(line(rows[next]))
                next += 1
            }
        }
        let misses = figures.filter { $0.verdict == .miss }.count
        let passes = figures.filter { $0.verdict == .pass }.count
        lines.append("")
        lines.append("\(passes) PASS, \(misses) MISS")
        return lines.joined(separator: "\n")
    }
}


