import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Hummingbird
import Logging
import MQICore
import MQIHTTP
import MQIMetrics
import MQIStore

/// How fast the API answers, measured over real HTTP on loopback (for `mqi-bench` and the tests).
public enum APIBenchmark {
    /// Latencies of `requests` sequential GETs, in milliseconds.
    public struct Timings: Sendable, CustomStringConvertible {
        public var path: String
        public var requests: Int
        public var casesInDatabase: Int
        public var bytesPerResponse: Int
        public var p50Ms: Double
        public var p90Ms: Double
        public var p99Ms: Double
        public var maxMs: Double
        public var meanMs: Double

        public var description: String {
            String(format: "GET %@ with %d cases: p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms, mean %.2f ms over %d requests (%d bytes each)",
                   path, casesInDatabase, p50Ms, p90Ms, p99Ms, maxMs, meanMs, requests, bytesPerResponse)
        }
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Serves the API for `context` on an ephemeral loopback port and times `requests` GETs of
    /// `path` (by default the first page of `/api/cases`) after `warmup` untimed ones.
    public static func time(_ context: APIContext, path: String = "/api/cases?limit=50", requests: Int = 200, warmup: Int = 10) async throws -> Timings {
        let port = PortBox()
        let app = Application(
            router: HTTPServer.router(store: context.store, metrics: MQIMetrics(), readiness: { [:] }, api: context),
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: "mqi-bench"),
            onServerRunning: { channel in port.set(channel.localAddress?.port ?? 0) },
            logger: Logger(label: "mqi-bench-api", factory: { _ in SwiftLogNoOpLogHandler() }))
        return try await withThrowingTaskGroup(of: Timings?.self) { group in
            group.addTask {
                try await app.runService()
                return nil
            }
            defer { group.cancelAll() }
            var waited = 0
            while port.get() == nil {
                guard waited < 1000 else { throw Failure(description: "the benchmark server did not start") }
                try await Task.sleep(for: .milliseconds(10))
                waited += 1
            }
            guard let url = URL(string: "http://127.0.0.1:\(port.get()!)\(path)") else { throw Failure(description: "bad path \(path)") }
            let configuration = URLSessionConfiguration.ephemeral
            configuration.httpMaximumConnectionsPerHost = 1
            let session = URLSession(configuration: configuration)
            defer { session.invalidateAndCancel() }
            var bytes = 0
            for _ in 0..<warmup { _ = try await fetch(session, url) }
            var samples: [Double] = []
            samples.reserveCapacity(requests)
            let clock = ContinuousClock()
            for _ in 0..<requests {
                let start = clock.now
                bytes = try await fetch(session, url)
                let elapsed = clock.now - start
                samples.append(Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15)
            }
            samples.sort()
            func percentile(_ p: Double) -> Double { samples[min(samples.count - 1, Int((p * Double(samples.count)).rounded(.up)) - 1)] }
            let total = try await context.store.statusCounts().values.reduce(0, +)
            return Timings(path: path, requests: requests, casesInDatabase: total, bytesPerResponse: bytes,
                           p50Ms: percentile(0.50), p90Ms: percentile(0.90), p99Ms: percentile(0.99), maxMs: samples.last ?? 0,
                           meanMs: samples.reduce(0, +) / Double(max(1, samples.count)))
        }
    }

    static func fetch(_ session: URLSession, _ url: URL) async throws -> Int {
        let (data, response) = try await session.data(from: url)
        guard (response as? HTTPURLResponse)?.statusCode == 200 else {
            throw Failure(description: "GET \(url) answered \((response as? HTTPURLResponse)?.statusCode ?? 0): \(String(decoding: data.prefix(300), as: UTF8.self))")
        }
        return data.count
    }
}

/// The port the benchmark server bound, set from its start callback.
final class PortBox: @unchecked Sendable {
    private let lock = NSLock()
    private var port: Int?

    func set(_ value: Int) { lock.withLock { port = value } }
    func get() -> Int? { lock.withLock { port } }
}
