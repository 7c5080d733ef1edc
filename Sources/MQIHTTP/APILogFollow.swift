import Foundation
import Hummingbird
import MQICore
import MQIStore
import ServiceLifecycle

/// Which lines of a step's log match the step's `failure_patterns`: the same patterns, compiled by
/// the same engine (`NSRegularExpression`) and applied to the same text (the line without its
/// `\r`) as the `OutputWatcher` that fails the step, so the line it failed on is the one marked.
struct FailureLineMatcher: Sendable {
    let regexes: [NSRegularExpression]

    init(patterns: [String]) {
        regexes = patterns.compactMap { try? NSRegularExpression(pattern: $0) }
    }

    /// The rules of the log's step in the case's workflow; a beam's run logs as `<step>.<beam>`.
    init(config: Config, workflow: String, logStep: String) {
        self.init(patterns: Self.step(named: logStep, in: config.workflows[workflow]?.steps ?? [])?.rules?.failurePatterns ?? [])
    }

    static func step(named logStep: String, in steps: [WorkflowStep]) -> WorkflowStep? {
        if let step = steps.first(where: { $0.name == logStep }) { return step }
        guard let split = LogStepName(logStep) else { return nil }
        return steps.first { $0.name == split.step }
    }

    var isEmpty: Bool { regexes.isEmpty }

    func matches(_ line: String) -> Bool {
        let range = NSRange(line.startIndex..., in: line)
        return regexes.contains { $0.firstMatch(in: line, range: range) != nil }
    }

    /// The indexes of the lines that match.
    func failures(in lines: [String]) -> [Int] {
        guard !isEmpty else { return [] }
        return lines.indices.filter { matches(lines[$0]) }
    }
}

/// A log's step name split into the step and the beam of a `for_each: beam` run (`run_moqui_sim.2`).
struct LogStepName: Sendable, Equatable {
    var step: String
    var beam: Int

    init?(_ logStep: String) {
        guard let dot = logStep.lastIndex(of: "."), let beam = Int(logStep[logStep.index(after: dot)...]), beam >= 0,
              dot > logStep.startIndex else { return nil }
        self.step = String(logStep[..<dot])
        self.beam = beam
    }
}

/// Reads a growing log from a byte offset in bounded chunks and cuts it into lines. A start in
/// the middle of the file (the tail of a long log, or a jump over a backlog) drops the partial
/// line it lands in; a line longer than `maxLineBytes` is cut there.
struct LogCursor {
    /// The next byte to read.
    private(set) var offset: UInt64
    /// Bytes read after the last complete line (a line still being written).
    private(set) var pending = Data()
    /// Whether `offset` may be inside a line whose beginning was not read.
    private var midLine: Bool
    /// Whether the first read still has to choose where to start.
    private var placed: Bool
    var tailBytes: UInt64 = 64 * 1024
    var chunkBytes = 256 * 1024
    /// Further behind the end than this (the log grows faster than the client reads), the cursor
    /// jumps to the last `tailBytes`.
    var maxBacklog: UInt64 = 1024 * 1024
    var maxLineBytes = 16 * 1024

    /// Where the next event's lines end: a client that reconnects from here misses nothing.
    var resumeOffset: UInt64 { offset - UInt64(pending.count) }

    /// From `from` (a byte offset a client already has, at a line start), or from the last
    /// `tailBytes` of the file when nil.
    init(from: UInt64?) {
        offset = from ?? 0
        midLine = false
        placed = from != nil
    }

    struct Chunk {
        var lines: [String] = []
        /// Bytes of the file not shown before these lines (the head of a long log, a backlog jumped over).
        var skippedBytes: UInt64 = 0
        /// More is there to read now.
        var more = false
    }

    /// What was appended since the last read, at most `chunkBytes`; `final`: the writer is done,
    /// so a last line without its newline counts too. A file not there (yet) reads as empty.
    mutating func read(_ path: String, final: Bool) -> Chunk {
        var chunk = Chunk()
        guard let handle = FileHandle(forReadingAtPath: path) else { return chunk }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        if !placed || size < offset || size - offset > maxBacklog {
            // First read, a file that shrank (replaced), or a backlog: start over at the tail.
            let start = size > tailBytes ? size - tailBytes : 0
            chunk.skippedBytes = placed && size >= offset ? start - resumeOffset : start
            offset = start
            pending = Data()
            midLine = start > 0
            placed = true
        }
        guard (try? handle.seek(toOffset: offset)) != nil else { return chunk }
        let data = (try? handle.read(upToCount: chunkBytes)) ?? Data()
        offset += UInt64(data.count)
        chunk.more = offset < size
        pending.append(data)
        if midLine {
            guard let newline = pending.firstIndex(of: UInt8(ascii: "\n")) else {
                chunk.skippedBytes += UInt64(pending.count)
                pending = Data()
                return chunk
            }
            chunk.skippedBytes += UInt64(pending.distance(from: pending.startIndex, to: newline) + 1)
            pending = Data(pending[pending.index(after: newline)...])
            midLine = false
        }
        var start = pending.startIndex
        while let newline = pending[start...].firstIndex(of: UInt8(ascii: "\n")) {
            chunk.lines.append(Self.line(pending[start..<newline], limit: maxLineBytes))
            start = pending.index(after: newline)
        }
        pending = Data(pending[start...])
        if pending.count >= maxLineBytes || (final && !chunk.more && !pending.isEmpty) {
            chunk.lines.append(Self.line(pending[...], limit: maxLineBytes))
            // The rest of an over-long line is dropped with it.
            midLine = pending.count >= maxLineBytes && !final
            pending = Data()
        }
        return chunk
    }

