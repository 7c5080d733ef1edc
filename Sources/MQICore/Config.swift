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
    public var metrics: MetricsConfig
    public var gpuMonitor: GPUMonitorConfig
    /// The JSON API's and dashboard's settings.
    public var http: HTTPConfig
    /// How long a graceful shutdown may take before the daemon exits anyway.
    public var shutdownTimeoutSec: Double
    /// How long step logs and the history of finished cases are kept.
    public var retention: RetentionConfig
    /// Who is told when something happens (`notifications.webhooks`).
    public var notifications: NotificationsConfig

    public init(
        sourcePath: String, scanner: ScannerConfig, state: StateConfig, hpc: HPCConfig,
        conductor: ConductorConfig, workflows: [String: Workflow], retry: RetryPolicy,
        logging: LoggingConfig, metrics: MetricsConfig = MetricsConfig(), gpuMonitor: GPUMonitorConfig = GPUMonitorConfig(),
        shutdownTimeoutSec: Double = 30, http: HTTPConfig = HTTPConfig(), retention: RetentionConfig = RetentionConfig(),
        notifications: NotificationsConfig = NotificationsConfig()
    ) {
        self.notifications = notifications
        self.retention = retention
        self.http = http
        self.sourcePath = sourcePath
        self.scanner = scanner
        self.state = state
        self.hpc = hpc
        self.conductor = conductor
        self.workflows = workflows
        self.retry = retry
        self.logging = logging
        self.metrics = metrics
        self.gpuMonitor = gpuMonitor
        self.shutdownTimeoutSec = shutdownTimeoutSec
    }
}

/// The HTTP endpoint: `/metrics`, `/healthz`, `/readyz` (and later the API and dashboard).
public struct MetricsConfig: Sendable, Equatable {
    public var enabled: Bool
    public var host: String
    /// 0 picks a free port (logged at start).
    public var port: Int

    public init(enabled: Bool = true, host: String = "127.0.0.1", port: Int = 8000) {
        self.enabled = enabled
        self.host = host
        self.port = port
    }
}

/// The operators' API: mutating endpoints need `Authorization: Bearer <token>`, the token read
/// from `tokens_file` or `token_file`; without one they answer 403. Served over TLS when `tls` is set.
public struct HTTPConfig: Sendable, Equatable {
    /// `http.token_file`: one token (the first line), unnamed.
    public var tokenFile: String?
    /// `http.tokens_file`: lines `name token`, one per operator (`#` comments, blank lines).
    public var tokensFile: String?
    /// `http.tls: { cert_file, key_file }`: PEM files; the endpoint then speaks HTTPS only.
    public var tls: TLSFiles?

    public init(tokenFile: String? = nil, tokensFile: String? = nil, tls: TLSFiles? = nil) {
        self.tokenFile = tokenFile
        self.tokensFile = tokensFile
        self.tls = tls
    }
}

/// A PEM certificate (chain) and its private key, absolute paths.
public struct TLSFiles: Sendable, Equatable {
    public var certFile: String
    public var keyFile: String

    public init(certFile: String, keyFile: String) {
        self.certFile = certFile
        self.keyFile = keyFile
    }
}

/// What a webhook can be told. The raw value is the config's and the payload's `event`.
public enum NotificationEvent: String, Sendable, Equatable, CaseIterable, Codable {
    case caseReceived = "case_received"
    case caseCompleted = "case_completed"
    case caseFailed = "case_failed"
    case caseCancelled = "case_cancelled"
    case hpcUnreachable = "hpc_unreachable"
    case hpcReachable = "hpc_reachable"
    case deadLetter = "dead_letter"
    case gpuMissing = "gpu_missing"
}

/// `notifications.webhooks[]`: a JSON POST to `url` for each of `events`.
public struct WebhookConfig: Sendable, Equatable {
    public var url: String
    public var events: [NotificationEvent]
    /// `token_file`: when set, its first line is sent as `Authorization: Bearer <token>`.
    public var tokenFile: String?

    public init(url: String, events: [NotificationEvent], tokenFile: String? = nil) {
        self.url = url
        self.events = events
        self.tokenFile = tokenFile
    }
}

/// `notifications`: webhooks fed from a durable outbox in the state database.
public struct NotificationsConfig: Sendable, Equatable {
    public var webhooks: [WebhookConfig]
    /// `notifications.timeout_sec`: how long one POST may take (default 10).
    public var timeoutSec: Double
    /// `notifications.max_backoff_sec`: the longest wait between two tries of one event (default 300).
    public var maxBackoffSec: Double

