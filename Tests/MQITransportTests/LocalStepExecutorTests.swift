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

    @Test(.timeLimit(.minutes(1)))
    func succeedsWithEnvironmentAndOutputInAFreshLog() async throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05)
        let outcome = try await executor.execute(Self.run(temp, "echo \"case=$MQI_CASE_ID gpu=$MQI_GPU_ID cuda=$CUDA_VISIBLE_DEVICES\"")) { false }
        #expect(outcome == .succeeded)
        let log = try String(contentsOfFile: temp.file("logs/CASE 'x'/run_moqui_sim.1.log"), encoding: .utf8)
        #expect(log == "case=CASE 'x' gpu=1 cuda=1\n")
        #expect(try String(contentsOfFile: temp.file("upload/CASE 'x'/.mqi/run_moqui_sim.1/exit_code"), encoding: .utf8) == "0\n")
    }

    @Test(.timeLimit(.minutes(1)))
    func nonZeroExitFailsWithStatusAndLastLines() async throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05)
        let outcome = try await executor.execute(Self.run(temp, "echo starting; echo 'FATAL ERROR: no beam' >&2; exit 7")) { false }
        guard case .failed(let reason) = outcome else { Issue.record("expected failure, got \(outcome)"); return }
        #expect(reason.contains("exit status 7"))
        #expect(reason.contains("FATAL ERROR: no beam"))
    }

    @Test(.timeLimit(.minutes(1)))
    func timeoutKillsTheWholeProcessGroup() async throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05, killGraceSec: 1)
        let pidFile = temp.file("grandchild.pid")
        let started = Date()
        let outcome = try await executor.execute(Self.run(temp, "sleep 60 & echo $! > \(ShellQuote.quote(pidFile)); wait", timeout: 0.5)) { false }
        guard case .failed(let reason) = outcome else { Issue.record("expected timeout, got \(outcome)"); return }
        #expect(reason.contains("timed out after 0.5 s"))
        #expect(Date().timeIntervalSince(started) < 10)
        let grandchild = try #require(Int32(try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(!LocalStepExecutor.processAlive(grandchild), "the background process of the step must be gone too")
    }

    @Test(.timeLimit(.minutes(1)))
    func cancelKillsTheProcessGroupPromptly() async throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05, killGraceSec: 5)
        let marker = temp.file("got-term")
        let started = Date()
        // The step gets a real SIGTERM first (the engine can clean up): signals the daemon ignores
        // must not be inherited as ignored.
        let command = "trap 'echo term > \(ShellQuote.quote(marker)); exit 143' TERM; sleep 60 & wait"
        let outcome = try await executor.execute(Self.run(temp, command)) { Date().timeIntervalSince(started) > 0.3 }
        #expect(outcome == .cancelled)
        #expect(FileManager.default.fileExists(atPath: marker), "the step never saw SIGTERM")
        // Well within the 5 s grace before SIGKILL, even on a loaded machine.
        #expect(Date().timeIntervalSince(started) < 4.5)
    }

    /// The daemon stops (task cancelled) while a step runs: the step keeps running, and the next
    /// daemon adopts it — waits for it and reads its exit code — without starting it again.
    @Test(.timeLimit(.minutes(1)))
    func anInterruptedAttemptIsAdoptedNotRunTwice() async throws {
        let temp = try TemporaryDirectory()
        defer { temp.remove() }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05)
        let ledger = temp.file("ledger")
        let run = Self.run(temp, "echo started >> \(ShellQuote.quote(ledger)); sleep 1; echo finished >> \(ShellQuote.quote(ledger))")
        let first = Task { try await executor.execute(run) { false } }
        #expect(await eventually(within: 5) { Self.count(ledger) == 1 })
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
