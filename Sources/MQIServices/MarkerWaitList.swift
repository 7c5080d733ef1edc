import Foundation
import MQICore

/// The cases the scanner sees in `local_logdata` that are still waiting for their ready marker,
/// kept in `<state.database>.waiting.json` so that `mqi status` (another process) can list them.
///
/// A file rather than a table: it is the scanner's own view of the disk (rebuilt by the next scan,
/// nothing in it is state that must not be lost), the daemon is its only writer (it holds the
/// database lock), and it is replaced by an atomic rename, so a reader never sees half of it.
/// The daemon reads it back at start, so a case's waiting time and its one WARNING survive a
/// restart.
public struct MarkerWaitList: Codable, Sendable, Equatable {
    public struct Entry: Codable, Sendable, Equatable {
        public var caseId: String
        /// When the scanner first saw the case without its marker.
        public var since: Date
        /// Whether the WARNING for waiting longer than `marker_timeout_min` was written.
        public var warned: Bool

        enum CodingKeys: String, CodingKey {
            case caseId = "case_id", since, warned
        }

        public init(caseId: String, since: Date, warned: Bool = false) {
            self.caseId = caseId
            self.since = since
            self.warned = warned
        }
    }

    public var updatedAt: Date
    public var marker: String
    public var timeoutMin: Double
    public var cases: [Entry]

    enum CodingKeys: String, CodingKey {
        case updatedAt = "updated_at", marker, timeoutMin = "timeout_min", cases
    }

    public init(updatedAt: Date, marker: String, timeoutMin: Double, cases: [Entry]) {
        self.updatedAt = updatedAt
        self.marker = marker
        self.timeoutMin = timeoutMin
        self.cases = cases
    }

    /// `<database>.waiting.json`
    public static func path(database: String) -> String { database + ".waiting.json" }

    /// This communicator's list: beside a SQLite file, or `<instance>.waiting.json` beside the
    /// PID file when the state is PostgreSQL.
    public static func path(state: StateConfig) -> String {
        state.isPostgres ? (state.localDirectory as NSString).appendingPathComponent("\(state.instanceName).waiting.json") : path(database: state.database)
    }

    /// Whether `entry` has waited longer than the timeout at `now`.
    public func isOverdue(_ entry: Entry, now: Date) -> Bool {
        now.timeIntervalSince(entry.since) >= timeoutMin * 60
    }

    /// `60`, `0.5`: minutes as written in the config.
    public static func formatMinutes(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }

    /// The list in `path`, nil when there is none or it cannot be read.
    public static func read(from path: String) -> MarkerWaitList? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? decoder.decode(MarkerWaitList.self, from: data)
    }

    /// Replaces `path` atomically (a temporary file renamed over it).
    public func write(to path: String) throws {
        let data = try Self.encoder.encode(self)
        try data.write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
