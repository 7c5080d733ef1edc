import Foundation
import Logging
import MQICore
import MQITestSupport
import Synchronization
import Testing
@testable import MQITransport

/// The pure parts: the connection budget and the backoff while the host is unreachable.
struct SSHConnectionBudgetTests {
    @Test func neverMoreThanTheLimitInAnyMinute() {
        var budget = SSHConnectionBudget(limit: 3)
        let first = [budget.take(now: 0), budget.take(now: 1), budget.take(now: 2), budget.take(now: 30)]
        #expect(first == [true, true, true, false])
        #expect(budget.waitTime(now: 30) == 30)   // the token spent at 0 comes back at 60
        let later = [budget.take(now: 60), budget.take(now: 60.5)]
        #expect(later == [true, false])
        #expect(budget.waitTime(now: 60.5) == 0.5)
        #expect(budget.used(now: 61) == 2)
    }

    /// A fake clock: sleeping advances it. Records every sleep.
    final class FakeTime: Sendable {
        let state = Mutex<(now: Double, sleeps: [Double])>((0, []))
        var timing: SSHConnection.Timing {
            SSHConnection.Timing(now: { self.state.withLock { $0.now } },
                                 sleep: { seconds in self.state.withLock { $0.now += seconds; $0.sleeps.append(seconds) } },
                                 jitter: { $0.upperBound })
        }
    }

    @Test(.timeLimit(.minutes(3)), .enabled(if: SSHServer.isAvailable))
    func unreachableHostBacksOffExponentiallyWithinTheBudget() async throws {
        let time = FakeTime()
        // Nothing listens on this port: every attempt is refused at once.
        let port = try SSHServer().port
        let config = SSHConfig(host: "127.0.0.1", port: port, user: "root", knownHostsFile: "/dev/null", connectTimeoutSec: 2,
                               maxNewConnectionsPerMin: 4)
        let connection = try SSHConnection(config: config, retry: RetryPolicy(maxAttempts: 3, initialDelaySec: 1, maxDelaySec: 8, multiplier: 2),
                                           logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() },
                                           reconnectPatienceSec: 40, timing: time.timing)
        await #expect(throws: TransportError.self) { try await connection.ensureMaster() }
        let sleeps = time.state.withLock { $0.sleeps }
        let attempts = await connection.connectionsOpened
        // Backoff 1, 2, 4, 8, 8 ... (full jitter's upper bound here), and the budget of 4 per
        // minute holds: later attempts wait for a token.
        #expect(Array(sleeps.prefix(3)) == [1, 2, 4], "\(sleeps)")
        #expect(sleeps.allSatisfy { $0 <= 60 })
        #expect(attempts >= 4 && attempts <= 6, "\(attempts) attempts in \(time.state.withLock { $0.now }) s: \(sleeps)")
        let error = await #expect(throws: TransportError.self) { try await connection.ensureMaster() }
        #expect(error?.isTransient == true)
        #expect(error?.message.contains("127.0.0.1:\(port)") == true, "\(error?.message ?? "")")
    }
}

