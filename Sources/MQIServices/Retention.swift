import Foundation
import MQICore
import MQIStore

/// What `retention` keeps: step logs (`state.logs_dir/<case>/`) of cases finished more than
/// `logs_days` ago and the history (`case_events`) of cases finished more than `events_days`
/// ago are deleted; the case rows stay. Webhook events (the outbox) recorded more than
/// `events_days` ago that every configured webhook got are deleted too. Run by the daemon
/// (`RetentionService`) and `mqi prune`.
public struct Retention: Sendable {
    public var config: RetentionConfig
    public var logsDir: String
    public var store: Store
    public var now: @Sendable () -> Date

    public init(config: RetentionConfig, logsDir: String, store: Store, now: @escaping @Sendable () -> Date = { Date() }) {
        self.config = config
        self.logsDir = logsDir
        self.store = store
        self.now = now
    }

    /// What one pass removed (or, dry, would remove).
    public struct Report: Sendable, Equatable {
        /// Log directories of cases, one per case.
        public var logDirectories: [String] = []
        /// Files in those directories.
        public var logFiles = 0
        public var logBytes: Int64 = 0
        /// Cases whose history was deleted, and how many events each.
        public var events: [EventPrune] = []
        /// Log directories that could not be removed, with why.
        public var problems: [String] = []
        /// Delivered webhook events (the outbox).
        public var outboxEvents = 0

        public var eventCount: Int { events.reduce(0) { $0 + $1.events } }
        public var isEmpty: Bool { logDirectories.isEmpty && events.isEmpty && problems.isEmpty && outboxEvents == 0 }
    }

    public func prune(dryRun: Bool) async throws -> Report {
        var report = Report()
        let now = now()
        let logsCutoff = now.addingTimeInterval(-config.logsDays * 86_400)
        let eventsCutoff = now.addingTimeInterval(-config.eventsDays * 86_400)
        let files = FileManager.default
        for caseId in try await store.casesFinished(before: logsCutoff) {
            let directory = (logsDir as NSString).appendingPathComponent(caseId)
            var isDirectory: ObjCBool = false
            guard files.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else { continue }
            var count = 0, bytes: Int64 = 0
            if let walker = files.enumerator(atPath: directory) {
                while let relative = walker.nextObject() as? String {
                    let attributes = try? files.attributesOfItem(atPath: (directory as NSString).appendingPathComponent(relative))
                    if attributes?[.type] as? FileAttributeType == .typeRegular {
                        count += 1
                        bytes += (attributes?[.size] as? NSNumber)?.int64Value ?? 0
                    }
                }
            }
            if !dryRun {
                do {
                    try files.removeItem(atPath: directory)
                } catch {
                    report.problems.append("cannot remove \(directory): \(error.localizedDescription)")
                    continue
                }
            }
            report.logDirectories.append(directory)
            report.logFiles += count
            report.logBytes += bytes
        }
        report.events = try await store.pruneEvents(ofCasesFinishedBefore: eventsCutoff, dryRun: dryRun)
        report.outboxEvents = try await store.pruneOutbox(before: eventsCutoff, dryRun: dryRun)
        return report
    }

    /// The report as lines a person reads: counts first, then each path and case.
    public static func describe(_ report: Report, dryRun: Bool, config: RetentionConfig) -> [String] {
        let verb = dryRun ? "would remove" : "removed"
        var lines = [
            "\(verb) \(report.logDirectories.count) step log director\(report.logDirectories.count == 1 ? "y" : "ies") (\(report.logFiles) files, \(report.logBytes) bytes) of cases finished more than \(format(config.logsDays)) days ago",
        ]
        lines += report.logDirectories.map { "  log \($0)" }
        lines.append("\(verb) \(report.eventCount) history event\(report.eventCount == 1 ? "" : "s") of \(report.events.count) case\(report.events.count == 1 ? "" : "s") finished more than \(format(config.eventsDays)) days ago")
        lines += report.events.map { "  events \($0.caseId): \($0.events)" }
        lines.append("\(verb) \(report.outboxEvents) delivered webhook event\(report.outboxEvents == 1 ? "" : "s") recorded more than \(format(config.eventsDays)) days ago")
        lines += report.problems.map { "  problem: \($0)" }
        return lines
    }

    static func format(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }
}
