/// Exponential backoff with full jitter: attempt n (1-based) waits a random time in
/// `[0, min(maxDelay, initialDelay * multiplier^(n-1))]`.
public struct RetryPolicy: Sendable, Equatable {
    public var maxAttempts: Int
    public var initialDelaySec: Double
    public var maxDelaySec: Double
    public var multiplier: Double

    public init(maxAttempts: Int = 3, initialDelaySec: Double = 1, maxDelaySec: Double = 60, multiplier: Double = 2) {
        self.maxAttempts = maxAttempts
        self.initialDelaySec = initialDelaySec
        self.maxDelaySec = maxDelaySec
        self.multiplier = multiplier
    }

    /// The upper bound of the delay before retry number `attempt` (1 = the first retry).
    public func ceiling(attempt: Int) -> Double {
        guard initialDelaySec > 0 else { return 0 }
        let exponent = Double(max(0, attempt - 1))
        let raw = initialDelaySec * pow(multiplier, exponent)
        return min(maxDelaySec, raw.isFinite ? raw : maxDelaySec)
    }

    /// The delay before retry number `attempt`, with full jitter drawn from `generator`.
    public func delay<G: RandomNumberGenerator>(attempt: Int, using generator: inout G) -> Double {
        let ceiling = ceiling(attempt: attempt)
        guard ceiling > 0 else { return 0 }
        return Double.random(in: 0...ceiling, using: &generator)
    }

    public func delay(attempt: Int) -> Double {
        var generator = SystemRandomNumberGenerator()
        return delay(attempt: attempt, using: &generator)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
