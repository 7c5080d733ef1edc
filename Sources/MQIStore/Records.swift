import Foundation
import MQICore

/// One case as the CLI, API and dashboard show it.
public struct CaseSummary: Sendable, Equatable, Codable {
    public var caseId: String
    public var status: CaseStatus
    public var workflow: String
    /// The current (or last) step's name; nil before the first.
    public var workflowStep: String?
    public var progress: Int
    public var gpuIds: [Int]
    public var attempt: Int
    public var error: String?
    public var createdAt: Date
    public var updatedAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    /// `permanent` or `retryable`, when the case failed.
    public var failureClass: FailureClass?
    public var patientId: String?
    public var beamNumbers: [Int] = []
    /// The beam runs of the case's (latest) `for_each: beam` step; empty without one.
    public var beams: [BeamRun] = []
    /// What the case waits for or runs on outside the communicator ("queued in Slurm:
    /// Resources"); nil when there is nothing to say.
    public var detail: String?

    enum CodingKeys: String, CodingKey {
        case caseId = "case_id", status, workflow, workflowStep = "workflow_step", progress, gpuIds = "gpu_ids"
        case attempt, error, createdAt = "created_at", updatedAt = "updated_at", startedAt = "started_at", finishedAt = "finished_at"
        case failureClass = "failure_class", patientId = "patient_id", beamNumbers = "beam_numbers", beams, detail
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(caseId, forKey: .caseId)
        try container.encode(status, forKey: .status)
        try container.encode(workflow, forKey: .workflow)
        try container.encode(workflowStep, forKey: .workflowStep)
        try container.encode(progress, forKey: .progress)
        try container.encode(gpuIds, forKey: .gpuIds)
        try container.encode(attempt, forKey: .attempt)
        try container.encode(error, forKey: .error)
        try container.encode(createdAt, forKey: .createdAt)
        try container.encode(updatedAt, forKey: .updatedAt)
        try container.encode(startedAt, forKey: .startedAt)
        try container.encode(finishedAt, forKey: .finishedAt)
        try container.encode(failureClass, forKey: .failureClass)
        try container.encode(patientId, forKey: .patientId)
        try container.encode(beamNumbers, forKey: .beamNumbers)
        try container.encode(beams, forKey: .beams)
        try container.encode(detail, forKey: .detail)
    }
}

/// One line of a case's history: a transition, a step outcome or an ignored event.
public struct CaseHistoryEntry: Sendable, Equatable, Codable {
    public var at: Date
    public var event: String
    public var status: CaseStatus
    public var step: String?
    public var attempt: Int?
    public var message: String
}

/// One GPU the communicator may reserve.
public struct GPUResource: Sendable, Equatable, Codable {
    public enum Status: String, Sendable, Codable {
        case free, reserved
        /// No longer in `hpc.gpus`; never handed out again.
        case retired
        /// Its previous holder's attempt may still run: not handed out until the stop is confirmed.
        case draining
    }

    /// The attempt a draining GPU waits for.
    public struct Drain: Sendable, Equatable, Codable {
        public var caseId: String
        public var stepIndex: Int?
        public var attempt: Int?
        /// The beam of a `for_each: beam` step's run.
        public var beam: Int?
        public var since: Date?
        /// Why the stop is not confirmed yet (the host is unreachable, say); nil while it is in progress.
        public var reason: String?

        enum CodingKeys: String, CodingKey {
            case caseId = "case_id", stepIndex = "step_index", attempt, beam, since, reason
        }
    }

    /// What the hardware says (from nvidia-smi).
    public enum Health: String, Sendable, Codable {
        case ok
        /// Free in the database but in use by a foreign process: not reserved until it frees up.
        case busy
        /// No longer listed by nvidia-smi: not reserved until it is back.
        case missing
    }

    public var gpuId: Int
    public var status: Status
    public var reservedBy: String?
    public var reservedAt: Date?
    public var health: Health = .ok
    public var name: String?
    public var uuid: String?
    public var utilizationPercent: Double?
    public var memoryUsedMB: Double?
    public var memoryTotalMB: Double?
    public var temperatureC: Double?
    public var lastSeen: Date?
    /// Set while the GPU is draining.
    public var drain: Drain?

    /// Who holds the GPU, in words: the case that reserved it, or the attempt a draining GPU
    /// waits for (with why the stop is not confirmed yet).
    public var holder: String? {
        guard let drain else { return reservedBy }
        let attempt = (drain.beam.map { " beam \($0)" } ?? "") + (drain.attempt.map { " attempt \($0)" } ?? "")
        return "draining: waits for \(drain.caseId)\(attempt) to stop" + (drain.reason.map { " (\($0))" } ?? "")
    }

    enum CodingKeys: String, CodingKey {
        case gpuId = "gpu_id", status, reservedBy = "reserved_by", reservedAt = "reserved_at", health, name, uuid
        case utilizationPercent = "utilization_percent", memoryUsedMB = "memory_used_mb", memoryTotalMB = "memory_total_mb"
        case temperatureC = "temperature_c", lastSeen = "last_seen", drain
    }
}

/// A message that failed too often and was set aside for an operator.
public struct DeadLetter: Sendable, Equatable, Codable {
    public var id: Int64
    public var queue: QueueName
    public var kind: MessageKind
    public var caseId: String
    public var deliveries: Int
    public var error: String
    public var deadAt: Date

    enum CodingKeys: String, CodingKey {
        case id, queue, kind, caseId = "case_id", deliveries, error, deadAt = "dead_at"
    }
}

/// Counts that say whether there is anything left to do.
public struct ActivitySnapshot: Sendable, Equatable {
    public var activeCases: Int
    public var queuedMessages: Int

    public var isIdle: Bool { activeCases == 0 && queuedMessages == 0 }
}

/// A store error a person reads.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}

/// Whether the HPC host answers, as the daemon last saw it (for `mqi status` and the dashboard).
public struct HostState: Sendable, Equatable, Codable {
    public var host: String
    public var reachable: Bool
    /// Since when it is (un)reachable.
    public var since: Date
    public var reason: String?

    public init(host: String, reachable: Bool, since: Date, reason: String? = nil) {
        self.host = host
        self.reachable = reachable
        self.since = since
        self.reason = reason
    }
}

/// A message waiting in (or leased from) a queue.
public struct QueuedMessage: Sendable, Equatable {
    public var id: Int64
    public var queue: QueueName?
    /// Nil for a kind this version does not know (it goes to the dead letters when claimed).
    public var kind: MessageKind?
    public var kindName: String
    public var caseId: String
    /// Deliveries so far: failures and crashes count; transient postponements and graceful shutdowns do not.
    public var deliveries: Int
    public var leaseOwner: String?
    public var lastError: String?
}
