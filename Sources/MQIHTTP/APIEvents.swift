import Foundation
import Hummingbird
import MQICore
import MQIStore
import ServiceLifecycle

/// Counts, throughput and queues: the overview's numbers (`GET /api/summary`, SSE `summary`).
struct OverviewSummary: Sendable, Equatable, Encodable {
    var counts: [String: Int]
    var total: Int
    /// Cases finished per hour over the last 24 h, oldest first.
    var throughput: [ThroughputBucket]
    var queues: [String: Int]
    var deadLetters: Int
    /// The HPC host(s) and whether they answer (ssh transport only).
    var hosts: [HostState] = []

    enum CodingKeys: String, CodingKey {
        case counts, total, throughput, queues, deadLetters = "dead_letters", hosts
    }
}

extension APIContext {
    func overviewSummary(now: Date = Date()) async throws -> OverviewSummary {
        let counts = try await store.statusCounts()
        let depths = try await store.queueDepths()
        return OverviewSummary(
            counts: Dictionary(uniqueKeysWithValues: counts.map { ($0.key.rawValue, $0.value) }),
            total: counts.values.reduce(0, +),
            throughput: try await store.throughput(since: now.addingTimeInterval(-23 * 3600), until: now),
            queues: Dictionary(uniqueKeysWithValues: depths.map { ($0.key.rawValue, $0.value) }),
            deadLetters: try await store.deadLetterCount(),
            hosts: try await store.hosts())
    }
}

/// `GET /api/events`: Server-Sent Events. The stream polls the database (every `interval`) and sends
/// `event: case` (a case whose `updated_at` changed), `event: gpu` (a GPU whose reservation or
/// telemetry changed) and `event: summary` (counts, throughput, queues) as JSON; a comment line
/// every `heartbeat`; `event: resync` when more changed at once than it sends (the client reloads
/// its data). It ends when the client goes away or the server shuts down.
struct EventStream: Sendable {
    var context: APIContext
    var interval: Duration = .milliseconds(500)
    var heartbeat: Duration = .seconds(15)
    /// How far back each poll looks again: transactions stamp `updated_at` before they commit,
    /// so a row may appear slightly older than one already seen.
    var overlap: TimeInterval = 2
    var batch = 500

    func response(since: Date?) -> Response {
        let headers: HTTPFields = [.contentType: "text/event-stream; charset=utf-8", .init("X-Accel-Buffering")!: "no"]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            do {
                try await run(since: since ?? Date(), writer: &writer)
            } catch is CancellationError {
            } catch {
                context.logger.debug("event stream ended: \(error)")
            }
            try? await writer.finish(nil)
        })
    }

    func run(since start: Date, writer: inout any ResponseBodyWriter) async throws {
        let clock = ContinuousClock()
        var since = start
        var sent: [String: Date] = [:]
        var gpus: [Int: GPUResource] = [:]
        var summary: OverviewSummary?
        var lastWrite = clock.now
        var tick = 0
        let hello: [String: Any] = ["server_time": APIResponses.isoDate(Date()), "token_configured": APIAuthorization(context.config.http).isConfigured]
        let helloData = (try? JSONSerialization.data(withJSONObject: hello, options: [.sortedKeys])) ?? Data("{}".utf8)
        try await writer.write(ByteBuffer(string: "retry: 2000\nevent: hello\ndata: \(String(decoding: helloData, as: UTF8.self))\n\n"))
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            var out = ""
            tick += 1
            let changed = try await context.store.casesUpdated(since: since.addingTimeInterval(-overlap), limit: batch)
            if changed.count >= batch {
                out += "event: resync\ndata: {}\n\n"
                since = changed.last?.updatedAt ?? since
                sent.removeAll()
            } else {
                for summary in changed where sent[summary.caseId] != summary.updatedAt {
                    sent[summary.caseId] = summary.updatedAt
                    since = max(since, summary.updatedAt)
                    out += "event: case\ndata: \(String(decoding: try APIResponses.encoder.encode(summary), as: UTF8.self))\n\n"
                }
            }
            let horizon = since.addingTimeInterval(-overlap - 1)
            sent = sent.filter { $0.value >= horizon }
            for gpu in try await context.store.gpus() where gpus[gpu.gpuId] != gpu {
                gpus[gpu.gpuId] = gpu
                out += "event: gpu\ndata: \(String(decoding: try APIResponses.encoder.encode(gpu), as: UTF8.self))\n\n"
            }
            if !changed.isEmpty || summary == nil || tick % 10 == 0 {
                let fresh = try await context.overviewSummary()
                if fresh != summary {
                    summary = fresh
                    out += "event: summary\ndata: \(String(decoding: try APIResponses.encoder.encode(fresh), as: UTF8.self))\n\n"
                }
            }
            if out.isEmpty, clock.now - lastWrite >= heartbeat { out = ": keep-alive\n\n" }
            if !out.isEmpty {
                try await writer.write(ByteBuffer(string: out))
                lastWrite = clock.now
            }
            try await Task.sleep(for: interval)
        }
    }
}
