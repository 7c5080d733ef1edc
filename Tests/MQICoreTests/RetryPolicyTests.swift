import Testing
@testable import MQICore

/// SplitMix64: a small deterministic generator, so jitter is reproducible.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("RetryPolicy")
struct RetryPolicyTests {
    let policy = RetryPolicy(maxAttempts: 10, initialDelaySec: 1, maxDelaySec: 60, multiplier: 2)

    @Test("the ceiling grows exponentially and caps at maxDelaySec", arguments: [
        (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 32.0), (7, 60.0), (8, 60.0), (50, 60.0),
    ])
    func ceiling(attempt: Int, expected: Double) {
        #expect(policy.ceiling(attempt: attempt) == expected)
    }

    @Test("other multipliers and initial delays")
    func otherShapes() {
        let triple = RetryPolicy(maxAttempts: 5, initialDelaySec: 0.5, maxDelaySec: 10, multiplier: 3)
        #expect(triple.ceiling(attempt: 1) == 0.5)
        #expect(triple.ceiling(attempt: 2) == 1.5)
        #expect(triple.ceiling(attempt: 3) == 4.5)
        #expect(triple.ceiling(attempt: 4) == 10)
        let flat = RetryPolicy(maxAttempts: 5, initialDelaySec: 7, maxDelaySec: 60, multiplier: 1)
        #expect((1...20).allSatisfy { flat.ceiling(attempt: $0) == 7 })
    }

    @Test("attempts below 1 use the initial delay; huge attempts stay at the cap (no overflow)")
    func edges() {
        #expect(policy.ceiling(attempt: 0) == 1)
        #expect(policy.ceiling(attempt: -3) == 1)
        #expect(policy.ceiling(attempt: 10_000) == 60)
        #expect(policy.ceiling(attempt: .max) == 60)
    }

    @Test("the ceiling never decreases as attempts grow")
    func monotonic() {
        let ceilings = (1...200).map { policy.ceiling(attempt: $0) }
        #expect(zip(ceilings, ceilings.dropFirst()).allSatisfy { $0 <= $1 })
    }

    @Test("delay is drawn from [0, ceiling] (full jitter)", arguments: [1, 2, 3, 5, 7, 12])
    func delayWithinBounds(attempt: Int) {
        var generator = SeededGenerator(seed: 42 &+ UInt64(attempt))
        let ceiling = policy.ceiling(attempt: attempt)
        let delays = (0..<2_000).map { _ in policy.delay(attempt: attempt, using: &generator) }
        #expect(delays.allSatisfy { $0 >= 0 && $0 <= ceiling })
        // Full jitter: the draws spread over the whole range, not clustered at the ceiling.
        #expect(delays.min()! < ceiling * 0.05)
        #expect(delays.max()! > ceiling * 0.95)
        let mean = delays.reduce(0, +) / Double(delays.count)
        #expect(abs(mean - ceiling / 2) < ceiling * 0.05)
    }

    @Test("the same seed gives the same delays; another seed gives others")
    func deterministic() {
        var a = SeededGenerator(seed: 7)
        var b = SeededGenerator(seed: 7)
        var c = SeededGenerator(seed: 8)
        let first = (1...8).map { policy.delay(attempt: $0, using: &a) }
        let second = (1...8).map { policy.delay(attempt: $0, using: &b) }
        let other = (1...8).map { policy.delay(attempt: $0, using: &c) }
        #expect(first == second)
        #expect(first != other)
    }

    @Test("a zero ceiling gives a zero delay")
    func zeroDelay() {
        let none = RetryPolicy(maxAttempts: 3, initialDelaySec: 0, maxDelaySec: 0, multiplier: 2)
        var generator = SeededGenerator(seed: 1)
        #expect(none.delay(attempt: 3, using: &generator) == 0)
        #expect(none.delay(attempt: 1) == 0)
    }

    @Test("the system-random delay is within bounds too")
    func systemRandom() {
        #expect((0..<100).allSatisfy { _ in (0...policy.ceiling(attempt: 4)).contains(policy.delay(attempt: 4)) })
    }

    // Bug (minor): RetryPolicy.swift ceiling(attempt:): initialDelaySec 0 × pow(m, n) = 0 × ∞ = NaN once
    // pow overflows (n > ~1024 for m = 2); NaN is not finite, so the ceiling becomes maxDelaySec instead of 0.
    @Test("initial delay 0 stays 0 at any attempt")
    func zeroInitialDelayHugeAttempt() {
        let policy = RetryPolicy(maxAttempts: 3, initialDelaySec: 0, maxDelaySec: 60, multiplier: 2)
        #expect(policy.ceiling(attempt: 5) == 0)
        #expect(policy.ceiling(attempt: 2_000) == 0)
    }
}
