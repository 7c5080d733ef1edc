import Foundation
import Logging
import MQICore
import MQIMetrics
import MQIStore
import ServiceLifecycle

/// Consumes `conductor_queue` and has the Conductor decide on each event; the store persists
/// every decision with the acknowledgement in one transaction.
public struct ConductorService: Service {
    let store: Store
    let conductor: Conductor
    let retry: RetryPolicy
    let logger: Logger
    let metrics: MQIMetrics

    public init(store: Store, conductor: Conductor, retry: RetryPolicy, logger: Logger, metrics: MQIMetrics) {
        self.store = store
        self.conductor = conductor
        self.retry = retry
        self.logger = logger
        self.metrics = metrics
    }

    /// Rung whenever the Conductor finds its queue empty: every event so far is decided (the
    /// daemon's `--exit-when-idle` check listens to it instead of polling).
    public var drained: Doorbell?
    /// At most this many events are decided in one transaction.
    public var batchLimit = 16

    public func run() async throws {
        // Cases that waited for GPUs when the daemon stopped start as soon as it is back.
        log(try await store.dispatchPending(conductor: conductor))
        var worker = QueueWorker(store: store, queue: .conductor, name: "conductor", concurrency: 1, retry: retry, logger: logger, metrics: metrics)
        // Every decision deletes its message in its own transaction.
        worker.handlerAcknowledges = true
        let consumer = worker
        await cancelWhenGracefulShutdown {
            await consume(consumer)
        }
    }

    /// Claims what is queued (up to `batchLimit` events) in one transaction and decides it in
    /// another: a burst of events costs two transactions, not two per event.
    func consume(_ worker: QueueWorker) async {
        let doorbell = store.bell.doorbell(for: .conductor)
        let owner = "\(store.instance)/conductor-\(ProcessInfo.processInfo.processIdentifier)-0"
        while !Task.isCancelled {
            let batch: [ClaimedMessage]
            do {
                batch = try await store.claim(.conductor, owner: owner, leaseSec: store.leaseSec, limit: batchLimit)
            } catch is CancellationError {
                break  // shutdown: not an error
            } catch {
                logger.error("cannot claim from \(QueueName.conductor.rawValue): \(error)", metadata: ["queue": "\(QueueName.conductor.rawValue)"])
                await doorbell.wait(upTo: worker.idlePollSec)
                continue
            }
            guard !batch.isEmpty else {
                drained?.ring()
                await doorbell.wait(upTo: worker.idlePollSec)
                continue
            }
            await decide(batch, worker: worker)
        }
    }

    /// Decides a claimed batch in order: runs of events in one transaction; a GPU's drain
    /// confirmation (or anything else) on its own, between them.
    func decide(_ batch: [ClaimedMessage], worker: QueueWorker) async {
        var run: [Store.ConductorDelivery] = []
        for message in batch {
            if message.kind != .attemptStopped, let event = ConductorEvent(message.kind, message.body) {
                run.append(Store.ConductorDelivery(event: event, caseId: message.body.caseId, message: message))
                continue
            }
            await decide(run, worker: worker)
            run = []
            await worker.process(message) { try await handle($0) }
        }
        await decide(run, worker: worker)
    }

    func decide(_ run: [Store.ConductorDelivery], worker: QueueWorker) async {
        guard run.count > 1 else {
            if let only = run.first { await worker.process(only.message) { try await handle($0) } }
            return
        }
        do {
            let applied = try await store.conduct(run, conductor: conductor)
            for (delivery, items) in zip(run, applied) {
                if items.isEmpty {
                    logger.warning("dropping \(delivery.message.kind.rawValue) for unknown case", metadata: ["case_id": "\(delivery.caseId)"])
                }
                log(items)
            }
        } catch {
            // Nothing of the batch was committed. Each event is decided on its own now, so one
            // that fails again is retried or dead-lettered without holding up the others (and a
            // shutdown gives each back uncounted).
            if !(error is CancellationError) {
                logger.warning("deciding \(run.count) events together failed (\(error)); deciding them one by one")
            }
            for delivery in run { await worker.process(delivery.message) { try await handle($0) } }
        }
    }

    /// Decides one event (or records a GPU's drain confirmation), acknowledging its message in the same transaction.
    func handle(_ message: ClaimedMessage) async throws -> OutgoingMessage? {
        if message.kind == .attemptStopped {
            let body = message.body
            let (freed, applied) = try await store.finishDrain(caseId: body.caseId, stepIndex: body.stepIndex, attempt: body.attempt,
                                                               beam: body.beam, conductor: conductor, acknowledging: message)
            if !freed.isEmpty {
                logger.info("GPU \(freed.map(String.init).joined(separator: ",")) drained: the previous holder's attempt is confirmed stopped",
                            metadata: ["case_id": "\(body.caseId)"])
            }
            log(applied)
            return nil
        }
        guard let event = ConductorEvent(message.kind, message.body) else {
            logger.error("dropping \(message.kind.rawValue): not an event for the conductor")
            try await store.complete(message, publishing: nil)
            return nil
        }
        let applied = try await store.conduct(event, caseId: message.body.caseId, conductor: conductor, acknowledging: message)
        if applied.isEmpty {
            logger.warning("dropping \(message.kind.rawValue) for unknown case", metadata: ["case_id": "\(message.body.caseId)"])
        }
        log(applied)
        return nil
    }

    func log(_ applied: [AppliedDecision]) {
        for item in applied where item.decision.outcome == .applied && item.previousStatus != item.decision.state.status {
            switch item.decision.state.status {
            case .completed: metrics.casesCompleted.increment()
            case .failed: metrics.casesFailed.increment()
            default: break
            }
        }
        Self.log(applied, logger: logger)
    }

    static func log(_ applied: [AppliedDecision], logger: Logger) {
        for item in applied {
            let state = item.decision.state
            var metadata: Logger.Metadata = ["case_id": "\(state.caseId)", "status": "\(state.status.rawValue)"]
            if let step = state.stepIndex { metadata["step_index"] = "\(step)"; metadata["attempt"] = "\(state.attempt)" }
            if !state.gpuIds.isEmpty { metadata["gpu_id"] = "\(state.gpuIds.map(String.init).joined(separator: ","))" }
            if item.warning {
                logger.warning("\(item.decision.note)", metadata: metadata)
                continue
            }
            switch (item.decision.outcome, state.status) {
            case (.ignored, _):
                logger.info("\(item.decision.note)", metadata: metadata)
            case (.applied, .failed):
                logger.error("case failed: \(item.decision.note)", metadata: metadata)
            default:
                logger.info("\(item.decision.note)", metadata: metadata)
            }
        }
    }
}
