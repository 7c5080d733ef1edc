import Foundation
import Logging
import ServiceLifecycle

/// Prunes old step logs and history (`Retention`) once at start and then every `intervalSec`
/// (about daily).
public struct RetentionService: Service {
    let retention: Retention
    let logger: Logger
    var intervalSec: Double

    public init(retention: Retention, logger: Logger, intervalSec: Double = 86_400) {
        self.retention = retention
        self.logger = logger
        self.intervalSec = intervalSec
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await pruneOnce()
                try? await Task.sleep(for: .seconds(intervalSec))
            }
        }
    }

    func pruneOnce() async {
        do {
            let report = try await retention.prune(dryRun: false)
            for problem in report.problems { logger.warning("retention: \(problem)") }
            guard !report.logDirectories.isEmpty || !report.events.isEmpty || report.outboxEvents > 0 else { return }
            logger.info("retention: removed \(report.logDirectories.count) case log directories (\(report.logFiles) files, \(report.logBytes) bytes), \(report.eventCount) history events of \(report.events.count) cases and \(report.outboxEvents) delivered webhook events",
                        metadata: ["retention.logs_days": "\(retention.config.logsDays)", "retention.events_days": "\(retention.config.eventsDays)"])
        } catch {
            logger.warning("retention: pruning failed (tried again in a day): \(error)")
        }
    }
}
