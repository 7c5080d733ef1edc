import Foundation
import MQICore
import MQIMetrics
import MQIStore
import MQITestSupport
import MQITransport
import Testing
@testable import MQIServices

/// The whole pipeline over a real sshd on 127.0.0.1 (the "HPC" is this machine, reached by ssh).
@Suite(.serialized, .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync (scripts/test installs them)"))
struct SSHEndToEndTests {
    /// A demo site whose `hpc:` section points at `server`, with a simulation ledger.
    static func site(_ server: SSHServer, cases: Int, knownHosts: String? = nil) throws -> (TemporaryDirectory, Config, ledger: String) {
        let temp = try TemporaryDirectory("mqi-ssh-e2e")
        let site = try DemoSite.create(at: temp.file("site"), cases: cases)
        let ledger = temp.file("ledger.txt")
        var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        text = text.replacingOccurrences(of: "hpc:\n  transport: local\n  gpus: [0, 1]", with: server.hpcYAML(gpus: [0, 1], knownHosts: knownHosts))
        text = text.replacingOccurrences(of: "run_moqui_sim:   \"", with: "run_moqui_sim:   \"MQI_DEMO_LEDGER=\(ShellQuote.quote(ledger)) ")
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: site.configPath)
        #expect(config.hpc.transport == .ssh)
        return (temp, config, ledger)
    }

    static func simulationsPerCase(_ ledger: String) -> [String: Int] {
        let text = (try? String(contentsOfFile: ledger, encoding: .utf8)) ?? ""
        var counts: [String: Int] = [:]
        for line in text.split(separator: "\n") {
            let caseDir = line.split(separator: " ").dropLast(3).joined(separator: " ")
            counts[(caseDir as NSString).lastPathComponent, default: 0] += 1
        }
        return counts
    }

    static func expectAllCompletedOnce(_ config: Config, ledger: String, cases: Int) async throws {
        let store = try Daemon.openStore(config)
        let all = try await store.cases()
        #expect(all.count == cases)
        #expect(all.allSatisfy { $0.status == .completed }, "\(all.filter { $0.status != .completed }.map { "\($0.caseId): \($0.status.rawValue) \($0.error ?? "")" })")
        let runs = simulationsPerCase(ledger)
        for summary in all {
            #expect(runs[summary.caseId] == 1, "\(summary.caseId) simulated \(runs[summary.caseId] ?? 0) times")
            #expect(ResultManifest.verifyResults(at: (config.conductor.resultsDir as NSString).appendingPathComponent(summary.caseId)))
        }
        #expect(try await store.gpus().allSatisfy { $0.status == .free })
    }

    @Test(.timeLimit(.minutes(4)))
    func tenCasesOverOneSharedConnection() async throws {
        let server = try SSHServer()
        defer { server.stop(); server.remove() }
        try await server.start()
        let (temp, config, ledger) = try Self.site(server, cases: 10)
        defer { temp.remove() }
        let metrics = MQIMetrics()
        let started = Date()
        try await Daemon(config: config, logger: CapturedLogs().logger(level: .info), exitWhenIdle: true, metrics: metrics).run()
        print("10 cases over ssh took \(String(format: "%.1f", Date().timeIntervalSince(started))) s; sshd accepted \(server.acceptedConnections) connection(s)")
        try await Self.expectAllCompletedOnce(config, ledger: ledger, cases: 10)
        #expect(server.acceptedConnections <= 3, "connection budget: sshd accepted \(server.acceptedConnections) connections")
        #expect(metrics.registry.emitToString().contains("mqi_ssh_connections_opened_total \(server.acceptedConnections)"))
    }

    @Test(.timeLimit(.minutes(4)))
    func aMismatchedHostKeyFailsClearlyAndCompletesNothing() async throws {
        let server = try SSHServer()
        defer { server.stop(); server.remove() }
        try await server.start()
        let wrong = try server.writeMismatchedKnownHosts()
        let (temp, config, _) = try Self.site(server, cases: 2, knownHosts: wrong)
        defer { temp.remove() }
        try await Daemon(config: config, logger: CapturedLogs().logger(level: .info), exitWhenIdle: true).run()
        let all = try await Daemon.openStore(config).cases()
        #expect(all.count == 2)
        #expect(!all.contains { $0.status == .completed })
        for summary in all {
            #expect(summary.status == .failed)
            #expect(summary.error?.lowercased().contains("host key") == true, "\(summary.error ?? "")")
        }
        #expect(server.acceptedConnections == 0)
    }

    @Test(.timeLimit(.minutes(5)))
    func sshdCrashesTwiceDuringARunAndEveryCaseStillCompletesOnce() async throws {
        let server = try SSHServer()
        defer { server.stop(); server.remove() }
        try await server.start()
        let (temp, config, ledger) = try Self.site(server, cases: 10)
        defer { temp.remove() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await Daemon(config: config, logger: CapturedLogs().logger(level: .info), exitWhenIdle: true).run()
            }
            for _ in 1...2 {
                try await Task.sleep(for: .seconds(3))
                server.killAll()
                try await Task.sleep(for: .seconds(2))
                try await server.restart()
            }
            try await group.next()
        }
        try await Self.expectAllCompletedOnce(config, ledger: ledger, cases: 10)
    }

    @Test(.timeLimit(.minutes(4)))
    func killMinusNineDuringARemoteStepThenTheRestartAdoptsIt() async throws {
        let server = try SSHServer()
        defer { server.stop(); server.remove() }
        try await server.start()
        let (temp, siteConfig, ledger) = try Self.site(server, cases: 3)
        defer { temp.remove() }
        // A 6 s simulation: still running when the daemon is killed, even on a loaded machine.
        var text = try String(contentsOfFile: siteConfig.sourcePath, encoding: .utf8)
        text = text.replacingOccurrences(of: "MQI_DEMO_LEDGER=", with: "MQI_DEMO_SIM_MS=6000 MQI_DEMO_LEDGER=")
        try text.write(toFile: siteConfig.sourcePath, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: siteConfig.sourcePath)
        let firstCase = DemoSite.caseID(1)
        let runDir = (config.conductor.uploadDir as NSString).appendingPathComponent(".mqi-runs/\(firstCase)/run_moqui_sim.1")
        let daemon = try MQIProcess(["run", "--config", config.sourcePath, "--log-format", "text"], output: temp.file("first.log"))
        #expect(await eventually(within: 60) { FileManager.default.fileExists(atPath: runDir + "/pid") }, "\(daemon.output.suffix(2000))")
        daemon.signal(SIGKILL)
        _ = await daemon.wait(upTo: 10)
        #expect(!FileManager.default.fileExists(atPath: runDir + "/exit_code"), "the step was still running when the daemon died")
        let again = try MQIProcess(["run", "--config", config.sourcePath, "--exit-when-idle", "--log-format", "text"], output: temp.file("second.log"))
        #expect(await again.wait(upTo: 150) == 0, "\(again.output.suffix(2000))")
        try await Self.expectAllCompletedOnce(config, ledger: ledger, cases: 3)
    }
}
