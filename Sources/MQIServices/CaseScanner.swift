import Foundation
import Logging
import MQICore
import MQIMetrics
import MQIStore
import ServiceLifecycle
import Synchronization

/// Finds new cases: each directory exactly `case_depth` levels below `local_logdata` is one
/// case (depth 1: each immediate subdirectory; depth 3: `<room>/<patient_id>/<study_uid>`), its
/// id the relative path with `/` between levels. Directories at shallower levels are never
/// cases, and every level's name is checked like a case name. A case is registered once it is
/// ready — its ready marker exists in it, or (without a marker) nothing in it changed for
/// `quiet_period_sec` — and only if its id is not in the database yet. A case that waits for its
/// marker longer than `marker_timeout_min` gets one WARNING; the cases waiting for their marker
/// are kept in a `MarkerWaitList` file for `mqi status`. inotify (every level down to the cases)
/// makes detection prompt; a periodic rescan catches anything missed.
public final class CaseScanner: Service, Sendable {
    let config: ScannerConfig
    let store: Store
    let logger: Logger
    let now: @Sendable () -> Date
    let metrics: MQIMetrics
    /// Whether a case's complete, verified results are already in `results_dir` (after the
    /// database was rebuilt): such a case is recorded COMPLETED, not run again.
    let hasVerifiedResults: @Sendable (String) async -> Bool
    /// Where the cases waiting for their ready marker are written (`MarkerWaitList`); nil: nowhere.
    let waitListPath: String?
    /// Where a follow-up job's upload is put together (the plan and its delivery folder).
    let followupsDir: String?
    let state = Mutex(ScanState())
    private let watcher = Mutex<DirectoryWatcher?>(nil)
    let wake = Doorbell()

    struct ScanState {
        var known: Set<String> = []
        var loaded = false
        var warned: Set<String> = []
        /// Cases seen but not ready yet (quiet period): their last signature and since when.
        var settling: [String: (signature: CaseSignature, since: Date)] = [:]
        /// Cases seen without their ready marker: since when, and whether the timeout WARNING was written.
        var waiting: [String: MarkerWaitList.Entry] = [:]
        var waitListLoaded = false
        var waitListWritten: [MarkerWaitList.Entry]?
        /// Registered cases (case_layout: moqui): the modification time their directory had when
        /// its delivery folders were last looked at, and the folders recorded for each.
        var caseTimes: [String: Date] = [:]
        var recordedDeliveries: [String: Set<String>] = [:]
        /// Registered cases with a new delivery folder not quiet long enough yet.
        var settlingDeliveries: Set<String> = []
        var knownPaths: [Candidate] = []
        var deliveriesLookedAt = Date.distantPast
    }

    public init(config: ScannerConfig, store: Store, logger: Logger, metrics: MQIMetrics = MQIMetrics(),
                hasVerifiedResults: @escaping @Sendable (String) async -> Bool = { _ in false }, waitListPath: String? = nil,
                followupsDir: String? = nil, now: @escaping @Sendable () -> Date = { Date() }) {
        self.followupsDir = followupsDir
        self.hasVerifiedResults = hasVerifiedResults
        self.waitListPath = waitListPath
        self.metrics = metrics
        self.config = config
        self.store = store
        self.logger = logger
        self.now = now
    }

    public func run() async throws {
        try FileManager.default.createDirectory(atPath: config.localLogdata, withIntermediateDirectories: true)
        let watcher = DirectoryWatcher(root: config.localLogdata, depth: config.caseDepth, changed: wake)
        if watcher == nil {
            logger.warning("inotify is not available; detecting cases by rescanning every \(config.rescanIntervalSec) s")
        }
        // Each scan watches the directories it walks (every level down to the cases).
        self.watcher.withLock { $0 = watcher }
        defer {
            watcher?.stop()
            self.watcher.withLock { $0 = nil }
        }
        logger.info("scanning \(config.localLogdata) for cases\(config.caseDepth > 1 ? " \(config.caseDepth) levels deep" : "")")
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
        /// Cases seen without their ready marker.
        public var waitingForMarker = 0
    }

