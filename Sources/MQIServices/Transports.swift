import Foundation
import Logging
import MQICore
import MQITransport

/// The transport's three parts for the configured `hpc.transport`.
public struct Transports: Sendable {
    public var mover: any FileMover
    public var executor: any StepExecutor
    public var runner: any CommandRunner

    public init(mover: any FileMover, executor: any StepExecutor, runner: any CommandRunner) {
        self.mover = mover
        self.executor = executor
        self.runner = runner
    }

    public static func make(_ config: Config, logger: Logger) throws -> Transports {
        switch config.hpc.transport {
        case .local:
            return Transports(
                mover: LocalFileMover(uploadDir: config.conductor.uploadDir, downloadDir: config.conductor.downloadDir),
                executor: LocalStepExecutor(uploadDir: config.conductor.uploadDir),
                runner: LocalCommandRunner())
        case .ssh:
            throw TransportError("hpc.transport: ssh is not available in this build")
        }
    }
}
