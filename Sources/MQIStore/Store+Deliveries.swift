import Foundation
import MQICore

/// A delivery folder of a case as recorded, with its follow-up job's status.
public struct DeliveryRecord: Sendable, Equatable, Codable {
    public var caseId: String
    public var folder: String
    public var start: Date
    public var beam: Int?
    /// Found after the case was registered: a follow-up.
    public var followup: Bool
    /// The follow-up job (`<case_id>#<folder>`), once registered.
    public var jobId: String?
    public var jobStatus: CaseStatus?
    public var recordedAt: Date

    enum CodingKeys: String, CodingKey {
        case caseId = "case_id", folder, start, beam, followup, jobId = "job_id", jobStatus = "job_status", recordedAt = "recorded_at"
    }

    public var delivery: Delivery { Delivery(folder: folder, start: start, beam: beam) }
}

extension Store {
    /// The id of the follow-up job of delivery `folder` of case `caseId`.
    public static func followupJobId(caseId: String, folder: String) -> String { caseId + "#" + folder }

    /// Records delivery folders of a case; one already recorded is left as it was (a repeated
    /// scan or event records nothing twice). Returns the ones recorded now.
    @discardableResult
    public func recordDeliveries(caseId: String, _ deliveries: [Delivery], followup: Bool) async throws -> [Delivery] {
        let now = now()
        return try await pool.write { db -> [Delivery] in
            var recorded: [Delivery] = []
            for delivery in deliveries {
                try db.execute(sql: """
                    INSERT INTO deliveries (case_id, folder, started_at, beam, followup, recorded_at) VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT(case_id, folder) DO NOTHING
                    """, arguments: [caseId, delivery.folder, delivery.start, delivery.beam, followup, now])
                guard db.changesCount == 1 else { continue }
                recorded.append(delivery)
                if followup {
                    let status = try String.fetchOne(db, sql: "SELECT status FROM cases WHERE case_id = ?", arguments: [caseId])
                        .flatMap(CaseStatus.init(rawValue:)) ?? .new
                    try Self.history(db, caseId: caseId, at: now, event: "delivery", status: status, step: nil, attempt: nil,
                                     message: "follow-up delivery \(delivery.folder)\(delivery.beam.map { " (beam \($0))" } ?? "") found")
                }
            }
            return recorded
        }
    }

    /// The case's recorded deliveries in time order, with their follow-up jobs' status.
    public func deliveries(caseId: String) async throws -> [DeliveryRecord] {
        try await pool.read { db in
            try SQLRow.fetchAll(db, sql: """
                SELECT d.*, c.status AS job_status FROM deliveries d LEFT JOIN cases c ON c.case_id = d.job_id
                WHERE d.case_id = ? ORDER BY d.started_at, d.folder
                """, arguments: [caseId]).map { row in
                DeliveryRecord(caseId: row["case_id"], folder: row["folder"], start: row["started_at"], beam: row["beam"], followup: row["followup"],
                               jobId: row["job_id"], jobStatus: (row["job_status"] as String?).flatMap(CaseStatus.init(rawValue:)),
                               recordedAt: row["recorded_at"])
            }
        }
    }

    /// The folders recorded for a case.
    public func deliveryFolders(caseId: String) async throws -> Set<String> {
        try await pool.read { db in
            Set(try String.fetchAll(db, sql: "SELECT folder FROM deliveries WHERE case_id = ?", arguments: [caseId]))
        }
    }

    /// Follow-up deliveries without a job whose case is COMPLETED (its reference results are
    /// there): the follow-ups to start now.
    public func followupsDue() async throws -> [(caseId: String, folder: String)] {
        try await pool.read { db in
            try SQLRow.fetchAll(db, sql: """
                SELECT d.case_id, d.folder FROM deliveries d JOIN cases c ON c.case_id = d.case_id
                WHERE d.followup = 1 AND d.job_id IS NULL AND c.status = 'COMPLETED' ORDER BY d.started_at, d.folder
                """).map { ($0["case_id"], $0["folder"]) }
        }
    }

    /// Registers the follow-up job of a delivery (a case `<case_id>#<folder>` running
    /// `workflow`) and links it to the delivery, in one transaction, once: returns its id, or
    /// nil when the delivery already has one.
    public func registerFollowup(caseId: String, folder: String, workflow: String) async throws -> String? {
        let now = now()
        let jobId = Self.followupJobId(caseId: caseId, folder: folder)
        let registered = try await pool.write { db -> Bool in
            try db.execute(sql: "UPDATE deliveries SET job_id = ? WHERE case_id = ? AND folder = ? AND job_id IS NULL",
                           arguments: [jobId, caseId, folder])
            guard db.changesCount == 1 else { return false }
            let parent = try SQLRow.fetchOne(db, sql: "SELECT patient_id, beam_numbers FROM cases WHERE case_id = ?", arguments: [caseId])
            let beam = try Int.fetchOne(db, sql: "SELECT beam FROM deliveries WHERE case_id = ? AND folder = ?", arguments: [caseId, folder])
            try db.execute(sql: """
                INSERT INTO cases (case_id, status, workflow, created_at, updated_at, patient_id, beam_numbers) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(case_id) DO NOTHING
                """, arguments: [jobId, CaseStatus.new.rawValue, workflow, now, now, parent?["patient_id"] as String?,
                                 Self.encodeGPUs(beam.map { [$0] } ?? [])])
            guard db.changesCount == 1 else { return true }
            try Self.insert(OutgoingMessage(kind: .newCaseFound, body: MessageBody(caseId: jobId)), db: db, now: now)
            try Self.history(db, caseId: jobId, at: now, event: "registered", status: .new, step: nil, attempt: nil,
                             message: "follow-up of case \(caseId) for delivery \(folder); workflow \(workflow)")
            try Self.recordEvent(db, .caseReceived, caseId: jobId, status: CaseStatus.new.rawValue, error: nil,
                                 detail: ["workflow": workflow, "followup_of": caseId], at: now)
            try Self.history(db, caseId: caseId, at: now, event: "followup", status: .completed, step: nil, attempt: nil,
                             message: "follow-up job \(jobId) started for delivery \(folder) (workflow \(workflow))")
            return true
        }
        if registered { bell.ring(.conductor) }
        return registered ? jobId : nil
    }
}

/// A fraction of a case as shown: its deliveries (with their follow-up jobs), whether it covers
/// every treatment beam of the plan, and what is wrong with it.
public struct FractionRecord: Sendable, Equatable, Codable {
    public var number: Int
    public var complete: Bool
    public var anomaly: String?
    public var deliveries: [DeliveryRecord]
}

extension Store {
    /// The case's recorded deliveries grouped into fractions (`scanner.fraction_window_min`).
    public func fractions(caseId: String, windowMin: Double) async throws -> [FractionRecord] {
        let records = try await deliveries(caseId: caseId)
        let plan = try await planBeams(caseId).map(\.number)
        let byFolder = Dictionary(records.map { ($0.folder, $0) }, uniquingKeysWith: { first, _ in first })
        return Fraction.group(records.map(\.delivery), planBeams: plan, windowMin: windowMin).map { fraction in
            FractionRecord(number: fraction.number, complete: fraction.complete, anomaly: fraction.anomaly,
                           deliveries: fraction.deliveries.compactMap { byFolder[$0.folder] })
        }
    }
}
