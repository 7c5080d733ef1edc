/// The durable queues (names from the original design; they must not change).
public enum QueueName: String, Sendable, Codable, CaseIterable {
    case conductor = "conductor_queue"
    case remoteExecutor = "remote_executor_queue"
    case fileTransfer = "file_transfer_queue"
}

/// Commands and events carried by the queues (names from the original design).
public enum MessageKind: String, Sendable, Codable, CaseIterable {
    // to the Conductor
    case newCaseFound = "new_case_found"
    case executionSucceeded = "execution_succeeded"
    case executionFailed = "execution_failed"
    case caseUploadCompleted = "case_upload_completed"
    case resultsDownloadCompleted = "results_download_completed"
    case fileTransferFailed = "file_transfer_failed"
    // to the workers
    case executeCommand = "execute_command"
    case uploadCase = "upload_case"
    case downloadResults = "download_results"
    /// Stop an attempt that may still run (cancel, failure, dead letter) and confirm it is gone.
    case stopAttempt = "stop_attempt"
    /// The executor confirmed that no process of an attempt is left: its draining GPUs are free.
    case attemptStopped = "attempt_stopped"

    /// The queue this kind of message travels on.
    public var queue: QueueName {
        switch self {
        case .newCaseFound, .executionSucceeded, .executionFailed, .caseUploadCompleted,
             .resultsDownloadCompleted, .fileTransferFailed, .attemptStopped:
            .conductor
        case .executeCommand, .stopAttempt: .remoteExecutor
        case .uploadCase, .downloadResults: .fileTransfer
        }
    }
}

/// The body of every message. Commands and their result events carry the case id, the step
/// index and the attempt, so the Conductor can drop results that are not for the current step.
public struct MessageBody: Sendable, Codable, Equatable {
    public var caseId: String
    public var stepIndex: Int?
    public var attempt: Int?
    public var step: String?
    public var gpuIds: [Int]?
    /// The rendered, shell-quoted command line of an execute step.
    public var command: String?
    public var timeoutSec: Double?
    /// Why a step failed.
    public var reason: String?
    /// The failure matched a `retryable_patterns` entry.
    public var retryable: Bool?
    /// Output rules of an execute step.
    public var rules: OutputRules?
    /// The case's progress when this step ends (the next step's `progress`, or 100).
    public var progressTo: Int?
    /// The case's progress when this step starts.
    public var progressFrom: Int?
    /// Input files to write just before the command starts.
    public var inputFiles: [RenderedFile]?
    /// On a step result: the executor saw the attempt's process group end (its exit code, or a
    /// confirmed kill). Absent on failures that say nothing about the process (a dead letter).
    public var ended: Bool?
    /// The beam of a `for_each: beam` step's run (its command, its result, its stop).
    public var beam: Int?
    /// Under `executor: slurm`: how many GPUs to ask Slurm for (`--gres=gpu:N`); no id is
    /// reserved, and `gpuIds` stays empty.
    public var gpuCount: Int?
    /// A `type: local` step's command (and its stop): it runs on the communicator's machine, in
    /// `results_dir/<case_id>`, not through the transport.
    public var local: Bool?

    public init(caseId: String, stepIndex: Int? = nil, attempt: Int? = nil, step: String? = nil, gpuIds: [Int]? = nil,
                command: String? = nil, timeoutSec: Double? = nil, reason: String? = nil) {
        self.caseId = caseId
        self.stepIndex = stepIndex
        self.attempt = attempt
        self.step = step
        self.gpuIds = gpuIds
        self.command = command
        self.timeoutSec = timeoutSec
        self.reason = reason
    }

    enum CodingKeys: String, CodingKey {
        case caseId = "case_id", stepIndex = "step_index", attempt, step, gpuIds = "gpu_ids", command
        case timeoutSec = "timeout_sec", reason, retryable, rules, progressTo = "progress_to", progressFrom = "progress_from"
        case inputFiles = "input_files", ended, beam, gpuCount = "gpu_count", local
    }

    /// The result event a worker publishes for this command.
    public func result(_ kind: MessageKind, reason: String? = nil, retryable: Bool? = nil, ended: Bool? = nil) -> OutgoingMessage {
        var body = MessageBody(caseId: caseId, stepIndex: stepIndex, attempt: attempt, step: step, reason: reason)
        body.retryable = retryable
        body.ended = ended
        body.beam = beam
        if kind == .stopAttempt || kind == .attemptStopped { body.gpuIds = gpuIds }
        if kind == .stopAttempt { body.local = local }
        return OutgoingMessage(kind: kind, body: body)
    }
}

/// A rendered input file: where it goes and what it holds.
public struct RenderedFile: Sendable, Codable, Equatable {
    public var path: String
    public var content: String

    public init(path: String, content: String) {
        self.path = path
        self.content = content
    }
}

/// A message to publish.
public struct OutgoingMessage: Sendable, Equatable {
    public var kind: MessageKind
    public var body: MessageBody
    /// Deliver no sooner than this many seconds after publishing (retry backoff).
    public var delaySec: Double?
    public var queue: QueueName { kind.queue }

    public init(kind: MessageKind, body: MessageBody, delaySec: Double? = nil) {
        self.kind = kind
        self.body = body
        self.delaySec = delaySec
    }
}

/// A message claimed from a queue under a lease.
public struct ClaimedMessage: Sendable, Equatable {
    public var id: Int64
    public var queue: QueueName
    public var kind: MessageKind
    public var body: MessageBody
    /// How many times it has been delivered, this delivery included.
    public var deliveries: Int
    public var leaseOwner: String

    public init(id: Int64, queue: QueueName, kind: MessageKind, body: MessageBody, deliveries: Int, leaseOwner: String) {
        self.id = id
        self.queue = queue
        self.kind = kind
        self.body = body
        self.deliveries = deliveries
        self.leaseOwner = leaseOwner
    }
}
