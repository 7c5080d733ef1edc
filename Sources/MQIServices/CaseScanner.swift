import Foundation
import Logging
import MQICore
import MQIHTTP
import MQIStore
import ServiceLifecycle
import Synchronization

/// Finds new cases: each immediate subdirectory of `local_logdata` is one case, named by its
/// directory. A case is registered once it is ready — its ready marker exists, or (without a
/// marker) nothing in it changed for `quiet_period_sec` — and only if its id is not in the
/// database yet. inotify makes detection prompt; a periodic rescan catches anything missed.
public final class CaseScanner: Service, Sendable {
    let config: ScannerConfig
    let store: Store
    let logger: Logger
    let now: @Sendable () -> Date
    let metrics: MQIMetrics
    /// Whether a case's complete, verified results are already in `results_dir` (after the
    /// database was rebuilt): such a case is recorded COMPLETED, not run again.
    let hasVerifiedResults: @Sendable (String) -> Bool
    private let state = Mutex(ScanState())
    let wake = Doorbell()

    struct ScanState {
        var known: Set<String> = []
        var loaded = false
        var warned: Set<String> = []
        /// Cases seen but not ready yet (quiet period): their last signature and since when.
        var settling: [String: (signature: CaseSignature, since: Date)] = [:]
    }

    public init(config: ScannerConfig, store: Store, logger: Logger, metrics: MQIMetrics = MQIMetrics(),
                hasVerifiedResults: @escaping @Sendable (String) -> Bool = { _ in false }, now: @escaping @Sendable () -> Date = { Date() }) {
        self.hasVerifiedResults = hasVerifiedResults
        self.metrics = metrics
        self.config = config
        self.store = store
        self.logger = logger
        self.now = now
    }

