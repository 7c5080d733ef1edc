import Foundation
import MQICore
import Synchronization

/// Reads a running step's log as it grows and applies the step's `OutputRules`: progress from
/// `progress_pattern` (never backwards), the first line matching a `failure_patterns` entry, and
/// whether `success_pattern` was seen. A partial last line waits for its end.
public final class OutputWatcher: Sendable {
    struct State {
        var offset: UInt64 = 0
        var remainder = Data()
        var fraction: Double = 0
        var failureLine: String?
        var sawSuccess = false
    }

    let path: String
    let progressRegex: NSRegularExpression?
    let failureRegexes: [NSRegularExpression]
    let successRegex: NSRegularExpression?
    let retryableRegexes: [NSRegularExpression]
    let progressFrom: Int
    let progressTo: Int
    private let state = Mutex(State())

    public init(path: String, rules: OutputRules?, progressFrom: Int, progressTo: Int) {
        self.path = path
        let compile = { (pattern: String?) in pattern.flatMap { try? NSRegularExpression(pattern: $0) } }
        progressRegex = compile(rules?.progressPattern)
        failureRegexes = (rules?.failurePatterns ?? []).compactMap(compile)
        successRegex = compile(rules?.successPattern)
        retryableRegexes = (rules?.retryablePatterns ?? []).compactMap(compile)
        self.progressFrom = progressFrom
        self.progressTo = max(progressFrom, progressTo)
    }

    /// Whether there is anything to watch.
    public var isActive: Bool { progressRegex != nil || !failureRegexes.isEmpty || successRegex != nil }

    public var failureLine: String? { state.withLock { $0.failureLine } }
    public var sawSuccess: Bool { state.withLock { $0.sawSuccess } }

    /// Reads what was appended since the last call; returns the case's progress if it rose.
    /// `final`: the step ended, so a last line without a newline counts too.
    @discardableResult
    public func poll(final: Bool = false) -> Int? {
        guard isActive, let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        let offset = state.withLock { $0.offset }
        try? handle.seek(toOffset: offset)
        let data = (try? handle.readToEnd()) ?? Data()
        return state.withLock { state -> Int? in
            state.offset = offset + UInt64(data.count)
            state.remainder.append(data)
            var lines: [String] = []
            while let newline = state.remainder.firstIndex(of: UInt8(ascii: "\n")) {
                lines.append(String(decoding: state.remainder[state.remainder.startIndex..<newline], as: UTF8.self))
                state.remainder = Data(state.remainder[state.remainder.index(after: newline)...])
            }
            if final, !state.remainder.isEmpty {
                lines.append(String(decoding: state.remainder, as: UTF8.self))
                state.remainder = Data()
            }
            let before = state.fraction
            for rawLine in lines {
                let line = rawLine.trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
                apply(line, to: &state)
            }
            return state.fraction > before ? progress(state.fraction) : nil
        }
    }

    func apply(_ line: String, to state: inout State) {
        let range = NSRange(line.startIndex..., in: line)
        if state.failureLine == nil, failureRegexes.contains(where: { $0.firstMatch(in: line, range: range) != nil }) {
            state.failureLine = line
        }
        if let successRegex, successRegex.firstMatch(in: line, range: range) != nil {
            state.sawSuccess = true
        }
        if let progressRegex, let match = progressRegex.firstMatch(in: line, range: range),
           let done = Self.number(match, "done", in: line), let total = Self.number(match, "total", in: line), total > 0 {
            state.fraction = max(state.fraction, min(1, max(0, done / total)))
        }
    }

    static func number(_ match: NSTextCheckingResult, _ group: String, in line: String) -> Double? {
        let range = match.range(withName: group)
        guard range.location != NSNotFound, let swiftRange = Range(range, in: line) else { return nil }
        return Double(line[swiftRange])
    }

    func progress(_ fraction: Double) -> Int {
        progressFrom + Int((Double(progressTo - progressFrom) * fraction).rounded(.down))
    }

    /// The case's progress for a fraction of this step (for tests and the dashboard).
    public var currentProgress: Int { progress(state.withLock { $0.fraction }) }

    /// Whether a failure (its matched line and the output's tail) matches `retryable_patterns`.
    public func isRetryable(_ texts: [String]) -> Bool {
        texts.contains { text in
            let range = NSRange(text.startIndex..., in: text)
            return retryableRegexes.contains { $0.firstMatch(in: text, range: range) != nil }
        }
    }
}
