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
