import Foundation
import MQICore
import MQIStore

/// Deliveries of registered cases (`case_layout: moqui`): a delivery folder (one with a
/// `PlanInfo.txt`) that appears in a case after it was registered is a follow-up. Once nothing in
/// it changed for `quiet_period_sec` (no marker needed) it is recorded; with
/// `scanner.followup_workflow` it gets a job of its own (`<case_id>#<folder>`) once the case is
/// COMPLETED. A case's directory is looked into again only when its modification time changed
/// (a folder was added, removed or renamed in it), so a touched file starts nothing, and a
/// renamed file that is not a delivery folder records nothing.
extension CaseScanner {
    var tracksDeliveries: Bool { config.caseLayout == .moqui }

    /// How often every registered case's folders are looked at again.
    static let fullDeliveryLookSec: Double = 300

    /// The delivery folders of a case directory now, sorted.
    static func deliveryFolders(_ path: String) -> [String] {
        let files = FileManager.default
        return ((try? files.contentsOfDirectory(atPath: path)) ?? []).filter { name in
            !name.hasPrefix(".") && files.fileExists(atPath: ((path as NSString).appendingPathComponent(name) as NSString).appendingPathComponent("PlanInfo.txt"))
        }.sorted()
    }

    /// The other (non-hidden) folders of a case directory.
    static func otherFolders(_ path: String, besides deliveries: [String]) -> [String] {
        let files = FileManager.default
        let skip = Set(deliveries)
        return ((try? files.contentsOfDirectory(atPath: path)) ?? []).filter { name in
            var isDirectory: ObjCBool = false
            return !name.hasPrefix(".") && !skip.contains(name)
                && files.fileExists(atPath: (path as NSString).appendingPathComponent(name), isDirectory: &isDirectory) && isDirectory.boolValue
        }
    }

    /// Records the deliveries a case was registered with: its own, not follow-ups.
    func recordInitialDeliveries(_ caseId: String, path: String) async {
        guard tracksDeliveries else { return }
        let modified = Self.modificationTime(path)
        let deliveries = Self.deliveryFolders(path).compactMap { Delivery.read(folder: $0, in: path) }
        do {
            try await store.recordDeliveries(caseId: caseId, deliveries, followup: false)
            state.withLock { state in
                state.recordedDeliveries[caseId] = Set(deliveries.map(\.folder))
                if let modified { state.caseTimes[caseId] = modified }
            }
        } catch {
            logger.error("cannot record the deliveries of the case: \(error)", metadata: ["case_id": "\(caseId)"])
        }
    }

    static func modificationTime(_ path: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }

    /// Looks for new delivery folders in registered cases and starts the follow-ups that are due.
    /// Returns the seconds until a settling delivery should be looked at again.
    func scanDeliveries(now: Date) async -> Double? {
        guard tracksDeliveries else { return nil }
        var nextCheck: Double?
        let known = state.withLock { state -> [Candidate] in
            // Every few minutes each registered case is looked into again, whatever its
            // directory's time says (a folder that became a delivery long after it was made).
            if now.timeIntervalSince(state.deliveriesLookedAt) >= Self.fullDeliveryLookSec {
                state.caseTimes = [:]
                state.deliveriesLookedAt = now
            }
            return state.knownPaths
        }
        for candidate in known {
            let (id, path) = (candidate.id, candidate.path)
            guard let modified = Self.modificationTime(path) else { continue }
            let (unchanged, settling) = state.withLock { ($0.caseTimes[id] == modified, $0.settlingDeliveries.contains(id)) }
            if unchanged && !settling { continue }
            var recorded = state.withLock { $0.recordedDeliveries[id] }
            if recorded == nil {
                do {
                    recorded = try await store.deliveryFolders(caseId: id)
                } catch {
                    logger.error("cannot read the recorded deliveries: \(error)", metadata: ["case_id": "\(id)"])
                    continue
                }
            }
            let folders = Self.deliveryFolders(path)
            if recorded!.isEmpty {
                // Registered before deliveries were recorded (an upgrade): what is there is the case's own.
                await recordInitialDeliveries(id, path: path)
                continue
            }
            var waiting = false
            // A folder that is not a delivery (yet) but changed lately may be one being written
            // (its PlanInfo.txt comes after the folder): look again until it is quiet.
            for folder in Self.otherFolders(path, besides: folders) {
                let newest = CaseSignature((path as NSString).appendingPathComponent(folder)).newest
                if now.timeIntervalSince(newest) < max(config.quietPeriodSec * 2, 10) {
                    waiting = true
                    nextCheck = min(nextCheck ?? 1, 1)
                }
            }
            for folder in folders where !recorded!.contains(folder) {
                let key = id + "\u{0}" + folder
                switch quietReadiness(key, path: (path as NSString).appendingPathComponent(folder), now: now) {
                case .ready:
                    _ = state.withLock { $0.settling.removeValue(forKey: key) }
                    guard let delivery = Delivery.read(folder: folder, in: path) else {
                        warnOnce(key, "delivery folder \(folder) of case \(id) has no start time (PlanInfo.txt TCSC_IRRAD_DATETIME, or a folder name like 2025042401501400): not recorded")
                        continue
                    }
                    do {
                        if !(try await store.recordDeliveries(caseId: id, [delivery], followup: true)).isEmpty {
                            logger.info("follow-up delivery \(folder)\(delivery.beam.map { " (beam \($0))" } ?? "") found\(config.followupWorkflow.map { "; workflow \($0) runs for it once the case is COMPLETED" } ?? "; recorded (no scanner.followup_workflow)")",
                                        metadata: ["case_id": "\(id)", "delivery": "\(folder)"])
                            await warnAboutAnomalies(id)
                        }
                        recorded!.insert(folder)
                    } catch {
                        logger.error("cannot record delivery \(folder): \(error)", metadata: ["case_id": "\(id)"])
                        waiting = true
                    }
                case .settling(let seconds):
                    waiting = true
                    nextCheck = min(nextCheck ?? seconds, seconds)
                case .waitingForMarker:
                    waiting = true
                }
            }
            let stillRecorded = recorded!
            state.withLock { state in
                state.recordedDeliveries[id] = stillRecorded
                if waiting {
                    state.settlingDeliveries.insert(id)
                } else {
                    state.settlingDeliveries.remove(id)
                    state.caseTimes[id] = modified
                }
            }
        }
        await startDueFollowups()
        return nextCheck
    }

