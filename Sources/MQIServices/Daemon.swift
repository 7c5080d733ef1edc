import Foundation
import Logging
import MQICore
import MQIHTTP
import MQIMetrics
import MQIStore
import MQITransport
import ServiceLifecycle
import Synchronization

/// The whole communicator wired together: store, scanner, conductor and workers in one
/// ServiceGroup with graceful shutdown on SIGTERM/SIGINT.
public struct Daemon: Sendable {
    public var config: Config
    public var logger: Logger
    /// Shut down once nothing is left to do (and a scan found nothing new).
    public var exitWhenIdle: Bool
    /// The metrics registry to export (tests pass their own to read it).
    public var metrics: MQIMetrics?
    /// Called with the HTTP port once the server listens (useful with `metrics.port: 0`).
    public var onListening: (@Sendable (Int) async -> Void)?
    /// Fired, it shuts the daemon down gracefully, as SIGTERM does. (Cancelling the task that
    /// runs the daemon instead can trap in NIO when a connection arrives meanwhile:
    /// swift-nio#2637.)
    public var shutdown: OneShot?
    /// The HPC cleanup's fallback sweep (`hpc.cleanup: after_download`); it otherwise cleans a
    /// case as soon as it completes.
    package var cleanupIntervalSec: Double = 1

    public init(config: Config, logger: Logger, exitWhenIdle: Bool = false, metrics: MQIMetrics? = nil,
                onListening: (@Sendable (Int) async -> Void)? = nil) {
        self.config = config
        self.logger = logger
        self.exitWhenIdle = exitWhenIdle
        self.metrics = metrics
        self.onListening = onListening
    }

    /// Opens the state database the way every command does.
    public static func openStore(_ config: Config) throws -> Store {
        try Store.open(state: config.state, maxDeliveries: config.retry.maxAttempts)
    }

    public func run() async throws {
        let logger = {
            var logger = self.logger
            if self.config.state.isPostgres { logger[metadataKey: "instance"] = "\(self.config.state.instanceName)" }
            return logger
        }()
        let lock = try PIDLock(path: config.state.pidFile)
        defer { lock.release() }
        // One daemon per SQLite database, whatever its PID file: a lock beside the database. The
        // database's files are checked first, so a permission problem is named as such. A
        // PostgreSQL state is shared by any number of communicators.
        var databaseLock: PIDLock?
        if !config.state.isPostgres {
            try Store.checkAccess(path: config.state.database)
            databaseLock = try PIDLock(path: config.state.database + ".lock", database: config.state.database)
        }
        defer { databaseLock?.release() }
        if let stale = lock.stalePID {
            logger.info("replaced a stale PID file left by PID \(stale), which is no longer running", metadata: ["pid_file": "\(config.state.pidFile)"])
        }
        if config.metrics.enabled {
            try HTTPServer.checkExposure(config)
            try HTTPServer.checkBindable(host: config.metrics.host, port: config.metrics.port)
        }
        var localDirectories = [("state.logs_dir", config.state.logsDir), ("conductor.results_dir", config.conductor.resultsDir)]
        if config.hpc.transport == .local {
            // With ssh these live on the HPC; the transport creates them there.
            localDirectories += [("conductor.remote_paths.upload_dir", config.conductor.uploadDir),
                                 ("conductor.remote_paths.download_dir", config.conductor.downloadDir)]
        }
        for (key, directory) in localDirectories {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw DaemonError("cannot create \(key) \(directory): \(error.localizedDescription)")
            }
        }
        let metrics = self.metrics ?? MQIMetrics()
        let opened = try Store.openRecovering(state: config.state, maxDeliveries: config.retry.maxAttempts)
        let store = opened.store
        // Messages published by the other communicators ring this one's doorbells at once.
        store.listenForOtherCommunicators()
        if let setAside = opened.setAside {
            logger.error("the state database could not be used (\(opened.problem ?? "damaged")); it was set aside as \(setAside) and a new one was created; re-scanning \(config.scanner.localLogdata): cases with complete, verified results are recorded COMPLETED, all others run again",
                         metadata: ["database": "\(config.state.database)", "set_aside": "\(setAside)"])
        }
        let transports = try Transports.make(config, logger: logger, onSSHConnectionOpened: { metrics.sshConnectionsOpened.increment() },
                                             onSlurmReport: { [logger] run, report in
            let job = SchedulerJob(caseId: run.caseId, step: run.step, beam: run.beam, attempt: run.attempt, jobId: report.jobId, state: report.state,
                                   reason: report.reason, gpus: report.gpus, node: report.node)
            do {
                try await store.recordSchedulerJob(job)
            } catch {
                logger.warning("cannot record Slurm job \(report.jobId) (\(report.state)): \(error)", metadata: ["case_id": "\(run.caseId)"])
            }
        })
        var config = config
        if config.hpc.gpusAuto {
            guard let samples = await GPUMonitor.read(config.gpuMonitor.command, runner: transports.runner, logger: logger), !samples.isEmpty else {
                throw DaemonError("hpc.gpus: auto, but nvidia-smi (gpu_monitor.command) listed no GPU; list the GPU ids in hpc.gpus instead")
            }
            config.hpc.gpus = samples.map(\.index).sorted()
            logger.info("discovered GPUs \(config.hpc.gpus) with nvidia-smi (hpc.gpus: auto)")
        }
        let reclaimed = try await store.reclaimLeases()
        if reclaimed > 0 { logger.info("took back \(reclaimed) message(s) left in progress by the previous run; their steps are adopted, not restarted") }
        let freed = try await store.reconcileGPUs(configured: config.hpc.gpus)
        if !freed.isEmpty { logger.warning("freed GPU reservation(s) \(freed) held by no running case") }

