import Foundation
import MQICore
import MQIStore

extension Reports {
    /// `mqi cases list --json`: byte for byte the text `jsonText(cases)` prints (pretty-printed,
    /// sorted keys, dates as `isoDate`), written directly instead of through `JSONEncoder`,
    /// which spent most of the command's time on 2,000 cases (its boxing of every value, and a
    /// calendar computation per date). `CaseListOutputTests` holds the two equal.
    public static func casesJSON(_ cases: [CaseSummary]) -> String {
        var out = JSONTextWriter()
        out.bytes.reserveCapacity(cases.count * 700 + 8)
        out.array(cases, indent: 0) { out, summary, indent in out.caseSummary(summary, indent: indent) }
        return String(decoding: out.bytes, as: UTF8.self)
    }
}

/// Writes JSON text in the layout of Foundation's `JSONEncoder` with `[.prettyPrinted,
/// .sortedKeys, .withoutEscapingSlashes]`: two-space indents, `"key" : value`, an empty array
/// as `[`, a blank line and `]`; strings escaped as its writer escapes them. The caller writes
/// an object's keys in sorted order.
struct JSONTextWriter {
    var bytes: [UInt8] = []

    /// `CaseSummary.encode(to:)`: every key, nil as null.
    mutating func caseSummary(_ summary: CaseSummary, indent: Int) {
        let inner = indent + 2
        bytes.append(123) // {
        key("attempt", inner, first: true); int(summary.attempt)
        key("beam_numbers", inner); ints(summary.beamNumbers, indent: inner)
        key("beams", inner); array(summary.beams, indent: inner) { out, run, indent in out.beamRun(run, indent: indent) }
        key("case_id", inner); string(summary.caseId)
        key("created_at", inner); date(summary.createdAt)
        key("detail", inner); string(summary.detail)
        key("error", inner); string(summary.error)
        key("failure_class", inner); string(summary.failureClass?.rawValue)
        key("finished_at", inner); date(summary.finishedAt)
        key("gpu_ids", inner); ints(summary.gpuIds, indent: inner)
        key("patient_id", inner); string(summary.patientId)
        key("progress", inner); int(summary.progress)
        key("started_at", inner); date(summary.startedAt)
        key("status", inner); string(summary.status.rawValue)
        key("updated_at", inner); date(summary.updatedAt)
        key("workflow", inner); string(summary.workflow)
        key("workflow_step", inner); string(summary.workflowStep)
        close(indent)
    }

    /// `BeamRun`'s synthesized `Encodable`: nil fields left out.
    mutating func beamRun(_ run: BeamRun, indent: Int) {
        let inner = indent + 2
        bytes.append(123) // {
        key("attempt", inner, first: true); int(run.attempt)
        if let error = run.error { key("error", inner); string(error) }
        if let finished = run.finishedAt { key("finished_at", inner); date(finished) }
        key("gpu_ids", inner); ints(run.gpuIds, indent: inner)
        key("number", inner); int(run.beam)
        key("progress", inner); int(run.progress)
        if let started = run.startedAt { key("started_at", inner); date(started) }
        key("status", inner); string(run.status.rawValue)
        close(indent)
    }