    public func run() async throws {
        try FileManager.default.createDirectory(atPath: config.localLogdata, withIntermediateDirectories: true)
        let watcher = DirectoryWatcher(root: config.localLogdata, changed: wake)
        if watcher == nil {
            logger.warning("inotify is not available; detecting cases by rescanning every \(config.rescanIntervalSec) s")
        }
        defer { watcher?.stop() }
        if let watcher {
            for name in (try? FileManager.default.contentsOfDirectory(atPath: config.localLogdata)) ?? [] {
                watcher.add((config.localLogdata as NSString).appendingPathComponent(name))
            }
        }
        logger.info("scanning \(config.localLogdata) for cases")
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                let result = await self.scan()
                await self.wake.wait(upTo: min(self.config.rescanIntervalSec, result.nextCheck ?? .infinity))
            }
        }
    }

    /// What one pass over `local_logdata` found.
    public struct ScanResult: Sendable, Equatable {
        public var registered = 0
        /// Cases seen but not quiet long enough yet.
        public var settling = 0
        /// Seconds until a settling case should be looked at again.
        public var nextCheck: Double?
    }

    /// One pass over `local_logdata`.
    @discardableResult
    public func scan() async -> ScanResult {
        if !state.withLock({ $0.loaded }) {
            do {
                let ids = try await store.caseIds()
                state.withLock { $0.known = ids; $0.loaded = true }
            } catch {
                logger.error("cannot read known cases from the database: \(error)")
                return ScanResult(nextCheck: 1)
            }
        }
        let root = config.localLogdata
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: root).sorted()
        } catch {
            logger.error("cannot list \(root): \(error.localizedDescription)")
            return ScanResult()
        }
        var registered = 0
        var nextCheck: Double?
        let now = now()
        for name in names {
            if state.withLock({ $0.known.contains(name) }) { continue }
            if let problem = Self.invalidName(name) {
                warnOnce(name, "skipping \(Self.printable(name)) in \(root): \(problem)")
                continue
            }
            let path = (root as NSString).appendingPathComponent(name)
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
                warnOnce(name, "skipping \(Self.printable(name)) in \(root): not a directory (each case is a directory)")
                continue
            }
            switch readiness(name, path: path, now: now) {
            case .ready:
                let validated = validation(path)
                do {
                    if hasVerifiedResults(name) {
                        if try await store.registerCompletedCase(name, workflow: config.workflow,
                                                                 note: "complete, verified results already in the results directory; not run again") {
                            logger.info("case already has complete, verified results; recorded COMPLETED without running it", metadata: ["case_id": "\(name)"])
                        }
                    } else if case .failure(let invalid) = validated {
                        if try await store.registerRejectedCase(name, workflow: config.workflow, reason: "invalid case: \(invalid.description)") {
                            registered += 1
                            metrics.casesReceived.increment()
                            logger.warning("case refused before upload: \(invalid.description)", metadata: ["case_id": "\(name)"])
                        }
                    } else if case .success(let details) = validated,
                              try await store.registerCase(name, workflow: config.workflow, patientId: details?.patientId,
                                                           beamNumbers: details?.beamNumbers ?? [],
                                                           planBeams: details?.planBeams ?? []) {
                        registered += 1
                        metrics.casesReceived.increment()
                        logger.info("new case found", metadata: ["case_id": "\(name)"])
                    }
                    state.withLock { $0.known.insert(name); _ = $0.settling.removeValue(forKey: name) }
                } catch {
                    logger.error("cannot register case: \(error)", metadata: ["case_id": "\(name)"])
                    nextCheck = min(nextCheck ?? 1, 1)
                }
            case .waitingForMarker:
                break
            case .settling(let seconds):
                nextCheck = min(nextCheck ?? seconds, seconds)
            }
        }
        let settling = state.withLock { state in
            // Forget settling cases whose directory is gone.
            state.settling = state.settling.filter { names.contains($0.key) }
            return state.settling.count
        }
        return ScanResult(registered: registered, settling: settling, nextCheck: nextCheck)
    }

    /// The case checked against `scanner.case_layout`: its details, nil when not checked.
    func validation(_ path: String) -> Result<CaseDetails?, CaseValidator.Invalid> {
        guard config.caseLayout == .moqui else { return .success(nil) }
        do throws(CaseValidator.Invalid) {
            return .success(try CaseValidator.validate(path))
        } catch {
            return .failure(error)
        }
    }

    enum Readiness: Equatable {
        case ready
        case waitingForMarker
        /// Still changing or not quiet long enough: look again in this many seconds.
        case settling(Double)
    }

    func readiness(_ name: String, path: String, now: Date) -> Readiness {
        if let marker = config.readyMarker {
            return FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(marker)) ? .ready : .waitingForMarker
        }
        // Quiet period: the tree's signature (files, bytes, newest mtime) must stay the same for
        // the whole period, and the newest mtime must be that old. A copy that preserves old
        // timestamps is still caught by the unchanged-signature rule.
        let signature = CaseSignature(path)
        let quiet = config.quietPeriodSec
        return state.withLock { state -> Readiness in
            guard let seen = state.settling[name], seen.signature == signature else {
                state.settling[name] = (signature, now)
                return quiet <= 0 ? .ready : .settling(quiet)
            }
            let stableFor = now.timeIntervalSince(seen.since)
            let untouchedFor = now.timeIntervalSince(signature.newest)
            if stableFor >= quiet, untouchedFor >= quiet { return .ready }
            return .settling(max(0.05, quiet - min(stableFor, untouchedFor)))
        }
    }

    func warnOnce(_ name: String, _ message: String) {
        let first = state.withLock { $0.warned.insert(name).inserted }
        if first { logger.warning("\(message)") }
    }

    /// Why a directory name cannot be a case id, or nil if it can.
    static func invalidName(_ name: String) -> String? {
        if name.isEmpty { return "empty name" }
        if name.hasPrefix(".") { return "names starting with '.' are hidden or temporary" }
        if name.contains("/") || name.contains("\0") { return "the name contains '/' or NUL" }
        return nil
    }

    static func printable(_ name: String) -> String {
        "'" + name.unicodeScalars.map { $0.value < 0x20 ? "\\u{\(String($0.value, radix: 16))}" : String($0) }.joined() + "'"
    }
}

/// A summary of a directory tree that changes whenever a file is added, grows or is touched.
struct CaseSignature: Equatable {
    var files = 0
    var bytes: Int64 = 0
    var newest = Date.distantPast

    init(_ path: String) {
        let files = FileManager.default
        if let attributes = try? files.attributesOfItem(atPath: path), let modified = attributes[.modificationDate] as? Date {
            newest = modified
        }
        guard let walker = files.enumerator(atPath: path) else { return }
        while let relative = walker.nextObject() as? String {
            guard let attributes = try? files.attributesOfItem(atPath: (path as NSString).appendingPathComponent(relative)) else { continue }
            self.files += 1
            bytes += (attributes[.size] as? NSNumber)?.int64Value ?? 0
            if let modified = attributes[.modificationDate] as? Date, modified > newest { newest = modified }
        }
    }
}
