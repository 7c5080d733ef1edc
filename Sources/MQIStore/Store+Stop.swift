import Foundation
import GRDB
import MQICore

/// Which kinds of a queue's messages a worker claims.
public enum KindFilter: Sendable {
    case all
    case only(MessageKind)
    case except(MessageKind)
}

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
                WHERE status = 'draining' AND drain_case = ? AND drain_step_index IS ? AND drain_attempt IS ? AND drain_beam IS ? ORDER BY gpu_id
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
                WHERE status = 'draining' AND drain_case = ? AND drain_step_index IS ? AND drain_attempt IS ? AND drain_beam IS ?
                """, arguments: [reason, caseId, stepIndex, attempt, beam])
        }
    }

    /// Records on every draining GPU that its stop cannot be confirmed now (the HPC host does not
    /// answer, so no stop is tried): `reason`, or, with nil, clears the reasons that equal
    /// `replacing` (the host answers again; the stop is tried next).
    public func noteDrainsBlocked(reason: String?, replacing: String? = nil) async throws {
        try await pool.write { db in
            if let reason {
                try db.execute(sql: "UPDATE gpu_resources SET drain_reason = ? WHERE status = 'draining' AND drain_reason IS NOT ?",
                               arguments: [reason, reason])
            } else if let replacing {
                try db.execute(sql: "UPDATE gpu_resources SET drain_reason = NULL WHERE status = 'draining' AND drain_reason = ?",
                               arguments: [replacing])
            }
        }
    }

    /// Gives a message back after a transient failure (the HPC host unreachable, say) without
    /// counting the delivery: an outage delays work, it never uses up a message's attempts.
    public func postpone(_ message: ClaimedMessage, error: String, retryAfter: Double) async throws {
        let now = now()
        try await pool.write { db in
            try db.execute(sql: """
                UPDATE messages SET lease_owner = NULL, lease_expires_at = NULL, last_error = ?, available_at = ?,
                    deliveries = max(0, deliveries - 1)
                WHERE id = ? AND lease_owner = ? AND deliveries = ?
                """, arguments: [error, now.addingTimeInterval(retryAfter), message.id, message.leaseOwner, message.deliveries])
        }
        bell.ring(message.queue)
    }

    /// Gives a message back uncounted at a graceful shutdown (the work, e.g. a running step, is
    /// adopted by the next daemon). Synchronous on purpose: it runs while the worker's task is
    /// being cancelled, which must not cancel this write.
    public func release(_ message: ClaimedMessage) throws {
        try pool.write { db in
            try db.execute(sql: """
                UPDATE messages SET lease_owner = NULL, lease_expires_at = NULL, deliveries = max(0, deliveries - 1)
                WHERE id = ? AND lease_owner = ? AND deliveries = ?
                """, arguments: [message.id, message.leaseOwner, message.deliveries])
        }
    }

    // MARK: hosts

    /// Records whether the HPC host answers (kept for `mqi status`, which runs in another process).
    public func recordHost(_ state: HostState) async throws {
        let now = now()
        try await pool.write { db in
            try db.execute(sql: """
                INSERT INTO hosts (host, reachable, since, reason, updated_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT(host) DO UPDATE SET reachable = excluded.reachable, since = excluded.since, reason = excluded.reason,
                    updated_at = excluded.updated_at
                """, arguments: [state.host, state.reachable, state.since, state.reason, now])
        }
    }

    public func hosts() async throws -> [HostState] {
        try await pool.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM hosts ORDER BY host").map {
                HostState(host: $0["host"], reachable: $0["reachable"], since: $0["since"], reason: $0["reason"])
            }
        }
    }
}