        let conductor = Conductor(config: config)
        // Follow-up jobs' uploads (the plan and one delivery folder), beside the database.
        let followupsDir = (config.state.localDirectory as NSString).appendingPathComponent("followups")
        let resultsDir = config.conductor.resultsDir
        let scanner = CaseScanner(config: config.scanner, store: store, logger: logger, metrics: metrics,
                                  hasVerifiedResults: { caseId in await ResultManifest.check((resultsDir as NSString).appendingPathComponent(caseId)) == nil },
                                  waitListPath: MarkerWaitList.path(state: config.state), followupsDir: followupsDir)
        // Rung each time the Conductor has decided every queued event: the idle check's cue.
        let conductorDrained = Doorbell()
        let cleanupCue = CleanupCue()
        // With the HPC cleanup, the idle check looks after it has looked at each drain.
        let cleanupSettled = Doorbell()
        let cleanup = transports.cleaner.flatMap { cleaner in
            var service = config.hpc.cleanup == .afterDownload
                ? RemoteCleanupService(store: store, cleaner: cleaner, logger: logger, reachability: transports.reachability, intervalSec: cleanupIntervalSec) : nil
            service?.cue = cleanupCue
            service?.conductorDrained = conductorDrained
            service?.settled = cleanupSettled
            return service
        }
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: scanner, successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "CaseScanner"),
            .init(service: {
                var service = ConductorService(store: store, conductor: conductor, retry: config.retry, logger: logger, metrics: metrics)
                service.drained = conductorDrained
                return service
            }(), serviceName: "ConductorService"),
            .init(service: RemoteExecutorService(
                store: store, executor: transports.executor, logsDir: config.state.logsDir,
                // Under Slurm each claimed command is at most one job: max_jobs bounds them.
                concurrency: config.hpc.executor == .slurm ? config.hpc.slurm.maxJobs : max(4, config.hpc.gpus.count * 2), retry: config.retry, logger: logger, metrics: metrics,
                reachability: transports.reachability, localExecutor: LocalStepExecutor(uploadDir: config.conductor.resultsDir)),
                  serviceName: "RemoteExecutorService"),
            .init(service: {
                var transfers = FileTransferService(
                    store: store, mover: transports.mover,
                    localLogdata: config.scanner.localLogdata, readyMarker: config.scanner.readyMarker, resultsDir: config.conductor.resultsDir, concurrency: 2,
                    retry: config.retry, logger: logger, metrics: metrics, reachability: transports.reachability)
                transfers.followupsDir = followupsDir
                if cleanup != nil { transfers.cleanupCue = cleanupCue }
                return transfers
            }(), serviceName: "FileTransferService"),
            .init(service: SystemdNotifier(logger: logger), successTerminationBehavior: .ignore, serviceName: "SystemdNotifier"),
            .init(service: Heartbeat(store: store, logger: logger), serviceName: "Heartbeat"),
        ]
        services.append(.init(service: RetentionService(retention: Retention(config: config.retention, logsDir: config.state.logsDir, store: store), logger: logger),
                              serviceName: "RetentionService"))
        if let cleanup { services.append(.init(service: cleanup, serviceName: "RemoteCleanupService")) }
        if let reachability = transports.reachability {
            services.append(.init(service: HostWatch(reachability: reachability, runner: transports.runner, store: store, logger: logger),
                                  serviceName: "HostWatch"))
        }
        if !config.notifications.webhooks.isEmpty {
            // Every event is recorded whether or not webhooks are configured; this delivers them.
            // A webhook new to the state starts here, before the scanner registers anything.
            let notifier = Notifier(config: config.notifications, store: store, instance: store.instance, logger: logger, metrics: metrics)
            try await notifier.registerWebhooks()
            services.append(.init(service: notifier, serviceName: "Notifier"))
        }
        if config.gpuMonitor.enabled {
            let monitor = GPUMonitor(config: config.gpuMonitor, runner: transports.runner, store: store,
                                     conductor: conductor, metrics: metrics, logger: logger)
            // One reading before any case can reserve a GPU: one busy with a foreign process is
            // held back from the start. Bounded: a daemon started during an HPC outage serves
            // /readyz and the API (saying so) instead of waiting for the host.
            let firstReading = await withTaskGroup(of: Bool.self) { group in
                group.addTask { await monitor.poll() != nil }
                group.addTask { try? await Task.sleep(for: .seconds(10)); return false }
                defer { group.cancelAll() }
                return await group.next() ?? false
            }
            if !firstReading { logger.warning("no GPU reading at start (the HPC host does not answer yet); the GPU monitor keeps trying") }
            services.append(.init(service: monitor, serviceName: "GPUMonitor"))
        }
        if config.metrics.enabled {
            let readiness = Readiness(store: store, runner: transports.runner, reachability: transports.reachability)
            let onListening = self.onListening
            let host = config.metrics.host
            let tls = config.http.tls != nil
            let api = APIContext(store: store, conductor: conductor, config: config, logger: logger, gpuHistory: metrics.gpuHistory)
            let app = HTTPServer.application(config: config.metrics, store: store, metrics: metrics, readiness: { await readiness.problems() },
                                             api: api, logger: logger, onListening: { port in
                                                 logger.info("serving /metrics, /healthz and /readyz on \(HTTPServer.baseURL(host: host, port: port, tls: tls))")
                                                 await onListening?(port)
                                             })
            services.append(.init(service: app, serviceName: "HTTPServer"))
        }
        if let shutdown {
            services.append(.init(service: ShutdownTrigger(fired: shutdown), successTerminationBehavior: .gracefullyShutdownGroup,
                                  serviceName: "ShutdownTrigger"))
        }
        if exitWhenIdle {
            services.append(.init(service: IdleWatcher(store: store, scanner: scanner, logger: logger, drained: cleanup == nil ? conductorDrained : cleanupSettled,
                                                       otherWork: { await cleanup?.hasPendingWork() ?? false }),
                                  successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "IdleWatcher"))
        }
        var groupConfig = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        groupConfig.maximumGracefulShutdownDuration = .milliseconds(Int64(config.shutdownTimeoutSec * 1000))
        let group = ServiceGroup(configuration: groupConfig)
        logger.info("mqi daemon started", metadata: [
            "config": "\(config.sourcePath)", "database": "\(config.state.database)", "gpus": "\(config.hpc.gpus)",
            "transport": "\(config.hpc.transport.rawValue)", "instance": "\(config.state.instanceName)",
        ])
        try await group.run()
        logger.info("mqi daemon stopped")
    }
}

