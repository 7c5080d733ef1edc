import Foundation

/// Case statuses (names from the original design).
public enum CaseStatus: String, Sendable, Codable, CaseIterable {
    case new = "NEW"
    case processing = "PROCESSING"
    case pendingResource = "PENDING_RESOURCE"
    case completed = "COMPLETED"
    case failed = "FAILED"
    case cancelled = "CANCELLED"

    /// Nothing more will happen to the case unless an operator retries it.
    public var isFinal: Bool { self == .completed || self == .failed || self == .cancelled }
}

/// Whether a failure could go away by itself (retried automatically) or not.
public enum FailureClass: String, Sendable, Codable, Equatable {
    case permanent
    case retryable
}

/// What the Conductor knows about one case.
public struct CaseState: Sendable, Equatable {
    public var caseId: String
    public var status: CaseStatus
    public var workflow: String
    /// The current (or last) step; nil before the first.
    public var stepIndex: Int?
    /// The attempt of the current step, starting at 1.
    public var attempt: Int
    /// The GPUs the case holds now.
    public var gpuIds: [Int]
    public var progress: Int
    public var error: String?
    /// `permanent` or `retryable` when the case failed.
    public var failureClass: FailureClass?
    /// From the case's PlanInfo.txt (`scanner.case_layout: moqui`).
    public var patientId: String?
    public var beamNumbers: [Int]
    /// The runs of the current step when it is `for_each: beam` (one per delivered beam), else empty.
    public var beams: [BeamRun] = []

    public init(caseId: String, status: CaseStatus = .new, workflow: String, stepIndex: Int? = nil, attempt: Int = 0,
                gpuIds: [Int] = [], progress: Int = 0, error: String? = nil, failureClass: FailureClass? = nil,
                patientId: String? = nil, beamNumbers: [Int] = []) {
        self.failureClass = failureClass
        self.patientId = patientId
        self.beamNumbers = beamNumbers
        self.caseId = caseId
        self.status = status
        self.workflow = workflow
        self.stepIndex = stepIndex
        self.attempt = attempt
        self.gpuIds = gpuIds
        self.progress = progress
        self.error = error
    }
}

/// One beam's run of a `for_each: beam` step: its own attempt, GPUs, progress and outcome.
public struct BeamRun: Sendable, Equatable, Codable {
    public enum Status: String, Sendable, Codable, CaseIterable {
        /// Waiting for GPUs (or for its first start).
        case waiting = "WAITING"
        case running = "RUNNING"
        case succeeded = "SUCCEEDED"
        case failed = "FAILED"
        /// Stopped because the case was cancelled or another beam failed.
        case cancelled = "CANCELLED"
    }

    /// The beam number (`DICOM_BEAM_NUMBER` of its PlanInfo.txt).
    public var beam: Int
    public var status: Status
    /// Starts at 1; a retryable failure of this beam alone runs it again as the next attempt.
    public var attempt: Int
    public var gpuIds: [Int]
    /// The case progress this beam stands for, within its step's range.
    public var progress: Int
    public var error: String?
    public var startedAt: Date?
    public var finishedAt: Date?

    public init(beam: Int, status: Status = .waiting, attempt: Int = 1, gpuIds: [Int] = [], progress: Int = 0, error: String? = nil,
                startedAt: Date? = nil, finishedAt: Date? = nil) {
        self.beam = beam
        self.status = status
        self.attempt = attempt
        self.gpuIds = gpuIds
        self.progress = progress
        self.error = error
        self.startedAt = startedAt
        self.finishedAt = finishedAt
    }

    enum CodingKeys: String, CodingKey {
        case beam = "number", status, attempt, gpuIds = "gpu_ids", progress, error, startedAt = "started_at", finishedAt = "finished_at"
    }
}