    public init(webhooks: [WebhookConfig] = [], timeoutSec: Double = 10, maxBackoffSec: Double = 300) {
        self.webhooks = webhooks
        self.timeoutSec = timeoutSec
        self.maxBackoffSec = maxBackoffSec
    }
}

/// GPU telemetry from `nvidia-smi`, run through the transport.
public struct GPUMonitorConfig: Sendable, Equatable {
    public static let defaultCommand = "nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu --format=csv,noheader,nounits"

    public var enabled: Bool
    public var intervalSec: Double
    public var command: String
    /// A free GPU using more memory than this (a foreign process) is not reserved.
    public var busyMemoryMB: Double

    public init(enabled: Bool = true, intervalSec: Double = 10, command: String = GPUMonitorConfig.defaultCommand, busyMemoryMB: Double = 500) {
        self.enabled = enabled
        self.intervalSec = intervalSec
        self.command = command
        self.busyMemoryMB = busyMemoryMB
    }
}

/// How to reach the HPC over SSH (`hpc.transport: ssh`).
public struct SSHConfig: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var user: String?
    public var identityFile: String?
    public var knownHostsFile: String?
    public var strictHostKeyChecking: Bool
    public var connectTimeoutSec: Double
    /// New TCP connections to the host at most per minute (the ControlMaster is shared).
    public var maxNewConnectionsPerMin: Int
    /// More `-o Key=Value` options for ssh.
    public var extraOptions: [String]

    public init(host: String, port: Int = 22, user: String? = nil, identityFile: String? = nil, knownHostsFile: String? = nil,
                strictHostKeyChecking: Bool = true, connectTimeoutSec: Double = 10, maxNewConnectionsPerMin: Int = 6, extraOptions: [String] = []) {
        self.host = host
        self.port = port
        self.user = user
        self.identityFile = identityFile
        self.knownHostsFile = knownHostsFile
        self.strictHostKeyChecking = strictHostKeyChecking
        self.connectTimeoutSec = connectTimeoutSec
        self.maxNewConnectionsPerMin = maxNewConnectionsPerMin
        self.extraOptions = extraOptions
    }
}

public struct ScannerConfig: Sendable, Equatable {
    public var localLogdata: String
    public var readyMarker: String?
    public var quietPeriodSec: Double
    public var rescanIntervalSec: Double
    public var workflow: String
    /// How a case must look to be accepted (`moqui`: RT plan, deliveries with PlanInfo.txt and *.ptn).
    public var caseLayout: CaseLayout
    /// `scanner.case_depth`: a case is a directory exactly this many levels below `local_logdata`
    /// (3 for `<room>/<patient_id>/<study_uid>`); its id is the relative path, `/` between levels.
    public var caseDepth: Int
    /// `scanner.marker_timeout_min`: a case that waits longer than this for its ready marker gets
    /// one WARNING and is listed by `mqi status`.
    public var markerTimeoutMin: Double
    /// `scanner.fraction_window_min`: deliveries within this many minutes of a fraction's first
    /// delivery belong to that fraction.
    public var fractionWindowMin: Double = 60
    /// `scanner.followup_workflow`: the workflow run once for each delivery folder that appears
    /// in a case after it was registered (nil: such deliveries are only recorded).
    public var followupWorkflow: String?

    public init(localLogdata: String, readyMarker: String?, quietPeriodSec: Double, rescanIntervalSec: Double, workflow: String,
                caseLayout: CaseLayout = .any, caseDepth: Int = 1, markerTimeoutMin: Double = 60) {
        self.caseDepth = caseDepth
        self.markerTimeoutMin = markerTimeoutMin
        self.caseLayout = caseLayout
        self.localLogdata = localLogdata
        self.readyMarker = readyMarker
        self.quietPeriodSec = quietPeriodSec
        self.rescanIntervalSec = rescanIntervalSec
        self.workflow = workflow
    }
}

