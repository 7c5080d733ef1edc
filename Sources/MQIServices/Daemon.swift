import Foundation
import Logging
import MQICore
import MQIStore
import MQITransport
import ServiceLifecycle

/// The whole communicator wired together: store, scanner, conductor and workers in one
/// ServiceGroup with graceful shutdown on SIGTERM/SIGINT.
public struct Daemon: Sendable {
    public var config: Config
    public var logger: Logger
    /// Shut down once nothing is left to do (and a scan found nothing new).
    public var exitWhenIdle: Bool

    public init(config: Config, logger: Logger, exitWhenIdle: Bool = false) {
        self.config = config
        self.logger = logger
        self.exitWhenIdle = exitWhenIdle
    }

    /// Opens the state database the way every command does.
    public static func openStore(_ config: Config) throws -> Store {
        try Store(path: config.state.database, maxDeliveries: config.retry.maxAttempts)
    }

    public func run() async throws {
        let lock = try PIDLock(path: config.state.pidFile)
        defer { lock.release() }
        if let stale = lock.stalePID {
            logger.info("replaced a stale PID file left by PID \(stale), which is no longer running", metadata: ["pid_file": "\(config.state.pidFile)"])
        }
        for directory in [config.state.logsDir, config.conductor.uploadDir, config.conductor.downloadDir, config.conductor.resultsDir] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        let store = try Self.openStore(config)
        let reclaimed = try await store.reclaimLeases()
        if reclaimed > 0 { logger.info("took back \(reclaimed) message(s) left in progress by the previous run; their steps are adopted, not restarted") }
        let freed = try await store.reconcileGPUs(configured: config.hpc.gpus)
        if !freed.isEmpty { logger.warning("freed GPU reservation(s) \(freed) held by no running case") }

        let transports = try Transports.make(config, logger: logger)
        let conductor = Conductor(config: config)
        let scanner = CaseScanner(config: config.scanner, store: store, logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: scanner, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: ConductorService(store: store, conductor: conductor, retry: config.retry, logger: logger)),
            .init(service: RemoteExecutorService(
                store: store, executor: transports.executor, logsDir: config.state.logsDir,
                concurrency: max(4, config.hpc.gpus.count * 2), retry: config.retry, logger: logger)),
            .init(service: FileTransferService(
                store: store, mover: transports.mover,
                localLogdata: config.scanner.localLogdata, resultsDir: config.conductor.resultsDir, concurrency: 2,
                retry: config.retry, logger: logger)),
        ]
        services.append(.init(service: SystemdNotifier(logger: logger), successTerminationBehavior: .ignore))
        if exitWhenIdle {
            services.append(.init(service: IdleWatcher(store: store, scanner: scanner, logger: logger),
                                  successTerminationBehavior: .gracefullyShutdownGroup))
        }
        var groupConfig = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        groupConfig.maximumGracefulShutdownDuration = .milliseconds(Int64(config.shutdownTimeoutSec * 1000))
        let group = ServiceGroup(configuration: groupConfig)
        logger.info("mqi daemon started", metadata: [
            "config": "\(config.sourcePath)", "database": "\(config.state.database)", "gpus": "\(config.hpc.gpus)",
        ])
        try await group.run()
        logger.info("mqi daemon stopped")
    }
}

/// Ends the daemon once nothing is NEW, PROCESSING or PENDING_RESOURCE, no message is queued
/// or leased, and a fresh scan found nothing new (`--exit-when-idle`).
struct IdleWatcher: Service {
    let store: Store
    let scanner: CaseScanner
    let logger: Logger
    var interval: Double = 0.2

    func run() async throws {
        var idleChecks = 0
        while !Task.isCancelled {
            try await Task.sleep(for: .seconds(interval))
            guard try await store.activity().isIdle else {
                idleChecks = 0
                continue
            }
            let scan = await scanner.scan()
            guard scan.registered == 0, scan.settling == 0 else {
                idleChecks = 0
                continue
            }
            idleChecks += 1
            if idleChecks >= 2 {
                logger.info("nothing left to do; shutting down (--exit-when-idle)")
                return
            }
        }
    }
}
