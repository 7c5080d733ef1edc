import Foundation
import Logging
import MQICore
import MQITestSupport
import Testing
@testable import MQITransport

/// How the Slurm executor reads a job's end: every Slurm state to an outcome, and one poll's
/// answer (squeue lines and run-directory lines) to snapshots. No cluster needed.
@Suite("Slurm executor: job states and poll answers")
struct SlurmOutcomeTests {
    static let executor = SlurmStepExecutor(runner: LocalCommandRunner(), uploadDir: "/nonexistent", config: SlurmConfig(), instance: "host",
                                            logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
    static let run = StepRun(caseId: "G1/P/1.2", step: "sim", attempt: 2, command: "true", gpuIds: [], timeoutSec: 60, logPath: "/nonexistent/log")
    static func snapshot(stopped: Bool = false) -> SlurmJobSnapshot {
        SlurmJobSnapshot(state: nil, reason: nil, node: nil, exitCode: nil, gpus: nil, elapsed: nil, stopped: stopped, logFrom: 0, chunk: Data())
    }

    @Test("queued and running states go on; each end state maps to its outcome")
    func statesMapToOutcomes() async throws {
        let executor = Self.executor, run = Self.run
        for state in ["PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"] {
            #expect(try await executor.ended(run, jobId: "7", state: state, reason: "Resources", exitCode: nil, snapshot: Self.snapshot()) == nil, "\(state)")
        }
        #expect(try await executor.ended(run, jobId: "7", state: "COMPLETED", reason: nil, exitCode: 0, snapshot: Self.snapshot()) == .succeeded)
        let failed = try await executor.ended(run, jobId: "7", state: "FAILED", reason: "NonZeroExitCode", exitCode: 3, snapshot: Self.snapshot())
        #expect(failed == .failed(reason: "Slurm job 7 ended FAILED (NonZeroExitCode), exit status 3"), "\(String(describing: failed))")
        let cancelled = try await executor.ended(run, jobId: "7", state: "CANCELLED", reason: "None", exitCode: nil, snapshot: Self.snapshot())
        guard case .failed(let why) = cancelled else { Issue.record("\(String(describing: cancelled))"); return }
        #expect(why.hasPrefix("cancelled in Slurm: Slurm job 7 ended CANCELLED"))
        let timeout = try await executor.ended(run, jobId: "7", state: "TIMEOUT", reason: "TimeLimit", exitCode: nil, snapshot: Self.snapshot())
        #expect(timeout == .failed(reason: "Slurm job 7 ended TIMEOUT: over its Slurm time limit (TimeLimit)"))
        for state in ["NODE_FAIL", "PREEMPTED", "BOOT_FAIL"] {
            let outcome = try await executor.ended(run, jobId: "7", state: state, reason: nil, exitCode: nil, snapshot: Self.snapshot())
            #expect(outcome?.isInterrupted == true, "\(state) is retryable: \(String(describing: outcome))")
        }
        let memory = try await executor.ended(run, jobId: "7", state: "OUT_OF_MEMORY", reason: nil, exitCode: 0, snapshot: Self.snapshot())
        guard case .failed(let oom) = memory else { Issue.record("\(String(describing: memory))"); return }
        #expect(oom.contains("ended OUT_OF_MEMORY"))
    }

    @Test("one poll's answer: squeue lines for the watched jobs, each job's run directory and log bytes")
    func pollAnswersParse() {
        let log = Data("progress 3 of 10\n".utf8)
        let output = """
            MQI-NOW 1000
            MQI-SQUEUE
            12|RUNNING|None|localhost
            13|PENDING|Resources|
            99|RUNNING|None|other
            MQI-SQUEUE-END 0
            MQI-JOB 12 - 1 990 0 0 17
            \(log.base64EncodedString())
            MQI-JOB 13 - - - 0 0 0

            MQI-END
            """
        let watches = ["12": SlurmJobBoard.Watch(runDir: "/r/12", offset: 0), "13": SlurmJobBoard.Watch(runDir: "/r/13", offset: 0)]
        let snapshots = SlurmJobBoard.parse(output, jobs: watches)
        #expect(snapshots?.count == 2)
        #expect(snapshots?["12"]?.state == "RUNNING" && snapshots?["12"]?.node == "localhost" && snapshots?["12"]?.gpus == "1")
        #expect(snapshots?["12"]?.elapsed == 10 && snapshots?["12"]?.chunk == log)
        #expect(snapshots?["13"]?.state == "PENDING" && snapshots?["13"]?.reason == "Resources" && snapshots?["13"]?.node == nil)
        // squeue failed (the controller is away): nothing can be said about any job.
        #expect(SlurmJobBoard.parse(output.replacingOccurrences(of: "MQI-SQUEUE-END 0", with: "MQI-SQUEUE-END 1"), jobs: watches) == nil)
    }
}