    /// One WARNING per fraction with more deliveries of a beam than the plan has.
    func warnAboutAnomalies(_ caseId: String) async {
        guard let deliveries = try? await store.deliveries(caseId: caseId),
              let plan = try? await store.planBeams(caseId) else { return }
        for fraction in Fraction.group(deliveries.map(\.delivery), planBeams: plan.map(\.number), windowMin: config.fractionWindowMin) {
            guard let anomaly = fraction.anomaly else { continue }
            warnOnce(caseId + "\u{0}fraction\(fraction.number)\u{0}\(fraction.deliveries.count)",
                     "case \(caseId): fraction \(fraction.number) is an anomaly: \(anomaly)")
        }
    }

    /// Starts the follow-up job of every recorded follow-up delivery whose case is COMPLETED:
    /// its upload (the case's RT plan and the delivery folder) is put together under
    /// `followupsDir/<job id>`, then the job is registered, once.
    func startDueFollowups() async {
        guard let workflow = config.followupWorkflow, let followupsDir else { return }
        let due: [(caseId: String, folder: String)]
        do {
            due = try await store.followupsDue()
        } catch is CancellationError {
            return  // shutting down
        } catch {
            logger.error("cannot read the follow-ups due: \(error)")
            return
        }
        for (caseId, folder) in due {
            let jobId = Store.followupJobId(caseId: caseId, folder: folder)
            let source = (config.localLogdata as NSString).appendingPathComponent(caseId)
            do {
                try Self.stageFollowup(from: source, folder: folder, into: (followupsDir as NSString).appendingPathComponent(jobId))
                if try await store.registerFollowup(caseId: caseId, folder: folder, workflow: workflow) != nil {
                    metrics.casesReceived.increment()
                    logger.info("follow-up job \(jobId) registered (workflow \(workflow))", metadata: ["case_id": "\(jobId)", "delivery": "\(folder)"])
                }
            } catch {
                warnOnce("followup\u{0}" + jobId, "cannot start the follow-up of delivery \(folder) of case \(caseId): \(error)")
            }
        }
    }

    /// Copies the case's RT plan (`RP*.dcm`) and the delivery folder into `target` (replacing a
    /// partial one a crash left).
    static func stageFollowup(from caseDir: String, folder: String, into target: String) throws {
        let files = FileManager.default
        if files.fileExists(atPath: target) { try files.removeItem(atPath: target) }
        try files.createDirectory(atPath: target, withIntermediateDirectories: true)
        for name in try files.contentsOfDirectory(atPath: caseDir) where name.hasPrefix("RP") && name.lowercased().hasSuffix(".dcm") {
            try files.copyItem(atPath: (caseDir as NSString).appendingPathComponent(name), toPath: (target as NSString).appendingPathComponent(name))
        }
        try files.copyItem(atPath: (caseDir as NSString).appendingPathComponent(folder), toPath: (target as NSString).appendingPathComponent(folder))
    }
}