public struct StateConfig: Sendable, Equatable {
    /// A SQLite file's path, or a PostgreSQL URL (`postgresql://USER@HOST:PORT/DATABASE`) shared
    /// by several communicators.
    public var database: String
    public var pidFile: String
    public var logsDir: String
    /// `state.password_file`: the PostgreSQL password (its first line); else `PGPASSWORD`.
    public var passwordFile: String?
    /// `state.instance_name`: this communicator's name in leases, logs, metrics and the
    /// dashboard (default: the host name).
    public var instanceName: String
    /// `state.lease_sec`: how long a worker's claim on a message holds without renewal (it renews
    /// every third of it). A communicator that dies leaves its work to the others after this.
    public var leaseSec: Double

    public init(database: String, pidFile: String, logsDir: String, passwordFile: String? = nil, instanceName: String = StateConfig.defaultInstanceName,
                leaseSec: Double = 30) {
        self.database = database
        self.pidFile = pidFile
        self.logsDir = logsDir
        self.passwordFile = passwordFile
        self.instanceName = instanceName
        self.leaseSec = leaseSec
    }

    /// True when `database` is a PostgreSQL URL.
    public var isPostgres: Bool { database.hasPrefix("postgresql://") || database.hasPrefix("postgres://") }

    /// Where this communicator keeps its local files beside the state (follow-up uploads, the
    /// marker wait list): the SQLite file's directory, or the PID file's with PostgreSQL.
    public var localDirectory: String {
        ((isPostgres ? pidFile : database) as NSString).deletingLastPathComponent
    }

    public static var defaultInstanceName: String {
        localHostName.split(separator: ".").first.map(String.init) ?? "mqi"
    }

    /// This machine's name as the kernel has it (`gethostname`). Not Foundation's
    /// `ProcessInfo.hostName`, which resolves the name and can wait for DNS a hospital network
    /// may not answer.
    public static var localHostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(cString: buffer)
        return name.isEmpty ? "localhost" : name
    }
}

public enum TransportKind: String, Sendable, Equatable, CaseIterable {
    case local
    case ssh
}

/// `hpc.executor`: who places execute steps on GPUs. `direct` (the default): the communicator
/// reserves ids from `hpc.gpus` and starts steps itself; `slurm`: it submits them to Slurm, which
/// places them (no ids are reserved).
public enum ExecutorKind: String, Sendable, Equatable, CaseIterable {
    case direct
    case slurm
}

/// `hpc.slurm`: how execute steps are submitted under `executor: slurm`.
public struct SlurmConfig: Sendable, Equatable {
    public var partition: String?
    public var account: String?
    public var qos: String?
    /// Most jobs of this communicator in Slurm at once (queued + running).
    public var maxJobs: Int
    /// How often one `squeue` answers for all of this communicator's jobs.
    public var pollIntervalSec: Double
    /// More `sbatch` arguments, as given (`--mem=8G`).
    public var extraArgs: [String]

    public init(partition: String? = nil, account: String? = nil, qos: String? = nil, maxJobs: Int = 32, pollIntervalSec: Double = 5,
                extraArgs: [String] = []) {
        self.partition = partition
        self.account = account
        self.qos = qos
        self.maxJobs = maxJobs
        self.pollIntervalSec = pollIntervalSec
        self.extraArgs = extraArgs
    }
}

public struct HPCConfig: Sendable, Equatable {
    public var transport: TransportKind
    /// `direct` (reserve GPU ids here) or `slurm` (Slurm places the steps).
    public var executor: ExecutorKind = .direct
    /// Settings of the Slurm executor (defaults when the section is absent).
    public var slurm = SlurmConfig()
    /// GPU ids the communicator may reserve (discovered at start when `gpusAuto`).
    public var gpus: [Int]
    /// `hpc.gpus: auto`: discover the ids from nvidia-smi at start.
    public var gpusAuto: Bool
    public var ssh: SSHConfig?
    /// What happens to a case's directories on the HPC once it is completed.
    public var cleanup: RemoteCleanup

    public init(transport: TransportKind, gpus: [Int], gpusAuto: Bool = false, ssh: SSHConfig? = nil, cleanup: RemoteCleanup = .afterDownload) {
        self.cleanup = cleanup
        self.transport = transport
        self.gpus = gpus
        self.gpusAuto = gpusAuto
        self.ssh = ssh
    }
}

/// `hpc.cleanup`: `after_download` removes a completed case's upload, download and run
/// directories on the HPC once its results are downloaded and verified; `never` keeps them.
public enum RemoteCleanup: String, Sendable, Equatable, CaseIterable {
    case afterDownload = "after_download"
    case never
}

