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

    public func run() async throws {
        // Cases that waited for GPUs when the daemon stopped start as soon as it is back.
        log(try await store.dispatchPending(conductor: conductor))
        let worker = QueueWorker(store: store, queue: .conductor, name: "conductor", concurrency: 1, retry: retry, logger: logger, metrics: metrics)
        await cancelWhenGracefulShutdown {
            await worker.run { message in
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
                    return nil
                }
                let applied = try await store.conduct(event, caseId: message.body.caseId, conductor: conductor, acknowledging: message)
                if applied.isEmpty {
                    logger.warning("dropping \(message.kind.rawValue) for unknown case", metadata: ["case_id": "\(message.body.caseId)"])
                }
                log(applied)
                return nil
            }
        }
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
