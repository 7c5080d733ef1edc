import Foundation
import Logging
import MQICore
import MQITestSupport
import MQITransport
import Synchronization

// MARK: - 5. SSH transport: remote sessions and per-command latency
//
// Against a private sshd on 127.0.0.1 whose account's rc file sleeps 0.1 s and counts each
// login-shell start-up (`SSHServer(slowLogin:)`): every ssh session, whatever it runs, starts
// one, as an HPC account that loads environment modules would. Commands run in long-lived
// remote shells (`SSHShell`); the baselines are the same measurements with the shells off
// (a session per command), in the same run.
enum SSHSessionFigures {
    static let section = SSHFigures.section
    static let rcSleep = 0.1

    static func run(quick: Bool) async -> [Figure] {
        guard SSHServer.isAvailable else {
            let note = "n/a (sshd, ssh or rsync not installed)"
            return [
                .notAvailable(section, "remote sessions per minute, 16 steps running", unit: "/min", goal: "<= 60 /min", note: note),
                .notAvailable(section, "per-command latency p50 vs raw ssh true", unit: "x", goal: "<= 0.2 x", note: note),
            ]
        }
        do {
            return try await measure(quick: quick)
        } catch {
            return [.notAvailable(section, "ssh session figures", unit: "", goal: "", note: "failed: \(error)")]
        }
    }

    static func measure(quick: Bool) async throws -> [Figure] {
        let server = try SSHServer(slowLogin: rcSleep)
        defer { server.stop(); server.remove() }
        try await server.start()
        let logger = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }
        let window = quick ? 12.0 : 30.0

        // (a) Sessions while 16 steps run, supervised by the real executor (poll interval 1 s).
        let withShells = try await sessionsWhileStepsRun(server: server, shells: 2, window: window, logger: logger)
        let plain = try await sessionsWhileStepsRun(server: server, shells: 0, window: window, logger: logger)
        var figures: [Figure] = [
            .goal(section, "remote sessions per minute, 16 steps running (\(Int(window)) s)", withShells.perMinute, unit: "/min", limit: 60,
                  baseline: "\(fmt(plain.perMinute)) /min with a session per command",
                  note: "+\(withShells.starts) session(s) to start the 16 (\(plain.starts) with a session each); \(withShells.outcome)"),
        ]

        // (b) A no-op command through the transport vs raw `ssh host true` through the same master.
        let connection = try SSHConnection(config: server.sshConfig(), retry: RetryPolicy(), logger: logger)
        let sessions = try SSHConnection(config: server.sshConfig(), retry: RetryPolicy(), logger: logger, persistentShells: 0)
        try await connection.ensureMaster()
        try await sessions.ensureMaster()
        let runner = SSHCommandRunner(connection: connection)
        let plainRunner = SSHCommandRunner(connection: sessions)
        let ssh = ["/usr/bin/ssh"] + connection.clientOptions + ["127.0.0.1"]
        _ = try await runner.capture("true", timeoutSec: 30)
        var ours: [Double] = [], raw: [Double] = [], plainSamples: [Double] = []
        let rounds = quick ? 30 : 50
        for _ in 0..<rounds {
            var started = nowEpoch()
            let result = try await runner.capture("true", timeoutSec: 30)
            guard result.status == 0 else { throw TestSupportError("true through the transport exited \(result.status): \(result.output)") }
            ours.append(nowEpoch() - started)
            started = nowEpoch()
            try SSHFigures.runProcess(ssh + ["true"])
            raw.append(nowEpoch() - started)
            started = nowEpoch()
            _ = try await plainRunner.capture("true", timeoutSec: 30)
            plainSamples.append(nowEpoch() - started)
        }
        let oursMedian = percentile(ours, 50)!, rawMedian = percentile(raw, 50)!, plainMedian = percentile(plainSamples, 50)!
        figures.append(.goal(section, "per-command latency p50 vs raw ssh true (\(rounds) interleaved)", oursMedian / rawMedian, unit: "x", limit: 0.2,
                             baseline: "\(fmt(oursMedian * 1000)) ms vs \(fmt(rawMedian * 1000)) ms",
                             note: "a session per command: \(fmt(plainMedian * 1000)) ms (\(fmt(plainMedian / rawMedian)) x); rc file sleeps \(rcSleep) s"))
        await connection.closeMaster()
        await sessions.closeMaster()
        return figures
    }

    struct SessionCount {
        var perMinute: Double
        var starts: Int
        var outcome: String
    }

    /// Starts 16 sleeping steps, lets the executor supervise them for `window` seconds once all
    /// run, and counts login shells (sessions) in that window; then cancels them.
    static func sessionsWhileStepsRun(server: SSHServer, shells: Int, window: Double, logger: Logger) async throws -> SessionCount {
        let temp = try TemporaryDirectory("mqi-bench-sessions")
        defer { temp.remove() }
        let upload = temp.file("remote/upload")
        let runs = try (1...16).map { index in
            try FileManager.default.createDirectory(atPath: upload + "/CASE-\(index)", withIntermediateDirectories: true)
            return StepRun(caseId: "CASE-\(index)", step: "sim", attempt: 1, command: "echo begin; sleep 600", gpuIds: [index % 4],
                           timeoutSec: nil, logPath: temp.file("logs/CASE-\(index)/sim.1.log"))
        }
        try server.giveToUser(temp.file("remote"))
        let connection = try SSHConnection(config: server.sshConfig(), retry: RetryPolicy(), logger: logger, persistentShells: shells)
        try await connection.ensureMaster()
        let executor = SSHStepExecutor(connection: connection, uploadDir: upload, pollInterval: 1, killGraceSec: 1, logger: logger)
        let stop = Flag()
        let before = server.loginShellStarts
        let outcomes = Task {
            try await withThrowingTaskGroup(of: StepOutcome.self) { group in
                for run in runs { group.addTask { try await executor.execute(run) { stop.isSet } } }
                return try await group.reduce(into: [StepOutcome]()) { $0.append($1) }
            }
        }
        let layout = RunDirectories(uploadDir: upload)
        let pidFiles = runs.map { layout.runDirectory(caseId: $0.caseId, step: "sim", attempt: 1) + "/pid" }
        let deadline = nowEpoch() + 60
        while !pidFiles.allSatisfy({ FileManager.default.fileExists(atPath: $0) }) {
            guard nowEpoch() < deadline else {
                stop.set()
                _ = try? await outcomes.value
                throw TestSupportError("the 16 steps did not all start within 60 s")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        let running = server.loginShellStarts
        let started = nowEpoch()
        try await Task.sleep(for: .seconds(window))
        let during = server.loginShellStarts - running
        let elapsed = nowEpoch() - started
        stop.set()
        let results = try await outcomes.value
        await connection.closeMaster()
        let cancelled = results.filter { $0 == .cancelled }.count
        return SessionCount(perMinute: Double(during) * 60 / elapsed, starts: running - before, outcome: "\(cancelled)/16 cancelled after")
    }

    /// Set once, read by the steps' cancel checks.
    final class Flag: Sendable {
        private let state = Mutex(false)
        var isSet: Bool { state.withLock { $0 } }
        func set() { state.withLock { $0 = true } }
    }
}
