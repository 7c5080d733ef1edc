import Foundation
import Logging
import MQICore
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
///
/// It cleans a case as soon as it completes: the file-transfer worker notes each finished
/// download in `cue`, and each time the Conductor's queue drains (`conductorDrained`) the
/// service looks at those cases and sweeps when one is COMPLETED. The sweep every `intervalSec`
/// stays as the fallback (cases from before a restart, the host back after an outage, retries).
/// `settled` is rung after each look, so `--exit-when-idle` sees a case's cleanup finished at once.
public struct RemoteCleanupService: Service {
    let store: Store
    let cleaner: any CaseCleaner
    let logger: Logger
    let reachability: HostReachability?
    var intervalSec: Double
    /// Cases whose removal failed in this run, with when to try again.
    let failures = Failures()
    /// The downloads finished in this process (see `CleanupCue`).
    public var cue: CleanupCue?
    /// Rung when the Conductor has decided every queued event (a downloaded case may be COMPLETED).
    public var conductorDrained: Doorbell?
    /// Rung after each look: every case the Conductor has completed so far and this service
    /// knew of is cleaned or has failed (the idle check's cue).
    public var settled: Doorbell?

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
        let wake = conductorDrained ?? Doorbell()
        let clock = ContinuousClock()
        await cancelWhenGracefulShutdown {
            var nextSweep = clock.now
            while !Task.isCancelled {
                if clock.now >= nextSweep {
                    await sweep()
                    nextSweep = clock.now.advanced(by: .seconds(intervalSec))
                } else if await downloadedCaseCompleted() {
                    await sweep()
                }
                settled?.ring()
                let left = clock.now.duration(to: nextSweep).components
                await wake.wait(upTo: max(0, Double(left.seconds) + Double(left.attoseconds) / 1e18))
            }
        }
    }

    /// Whether a case noted in `cue` is COMPLETED now; forgets the noted cases that moved on
    /// (completed, failed, cancelled, or at another step or attempt).
    func downloadedCaseCompleted() async -> Bool {
        guard let cue else { return false }
        var completed = false
        for download in cue.pending {
            let state: CaseState?
            do {
                state = try await store.caseState(download.caseId)
            } catch {
                continue  // the periodic sweep is the fallback
            }
            guard let state else {
                cue.forget(download)
                continue
            }
            if state.status == .processing, state.stepIndex == download.stepIndex, state.attempt == download.attempt { continue }
            if state.status == .completed { completed = true }
            cue.forget(download)
        }
        return completed
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

/// The downloads the file-transfer worker finished in this process, each a case that completes
/// when the Conductor decides its `results_download_completed` (a last step) or moves on: the
/// HPC cleanup looks at these cases when the Conductor's queue drains instead of sweeping every
/// case.
public final class CleanupCue: Sendable {
    struct Download: Hashable, Sendable {
        var caseId: String
        var stepIndex: Int?
        var attempt: Int?
    }

    private let downloads = Mutex<Set<Download>>([])

    public init() {}

    /// Notes that the results of `caseId` at this step and attempt are downloaded.
    public func downloadFinished(caseId: String, stepIndex: Int?, attempt: Int?) {
        // Bounded: a cue nobody reads (no cleanup) or a burst beyond it costs nothing but the
        // periodic sweep's delay.
        downloads.withLock { if $0.count < 10_000 { $0.insert(Download(caseId: caseId, stepIndex: stepIndex, attempt: attempt)) } }
    }

    var pending: [Download] {
        downloads.withLock { Array($0) }
    }

    func forget(_ download: Download) {
        _ = downloads.withLock { $0.remove(download) }
    }
}