public struct DaemonError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The checks behind `/readyz`: the database is writable and the transport answers.
struct Readiness: Sendable {
    let store: Store
    let runner: any CommandRunner
    var reachability: HostReachability? = nil
    var databaseTimeoutSec: Double = 3

    func problems() async -> [String: String] {
        var problems: [String: String] = [:]
        if let reachability, case let state = reachability.current, !state.reachable {
            // Says since when, without waiting for a connection attempt that cannot succeed now.
            problems["hpc"] = "\(reachability.host) unreachable since \(state.since.formatted(.iso8601)): \(state.reason ?? "no answer"); work that needs it is paused"
            problems["transport"] = "unreachable"
            if let problem = await databaseProblem() { problems["database"] = problem }
            return problems
        }
        if let problem = await databaseProblem() { problems["database"] = problem }
        do {
            let result = try await runner.capture("true", timeoutSec: 10)
            if result.status != 0 { problems["transport"] = "`true` exited \(result.status): \(result.output.prefix(200))" }
        } catch {
            problems["transport"] = "unreachable: \(error)"
        }
        return problems
    }
}

extension Readiness {
    /// Why the state database cannot be written now, or nil. Bounded by `databaseTimeoutSec`:
    /// a PostgreSQL server that does not answer is retried by the store for longer than a probe
    /// may wait, and an unreachable database is itself the answer (work is paused meanwhile:
    /// every claim waits for it).
    func databaseProblem() async -> String? {
        let store = store
        let timeout = databaseTimeoutSec
        return await withCheckedContinuation { (continuation: CheckedContinuation<String?, Never>) in
            // The first answer wins; the check itself cannot be cancelled (it may wait inside the
            // store's retries), so it is left to finish on its own.
            let pending = FirstAnswer(continuation)
            Task {
                var problem: String?
                do { try await store.checkWritable() } catch { problem = "not writable: \(error)" }
                pending.resume(problem)
            }
            Task {
                try? await Task.sleep(for: .seconds(timeout))
                pending.resume("no answer within \(Int(timeout)) s (\(store.isShared ? "the PostgreSQL server is unreachable or overloaded" : "the database is locked or the disk hangs")); work waits for it")
            }
        }
    }
}

