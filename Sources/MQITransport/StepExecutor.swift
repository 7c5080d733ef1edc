import Foundation
import MQICore

/// One attempt of one execute step, as a worker runs it.
public struct StepRun: Sendable, Equatable {
    public var caseId: String
    public var step: String
    public var attempt: Int
    /// The rendered, shell-quoted command line.
    public var command: String
    public var gpuIds: [Int]
    public var timeoutSec: Double?
    /// Where the step's output goes: `logs_dir/{case_id}/{step}.{attempt}.log`, fresh per attempt.
    public var logPath: String
    /// Files to write on the compute side just before the command starts (not when adopting).
    public var inputFiles: [RenderedFile]
    /// The beam of a `for_each: beam` step's run.
    public var beam: Int?
    /// Under a scheduler (Slurm): GPUs to ask for; `gpuIds` is empty, and the command sees the
    /// device ordinals 0..N-1 of what the scheduler gave its job.
    public var gpuCount: Int?

    /// The attempt's name in its run directory (`{step}.{attempt}`): the step, or `{step}.{beam}`.
    public var runName: String { beam.map { "\(step).\($0)" } ?? step }

    /// The attempt to stop (`StepExecutor.stop`), without what only a start needs.
    public static func stopping(caseId: String, step: String, attempt: Int, gpuIds: [Int] = [], beam: Int? = nil) -> StepRun {
        var run = StepRun(caseId: caseId, step: step, attempt: attempt, command: "", gpuIds: gpuIds, timeoutSec: nil, logPath: "/dev/null")
        run.beam = beam
        return run
    }

    public init(caseId: String, step: String, attempt: Int, command: String, gpuIds: [Int], timeoutSec: Double?, logPath: String,
                inputFiles: [RenderedFile] = []) {
        self.inputFiles = inputFiles
        self.caseId = caseId
        self.step = step
        self.attempt = attempt
        self.command = command
        self.gpuIds = gpuIds
        self.timeoutSec = timeoutSec
        self.logPath = logPath
    }

    /// Whether a supervisor stops this attempt now: `shouldCancel` (an operator, a failure line)
    /// says so, or it has run `elapsed` ≥ `timeout_sec` seconds (the outcome's reason from
    /// `timedOut`). Nil: let it run.
    public func stopDecision(elapsed: Double?, shouldCancel: () async -> Bool, timedOut: (Double) -> String) async -> StepOutcome? {
        if await shouldCancel() { return .cancelled }
        if let timeoutSec, let elapsed, elapsed >= timeoutSec { return .failed(reason: timedOut(timeoutSec)) }
        return nil
    }

    /// Environment the command runs with.
    /// Under a scheduler `CUDA_VISIBLE_DEVICES` is left to it, and `MQI_GPU_IDS` holds ordinals.
    public var environment: [String: String] {
        let scheduled = gpuIds.isEmpty && (gpuCount ?? 0) > 0
        let ordinals = scheduled ? Array(0..<(gpuCount ?? 0)) : gpuIds
        let ids = ordinals.map(String.init).joined(separator: ",")
        var environment = [
            "MQI_CASE_ID": caseId,
            "MQI_STEP": step,
            "MQI_ATTEMPT": String(attempt),
            "MQI_GPU_ID": ordinals.first.map(String.init) ?? "",
            "MQI_GPU_IDS": ids,
        ]
        if !scheduled { environment["CUDA_VISIBLE_DEVICES"] = ids }
        if let beam { environment["MQI_BEAM"] = String(beam) }
        return environment
    }
}

/// How an attempt ended.
public enum StepOutcome: Sendable, Equatable {
    case succeeded
    case failed(reason: String)
    /// Ended by the infrastructure, not by its command (a node failure, a preemption): worth
    /// another attempt.
    case interrupted(reason: String)
    case cancelled
}

extension StepOutcome {
    /// How an attempt whose command exited with `code` ended, for every executor: 0 succeeded;
    /// anything else failed, with the exit status and the last lines of its log.
    public static func exited(_ code: Int32, _ run: StepRun, cause: String? = nil) -> StepOutcome {
        if code == 0 && cause == nil { return .succeeded }
        let tail = LogTail.lastLines(of: run.logPath, count: 10)
        return .failed(reason: (cause.map { "\($0), " } ?? "") + "exit status \(code)" + (tail.isEmpty ? "" : "; last output:\n\(tail)"))
    }
}

/// Starts, adopts, waits for and cancels step attempts. An attempt whose run directory already
/// exists is adopted (waited for, or its exit code read), never started a second time.
public protocol StepExecutor: Sendable {
    /// Runs (or adopts) `run` until it ends, it times out, or `shouldCancel` returns true
    /// (checked about every `cancelCheckInterval`). Task cancellation (daemon shutdown) stops
    /// waiting but leaves the command running, to be adopted after the restart.
    func execute(_ run: StepRun, shouldCancel: @escaping @Sendable () async -> Bool) async throws -> StepOutcome

    /// Stops attempt `run` (only `caseId`, `step` and `attempt` are used) whether or not anything
    /// watches it: marks its run directory stopped, so that a start that comes later does not run
    /// the command, kills its process group, and returns once no process of it is left. A process
    /// id recorded before a reboot, or reused by another process since, is never signalled.
    /// Throws a transient `TransportError` while that cannot be confirmed (the host is away).
    func stop(_ run: StepRun) async throws
}

/// Moves case files to the compute side and results back.
public protocol FileMover: Sendable {
    /// Copies the local case directory to `{upload_dir}/{case_id}/`, complete or not at all.
    func upload(caseId: String, from localCase: String) async throws -> TransferReport
    /// Copies `{download_dir}/{case_id}/` to `{results_dir}/{case_id}/`, complete or not at all.
    func download(caseId: String, into resultsDir: String) async throws -> TransferReport
}

public struct TransferReport: Sendable, Equatable {
    public var files: Int
    public var bytes: Int64

    public init(files: Int, bytes: Int64) {
        self.files = files
        self.bytes = bytes
    }
}

/// Runs a short command on the compute side and captures its output (nvidia-smi, checks).
public protocol CommandRunner: Sendable {
    /// Runs `command` with `/bin/sh -c`; stdout and stderr together. Throws `TransportError` only
    /// when the command could not be run at all (for ssh: the connection failed).
    func capture(_ command: String, timeoutSec: Double) async throws -> CommandResult
}

public struct CommandResult: Sendable, Equatable {
    public var status: Int32
    public var output: String

    public init(status: Int32, output: String) {
        self.status = status
        self.output = output
    }
}

/// A transport failure a person reads.
public struct TransportError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// A failure of the way there (connection refused, ssh exit 255, timeout), not of the work:
    /// worth retrying with backoff. Permanent failures (a missing file, a refused case, a host
    /// key mismatch) fail the step at once.
    public var isTransient: Bool

    public init(_ message: String, transient: Bool = false) {
        self.message = message
        self.isTransient = transient
    }

    public var description: String { message }
}
