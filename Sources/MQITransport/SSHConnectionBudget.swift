/// The connection budget for one host: at most `limit` new TCP connections in any `window`
/// seconds. A token bucket whose tokens each come back `window` seconds after they were spent,
/// so, unlike a refilling bucket, even a burst right after a quiet minute stays within the limit.
/// Pure: the caller passes the time, so it is tested without sleeping.
public struct SSHConnectionBudget: Sendable, Equatable {
    public var limit: Int
    public var window: Double
    /// When the tokens in use were spent, oldest first.
    public private(set) var spent: [Double] = []

    public init(limit: Int, window: Double = 60) {
        self.limit = max(1, limit)
        self.window = window
    }

    /// Seconds to wait from `now` until a token is free (0: one is free now).
    public func waitTime(now: Double) -> Double {
        let live = spent.filter { now - $0 < window }
        guard live.count >= limit else { return 0 }
        return max(0, live[live.count - limit] + window - now)
    }

    /// Spends a token at `now`; false (nothing spent) when none is free.
    public mutating func take(now: Double) -> Bool {
        spent.removeAll { now - $0 >= window }
        guard spent.count < limit else { return false }
        spent.append(now)
        return true
    }

    /// Connections opened in the last `window` seconds.
    public func used(now: Double) -> Int {
        spent.filter { now - $0 < window }.count
    }
}
