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

    /// Writes `line` (UTF-8, without its newline) and a newline.
    func write(bytes line: [UInt8]) {
        var data = Data(capacity: line.count + 1)
        data.append(contentsOf: line)
        data.append(0x0A)
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
            // Written directly, as JSONSerialization would with [.sortedKeys, .withoutEscapingSlashes]
            // (LogLineTests holds it to that), at a fraction of its cost.
            var keys = Self.fixedKeys
            for key in merged.keys where !Self.fixedKeys.contains(key) { keys.append(key) }
            var line = JSONLine()
            line.appendObject(keys: keys) { line, key in
                switch key {
                case "timestamp": line.appendString(timestamp)
                case "level": line.appendString(event.level.rawValue.uppercased())
                case "message": line.appendString(event.message.description)
                case "logger_name": line.appendString(label)
                case "module": line.appendString(event.source)
                case "funcName": line.appendString(event.function)
                case "lineno": line.appendInteger(Int(event.line))
                default: line.appendMetadata(merged[key] ?? .string(""))
                }
            }
            sink.write(bytes: line.bytes)
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

    /// The fields of every JSON record; a metadata key with one of these names is left out.
    static let fixedKeys = ["timestamp", "level", "message", "logger_name", "module", "funcName", "lineno"]

    static func json(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case .string(let string): string
        case .stringConvertible(let convertible): convertible.description
        case .array(let array): array.map(json)
        case .dictionary(let dictionary): dictionary.mapValues(json)
        }
    }

    package static func timestamp(_ date: Date) -> String {
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

/// One JSON value written straight into UTF-8 bytes: byte for byte what `JSONSerialization`
/// writes with `[.sortedKeys, .withoutEscapingSlashes]` for the same value (LogLineTests compares
/// the two), without building a `[String: Any]` or a `String` per character.
///
/// Strings: `"` and `\` escaped with a backslash; U+0008, U+000C, LF, CR and TAB as `\b` `\f`
/// `\n` `\r` `\t`; the other control characters below U+0020 as `\u00xx` (lowercase hex);
/// everything else, `/` and non-ASCII included, as its UTF-8. Object keys in Foundation's order
/// (`compare` with `.numeric, .caseInsensitive, .forcedOrdering`), found once per key set.
package struct JSONLine {
    package private(set) var bytes: [UInt8] = []

    package init(capacity: Int = 320) {
        bytes.reserveCapacity(capacity)
    }

    package mutating func appendString(_ string: String) {
        bytes.append(0x22)
        var string = string
        string.withUTF8 { utf8 in
            var start = 0
            for index in 0..<utf8.count {
                let byte = utf8[index]
                guard byte < 0x20 || byte == 0x22 || byte == 0x5C else { continue }
                if start < index { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<index])) }
                appendEscaped(byte)
                start = index + 1
            }
            if start < utf8.count { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start...])) }
        }
        bytes.append(0x22)
    }

    private mutating func appendEscaped(_ byte: UInt8) {
        bytes.append(0x5C)
        switch byte {
        case 0x22: bytes.append(0x22)
        case 0x5C: bytes.append(0x5C)
        case 0x08: bytes.append(UInt8(ascii: "b"))
        case 0x0C: bytes.append(UInt8(ascii: "f"))
        case 0x0A: bytes.append(UInt8(ascii: "n"))
        case 0x0D: bytes.append(UInt8(ascii: "r"))
        case 0x09: bytes.append(UInt8(ascii: "t"))
        default:
            let hex = Array("0123456789abcdef".utf8)
            bytes.append(contentsOf: [UInt8(ascii: "u"), 0x30, 0x30, hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
        }
    }

    package mutating func appendInteger(_ value: Int) {
        if value < 0 { bytes.append(UInt8(ascii: "-")) }
        var magnitude = value.magnitude
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        withUnsafeMutableBytes(of: &digits) { digits in
            repeat {
                digits[count] = 0x30 + UInt8(magnitude % 10)
                magnitude /= 10
                count += 1
            } while magnitude != 0
            for index in stride(from: count - 1, through: 0, by: -1) { bytes.append(digits[index]) }
        }
    }

    package mutating func appendMetadata(_ value: Logger.MetadataValue) {
        switch value {
        case .string(let string):
            appendString(string)
        case .stringConvertible(let convertible):
            appendString(convertible.description)
        case .array(let array):
            bytes.append(UInt8(ascii: "["))
            for (index, element) in array.enumerated() {
                if index > 0 { bytes.append(UInt8(ascii: ",")) }
                appendMetadata(element)
            }
            bytes.append(UInt8(ascii: "]"))
        case .dictionary(let dictionary):
            appendObject(keys: Array(dictionary.keys)) { line, key in line.appendMetadata(dictionary[key] ?? .string("")) }
        }
    }

    /// `{"key":value,...}` with `keys` (distinct) in Foundation's order; `value` writes each value.
    package mutating func appendObject(keys: [String], value: (inout JSONLine, String) -> Void) {
        bytes.append(UInt8(ascii: "{"))
        for (index, key) in Self.sorted(keys).enumerated() {
            if index > 0 { bytes.append(UInt8(ascii: ",")) }
            appendString(key)
            bytes.append(UInt8(ascii: ":"))
            value(&self, key)
        }
        bytes.append(UInt8(ascii: "}"))
    }

    /// The order JSONSerialization's `.sortedKeys` puts `keys` in. Its comparison (locale-aware,
    /// numeric, case-insensitive) costs microseconds, so the order is found once per set of keys
    /// and kept as positions in the set's own (Swift) order.
    package static func sorted(_ keys: [String]) -> [String] {
        guard keys.count > 1 else { return keys }
        let set = keys.sorted()
        if let positions = orders.withLock({ $0[set] }) { return positions.map { set[$0] } }
        let positions = set.indices.sorted { foundationPrecedes(set[$0], set[$1]) }
        orders.withLock { orders in
            if orders.count >= 1024 { orders.removeAll() }
            orders[set] = positions
        }
        return positions.map { set[$0] }
    }

    /// JSONSerialization's key comparison.
    package static func foundationPrecedes(_ a: String, _ b: String) -> Bool {
        a.compare(b, options: [.numeric, .caseInsensitive, .forcedOrdering], range: a.startIndex..<a.endIndex, locale: NSLocale.system) == .orderedAscending
    }

    private static let orders = Mutex<[[String]: [Int]]>([:])
}