/// `retention`: step logs (`state.logs_dir/<case>/`) of cases finished more than `logsDays` ago
/// and the history (`case_events`) of cases finished more than `eventsDays` ago are deleted;
/// the case rows stay.
public struct RetentionConfig: Sendable, Equatable {
    public var logsDays: Double
    public var eventsDays: Double

    public init(logsDays: Double = 90, eventsDays: Double = 365) {
        self.logsDays = logsDays
        self.eventsDays = eventsDays
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
    /// An execute-like step that runs on the communicator's own machine, in
    /// `results_dir/<case_id>`, after the results are there (post-processing, hand-over).
    case local

    /// Runs a command (`remote_commands.<name>`): execute and local steps.
    public var runsCommand: Bool { self == .execute || self == .local }
}

/// One step of a workflow.
public struct WorkflowStep: Sendable, Equatable {
    public var name: String
    public var type: StepType
    /// The case's progress (0–100) while this step runs.
    public var progress: Int
    public var timeoutSec: Double?
    /// The most GPUs the step takes (0 = none). Execute steps need one unless `gpu: false`.
    public var gpuCount: Int
    /// The fewest GPUs the step can start with (`gpus: { min, max }`); equal to `gpuCount` for
    /// all-or-nothing steps.
    public var gpuMin: Int
    /// The command of an execute step.
    public var command: CommandTemplate?
    /// What the step's output says: progress, failure, success, retryable failures.
    public var rules: OutputRules?
    /// How many more attempts a failure matching `retryable_patterns` gets.
    public var maxStepRetries: Int
    /// Files rendered and written just before the command starts, fresh for every attempt.
    public var inputFiles: [InputFileTemplate]
    /// `for_each: beam`: one run per delivered beam, each with its own GPU(s), attempt, log,
    /// progress and outcome (placeholder `{beam_number}`).
    public var forEachBeam: Bool = false

    public init(name: String, type: StepType, progress: Int, timeoutSec: Double? = nil, gpuCount: Int, gpuMin: Int? = nil,
                command: CommandTemplate? = nil, rules: OutputRules? = nil, maxStepRetries: Int = 0, inputFiles: [InputFileTemplate] = []) {
        self.name = name
        self.type = type
        self.progress = progress
        self.timeoutSec = timeoutSec
        self.gpuCount = gpuCount
        self.gpuMin = gpuMin ?? gpuCount
        self.command = command
        self.rules = rules
        self.maxStepRetries = maxStepRetries
        self.inputFiles = inputFiles
    }
}

/// How a case directory must look.
public enum CaseLayout: String, Sendable, Equatable, CaseIterable {
    /// Any directory with files.
    case any
    /// MOQUI: an RT plan `RP*.dcm` and delivery folders with `PlanInfo.txt` and `*.ptn`.
    case moqui
}

/// Regular expressions applied to a step's output while it runs.
public struct OutputRules: Sendable, Equatable, Codable {
    /// Named groups `done` and `total`: the step's share of the case's progress.
    public var progressPattern: String?
    /// A match kills the step's process group and fails it with the matched line.
    public var failurePatterns: [String]
    /// When set, exit 0 without a match is a failure.
    public var successPattern: String?
    /// A failure whose line or output tail matches one of these is retried as a new attempt.
    public var retryablePatterns: [String]

    public init(progressPattern: String? = nil, failurePatterns: [String] = [], successPattern: String? = nil, retryablePatterns: [String] = []) {
        self.progressPattern = progressPattern
        self.failurePatterns = failurePatterns
        self.successPattern = successPattern
        self.retryablePatterns = retryablePatterns
    }

    enum CodingKeys: String, CodingKey {
        case progressPattern = "progress_pattern", failurePatterns = "failure_patterns", successPattern = "success_pattern"
        case retryablePatterns = "retryable_patterns"
    }
}

/// An input file an execute step renders (e.g. MOQUI's `moqui_tps.in` with `GPUID {gpu_id}`).
public struct InputFileTemplate: Sendable, Equatable {
    /// Where to write it on the compute side (placeholders allowed).
    public var path: CommandTemplate
    /// The file's text; values are substituted as they are (no shell quoting).
    public var content: CommandTemplate
    /// The template file it was read from.
    public var source: String

    public init(path: CommandTemplate, content: CommandTemplate, source: String) {
        self.path = path
        self.content = content
        self.source = source
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
