import Foundation
import MQICore
import MQIStore

/// Bulk operations for `mqi-bench` only: filling a database with a clinic's years of history and
/// reading back what the daemon recorded. They reach the store's database pool (`package` access).
extension Store {
    /// One row of `case_events`, as the benchmark analyses it.
    struct BenchEvent: Sendable {
        var caseId: String
        var at: Date
        var event: String
        var status: String
        var step: String?
    }

    /// Inserts `count` finished cases (every `failedEvery`-th FAILED, the rest COMPLETED) with
    /// `eventsPerCase` history lines each, in ONE transaction. Case ids are `prefix` + a number.
    func benchInsertFinishedCases(count: Int, prefix: String = "HIST-", workflow: String, failedEvery: Int = 50,
                                         eventsPerCase: Int = 6, start: Date = Date(timeIntervalSinceNow: -365 * 86_400)) async throws {
        try await pool.write { db in
            let insertCase = ("""
                INSERT INTO cases (case_id, status, workflow, workflow_step, step_index, attempt, progress, gpu_ids, error, failure_class,
                                   created_at, updated_at, started_at, finished_at, patient_id, beam_numbers)
                VALUES (?, ?, ?, ?, ?, 1, ?, '', ?, ?, ?, ?, ?, ?, ?, '1,2,3')
                """)
            let insertEvent = ("""
                INSERT INTO case_events (case_id, at, event, status, step, attempt, message) VALUES (?, ?, ?, ?, ?, ?, ?)
                """)
            let span = 365.0 * 86_400 / Double(max(1, count))
            for index in 0..<count {
                let caseId = prefix + String(format: "%06d", index)
                let created = start.addingTimeInterval(Double(index) * span)
                let finished = created.addingTimeInterval(600)
                let failed = failedEvery > 0 && index % failedEvery == failedEvery - 1
                let status = failed ? CaseStatus.failed.rawValue : CaseStatus.completed.rawValue
                try db.execute(sql: insertCase, arguments: [
                    caseId, status, workflow, failed ? "run_moqui_sim" : "download_results", failed ? 2 : 3, failed ? 70 : 100,
                    failed ? "run_moqui_sim attempt 1 failed: exit status 1; last output:\nFATAL ERROR: beam 2" : nil,
                    failed ? "permanent" : nil, created, finished, created.addingTimeInterval(1), finished,
                    "PAT\(index % 5000)",
                ])
                for event in 0..<eventsPerCase {
                    let last = event == eventsPerCase - 1
                    try db.execute(sql: insertEvent, arguments: [
                        caseId, created.addingTimeInterval(Double(event) * 100), last ? (failed ? "failed" : "completed") : "transition",
                        last ? status : CaseStatus.processing.rawValue, "step\(event)", 1, "history line \(event) of \(caseId)",
                    ])
                }
            }
        }
    }

    /// Every `case_events` row, in order.
    func benchEvents() async throws -> [BenchEvent] {
        try await pool.read { db in
            try SQLRow.fetchAll(db, sql: "SELECT case_id, at, event, status, step FROM case_events ORDER BY id").map { row in
                BenchEvent(caseId: row["case_id"], at: row["at"], event: row["event"], status: row["status"], step: row["step"])
            }
        }
    }

    /// `created_at` and `finished_at` of every case.
    func benchCaseTimes() async throws -> [String: (created: Date, finished: Date?, status: String)] {
        try await pool.read { db in
            var times: [String: (created: Date, finished: Date?, status: String)] = [:]
            for row in try SQLRow.fetchAll(db, sql: "SELECT case_id, created_at, finished_at, status FROM cases") {
                times[row["case_id"]] = (row["created_at"], row["finished_at"], row["status"])
            }
            return times
        }
    }
}
