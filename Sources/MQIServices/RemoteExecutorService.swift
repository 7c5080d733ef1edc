import Foundation
import Logging
import MQICore
import MQIMetrics
import MQIStore
import MQITransport
import ServiceLifecycle

/// Consumes `remote_executor_queue`: runs each execute step attempt through the executor and
/// reports `execution_succeeded` / `execution_failed`. Steps of different cases run concurrently.
public struct RemoteExecutorService: Service {
    let store: Store
    let executor: any StepExecutor
    let logsDir: String
    let concurrency: Int
    let retry: RetryPolicy
    let logger: Logger
    let metrics: MQIMetrics
    /// The HPC host's reachability: workers do not claim work while it is away.
    let reachability: HostReachability?
    /// Runs `type: local` steps on this machine, in `results_dir/<case_id>`.
    let localExecutor: any StepExecutor

    public init(store: Store, executor: any StepExecutor, logsDir: String, concurrency: Int, retry: RetryPolicy, logger: Logger, metrics: MQIMetrics,
                reachability: HostReachability? = nil, localExecutor: (any StepExecutor)? = nil) {
        self.metrics = metrics
        self.localExecutor = localExecutor ?? executor
        self.reachability = reachability
        self.store = store
        self.executor = executor
        self.logsDir = logsDir
        self.concurrency = concurrency
        self.retry = retry
        self.logger = logger
    }

