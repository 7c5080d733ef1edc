import Foundation
import MQICore
import Synchronization
import MQITestSupport
import MQITransport
import Testing

struct LocalStepExecutorTests {
    static func run(_ temp: TemporaryDirectory, _ command: String, attempt: Int = 1, timeout: Double? = nil) -> StepRun {
        StepRun(caseId: "CASE 'x'", step: "run_moqui_sim", attempt: attempt, command: command, gpuIds: [1],
                timeoutSec: timeout, logPath: temp.file("logs/CASE 'x'/run_moqui_sim.\(attempt).log"))
    }

    static func count(_ path: String) -> Int {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").count
    }

    @Test(.timeLimit(.minutes(3)))
    func succeedsWithEnvironmentAndOutputInAFreshLog() async throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05)
        let outcome = try await executor.execute(Self.run(temp, "echo \"case=$MQI_CASE_ID gpu=$MQI_GPU_ID cuda=$CUDA_VISIBLE_DEVICES\"")) { false }
        #expect(outcome == .succeeded)
        let log = try String(contentsOfFile: temp.file("logs/CASE 'x'/run_moqui_sim.1.log"), encoding: .utf8)
        #expect(log == "case=CASE 'x' gpu=1 cuda=1\n")
        #expect(try String(contentsOfFile: temp.file("upload/.mqi-runs/CASE 'x'/run_moqui_sim.1/exit_code"), encoding: .utf8) == "0\n")
    }

    @Test(.timeLimit(.minutes(3)))
    func nonZeroExitFailsWithStatusAndLastLines() async throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05)
        let outcome = try await executor.execute(Self.run(temp, "echo starting; echo 'FATAL ERROR: no beam' >&2; exit 7")) { false }
        guard case .failed(let reason) = outcome else { Issue.record("expected failure, got \(outcome)"); return }
        #expect(reason.contains("exit status 7"))
        #expect(reason.contains("FATAL ERROR: no beam"))
    }

    @Test(.timeLimit(.minutes(3)))
    func timeoutKillsTheWholeProcessGroup() async throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05, killGraceSec: 1)
        let pidFile = temp.file("grandchild.pid")
        let started = Date()
        let outcome = try await executor.execute(Self.run(temp, "sleep 60 & echo $! > \(ShellQuote.quote(pidFile)); wait", timeout: 0.5)) { false }
        guard case .failed(let reason) = outcome else { Issue.record("expected timeout, got \(outcome)"); return }
        #expect(reason.contains("timed out after 0.5 s"))
        // Without the kill the step would wait for its `sleep 60`; CI's load once made the kill 13 s.
        #expect(Date().timeIntervalSince(started) < 30)
        let grandchild = try #require(Int32(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(!LocalStepExecutor.processAlive(grandchild), "the background process of the step must be gone too")
    }

    @Test(.timeLimit(.minutes(3)))
    func cancelKillsTheProcessGroupPromptly() async throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05, killGraceSec: 5)
        let marker = temp.file("got-term")
        let ready = temp.file("ready")
        let cancelledAt = Mutex<Date?>(nil)
        // The step gets a real SIGTERM first (the engine can clean up): signals the daemon ignores
        // must not be inherited as ignored. Cancelled once the step is really running (its trap set,
        // its child started), not after a fixed delay a loaded machine may not have kept.
        let command = "trap 'echo term > \(ShellQuote.quote(marker)); exit 143' TERM; sleep 60 & touch \(ShellQuote.quote(ready)); wait"
        let outcome = try await executor.execute(Self.run(temp, command)) {
            guard FileManager.default.fileExists(atPath: ready) else { return false }
            cancelledAt.withLock { $0 = $0 ?? Date() }
            return true
        }
        #expect(outcome == .cancelled)
        #expect(FileManager.default.fileExists(atPath: marker), "the step never saw SIGTERM")
        // Well within the 5 s grace before SIGKILL, even on a loaded machine.
        let since = try #require(cancelledAt.withLock { $0 })
        // The marker proves SIGTERM (SIGKILL after the 5 s grace runs no trap); the bound catches a hang.
        #expect(Date().timeIntervalSince(since) < 15)
    }

    /// A process that joins the group after the SIGTERM (here forked by the step's TERM trap; in
    /// the wild, by a shell that took the signal while it was starting `sleep &`) never received
    /// it: the executor terminates it too instead of waiting out the grace period for SIGKILL.
    @Test(.timeLimit(.minutes(3)))
    func aProcessThatJoinsTheGroupAfterSIGTERMIsTerminatedWithinTheGrace() async throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05, killGraceSec: 60)
        let ready = temp.file("ready")
        let late = temp.file("late.pid")
        let command = "trap 'sleep 60 & echo $! > \(ShellQuote.quote(late)); exit 143' TERM; touch \(ShellQuote.quote(ready)); while :; do sleep 1; done"
        let cancelledAt = Mutex<Date?>(nil)
        let outcome = try await executor.execute(Self.run(temp, command)) {
            guard FileManager.default.fileExists(atPath: ready) else { return false }
            cancelledAt.withLock { $0 = $0 ?? Date() }
            return true
        }
        #expect(outcome == .cancelled)
        let since = try #require(cancelledAt.withLock { $0 })
        #expect(Date().timeIntervalSince(since) < 30, "the late process lived out the 60 s grace until SIGKILL")
        let pid = try #require(Int32(try String(contentsOfFile: late, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(!LocalStepExecutor.processAlive(pid))
    }

    /// The daemon stops (task cancelled) while a step runs: the step keeps running, and the next
    /// daemon adopts it — waits for it and reads its exit code — without starting it again.
    @Test(.timeLimit(.minutes(3)))
    func anInterruptedAttemptIsAdoptedNotRunTwice() async throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05)
        let ledger = temp.file("ledger")
        // 8 s: still running when the test looks, even on a loaded machine.
        let run = Self.run(temp, "echo started >> \(ShellQuote.quote(ledger)); sleep 8; echo finished >> \(ShellQuote.quote(ledger))")
        let first = Task { try await executor.execute(run) { false } }
        #expect(await eventually(within: 20) { Self.count(ledger) == 1 })
        first.cancel()
        await #expect(throws: CancellationError.self) { try await first.value }
        // Still running after the "daemon" stopped waiting.
        #expect(Self.count(ledger) == 1)
        let adopted = try await executor.execute(run) { false }
        #expect(adopted == .succeeded)
        #expect(try String(contentsOfFile: ledger, encoding: .utf8) == "started\nfinished\n", "ran exactly once")
        // Once finished, a further redelivery just reads the recorded exit code.
        #expect(try await executor.execute(run) { false } == .succeeded)
        #expect(Self.count(ledger) == 2)
    }
}
