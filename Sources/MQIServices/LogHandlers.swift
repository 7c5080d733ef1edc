import Foundation
import Logging
import Synchronization

/// How log lines are written.
public enum LogFormat: String, Sendable, CaseIterable {
    /// One JSON object per line (for ELK / Graylog).
    case json
    /// A compact human line for terminals.
    case text
}

/// Where log lines go; one lock so lines from concurrent tasks never interleave.
public final class LogSink: Sendable {
    private let handle: Mutex<FileHandle>

    public init(_ handle: FileHandle) {
        self.handle = Mutex(handle)
    }

    public static let standardOutput = LogSink(FileHandle.standardOutput)

    public func write(_ line: String) {
        let data = Data((line + "\n").utf8)
        handle.withLock { try? $0.write(contentsOf: data) }
    }
}

/// Keeps an error repeated in a loop (the HPC down for an hour) from flooding the log: the first
/// occurrence of a WARNING-or-worse message is written, repeats within `window` are counted, and
/// the next occurrence after the window writes "… repeated N times in the last M min" first.
/// Messages that differ only in their numbers count as the same message.
public final class RepeatFilter: Sendable {
    struct Entry {
        var windowStart: Date
        var suppressed: Int
    }

    let window: TimeInterval
    let now: @Sendable () -> Date
    private let entries = Mutex<[String: Entry]>([:])

    public init(window: TimeInterval = 600, now: @escaping @Sendable () -> Date = { Date() }) {
        self.window = window
        self.now = now
    }

    public enum Verdict: Equatable {
        case write
        /// Write, preceded by a summary of this many suppressed repeats.
        case writeAfterSummary(repeats: Int, minutes: Int)
        case suppress
    }

    /// `subject`: what the message is about (case, GPU), so one case's failure does not hide
    /// another's.
    public func check(_ level: Logger.Level, _ message: String, subject: String = "") -> Verdict {
        guard level >= .warning else { return .write }
        let key = "\(level.rawValue)|\(subject)|" + Self.shape(message)
        let now = now()
        return entries.withLock { entries in
            guard var entry = entries[key], now.timeIntervalSince(entry.windowStart) < window else {
                let previous = entries[key]
                entries[key] = Entry(windowStart: now, suppressed: 0)
                if entries.count > 10_000 { entries = entries.filter { now.timeIntervalSince($0.value.windowStart) < window } }
                if let previous, previous.suppressed > 0 {
                    return .writeAfterSummary(repeats: previous.suppressed, minutes: Int((window / 60).rounded(.up)))
                }
                return .write
            }
            entry.suppressed += 1
            entries[key] = entry
            return .suppress
        }
    }

    /// The message with every run of digits replaced, so "retry 3 in 1.2 s" matches "retry 4 in 0.7 s".
    static func shape(_ message: String) -> String {
        var out = ""
        var inNumber = false
        for character in message.prefix(500) {
            if character.isNumber {
                if !inNumber { out.append("#") }
                inNumber = true
            } else {
                inNumber = false
                out.append(character)
            }
        }
        return out
    }
}

/// A swift-log handler writing one JSON object (or one text line) per record: `timestamp`
/// (ISO-8601 UTC, ms), `level`, `message`, `logger_name`, `module`, `funcName`, `lineno` and
/// every metadata key as a top-level field.
public struct MQILogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let label: String
    let format: LogFormat
    let sink: LogSink
    let repeats: RepeatFilter?

    public init(label: String, level: Logger.Level, format: LogFormat, sink: LogSink = .standardOutput, repeats: RepeatFilter? = nil) {
        self.label = label
        self.logLevel = level
        self.format = format
        self.sink = sink
        self.repeats = repeats
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let subject = ["case_id", "gpu_id"].compactMap { key in
            (event.metadata?[key] ?? metadata[key]).map { "\(key)=\($0)" }
        }.joined(separator: ",")
        switch repeats?.check(event.level, event.message.description, subject: subject) ?? .write {
        case .suppress:
            return
        case .writeAfterSummary(let count, let minutes):
            var summary = event
            summary.message = "… \"\(String(event.message.description.prefix(200)))\" repeated \(count) times in the last \(minutes) min"
            write(summary)
        case .write:
            break
        }
        write(event)
    }

    func write(_ event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let timestamp = Self.timestamp(Date())
        switch format {
        case .json:
            var object: [String: Any] = [
                "timestamp": timestamp,
                "level": event.level.rawValue.uppercased(),
                "message": event.message.description,
                "logger_name": label,
                "module": event.source,
                "funcName": event.function,
                "lineno": Int(event.line),
            ]
            for (key, value) in merged where object[key] == nil { object[key] = Self.json(value) }
            guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
            sink.write(String(decoding: data, as: UTF8.self))
        case .text:
            let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\(Self.oneLine("\($0.value)"))" }.joined(separator: " ")
            sink.write("\(timestamp) \(event.level.rawValue.uppercased()) \(Self.oneLine(event.message.description))\(fields.isEmpty ? "" : " [\(fields)]")")
        }
    }

    /// Control characters escaped, so a text record stays on one line.
    static func oneLine(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += "\\u{\(String(scalar.value, radix: 16))}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    static func json(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case .string(let string): string
        case .stringConvertible(let convertible): convertible.description
        case .array(let array): array.map(json)
        case .dictionary(let dictionary): dictionary.mapValues(json)
        }
    }

    static func timestamp(_ date: Date) -> String {
        var time = timespec()
        let seconds = date.timeIntervalSince1970
        time.tv_sec = Int(seconds)
        let millis = Int((seconds - Double(time.tv_sec)) * 1000)
        var parts = tm()
        var secs = time.tv_sec
        gmtime_r(&secs, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), millis)
    }
}

extension Logger.Level {
    /// Parses a config / CLI level name.
    public init?(name: String) {
        self.init(rawValue: name.lowercased())
    }
}