/// The transport against a real sshd on 127.0.0.1.
@Suite(.serialized, .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync"))
struct SSHTransportTests {
    static let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    struct Setup {
        let server: SSHServer
        let temp: TemporaryDirectory
        let connection: SSHConnection

        init(knownHosts: ((SSHServer) throws -> String)? = nil) async throws {
            server = try SSHServer()
            try await server.start()
            temp = try TemporaryDirectory("mqi-ssh")
            let config = server.sshConfig(knownHosts: try knownHosts?(server))
            connection = try SSHConnection(config: config, retry: RetryPolicy(maxAttempts: 3, initialDelaySec: 0.2, maxDelaySec: 1),
                                           logger: SSHTransportTests.quiet, reconnectPatienceSec: 5)
        }

        var executor: SSHStepExecutor {
            SSHStepExecutor(connection: connection, uploadDir: temp.file("remote/upload"), pollInterval: 0.3, killGraceSec: 1, logger: SSHTransportTests.quiet)
        }

        func run(_ command: String, attempt: Int = 1, timeout: Double? = nil) throws -> StepRun {
            try FileManager.default.createDirectory(atPath: temp.file("remote/upload/CASE-1"), withIntermediateDirectories: true)
            return StepRun(caseId: "CASE-1", step: "sim", attempt: attempt, command: command, gpuIds: [1], timeoutSec: timeout,
                           logPath: temp.file("logs/CASE-1/sim.\(attempt).log"),
                           inputFiles: [RenderedFile(path: temp.file("remote/upload/CASE-1/in.txt"), content: "GPUID 1\nit's\n")])
        }

        func finish() async {
            await connection.closeMaster()
            server.remove()
            temp.remove()
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func commandsShareOneConnection() async throws {
        let setup = try await Setup()
        let runner = SSHCommandRunner(connection: setup.connection)
        let results = try await withThrowingTaskGroup(of: CommandResult.self) { group in
            for index in 0..<8 { group.addTask { try await runner.capture("echo out-\(index); echo err >&2; exit 3", timeoutSec: 20) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.count == 8 && results.allSatisfy { $0.status == 3 && $0.output.contains("out-") && $0.output.contains("err") })
        #expect(setup.server.acceptedConnections == 1)
        await setup.finish()
    }

    /// Eight steps running on one host cost one ssh session per poll interval, not one each.
    @Test(.timeLimit(.minutes(4)))
    func onePollSessionAnswersForEveryRunningStep() async throws {
        let server = try SSHServer(extraConfig: "LogLevel DEBUG1")
        try await server.start()
        let temp = try TemporaryDirectory("mqi-ssh-rounds")
        let connection = try SSHConnection(config: server.sshConfig(), retry: RetryPolicy(maxAttempts: 3, initialDelaySec: 0.2, maxDelaySec: 1),
                                           logger: SSHTransportTests.quiet, reconnectPatienceSec: 5)
        defer { server.remove(); temp.remove() }
        let executor = SSHStepExecutor(connection: connection, uploadDir: temp.file("remote/upload"), pollInterval: 0.5, killGraceSec: 1,
                                       logger: SSHTransportTests.quiet)
        let runs = try (1...8).map { index in
            try FileManager.default.createDirectory(atPath: temp.file("remote/upload/CASE-\(index)"), withIntermediateDirectories: true)
            return StepRun(caseId: "CASE-\(index)", step: "sim", attempt: 1, command: "echo begin; sleep 5; echo done-\(index)", gpuIds: [index],
                           timeoutSec: nil, logPath: temp.file("logs/CASE-\(index)/sim.1.log"))
        }
        // sshd logs each session channel it opens (through the master too) at DEBUG1.
        func sessions() -> Int {
            ((try? String(contentsOfFile: server.logPath, encoding: .utf8)) ?? "").components(separatedBy: "ctype session").count - 1
        }
        let outcomes = Task {
            try await withThrowingTaskGroup(of: StepOutcome.self) { group in
                for run in runs { group.addTask { try await executor.execute(run) { false } } }
                return try await group.reduce(into: [StepOutcome]()) { $0.append($1) }
            }
        }
        let runDirs = runs.map { RunDirectories(uploadDir: temp.file("remote/upload")).runDirectory(caseId: $0.caseId, step: "sim", attempt: 1) }
        #expect(await eventually(within: 30) { runDirs.allSatisfy { FileManager.default.fileExists(atPath: $0 + "/pid") } }, "not every step started")
        let before = sessions()
        let window = 2.0
        try await Task.sleep(for: .seconds(window))
        let during = sessions() - before
        let results = try await outcomes.value
        print("8 running steps over ssh: \(during) ssh session(s) in \(window) s at poll_interval 0.5 s")
        #expect(before > 0, "sshd logged no session: is LogLevel DEBUG1 in effect?")
        #expect(during <= Int(window / 0.5) + 2, "\(during) sessions in \(window) s for 8 steps: not one per poll")
        #expect(results.count == 8 && results.allSatisfy { $0 == .succeeded }, "\(results)")
        for (index, run) in runs.enumerated() {
            #expect(try String(contentsOfFile: run.logPath, encoding: .utf8) == "begin\ndone-\(index + 1)\n")
        }
        await connection.closeMaster()
    }

    @Test(.timeLimit(.minutes(3)))
    func aStepRunsDetachedAndIsAdoptedNotRunAgain() async throws {
        let setup = try await Setup()
        let counter = setup.temp.file("runs")
        let run = try setup.run("echo run >> \(ShellQuote.quote(counter)); cat in.txt; echo \"gpu=$CUDA_VISIBLE_DEVICES\"; sleep 1; echo done; exit 0")
        let outcome = try await setup.executor.execute(run) { false }
        #expect(outcome == .succeeded)
        let log = try String(contentsOfFile: run.logPath, encoding: .utf8)
        #expect(log == "GPUID 1\nit's\ngpu=1\ndone\n")
        // The same attempt again (a redelivery): adopted, its exit code read, not started again.
        #expect(try await setup.executor.execute(run) { false } == .succeeded)
        #expect(try String(contentsOfFile: counter, encoding: .utf8) == "run\n")
        // A failing attempt reports its status and output.
        let failing = try setup.run("echo boom; exit 7", attempt: 2)
        guard case .failed(let reason) = try await setup.executor.execute(failing, shouldCancel: { false }) else { Issue.record("expected failure"); return }
        #expect(reason.contains("exit status 7") && reason.contains("boom"))
        await setup.finish()
    }

    @Test(.timeLimit(.minutes(3)))
    func cancelAndTimeoutKillTheWholeRemoteProcessGroup() async throws {
        let setup = try await Setup()
        let pids = setup.temp.file("pids")
        // A parent and a background child, both in the step's process group.
        let command = "sleep 60 & echo $! > \(ShellQuote.quote(pids)); sleep 60"
        let cancelAt = Date().addingTimeInterval(1.5)
        let cancelled = try await setup.executor.execute(try setup.run(command)) { Date() > cancelAt }
        #expect(cancelled == .cancelled)
        let child = try #require(Int32(try String(contentsOfFile: pids, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(!LocalStepExecutor.processAlive(child))
        let pgid = try #require(Int32(try String(contentsOfFile: setup.temp.file("remote/upload/.mqi-runs/CASE-1/sim.1/pid"), encoding: .utf8)
            .trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(!LocalStepExecutor.groupAlive(pgid))

        let timedOut = try await setup.executor.execute(try setup.run("sleep 60", attempt: 2, timeout: 1)) { false }
        guard case .failed(let reason) = timedOut else { Issue.record("expected a timeout, got \(timedOut)"); return }
        #expect(reason.contains("timed out"))
        await setup.finish()
    }

    @Test(.timeLimit(.minutes(3)))
    func uploadAndDownloadAreVerifiedAndACorruptedByteIsCaught() async throws {
        let setup = try await Setup()
        let local = setup.temp.file("local/CASE-1")
        try FileManager.default.createDirectory(atPath: local + "/beam 1", withIntermediateDirectories: true)
        for index in 0..<20 { try Data(repeating: UInt8(index), count: 10_000 + index).write(to: URL(fileURLWithPath: "\(local)/beam 1/\(index).ptn")) }
        try Data("plan".utf8).write(to: URL(fileURLWithPath: local + "/RP.1.dcm"))
        let upload = setup.temp.file("remote/upload"), download = setup.temp.file("remote/download")
        // Corrupt one byte of one file after the copy, before the check.
        let corrupting = SSHFileMover(connection: setup.connection, uploadDir: upload, downloadDir: download) { staging in
            let victim = staging + "/beam 1/7.ptn"
            let handle = try #require(FileHandle(forUpdatingAtPath: victim))
            try handle.seek(toOffset: 100)
            try handle.write(contentsOf: Data([0xFF]))
            try handle.close()
        }
        let error = await #expect(throws: TransportError.self) { try await corrupting.upload(caseId: "CASE-1", from: local) }
        #expect(error?.message.contains("beam 1/7.ptn") == true, "\(error?.message ?? "")")
        #expect(error?.isTransient == true)
        #expect(!FileManager.default.fileExists(atPath: upload + "/CASE-1"), "never renamed into place")

        // The retry sends it again and it arrives whole.
        let mover = SSHFileMover(connection: setup.connection, uploadDir: upload, downloadDir: download)
        let report = try await mover.upload(caseId: "CASE-1", from: local)
        #expect(report.files == 21)
        #expect(FileManager.default.contentsEqual(atPath: local, andPath: upload + "/CASE-1"))
        #expect(!FileManager.default.fileExists(atPath: upload + "/.mqi-partial/CASE-1"))

        // Results come back with their manifest.
        try FileManager.default.createDirectory(atPath: download + "/CASE-1/sub", withIntermediateDirectories: true)
        try Data("dose".utf8).write(to: URL(fileURLWithPath: download + "/CASE-1/sub/RTDOSE.dcm"))
        let results = setup.temp.file("local/results")
        let back = try await mover.download(caseId: "CASE-1", into: results)
        #expect(back == TransferReport(files: 1, bytes: 4))
        #expect(ResultManifest.verifyResults(at: results + "/CASE-1"))
        try Data("dosf".utf8).write(to: URL(fileURLWithPath: results + "/CASE-1/sub/RTDOSE.dcm"))
        #expect(!ResultManifest.verifyResults(at: results + "/CASE-1"))
        await setup.finish()
    }

    @Test(.timeLimit(.minutes(3)))
    func aMismatchedHostKeyFailsFastAndClearly() async throws {
        let setup = try await Setup(knownHosts: { try $0.writeMismatchedKnownHosts() })
        let runner = SSHCommandRunner(connection: setup.connection)
        let started = Date()
        let error = await #expect(throws: TransportError.self) { try await runner.capture("true", timeoutSec: 10) }
        #expect(error?.isTransient == false)
        #expect(error?.message.contains("host key verification failed") == true, "\(error?.message ?? "")")
        // Again: no new connection attempt while backing off, the same clear error at once.
        let again = await #expect(throws: TransportError.self) { try await runner.capture("true", timeoutSec: 10) }
        #expect(again?.isTransient == false)
        #expect(Date().timeIntervalSince(started) < 9, "not fast: each try has a 10 s timeout")
        #expect(setup.server.acceptedConnections == 0)
        // The executor throws the permanent error (the service fails the step with it, and stops
        // the attempt, whose processes it did not see end) instead of retrying.
        let failure = await #expect(throws: TransportError.self) { _ = try await setup.executor.execute(try setup.run("true")) { false } }
        #expect(failure?.isTransient == false)
        #expect(failure?.message.contains("host key verification failed") == true)
        await setup.finish()
    }
}
