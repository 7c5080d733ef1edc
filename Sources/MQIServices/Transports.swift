import Foundation
import Logging
import MQICore
import MQITransport

/// The transport's three parts for the configured `hpc.transport`.
public struct Transports: Sendable {
    public var mover: any FileMover
    public var executor: any StepExecutor
    public var runner: any CommandRunner
    /// Removes completed cases' directories on the HPC (`hpc.cleanup`).
    public var cleaner: (any CaseCleaner)?
    /// Whether the HPC host answers (nil for the local transport, which is always there).
    public var reachability: HostReachability?

    public init(mover: any FileMover, executor: any StepExecutor, runner: any CommandRunner, reachability: HostReachability? = nil,
                cleaner: (any CaseCleaner)? = nil) {
        self.cleaner = cleaner
        self.mover = mover
        self.executor = executor
        self.runner = runner
        self.reachability = reachability
    }

    /// `onSlurmReport`: what the Slurm executor learns about a job (under `hpc.executor: slurm`).
    public static func make(_ config: Config, logger: Logger, onSSHConnectionOpened: @escaping @Sendable () -> Void = {},
                            onSlurmReport: @escaping @Sendable (StepRun, SlurmJobReport) async -> Void = { _, _ in }) throws -> Transports {
        var transports = try direct(config, logger: logger, onSSHConnectionOpened: onSSHConnectionOpened)
        if config.hpc.executor == .slurm {
            // sbatch, squeue and scancel run where the transport runs commands.
            transports.executor = SlurmStepExecutor(runner: transports.runner, uploadDir: config.conductor.uploadDir, config: config.hpc.slurm,
                                                    instance: ProcessInfo.processInfo.hostName, logger: logger, onReport: onSlurmReport)
        }
        return transports
    }

    static func direct(_ config: Config, logger: Logger, onSSHConnectionOpened: @escaping @Sendable () -> Void) throws -> Transports {
        switch config.hpc.transport {
        case .local:
            return Transports(
                mover: LocalFileMover(uploadDir: config.conductor.uploadDir, downloadDir: config.conductor.downloadDir),
                executor: LocalStepExecutor(uploadDir: config.conductor.uploadDir),
                runner: LocalCommandRunner(),
                cleaner: LocalCaseCleaner(uploadDir: config.conductor.uploadDir, downloadDir: config.conductor.downloadDir))
        case .ssh:
            guard let ssh = config.hpc.ssh else {
                throw TransportError("hpc.transport is ssh but the hpc.ssh section is missing (hpc.ssh.host is required)")
            }
            // One connection (ControlMaster) shared by the mover, the executor and the GPU monitor.
            var sshLogger = logger
            sshLogger[metadataKey: "ssh.host"] = "\(ssh.host)"
            let connection = try SSHConnection(config: ssh, retry: config.retry, logger: sshLogger, onConnectionOpened: onSSHConnectionOpened)
            return Transports(
                mover: SSHFileMover(connection: connection, uploadDir: config.conductor.uploadDir, downloadDir: config.conductor.downloadDir),
                executor: SSHStepExecutor(connection: connection, uploadDir: config.conductor.uploadDir, logger: sshLogger),
                runner: SSHCommandRunner(connection: connection), reachability: connection.reachability,
                cleaner: SSHCaseCleaner(connection: connection, uploadDir: config.conductor.uploadDir, downloadDir: config.conductor.downloadDir))
        }
    }
}
