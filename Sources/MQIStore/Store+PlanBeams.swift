import Foundation
import MQICore

/// One treatment beam of a case's RT plan, as the CLI, API and dashboard show it.
public struct CasePlanBeam: Sendable, Equatable, Codable {
    /// BeamNumber in the plan.
    public var number: Int
    /// BeamName in the plan; empty when it has none.
    public var name: String
    /// A delivery folder (PlanInfo.txt with this DICOM_BEAM_NUMBER) exists for it.
    public var delivered: Bool

    public init(number: Int, name: String, delivered: Bool) {
        self.number = number
        self.name = name
        self.delivered = delivered
    }
}

extension Store {
    /// The treatment beams of the case's RT plan, by number, each with whether it was delivered;
    /// empty for cases registered without reading a plan.
    public func planBeams(_ caseId: String) async throws -> [CasePlanBeam] {
        try await pool.read { db in
            let delivered = Set(Store.decodeGPUs(try String.fetchOne(db, sql: "SELECT beam_numbers FROM cases WHERE case_id = ?",
                                                              arguments: [caseId]) ?? ""))
            return try SQLRow.fetchAll(db, sql: """
                SELECT beam_number, beam_name FROM case_plan_beams WHERE case_id = ? ORDER BY beam_number
                """, arguments: [caseId]).map { row in
                CasePlanBeam(number: row["beam_number"], name: row["beam_name"], delivered: delivered.contains(row["beam_number"]))
            }
        }
    }

    static func insertPlanBeams(_ beams: [RTPlan.Beam], caseId: String, db: any SQLConnection) throws {
        // A case id registered again (after its row was removed) starts from its new plan.
        try db.execute(sql: "DELETE FROM case_plan_beams WHERE case_id = ?", arguments: [caseId])
        for beam in beams {
            try db.execute(sql: "INSERT INTO case_plan_beams (case_id, beam_number, beam_name) VALUES (?, ?, ?) ON CONFLICT (case_id, beam_number) DO UPDATE SET beam_name = excluded.beam_name",
                           arguments: [caseId, beam.number, beam.name])
        }
    }
}