    static func line(_ bytes: Data.SubSequence, limit: Int) -> String {
        var text = String(decoding: bytes.prefix(limit), as: UTF8.self)
        if text.hasSuffix("\r") { text.removeLast() }
        return bytes.count > limit ? text + " …" : text
    }
}

/// `GET /api/cases/{id}/logs/{step}/{attempt}/stream`: one step attempt's log as Server-Sent
/// Events. It sends the last 64 KiB (or everything after the byte offset in `?from=` or the
/// `Last-Event-ID` a reconnecting `EventSource` sends), then what is appended, every `interval`,
/// as `event: log` with `data: {"lines": [...], "failures": [indexes of lines matching the step's
/// failure_patterns], "skipped_bytes": N}` and `id:` the byte offset after those lines; a comment
/// every `heartbeat`. Once the attempt no longer runs it sends the rest and `event: end` and
/// closes. Memory stays bounded however long the log: reads of 256 KiB, lines cut at 16 KiB, a
/// client more than 1 MiB behind jumps to the tail. It also ends when the client goes, or when
/// the daemon shuts down (then without `end`: the client reconnects where it was).
struct LogFollowStream: Sendable {
    var context: APIContext
    var interval: Duration = .milliseconds(500)
    var heartbeat: Duration = .seconds(15)

    /// Whether the log's attempt may still write to it: the case is at that step and attempt (a
    /// beam's run: that beam's current attempt, running or waiting for its GPUs).
    static func isLive(_ summary: CaseSummary, logStep: String, attempt: Int) -> Bool {
        guard summary.status == .processing || summary.status == .pendingResource else { return false }
        if summary.workflowStep == logStep { return summary.attempt == attempt }
        guard let split = LogStepName(logStep), summary.workflowStep == split.step else { return false }
        return summary.beams.contains { $0.beam == split.beam && $0.attempt == attempt && ($0.status == .running || $0.status == .waiting) }
    }

    func response(caseId: String, step: String, attempt: Int, from: UInt64?) async throws -> Response {
        let path = try StepLogs(logsDir: context.config.state.logsDir).path(caseId: caseId, step: step, attempt: attempt)
        guard let summary = try await context.store.caseSummary(caseId) else { throw APIError.notFound("no case '\(caseId)'") }
        let live = Self.isLive(summary, logStep: step, attempt: attempt)
        guard live || FileManager.default.fileExists(atPath: path) else {
            throw APIError.notFound("case '\(caseId)' has no log for step \(step) attempt \(attempt)")
        }
        let matcher = FailureLineMatcher(config: context.config, workflow: summary.workflow, logStep: step)
        let headers: HTTPFields = [.contentType: "text/event-stream; charset=utf-8", .init("X-Accel-Buffering")!: "no"]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            do {
                try await run(caseId: caseId, step: step, attempt: attempt, path: path, from: from, live: live, matcher: matcher, writer: &writer)
            } catch is CancellationError {
            } catch {
                context.logger.debug("log stream ended: \(error)", metadata: ["case_id": "\(caseId)"])
            }
            try? await writer.finish(nil)
        })
    }

    func run(caseId: String, step: String, attempt: Int, path: String, from: UInt64?, live initiallyLive: Bool,
             matcher: FailureLineMatcher, writer: inout any ResponseBodyWriter) async throws {
        let clock = ContinuousClock()
        var cursor = LogCursor(from: from)
        var live = initiallyLive
        var first = true
        try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
        var lastWrite = clock.now
        while !Task.isCancelled, !Task.isShuttingDownGracefully {
            // Whether it still runs is asked before the read: after the attempt ended, the read
            // that follows is the last one, and gets the last line even without its newline.
            if live, !first {
                let summary = try await context.store.caseSummary(caseId)
                live = summary.map { Self.isLive($0, logStep: step, attempt: attempt) } ?? false
            }
            first = false
            var out = ""
            var chunk: LogCursor.Chunk
            repeat {
                chunk = cursor.read(path, final: !live)
                if !chunk.lines.isEmpty || chunk.skippedBytes > 0 {
                    out += try Self.event(chunk, failures: matcher.failures(in: chunk.lines), id: cursor.resumeOffset)
                }
                // A backlog read after the end is sent whole (each read is bounded); while it
                // runs, one chunk per interval.
            } while !live && chunk.more && !Task.isCancelled
            if !live {
                let end: [String: Any] = ["reason": "the attempt is no longer running", "offset": Int(cursor.resumeOffset)]
                let data = try JSONSerialization.data(withJSONObject: end, options: [.sortedKeys])
                out += "event: end\ndata: \(String(decoding: data, as: UTF8.self))\n\n"
                try await writer.write(ByteBuffer(string: out))
                return
            }
            if out.isEmpty, clock.now - lastWrite >= heartbeat { out = ": keep-alive\n\n" }
            if !out.isEmpty {
                try await writer.write(ByteBuffer(string: out))
                lastWrite = clock.now
            }
            if !chunk.more { try await Task.sleep(for: interval) }
        }
    }

    static func event(_ chunk: LogCursor.Chunk, failures: [Int], id: UInt64) throws -> String {
        let payload: [String: Any] = ["lines": chunk.lines, "failures": failures, "skipped_bytes": Int(chunk.skippedBytes)]
        let data = try JSONSerialization.data(withJSONObject: payload, options: [.sortedKeys])
        return "id: \(id)\nevent: log\ndata: \(String(decoding: data, as: UTF8.self))\n\n"
    }
}
