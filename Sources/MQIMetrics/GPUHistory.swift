import Foundation
import Synchronization

/// What nvidia-smi said about one GPU at one time.
public struct GPUHistorySample: Sendable, Equatable, Encodable {
    public var at: Date
    public var utilizationPercent: Double?
    public var memoryUsedMB: Double?
    public var memoryTotalMB: Double?

    public init(at: Date, utilizationPercent: Double?, memoryUsedMB: Double?, memoryTotalMB: Double?) {
        self.at = at
        self.utilizationPercent = utilizationPercent
        self.memoryUsedMB = memoryUsedMB
        self.memoryTotalMB = memoryTotalMB
    }

    enum CodingKeys: String, CodingKey {
        case at, utilizationPercent = "utilization_percent", memoryUsedMB = "memory_used_mb", memoryTotalMB = "memory_total_mb"
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(at, forKey: .at)
        try container.encode(utilizationPercent, forKey: .utilizationPercent)
        try container.encode(memoryUsedMB, forKey: .memoryUsedMB)
        try container.encode(memoryTotalMB, forKey: .memoryTotalMB)
    }
}

/// The GPU monitor's readings of the last `window` per GPU, in memory (a daemon restart starts an
/// empty history). Bounded twice: samples older than `window` are dropped at each record, and at
/// most `capacity` are kept per GPU (the oldest go first), however short the monitor's interval.
public final class GPUHistory: Sendable {
    public let window: TimeInterval
    public let capacity: Int
    private let samples = Mutex<[Int: [GPUHistorySample]]>([:])

    public init(window: TimeInterval = 3600, capacity: Int = 3600) {
        self.window = window
        self.capacity = max(1, capacity)
    }

    public func record(gpuId: Int, _ sample: GPUHistorySample) {
        let horizon = sample.at.addingTimeInterval(-window)
        samples.withLock { all in
            var list = all[gpuId] ?? []
            list.append(sample)
            // Samples arrive in time order: the stale and surplus ones are at the front.
            let stale = list.prefix { $0.at < horizon }.count
            let drop = max(stale, list.count - capacity)
            if drop > 0 { list.removeFirst(drop) }
            all[gpuId] = list
        }
    }

    /// The GPU's samples of the last `window` before `now`, oldest first.
    public func samples(gpuId: Int, now: Date = Date()) -> [GPUHistorySample] {
        let horizon = now.addingTimeInterval(-window)
        return samples.withLock { $0[gpuId] ?? [] }.filter { $0.at >= horizon }
    }

    /// `samples(gpuId:now:)` averaged into at most `points` buckets of equal length from the
    /// oldest sample (or the window's start) to `now`, oldest first (a bucket without a sample is
    /// left out): what a small chart draws.
    public func summary(gpuId: Int, points: Int, now: Date = Date()) -> [GPUHistorySample] {
        let all = samples(gpuId: gpuId, now: now)
        guard points > 0, all.count > points, let first = all.first else { return all }
        let start = max(now.addingTimeInterval(-window), first.at)
        let width = max(now.timeIntervalSince(start), 1) / Double(points)
        var buckets: [Int: [GPUHistorySample]] = [:]
        for sample in all {
            buckets[min(points - 1, max(0, Int(sample.at.timeIntervalSince(start) / width))), default: []].append(sample)
        }
        func mean(_ values: [Double?]) -> Double? {
            let present = values.compactMap { $0 }
            return present.isEmpty ? nil : present.reduce(0, +) / Double(present.count)
        }
        return buckets.keys.sorted().compactMap { index in
            guard let group = buckets[index], let last = group.last else { return nil }
            return GPUHistorySample(at: last.at, utilizationPercent: mean(group.map(\.utilizationPercent)),
                                    memoryUsedMB: mean(group.map(\.memoryUsedMB)), memoryTotalMB: last.memoryTotalMB)
        }
    }
}
