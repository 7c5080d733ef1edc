import Foundation
import Logging
import MQICore
import MQIMetrics
import MQIStore
import MQITransport

/// Claims messages from one queue under a lease, renews the lease while the handler works, and
/// acknowledges (with the handler's result event) or gives the message back with backoff.
/// Up to `concurrency` handlers run at once; while none is needed it sleeps on the queue's doorbell.
struct QueueWorker: Sendable {
    var store: Store
    var queue: QueueName
    var name: String
    var concurrency: Int
    /// `state.lease_sec`.
    var leaseSec: Double { store.leaseSec }
    /// Fallback poll for messages published by another process (the CLI).
    var idlePollSec: Double = 1
    var retry: RetryPolicy
    var logger: Logger
    var metrics: MQIMetrics
    /// Which of the queue's messages this worker takes.
    var kinds: KindFilter = .all
    /// The host the work needs: while it is unreachable nothing is claimed.
    var gate: HostReachability?

    /// The handler returns the event to publish with the acknowledgement, or nil for none.
    /// It throws to give the message back for redelivery.
    typealias Handler = @Sendable (ClaimedMessage) async throws -> OutgoingMessage?

    /// Called whenever a claim finds the queue empty (the daemon's idle check listens to the
    /// Conductor's: all events handled).
    var onEmpty: (@Sendable () -> Void)?
    /// The handler deletes the message itself in its own transaction (the Conductor's decision):
    /// a nil result then needs no second write to acknowledge it.
    var handlerAcknowledges = false

    /// One loop claims for up to `concurrency` handlers running at once. (A loop per handler,
    /// each woken by every published message, made a write transaction per idle loop per
    /// message: a step's end cost the executor queue ten claims, nine of them empty.)
    func run(_ handle: @escaping Handler) async {
        let doorbell = store.bell.doorbell(for: queue)
        let prefix = "\(store.instance)/\(name)-\(ProcessInfo.processInfo.processIdentifier)-"
        await withTaskGroup(of: Int.self) { group in
            // A slot names the lease owner, as a loop per handler did before.
            var free = Array((0..<concurrency).reversed())
            while !Task.isCancelled {
                guard let slot = free.last else {
                    guard let done = await group.next() else { break }
                    free.append(done)
                    continue
                }
                // An outage pauses the work that needs the host instead of cycling through deliveries.
                if let gate, !gate.current.reachable {
                    await gate.waitUntilReachable()
                    continue
                }
                let message: ClaimedMessage?
                do {
                    message = try await store.claim(queue, kinds: kinds, owner: prefix + "\(slot)", leaseSec: leaseSec)
                } catch is CancellationError {
                    break  // shutdown: not an error
                } catch {
                    logger.error("cannot claim from \(queue.rawValue): \(error)", metadata: ["queue": "\(queue.rawValue)"])
                    await doorbell.wait(upTo: idlePollSec)
                    continue
                }
                guard let message else {
                    onEmpty?()
                    await doorbell.wait(upTo: idlePollSec)
                    continue
                }
                free.removeLast()
                group.addTask { await process(message, handle); return slot }
            }
        }
    }

    func process(_ message: ClaimedMessage, _ handle: @escaping Handler) async {
        var messageLogger = logger
        messageLogger[metadataKey: "case_id"] = "\(message.body.caseId)"
        messageLogger[metadataKey: "correlation_id"] = "\(message.id)"
        if let step = message.body.step { messageLogger[metadataKey: "step"] = "\(step)" }
        if let attempt = message.body.attempt { messageLogger[metadataKey: "attempt"] = "\(attempt)" }
        let logger = messageLogger
        let result: Result<OutgoingMessage?, any Error> = await withTaskGroup(of: Result<OutgoingMessage?, any Error>?.self) { group in
            group.addTask {
                do { return .success(try await handle(message)) } catch { return .failure(error) }
            }
            group.addTask {
                // Renew the lease while the handler works: only a dead worker's message is taken over.
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(leaseSec / 3))
                    if Task.isCancelled { break }
                    if (try? await store.renew(message, leaseSec: leaseSec)) == false {
                        // Someone else owns the message now: stop working on it (one supervisor per attempt).
                        return .failure(LeaseLost())
                    }
                }
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? .failure(CancellationError())
        }
        do {
            switch result {
            case .success(nil) where handlerAcknowledges:
                break
            case .success(let event):
                try await store.complete(message, publishing: event)
            case .failure(let error) where error is CancellationError:
                // Shutdown: give the message back uncounted; the next daemon adopts the work.
                try store.release(message)
                logger.info("stopped working on \(message.kind.rawValue) for shutdown; it resumes after restart")
            case .failure(let error) where error is LeaseLost:
                logger.warning("lost the lease on message \(message.id) (\(message.kind.rawValue)) to another worker; stopped working on it, the new holder carries on")
            case .failure(let error as TransportError) where error.isTransient:
                // The host is away: an outage delays work, it never uses up a delivery.
                let delay = retry.delay(attempt: 1)
                try await store.postpone(message, error: "\(error)", retryAfter: delay)
                logger.warning("\(message.kind.rawValue) postponed, the HPC host is unreachable (not counted as a failed delivery): \(error)")
            case .failure(let error):
                let delay = retry.delay(attempt: message.deliveries)
                let dead = try await store.fail(message, error: "\(error)", retryAfter: delay)
                if dead {
                    logger.error("\(message.kind.rawValue) failed \(message.deliveries) times and went to the dead letters: \(error)")
                } else {
                    metrics.stepRetries(step: message.body.step ?? message.kind.rawValue).increment()
                    logger.warning("\(message.kind.rawValue) failed (delivery \(message.deliveries)); retrying in \(String(format: "%.1f", delay)) s: \(error)")
                }
            }
        } catch {
            logger.error("cannot record the outcome of message \(message.id): \(error)")
        }
    }
}

/// The worker's lease on a message was taken over by another worker.
struct LeaseLost: Error {}