/// Resumes a continuation with the first of several answers.
final class FirstAnswer<Value: Sendable>: Sendable {
    private let continuation: Mutex<CheckedContinuation<Value, Never>?>

    init(_ continuation: CheckedContinuation<Value, Never>) {
        self.continuation = Mutex(continuation)
    }

    func resume(_ value: Value) {
        continuation.withLock { $0.take() }?.resume(returning: value)
    }
}

/// Returns (ending the group gracefully) when `fired` fires.
struct ShutdownTrigger: Service {
    let fired: OneShot

    func run() async throws {
        await cancelWhenGracefulShutdown { await fired.wait() }
    }
}

/// Ends the daemon once nothing is NEW, PROCESSING or PENDING_RESOURCE, no message is queued
/// or leased (a retry scheduled for later included), no other work is pending, and a fresh scan
/// found nothing new (`--exit-when-idle`). It looks each time the Conductor has decided every
/// queued event (the last case's COMPLETED is such a moment), and every `interval` besides.
struct IdleWatcher: Service {
    let store: Store
    let scanner: CaseScanner
    let logger: Logger
    /// Rung when the Conductor's queue is empty.
    var drained: Doorbell?
    /// Work besides the queues that must finish first (the HPC cleanup of completed cases).
    var otherWork: @Sendable () async -> Bool = { false }
    var interval: Double = 0.2

    func run() async throws {
        let cue = drained ?? Doorbell()
        while !Task.isCancelled {
            await cue.wait(upTo: interval)
            try Task.checkCancellation()
            guard try await isIdle() else { continue }
            let scan = await scanner.scan()
            guard scan.registered == 0, scan.settling == 0 else { continue }
            // Once more after the scan: a case the scanner service registered while this scan
            // ran (its registration and its new_case_found commit together) is seen now.
            guard try await isIdle() else { continue }
            logger.info("nothing left to do; shutting down (--exit-when-idle)")
            return
        }
    }

    func isIdle() async throws -> Bool {
        guard try await store.activity().isIdle else { return false }
        return await !otherWork()
    }
}
