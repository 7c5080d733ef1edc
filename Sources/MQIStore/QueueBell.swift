import MQICore
import Synchronization

/// Wakes queue consumers as soon as a message is published, so the hot path never waits for a
/// polling interval. Consumers still poll slowly as a fallback (another process may publish).
public final class QueueBell: Sendable {
    private let doorbells = Mutex<[QueueName: [Doorbell]]>([:])

    public init() {}

    /// A doorbell that rings whenever `queue` gets a message.
    public func doorbell(for queue: QueueName) -> Doorbell {
        let bell = Doorbell()
        doorbells.withLock { $0[queue, default: []].append(bell) }
        return bell
    }

    public func ring(_ queue: QueueName) {
        let bells = doorbells.withLock { $0[queue] ?? [] }
        for bell in bells { bell.ring() }
    }
}

/// A one-slot wake-up: `ring` before `wait` is remembered, so no wake-up is lost.
public final class Doorbell: Sendable {
    private struct State {
        var rung = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    public init() {}

    public func ring() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.rung = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns when rung, after `seconds`, or when the task is cancelled, whichever comes first.
    public func wait(upTo seconds: Double) async {
        if state.withLock({ state in defer { state.rung = false }; return state.rung }) { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.waitForRing() }
            group.addTask { try? await Task.sleep(for: .seconds(seconds)) }
            await group.next()
            group.cancelAll()
        }
    }

    private func waitForRing() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.rung || Task.isCancelled {
                        state.rung = false
                        return true
                    }
                    state.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume()
        }
    }
}