    /// `"name" : ` on a line of its own at `indent`, after a comma unless `first`.
    mutating func key(_ name: StaticString, _ indent: Int, first: Bool = false) {
        if !first { bytes.append(44) } // ,
        bytes.append(10)
        spaces(indent)
        bytes.append(34)
        name.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: [34, 32, 58, 32]) // " :_
    }

    /// The closing brace of a non-empty object opened at `indent`.
    mutating func close(_ indent: Int) {
        bytes.append(10)
        spaces(indent)
        bytes.append(125) // }
    }

    mutating func array<Element>(_ elements: [Element], indent: Int, _ element: (inout JSONTextWriter, Element, Int) -> Void) {
        bytes.append(91) // [
        if elements.isEmpty {
            bytes.append(contentsOf: [10, 10])
        } else {
            for (index, value) in elements.enumerated() {
                if index > 0 { bytes.append(44) }
                bytes.append(10)
                spaces(indent + 2)
                element(&self, value, indent + 2)
            }
            bytes.append(10)
        }
        spaces(indent)
        bytes.append(93) // ]
    }

    mutating func ints(_ values: [Int], indent: Int) {
        array(values, indent: indent) { out, value, _ in out.int(value) }
    }

    mutating func spaces(_ count: Int) {
        bytes.append(contentsOf: repeatElement(32, count: count))
    }

    mutating func null() {
        bytes.append(contentsOf: [110, 117, 108, 108])
    }

    mutating func int(_ value: Int) {
        bytes.append(contentsOf: String(value).utf8)
    }

    mutating func string(_ value: String?) {
        guard let value else { return null() }
        bytes.append(34)
        var text = value
        text.withUTF8 { utf8 in
            var start = 0
            for index in utf8.indices {
                let byte = utf8[index]
                guard byte < 32 || byte == 34 || byte == 92 else { continue }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<index]))
                start = index + 1
                switch byte {
                case 34: bytes.append(contentsOf: [92, 34])
                case 92: bytes.append(contentsOf: [92, 92])
                case 8: bytes.append(contentsOf: [92, 98])   // \b
                case 9: bytes.append(contentsOf: [92, 116])  // \t
                case 10: bytes.append(contentsOf: [92, 110]) // \n
                case 12: bytes.append(contentsOf: [92, 102]) // \f
                case 13: bytes.append(contentsOf: [92, 114]) // \r
                default:
                    // \u00XX, lowercase hex
                    bytes.append(contentsOf: [92, 117, 48, 48, 48 + (byte >> 4), (byte & 15) < 10 ? 48 + (byte & 15) : 87 + (byte & 15)])
                }
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start...]))
        }
        bytes.append(34)
    }

    mutating func date(_ value: Date?) {
        guard let value else { return null() }
        bytes.append(34)
        if !ISODate.write(value, into: &bytes) {
            bytes.append(contentsOf: Reports.isoDate(value).utf8)
        }
        bytes.append(34)
    }
}

/// `Reports.isoDate` (`Date.ISO8601FormatStyle` with milliseconds, UTC) without a calendar:
/// the same arithmetic as Foundation's Gregorian calendar and ISO 8601 writer (whole seconds
/// rounded down from the reference date, the fraction truncated to milliseconds), for the years
/// 1601 to 9999; outside them (the Julian calendar before 1582, five-digit years) the caller
/// falls back to the format style.
enum ISODate {
    /// 1601-01-01 00:00:00 and 10000-01-01 00:00:00 UTC, seconds since 2001-01-01.
    static let range: Range<Double> = -12_622_780_800 ..< 252_423_993_600

    static func write(_ date: Date, into bytes: inout [UInt8]) -> Bool {
        let reference = date.timeIntervalSinceReferenceDate
        guard range.contains(reference) else { return false }
        let whole = reference.rounded(.down)
        let nanosecond = Int((reference - whole) * 1_000_000_000)
        let millisecond = Int((Double(nanosecond) / 1_000_000.0).rounded(.towardZero))
        // Days since 1970-01-01 and the second of that day.
        let unix = Int64(whole) + 978_307_200
        var days = unix / 86_400
        var second = unix % 86_400
        if second < 0 {
            second += 86_400
            days -= 1
        }
        let (year, month, day) = SQLDate.civil(fromDays: days)
        func digits(_ value: Int64, _ count: Int) {
            var divisor: Int64 = 1
            for _ in 1..<count { divisor *= 10 }
            while divisor > 0 {
                bytes.append(UInt8(48 + (value / divisor) % 10))
                divisor /= 10
            }
        }
        digits(year, 4); bytes.append(45); digits(month, 2); bytes.append(45); digits(day, 2)
        bytes.append(84) // T
        digits(second / 3600, 2); bytes.append(58); digits(second / 60 % 60, 2); bytes.append(58); digits(second % 60, 2)
        bytes.append(46); digits(Int64(millisecond), 3)
        bytes.append(90) // Z
        return true
    }
}
