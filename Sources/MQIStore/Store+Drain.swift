import Foundation
import MQICore

extension Store {
    /// The executor confirmed that no process of `(caseId, stepIndex, attempt)` is left: the GPUs
    /// draining for it become free and cases waiting for GPUs start, in one transaction with the
    /// acknowledgement of `message`. Returns the GPUs freed and the decisions applied.
    public func finishDrain(caseId: String, stepIndex: Int?, attempt: Int?, beam: Int? = nil, conductor: Conductor,
                            acknowledging message: ClaimedMessage? = nil) async throws -> (freed: [Int], applied: [AppliedDecision]) {
        let now = now()
        let (freed, applied) = try await pool.write { db -> ([Int], [AppliedDecision]) in
            if let message { try db.execute(sql: "DELETE FROM messages WHERE id = ?", arguments: [message.id]) }
            let freed = try Int.fetchAll(db, sql: """
                SELECT gpu_id FROM gpu_resources
                WHERE status = 'draining' AND drain_case = ? AND drain_step_index IS NOT DISTINCT FROM ? AND drain_attempt IS NOT DISTINCT FROM ? AND drain_beam IS NOT DISTINCT FROM ? ORDER BY gpu_id
                """, arguments: [caseId, stepIndex, attempt, beam])
            for gpu in freed {
                try db.execute(sql: """
                    UPDATE gpu_resources SET status = 'free', drain_case = NULL, drain_step_index = NULL, drain_attempt = NULL,
                        drain_beam = NULL, drain_since = NULL, drain_reason = NULL WHERE gpu_id = ?
                    """, arguments: [gpu])
            }
            let status = try String.fetchOne(db, sql: "SELECT status FROM cases WHERE case_id = ?", arguments: [caseId])
            let gpuNote = freed.isEmpty ? "" : "; GPU \(freed.map(String.init).joined(separator: ",")) free again"
            if let status {
                let step = try String.fetchOne(db, sql: "SELECT workflow_step FROM cases WHERE case_id = ?", arguments: [caseId])
                try Self.history(db, caseId: caseId, at: now, event: "attempt_stopped", status: CaseStatus(rawValue: status) ?? .failed,
                                 step: step, attempt: attempt,
                                 message: "attempt \(attempt.map(String.init) ?? "?") of step #\(stepIndex.map(String.init) ?? "?")\(beam.map { " beam \($0)" } ?? "") confirmed stopped\(gpuNote)")
            }
            let applied = freed.isEmpty ? [] : try Self.dispatchPending(conductor: conductor, db: db, now: now)
            return (freed, applied)
        }
        ring(applied.flatMap(\.decision.commands))
        return (freed, applied)
    }

    /// Records why the stop of an attempt is not confirmed yet, on the GPUs draining for it.
    public func noteDrainProblem(caseId: String, stepIndex: Int?, attempt: Int?, beam: Int? = nil, reason: String) async throws {
        try await pool.write { db in
            try db.execute(sql: """
                UPDATE gpu_resources SET drain_reason = ?
                WHERE status = 'draining' AND drain_case = ? AND drain_step_index IS NOT DISTINCT FROM ? AND drain_attempt IS NOT DISTINCT FROM ? AND drain_beam IS NOT DISTINCT FROM ?
                """, arguments: [reason, caseId, stepIndex, attempt, beam])
        }
    }

    /// Records on every draining GPU that its stop cannot be confirmed now (the HPC host does not
    /// answer, so no stop is tried): `reason`, or, with nil, clears the reasons that equal
    /// `replacing` (the host answers again; the stop is tried next).
    public func noteDrainsBlocked(reason: String?, replacing: String? = nil) async throws {
        try await pool.write { db in
            if let reason {
                try db.execute(sql: "UPDATE gpu_resources SET drain_reason = ? WHERE status = 'draining' AND drain_reason IS DISTINCT FROM ?",
                               arguments: [reason, reason])
            } else if let replacing {
                try db.execute(sql: "UPDATE gpu_resources SET drain_reason = NULL WHERE status = 'draining' AND drain_reason = ?",
                               arguments: [replacing])
            }
        }
    }
}