    /// A directory exactly `case_depth` levels below `local_logdata`, not registered yet.
    struct Candidate {
        var id: String
        var path: String
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
        loadWaitList()
        let root = config.localLogdata
        let candidates: [Candidate]
        do {
            candidates = try self.candidates()
        } catch {
            logger.error("cannot list \(root): \(error.localizedDescription)")
            return ScanResult()
        }
        var registered = 0
        var nextCheck: Double?
        let now = now()
        for candidate in candidates {
            let name = candidate.id, path = candidate.path
            switch readiness(name, path: path, now: now) {
            case .ready:
                let validated = validation(path)
                do {
                    if await hasVerifiedResults(name) {
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
                        await recordInitialDeliveries(name, path: path)
                    }
                    state.withLock {
                        $0.known.insert(name)
                        _ = $0.settling.removeValue(forKey: name)
                        _ = $0.waiting.removeValue(forKey: name)
                    }
                } catch {
                    logger.error("cannot register case: \(error)", metadata: ["case_id": "\(name)"])
                    nextCheck = min(nextCheck ?? 1, 1)
                }
            case .waitingForMarker:
                if let seconds = noteWaitingForMarker(candidate, now: now) {
                    nextCheck = min(nextCheck ?? seconds, seconds)
                }
            case .settling(let seconds):
                nextCheck = min(nextCheck ?? seconds, seconds)
            }
        }
        let present = Set(candidates.map(\.id))
        let (settling, waiting) = state.withLock { state in
            // Forget cases whose directory is gone (or that were registered).
            state.settling = state.settling.filter { present.contains($0.key) || $0.key.contains("\u{0}") }
            state.waiting = state.waiting.filter { present.contains($0.key) }
            return (state.settling.count, state.waiting.count)
        }
        if let soon = await scanDeliveries(now: now) { nextCheck = min(nextCheck ?? soon, soon) }
        saveWaitList(now: now)
        metrics.recordMarkerWaits(since: state.withLock { $0.waiting.values.map(\.since) })
        return ScanResult(registered: registered, settling: settling, nextCheck: nextCheck, waitingForMarker: waiting)
    }

