import Foundation
import MQICore
import MQIStore

/// The tables and JSON that `mqi status`, `mqi cases` and `mqi gpus` print, as text; the
/// executable only parses arguments and prints what these return.
public enum Reports {
    /// `mqi cases list` (and the demo's summary): one row per case.
    public static func casesTable(_ cases: [CaseSummary]) -> String {
        let header = ["CASE", "STATUS", "STEP", "PROGRESS", "GPUS", "DURATION", "ERROR"]
        let rows = cases.map { summary -> [String] in
            let end = summary.finishedAt ?? Date()
            let duration = String(format: "%.1f s", end.timeIntervalSince(summary.createdAt))
            return [summary.caseId, summary.status.rawValue, summary.workflowStep ?? "-", "\(summary.progress)%",
                    summary.gpuIds.isEmpty ? "-" : summary.gpuIds.map(String.init).joined(separator: ","), duration,
                    summary.error.map { String($0.prefix(60)).replacingOccurrences(of: "\n", with: " ") } ?? ""]
        }
        return columns(header, rows)
    }

    /// `mqi gpus`: reservation, health and the last telemetry of each GPU.
    public static func gpusTable(_ gpus: [GPUResource]) -> String {
        let header = ["GPU", "NAME", "STATUS", "RESERVED BY", "HEALTH", "UTIL", "MEMORY", "TEMP", "LAST SEEN"]
        let rows = gpus.map { gpu -> [String] in
            let memory = gpu.memoryUsedMB.map { used in "\(Int(used))/\(gpu.memoryTotalMB.map { String(Int($0)) } ?? "?") MiB" } ?? "-"
            return [String(gpu.gpuId), gpu.name ?? "-", gpu.status.rawValue, gpu.holder ?? "-", gpu.health.rawValue,
                    gpu.utilizationPercent.map { "\(Int($0))%" } ?? "-", memory,
                    gpu.temperatureC.map { "\(Int($0)) C" } ?? "-", gpu.lastSeen.map(isoDate) ?? "never"]
        }
        return columns(header, rows)
    }

    /// Left-aligned columns two spaces apart, the header first; trailing blanks trimmed.
    public static func columns(_ header: [String], _ rows: [[String]]) -> String {
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        return ([header] + rows).map { row in
            row.indices.map { $0 == row.count - 1 ? row[$0] : row[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n")
    }

    /// ISO-8601 UTC with milliseconds. One format style for every date printed (creating a
    /// formatter per date made `cases list` spend most of its time in ICU).
    public static func isoDate(_ date: Date) -> String {
        date.formatted(isoStyle)
    }

    static let isoStyle = Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: TimeZone(identifier: "UTC")!)

    /// Pretty-printed JSON with sorted keys and dates as `isoDate`.
    public static func jsonText<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(isoDate(date))
        }
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    static func jsonObjectText(_ object: Any) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}
