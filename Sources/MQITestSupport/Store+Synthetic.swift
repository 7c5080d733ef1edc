import Foundation
import MQICore
import MQIStore

/// Synthetic history for benchmarks and tests; it writes through the store's database pool
/// (`package` access) and is not part of the store's API.
extension Store {
    /// Inserts `count` synthetic cases for benchmarks and tests, in one transaction: ids
    /// `prefix` + a zero-padded number, one a minute ending now, mostly COMPLETED with some FAILED,
    /// CANCELLED, PROCESSING and NEW, each with a short history. Not used by the daemon.
    public func insertSyntheticCases(count: Int, prefix: String = "SYN-", workflow: String, end: Date = Date()) async throws {
        try await pool.write { db in
            let insertCase = ("""
                INSERT INTO cases (case_id, status, workflow, workflow_step, step_index, attempt, progress, gpu_ids, error, failure_class,
                                   created_at, updated_at, started_at, finished_at, patient_id, beam_numbers)
                VALUES (?, ?, ?, ?, ?, 1, ?, '', ?, ?, ?, ?, ?, ?, ?, '1,2')
                """)
            let insertEvent = ("""
                INSERT INTO case_events (case_id, at, event, status, step, attempt, message) VALUES (?, ?, ?, ?, ?, ?, ?)
                """)
            for index in 0..<count {
                let caseId = prefix + String(format: "%06d", index)
                let created = end.addingTimeInterval(-Double(count - index) * 60)
                let status: CaseStatus = switch index % 50 {
                case 7: .failed
                case 13: .cancelled
                case 21: .processing
                case 33: .new
                default: .completed
                }
                let finished: Date? = status.isFinal ? created.addingTimeInterval(45) : nil
                try db.execute(sql: insertCase, arguments: [
                    caseId, status.rawValue, workflow, status == .new ? nil : "run_moqui_sim", status == .new ? nil : 2,
                    status == .completed ? 100 : 40, status == .failed ? "run_moqui_sim attempt 1 failed: FATAL ERROR (synthetic)" : nil,
                    status == .failed ? "permanent" : nil, created, finished ?? created.addingTimeInterval(5),
                    status == .new ? nil : created.addingTimeInterval(1), finished, "PAT\(index % 997)",
                ])
                try db.execute(sql: insertEvent, arguments: [caseId, created, "registered", CaseStatus.new.rawValue, nil, nil, "synthetic case"])
                if status != .new {
                    try db.execute(sql: insertEvent, arguments: [caseId, created.addingTimeInterval(1), "new_case_found", CaseStatus.processing.rawValue,
                                                        "run_moqui_sim", 1, "synthetic step"])
                }
                if let finished {
                    try db.execute(sql: insertEvent, arguments: [caseId, finished, status == .cancelled ? "cancel" : (status == .failed ? "step_failed" : "step_succeeded"),
                                                        status.rawValue, "run_moqui_sim", 1, "synthetic end"])
                }
            }
        }
    }
}
