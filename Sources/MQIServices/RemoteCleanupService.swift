import Foundation
import Logging
import MQIStore
import MQITransport
import ServiceLifecycle
import Synchronization

/// `hpc.cleanup: after_download`: removes the directories of COMPLETED cases on the HPC
/// (`CaseCleaner`) and records it on the case (`remote_cleaned_at`, a `remote_cleanup` history
/// entry).
///
/// A service of its own rather than part of the download: the case is COMPLETED (its
/// `results_download_completed` committed) before anything is removed, so a crash between a
/// removal and that commit cannot leave a redelivered download with nothing to fetch, and a
/// slow or failing removal never delays or fails a case. It is durable: a case not yet marked
/// is found again after a restart. A case with an attempt that may still run (a GPU draining
/// for it, a `stop_attempt` not yet confirmed) waits until the stop is confirmed, so a run
/// directory the stop protocol needs is never removed. A failure is a WARNING and is tried
/// again later (backoff up to an hour).
public struct RemoteCleanupService: Service {
    let store: Store
    let cleaner: any CaseCleaner
    let logger: Logger
    let reachability: HostReachability?
    var intervalSec: Double
    /// Cases whose removal failed in this run, with when to try again.
    let failures = Failures()

    final class Failures: Sendable {
        let state = Mutex<[String: (retryAt: Date, delay: Double)]>([:])
    }

    public init(store: Store, cleaner: any CaseCleaner, logger: Logger, reachability: HostReachability? = nil, intervalSec: Double = 1) {
        self.store = store
        self.cleaner = cleaner
        self.logger = logger
        self.reachability = reachability
        self.intervalSec = intervalSec
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await sweep()
                try? await Task.sleep(for: .seconds(intervalSec))
            }
        }
    }

    /// Whether a case waits for its cleanup that has not failed in this run (`--exit-when-idle`).
    public func hasPendingWork() async -> Bool {
        guard let waiting = try? await store.casesAwaitingRemoteCleanup(limit: 1000) else { return false }
        let failed = failures.state.withLock { Set($0.keys) }
        return waiting.contains { !failed.contains($0) }
    }

    func sweep() async {
        if let reachability, !reachability.current.reachable { return }
        let waiting: [String]
        do {
            waiting = try await store.casesAwaitingRemoteCleanup()
        } catch {
            logger.debug("cannot list cases to clean up on the HPC: \(error)")
            return
        }
        let now = Date()
        for caseId in waiting where !Task.isCancelled {
            if let retryAt = failures.state.withLock({ $0[caseId]?.retryAt }), retryAt > now { continue }
            do {
                let removed = try await cleaner.removeCase(caseId)
                try await store.markRemoteCleaned(caseId, removed: removed)
                _ = failures.state.withLock { $0.removeValue(forKey: caseId) }
                logger.info("removed the case's directories on the HPC (hpc.cleanup: after_download)",
                            metadata: ["case_id": "\(caseId)", "removed": "\(removed.joined(separator: ", "))"])
            } catch {
                let delay = failures.state.withLock { state -> Double in
                    let delay = min(3600, (state[caseId]?.delay ?? 30) * 2)
                    state[caseId] = (Date().addingTimeInterval(delay), delay)
                    return delay
                }
                logger.warning("cannot remove the case's directories on the HPC (hpc.cleanup: after_download); the case stays COMPLETED, tried again in \(Int(delay)) s: \(error)",
                               metadata: ["case_id": "\(caseId)"])
            }
        }
    }
}