    /// The unregistered directories exactly `case_depth` levels below `local_logdata`, sorted by
    /// id. Every level's name is checked like a case name; files and refused names are skipped
    /// with one WARNING each. Every directory walked is watched (inotify) before it is looked into,
    /// so a change right after the look still rings. Throws only when the root cannot be listed.
    func candidates() throws -> [Candidate] {
        let root = config.localLogdata
        let depth = config.caseDepth
        let watcher = self.watcher.withLock { $0 }
        let files = FileManager.default
        var found: [Candidate] = []
        var known: [Candidate] = []
        defer { state.withLock { $0.knownPaths = known } }
        func walk(_ directory: String, prefix: String, level: Int) throws {
            let names: [String]
            do {
                names = try files.contentsOfDirectory(atPath: directory).sorted()
            } catch {
                if level == 1 { throw error }
                warnOnce(prefix, "skipping \(Self.printable(prefix)) in \(root): cannot list it: \(error.localizedDescription)")
                return
            }
            for name in names {
                let id = prefix.isEmpty ? name : prefix + "/" + name
                if level == depth, state.withLock({ $0.known.contains(id) }) {
                    known.append(Candidate(id: id, path: (directory as NSString).appendingPathComponent(name)))
                    continue
                }
                if let problem = Self.invalidName(name) {
                    warnOnce(id, "skipping \(Self.printable(id)) in \(root): \(problem)")
                    continue
                }
                let path = (directory as NSString).appendingPathComponent(name)
                var isDirectory: ObjCBool = false
                guard files.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
                    if name == config.readyMarker {
                        // In a room or patient folder: a marker at the wrong level makes no case.
                        warnOnce(id, "ignoring the ready marker \(Self.printable(id)) in \(root): cases are the directories \(depth) level\(depth == 1 ? "" : "s") below it (scanner.case_depth: \(depth)), and the marker belongs in one of them")
                    } else {
                        warnOnce(id, "skipping \(Self.printable(id)) in \(root): not a directory (each case is a directory\(depth > 1 ? " \(depth) levels below local_logdata" : ""))")
                    }
                    continue
                }
                watcher?.add(path, level: level)
                if level < depth {
                    try? walk(path, prefix: id, level: level + 1)
                } else {
                    found.append(Candidate(id: id, path: path))
                }
            }
        }
        try walk(root, prefix: "", level: 1)
        return found
    }

    /// Records that `candidate` waits for its ready marker; writes the WARNING once it has waited
    /// `marker_timeout_min`. Returns the seconds until that WARNING is due, nil once written.
    func noteWaitingForMarker(_ candidate: Candidate, now: Date) -> Double? {
        let timeout = config.markerTimeoutMin * 60
        let (entry, warnNow) = state.withLock { state -> (MarkerWaitList.Entry, Bool) in
            var entry = state.waiting[candidate.id] ?? MarkerWaitList.Entry(caseId: candidate.id, since: now)
            let warnNow = !entry.warned && now.timeIntervalSince(entry.since) >= timeout
            if warnNow { entry.warned = true }
            state.waiting[candidate.id] = entry
            return (entry, warnNow)
        }
        if warnNow {
            let minutes = Int((now.timeIntervalSince(entry.since) / 60).rounded(.down))
            logger.warning("case \(candidate.id) has waited \(minutes) min for its ready marker \(config.readyMarker ?? "") (scanner.marker_timeout_min: \(MarkerWaitList.formatMinutes(config.markerTimeoutMin))); it is not taken until the sender writes \(config.readyMarker ?? "the marker") into \(candidate.path)",
                           metadata: ["case_id": "\(candidate.id)", "waiting_since": "\(entry.since)"])
        }
        if entry.warned { return nil }
        return max(0.05, timeout - now.timeIntervalSince(entry.since))
    }

    /// Restores the waiting cases the previous run wrote (their since and whether warned), once.
    func loadWaitList() {
        guard let path = waitListPath, let marker = config.readyMarker else { return }
        guard state.withLock({ !$0.waitListLoaded }) else { return }
        let previous = MarkerWaitList.read(from: path)
        state.withLock { state in
            state.waitListLoaded = true
            guard let previous, previous.marker == marker else { return }
            for entry in previous.cases { state.waiting[entry.caseId] = entry }
            state.waitListWritten = previous.cases
        }
    }

    /// Writes the waiting cases when they changed (without a ready marker: removes the file).
    func saveWaitList(now: Date) {
        guard let path = waitListPath else { return }
        guard let marker = config.readyMarker else {
            if FileManager.default.fileExists(atPath: path) { try? FileManager.default.removeItem(atPath: path) }
            return
        }
        let entries = state.withLock { state -> [MarkerWaitList.Entry]? in
            let entries = state.waiting.values.sorted { $0.caseId < $1.caseId }
            return entries == state.waitListWritten ? nil : entries
        }
        guard let entries else { return }
        do {
            try MarkerWaitList(updatedAt: now, marker: marker, timeoutMin: config.markerTimeoutMin, cases: entries).write(to: path)
            state.withLock { $0.waitListWritten = entries }
        } catch {
            logger.error("cannot write the list of cases waiting for their ready marker to \(path): \(error.localizedDescription)")
        }
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
        return quietReadiness(name, path: path, now: now)
    }

    /// Quiet period: the tree's signature (files, bytes, newest mtime) must stay the same for
    /// the whole period, and the newest mtime must be that old. A copy that preserves old
    /// timestamps is still caught by the unchanged-signature rule.
    func quietReadiness(_ name: String, path: String, now: Date) -> Readiness {
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
