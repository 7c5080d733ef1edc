import Foundation

/// The whole validated configuration of one communicator. Paths are absolute (resolved against
/// the config file's directory); every workflow's commands are parsed templates.
public struct Config: Sendable, Equatable {
    public var sourcePath: String
    public var scanner: ScannerConfig
    public var state: StateConfig
    public var hpc: HPCConfig
    public var conductor: ConductorConfig
    public var workflows: [String: Workflow]
    public var retry: RetryPolicy
    public var logging: LoggingConfig

    public init(
        sourcePath: String, scanner: ScannerConfig, state: StateConfig, hpc: HPCConfig,
        conductor: ConductorConfig, workflows: [String: Workflow], retry: RetryPolicy,
        logging: LoggingConfig
    ) {
        self.sourcePath = sourcePath
        self.scanner = scanner
        self.state = state
        self.hpc = hpc
        self.conductor = conductor
        self.workflows = workflows
        self.retry = retry
        self.logging = logging
    }
}

public struct ScannerConfig: Sendable, Equatable {
    public var localLogdata: String
    public var readyMarker: String?
    public var quietPeriodSec: Double
    public var rescanIntervalSec: Double
    public var workflow: String

    public init(localLogdata: String, readyMarker: String?, quietPeriodSec: Double, rescanIntervalSec: Double, workflow: String) {
        self.localLogdata = localLogdata
        self.readyMarker = readyMarker
        self.quietPeriodSec = quietPeriodSec
        self.rescanIntervalSec = rescanIntervalSec
        self.workflow = workflow
    }
}

public struct StateConfig: Sendable, Equatable {
    public var database: String
    public var pidFile: String
    public var logsDir: String

    public init(database: String, pidFile: String, logsDir: String) {
        self.database = database
        self.pidFile = pidFile
        self.logsDir = logsDir
    }
}

public enum TransportKind: String, Sendable, Equatable, CaseIterable {
    case local
}

public struct HPCConfig: Sendable, Equatable {
    public var transport: TransportKind
    public var gpus: [Int]

    public init(transport: TransportKind, gpus: [Int]) {
        self.transport = transport
        self.gpus = gpus
    }
}

public struct ConductorConfig: Sendable, Equatable {
    public var uploadDir: String
    public var downloadDir: String
    public var resultsDir: String
    /// Accepted for compatibility with the original config; the conductor is event driven.
    public var monitorIntervalSec: Double

    public init(uploadDir: String, downloadDir: String, resultsDir: String, monitorIntervalSec: Double) {
        self.uploadDir = uploadDir
        self.downloadDir = downloadDir
        self.resultsDir = resultsDir
        self.monitorIntervalSec = monitorIntervalSec
    }
}

public struct LoggingConfig: Sendable, Equatable {
    public var level: String

    public init(level: String) {
        self.level = level
    }
}

public enum StepType: String, Sendable, Equatable, Codable, CaseIterable {
    case upload
    case execute
    case download
}

/// One step of a workflow.
public struct WorkflowStep: Sendable, Equatable {
    public var name: String
    public var type: StepType
    /// The case's progress (0–100) while this step runs.
    public var progress: Int
    public var timeoutSec: Double?
    /// How many GPUs the step needs (0 = none). Execute steps need one unless `gpu: false`.
    public var gpuCount: Int
    /// The command of an execute step.
    public var command: CommandTemplate?

    public init(name: String, type: StepType, progress: Int, timeoutSec: Double? = nil, gpuCount: Int, command: CommandTemplate? = nil) {
        self.name = name
        self.type = type
        self.progress = progress
        self.timeoutSec = timeoutSec
        self.gpuCount = gpuCount
        self.command = command
    }
}

/// A named, ordered list of steps.
public struct Workflow: Sendable, Equatable {
    public var name: String
    public var steps: [WorkflowStep]

    public init(name: String, steps: [WorkflowStep]) {
        self.name = name
        self.steps = steps
    }
}
