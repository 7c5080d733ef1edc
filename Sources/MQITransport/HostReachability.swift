import Foundation
import Synchronization

/// Whether the HPC host answers, as the transport last saw it: set by the SSH connection when
/// its master comes up or cannot be established. Workers wait on it instead of cycling through
/// deliveries while the host is away.
public final class HostReachability: Sendable {
    public struct State: Sendable, Equatable {
        public var reachable: Bool
        /// Since when it is (un)reachable.
        public var since: Date
        /// Why it is unreachable.
        public var reason: String?
    }

    public let host: String
    private let state: Mutex<State>

    public init(host: String, now: Date = Date()) {
        self.host = host
        state = Mutex(State(reachable: true, since: now))
    }

    public var current: State { state.withLock { $0 } }

    public func markReachable(now: Date = Date()) {
        state.withLock { state in
            guard !state.reachable else { return }
            state = State(reachable: true, since: now)
        }
    }

    public func markUnreachable(reason: String, now: Date = Date()) {
        state.withLock { state in
            if state.reachable { state = State(reachable: false, since: now, reason: reason) } else { state.reason = reason }
        }
    }

    /// Returns once the host is reachable (at once if it is).
    public func waitUntilReachable(pollSec: Double = 0.25) async {
        while !current.reachable, !Task.isCancelled {
            try? await Task.sleep(for: .seconds(pollSec))
        }
    }
}
