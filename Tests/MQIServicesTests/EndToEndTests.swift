import Foundation
import Logging
import MQICore
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// Real processes, a real SQLite file: the whole pipeline on the demo site's stand-in scripts.
@Suite(.serialized)
struct EndToEndTests {
    /// A demo site whose stand-in scripts append to a ledger (one line per simulation run).
    static func site(cases: Int, gpus: [Int] = [0, 1]) throws -> (TemporaryDirectory, Config, ledger: String) {
        let temp = try TemporaryDirectory("mqi-e2e")
        let site = try DemoSite.create(at: temp.file("site"), cases: cases, gpus: gpus)
        let ledger = temp.file("ledger.txt")
        var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        text = text.replacingOccurrences(of: "run_moqui_sim:   \"", with: "run_moqui_sim:   \"MQI_DEMO_LEDGER=\(ShellQuote.quote(ledger)) ")
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        return (temp, try ConfigLoader.load(path: site.configPath), ledger)
    }

    struct LedgerLine {
        var caseDir: String
        var gpu: Int
        var start: Int64
        var end: Int64
    }

    static func ledger(_ path: String) throws -> [LedgerLine] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").compactMap { line in
            let parts = line.split(separator: " ")
            guard parts.count >= 4, let gpu = Int(parts[parts.count - 3]), let start = Int64(parts[parts.count - 2]),
                  let end = Int64(parts[parts.count - 1]) else { return nil }
            return LedgerLine(caseDir: parts.dropLast(3).joined(separator: " "), gpu: gpu, start: start, end: end)
        }
    }

    /// The most simulations that overlapped in time.
    static func maxConcurrency(_ lines: [LedgerLine]) -> Int {
        var edges: [(time: Int64, delta: Int)] = []
        for line in lines {
            edges.append((line.start, 1))
            edges.append((line.end, -1))
        }
        edges.sort { a, b in a.time == b.time ? a.delta < b.delta : a.time < b.time }
        var current = 0, best = 0
        for edge in edges {
            current += edge.delta
            best = max(best, current)
        }
        return best
    }

    @Test(.timeLimit(.minutes(3)))
    func twentyCasesOnTwoGPUs() async throws {
        let (temp, config, ledgerPath) = try Self.site(cases: 20)
        defer { temp.remove() }
        let logs = CapturedLogs()
        let started = Date()
        try await Daemon(config: config, logger: logs.logger(level: .info), exitWhenIdle: true).run()
        let elapsed = Date().timeIntervalSince(started)
        print("20-case end-to-end run took \(String(format: "%.1f", elapsed)) s")

        let store = try Daemon.openStore(config)
        let cases = try await store.cases()
        #expect(cases.count == 20)
        #expect(cases.allSatisfy { $0.status == .completed }, "\(cases.filter { $0.status != .completed }.map { "\($0.caseId): \($0.status) \($0.error ?? "")" })")
        #expect(cases.allSatisfy { $0.progress == 100 && $0.gpuIds.isEmpty })
        for summary in cases {
            let results = (config.conductor.resultsDir as NSString).appendingPathComponent(summary.caseId)
            let files = (try? FileManager.default.contentsOfDirectory(atPath: results)) ?? []
            #expect(files.contains("moqui_summary.txt"), "results of \(summary.caseId): \(files)")
            #expect(files.contains { $0.hasPrefix("RTDOSE") })
        }
        let gpus = try await store.gpus()
        #expect(gpus.map(\.gpuId) == [0, 1])
        #expect(gpus.allSatisfy { $0.status == .free && $0.reservedBy == nil })

        let runs = try Self.ledger(ledgerPath)
        let perCase = Dictionary(grouping: runs, by: { ($0.caseDir as NSString).lastPathComponent })
        #expect(perCase.count == 20)
        #expect(perCase.values.allSatisfy { $0.count == 1 }, "each simulation runs exactly once per case")
        #expect(Self.maxConcurrency(runs) <= 2, "never more than 2 simulations at once")
        #expect(Set(runs.map(\.gpu)).isSubset(of: [0, 1]))
        // Two simulations that overlap never share a GPU.
        for a in runs {
            for b in runs where a.caseDir < b.caseDir && a.start < b.end && b.start < a.end {
                #expect(a.gpu != b.gpu, "\(a.caseDir) and \(b.caseDir) overlapped on GPU \(a.gpu)")
            }
        }
        #expect(try await store.activity().isIdle)
        #expect(try await store.deadLetters().isEmpty)
    }

    @Test(.timeLimit(.minutes(4)))
    func failingSimulationFailsTheCaseWithItsOutputAndFreesTheGPU() async throws {
        let (temp, config, _) = try Self.site(cases: 3, gpus: [0])
        defer { temp.remove() }
        let victim = try #require(try FileManager.default.contentsOfDirectory(atPath: config.scanner.localLogdata).sorted().first)
        var broken = config
        for (name, workflow) in broken.workflows {
            broken.workflows[name]?.steps = workflow.steps.map { step in
                guard step.name == "run_moqui_sim", let command = step.command else { return step }
                var step = step
                step.command = try? CommandTemplate("MQI_DEMO_FAIL_CASE=\(ShellQuote.quote(victim)) " + command.source)
                return step
            }
        }
        let logs = CapturedLogs()
        try await Daemon(config: broken, logger: logs.logger(level: .info), exitWhenIdle: true).run()
        let store = try Daemon.openStore(config)
        let failed = try #require(try await store.caseSummary(victim))
        #expect(failed.status == .failed)
        #expect(failed.workflowStep == "run_moqui_sim")
        // The engine prints FATAL ERROR and exits 3: the poll that sees it first reports either its
        // exit status or the matched line (and kills its process group); both name the error.
        #expect(failed.error?.contains("exit status 3") == true || failed.error?.contains("the engine reported a failure: FATAL ERROR") == true,
                "\(failed.error ?? "")")
        #expect(failed.error?.contains("FATAL ERROR") == true)
        let others = try await store.cases().filter { $0.caseId != victim }
        #expect(others.count == 2 && others.allSatisfy { $0.status == .completed })
        #expect(try await store.gpus().allSatisfy { $0.status == .free })

        // Retry runs the failed step again as attempt 2 (it fails again: the fault is still configured).
        let conductor = Conductor(config: config)
        let applied = try await store.conduct(.retry, caseId: victim, conductor: conductor)
        #expect(applied.first?.decision.state.status == .processing)
        #expect(applied.first?.decision.state.attempt == 2)
        #expect(applied.first?.decision.commands.first?.kind == .executeCommand)
        // The original (working) config runs the retried step to completion.
        try await Daemon(config: config, logger: logs.logger(level: .info), exitWhenIdle: true).run()
        let retried = try #require(try await store.caseSummary(victim))
        #expect(retried.status == .completed, "\(retried.error ?? "")")
        let logsDir = (config.state.logsDir as NSString).appendingPathComponent(victim)
        let stepLogs = try FileManager.default.contentsOfDirectory(atPath: logsDir)
        #expect(stepLogs.contains("run_moqui_sim.1.log") && stepLogs.contains("run_moqui_sim.2.log"), "a fresh log per attempt: \(stepLogs)")
    }
}