    public func run() async throws {
        var worker = QueueWorker(store: store, queue: .remoteExecutor, name: "executor", concurrency: concurrency, retry: retry, logger: logger, metrics: metrics)
        worker.kinds = .except(.stopAttempt)
        worker.gate = reachability
        // Stops have loops of their own: they must not wait behind hours-long simulations.
        var stopper = QueueWorker(store: store, queue: .remoteExecutor, name: "stopper", concurrency: 2, retry: retry, logger: logger, metrics: metrics)
        stopper.kinds = .only(.stopAttempt)
        stopper.gate = reachability
        let (executions, stops) = (worker, stopper)
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await executions.run { message in try await handle(message) } }
                group.addTask { await stops.run { message in try await stop(message) } }
            }
        }
    }

    /// Stops an attempt the case has left (cancel, failure, dead letter) and reports it
    /// stopped, which frees the GPUs draining for it. Until then they stay draining: a host that
    /// cannot be reached postpones the stop (the reason is shown on the GPU) without using up
    /// its deliveries.
    func stop(_ message: ClaimedMessage) async throws -> OutgoingMessage? {
        let body = message.body
        guard let step = body.step, let attempt = body.attempt else {
            throw StoreError("malformed stop_attempt: step or attempt missing")
        }
        var logger = self.logger
        logger[metadataKey: "case_id"] = "\(body.caseId)"
        logger[metadataKey: "step"] = "\(step)"
        logger[metadataKey: "attempt"] = "\(attempt)"
        let started = Date()
        do {
            try await executor(for: body).stop(.stopping(caseId: body.caseId, step: step, attempt: attempt, gpuIds: body.gpuIds ?? [], beam: body.beam))
        } catch {
            let reason = "stop not confirmed yet: \(error)"
            try? await store.noteDrainProblem(caseId: body.caseId, stepIndex: body.stepIndex, attempt: attempt, beam: body.beam, reason: reason)
            logger.warning("cannot confirm that \(step) attempt \(attempt) is stopped; its GPU(s) stay draining and the stop is retried: \(error)")
            throw error
        }
        let gpus = (body.gpuIds ?? []).map(String.init).joined(separator: ",")
        logger.info("\(step) attempt \(attempt) is stopped: no process of it is left\(gpus.isEmpty ? "" : "; GPU \(gpus) can be handed out") (\(String(format: "%.2f", Date().timeIntervalSince(started))) s)")
        return body.result(.attemptStopped)
    }

    /// The HPC's executor, or this machine's for a `type: local` step.
    func executor(for body: MessageBody) -> any StepExecutor {
        body.local == true ? localExecutor : executor
    }

    func handle(_ message: ClaimedMessage) async throws -> OutgoingMessage? {
        let body = message.body
        var logger = self.logger
        logger[metadataKey: "case_id"] = "\(body.caseId)"
        logger[metadataKey: "correlation_id"] = "\(message.id)"
        if let step = body.step { logger[metadataKey: "step"] = "\(step)" }
        if let attempt = body.attempt { logger[metadataKey: "attempt"] = "\(attempt)" }
        if let gpus = body.gpuIds, !gpus.isEmpty { logger[metadataKey: "gpu_id"] = "\(gpus.map(String.init).joined(separator: ","))" }
        guard let step = body.step, let attempt = body.attempt, let command = body.command else {
            return body.result(.executionFailed, reason: "malformed execute_command: step, attempt or command missing")
        }
        let beam = body.beam
        if let beam { logger[metadataKey: "beam"] = "\(beam)" }
        let store = store
        let stepIndex = body.stepIndex
        // Whether this command is still what the case runs (not cancelled, not a newer attempt).
        let isCurrent: @Sendable () async -> Bool = {
            if let beam {
                return (try? await store.beamRunIsCurrent(caseId: body.caseId, stepIndex: stepIndex, beam: beam, attempt: attempt)) ?? true
            }
            guard let now = try? await store.caseState(body.caseId) else { return true }
            return now.status == .processing && now.stepIndex == stepIndex && now.attempt == attempt
        }
        // A command for a case that moved on (cancelled, or a newer attempt) is not run.
        // (One read: a case that is gone has no state.)
        let runnable: Bool
        if beam == nil {
            let state = try await store.caseState(body.caseId)
            runnable = state.map { $0.status == .processing && $0.stepIndex == stepIndex && $0.attempt == attempt } ?? false
        } else {
            runnable = try await store.caseExists(body.caseId) ? await isCurrent() : false
        }
        guard runnable else {
            logger.info("skipping \(step)\(beam.map { " beam \($0)" } ?? "") attempt \(attempt): the case is no longer at this step",
                        metadata: ["case_id": "\(body.caseId)"])
            return nil
        }
        var planned = StepRun(caseId: body.caseId, step: step, attempt: attempt, command: command, gpuIds: body.gpuIds ?? [],
                              timeoutSec: body.timeoutSec, logPath: "", inputFiles: body.inputFiles ?? [])
        planned.beam = beam
        planned.gpuCount = body.gpuCount
        // `{step}.{attempt}.log`, or `{step}.{beam}.{attempt}.log` for a beam's run.
        let logPath = [logsDir, body.caseId, "\(planned.runName).\(attempt).log"].reduce("") { ($0 as NSString).appendingPathComponent($1) }
        planned.logPath = logPath
        let run = planned
        let watcher = OutputWatcher(path: logPath, rules: body.rules, progressFrom: body.progressFrom ?? 0, progressTo: body.progressTo ?? 0)
        logger.info("running \(step) attempt \(attempt)", metadata: ["gpu_id": "\(run.gpuIds.map(String.init).joined(separator: ","))", "log": "\(logPath)"])
        let started = Date()
        metrics.activeJobs.increment()
        defer {
            metrics.activeJobs.decrement()
            metrics.taskDuration(type: .execute, step: step).record(Date().timeIntervalSince(started))
        }
        let outcome: StepOutcome
        do {
            outcome = try await executor(for: body).execute(run) {
                if let progress = watcher.poll(), let stepIndex {
                    if let beam {
                        try? await store.updateBeamProgress(run.caseId, stepIndex: stepIndex, beam: beam, attempt: attempt, progress: progress)
                    } else {
                        try? await store.updateProgress(run.caseId, stepIndex: stepIndex, attempt: attempt, progress: progress)
                    }
                }
                // The engine printed a failure line: stop it now instead of holding the GPU until the timeout.
                if watcher.failureLine != nil { return true }
                // Cancelled (or retried) by an operator while running.
                return await !isCurrent()
            }
        } catch let error as TransportError where !error.isTransient {
            // A failure of the way there that retrying cannot fix (a host key mismatch, say). The
            // attempt may have started before it: not `ended`, so the Conductor stops it.
            logger.error("\(step) attempt \(attempt) cannot run: \(error)")
            return body.result(.executionFailed, reason: error.description, ended: false)
        }
        watcher.poll(final: true)
        let retryable = { (reason: String) in
            watcher.isRetryable([watcher.failureLine ?? "", reason, LogTail.lastLines(of: logPath, count: 50)])
        }
        let seconds = String(format: "%.2f", Date().timeIntervalSince(started))
        switch outcome {
        case .succeeded where watcher.failureLine != nil:
            let reason = "exited 0 but printed a failure line: \(watcher.failureLine!)"
            logger.warning("\(step) attempt \(attempt) failed after \(seconds) s: \(reason)")
            return body.result(.executionFailed, reason: reason, retryable: retryable(reason), ended: true)
        case .succeeded where body.rules?.successPattern != nil && !watcher.sawSuccess:
            let reason = "engine exited 0 but never reported completion (no line matched success_pattern \(body.rules!.successPattern!))"
            logger.warning("\(step) attempt \(attempt) failed after \(seconds) s: \(reason)")
            return body.result(.executionFailed, reason: reason, retryable: retryable(reason), ended: true)
        case .succeeded:
            logger.info("\(step) attempt \(attempt) succeeded in \(seconds) s")
            return body.result(.executionSucceeded, ended: true)
        case .failed(let reason):
            logger.warning("\(step) attempt \(attempt) failed after \(seconds) s: \(reason)")
            return body.result(.executionFailed, reason: reason, retryable: retryable(reason), ended: true)
        case .interrupted(let reason):
            logger.warning("\(step) attempt \(attempt) was interrupted after \(seconds) s: \(reason)")
            return body.result(.executionFailed, reason: reason, retryable: true, ended: true)
        case .cancelled where watcher.failureLine != nil:
            let reason = "the engine reported a failure: \(watcher.failureLine!); its process group was killed"
            logger.warning("\(step) attempt \(attempt) failed after \(seconds) s: \(reason)")
            return body.result(.executionFailed, reason: reason, retryable: retryable(reason), ended: true)
        case .cancelled:
            logger.info("\(step) attempt \(attempt) was cancelled; its process group was killed")
            return body.result(.executionFailed, reason: "cancelled by an operator", ended: true)
        }
    }
}
