import Foundation

/// What a retention pass removes (or, dry, would remove).
public struct EventPrune: Sendable, Equatable {
    public var caseId: String
    public var events: Int

    public init(caseId: String, events: Int) {
        self.caseId = caseId
        self.events = events
    }
}

extension Store {
    static let finishedStatuses = "('COMPLETED', 'FAILED', 'CANCELLED')"

    /// Cases finished (COMPLETED, FAILED, CANCELLED) before `date`, oldest first: whose step
    /// logs retention removes.
    public func casesFinished(before date: Date) async throws -> [String] {
        try await pool.read { db in
            try String.fetchAll(db, sql: """
                SELECT case_id FROM cases WHERE status IN \(Self.finishedStatuses) AND finished_at < ? ORDER BY finished_at, case_id
                """, arguments: [date])
        }
    }

    /// Deletes the history (`case_events`) of cases finished before `date`; the case rows stay.
    /// With `dryRun` nothing is deleted. Returns the cases and how many events each had.
    public func pruneEvents(ofCasesFinishedBefore date: Date, dryRun: Bool) async throws -> [EventPrune] {
        let select = """
            SELECT e.case_id AS case_id, count(*) AS n FROM case_events e JOIN cases c ON c.case_id = e.case_id
            WHERE c.status IN \(Self.finishedStatuses) AND c.finished_at < ? GROUP BY e.case_id ORDER BY e.case_id
            """
        let read: @Sendable (any SQLConnection) throws -> [EventPrune] = { db in
            try SQLRow.fetchAll(db, sql: select, arguments: [date]).map { EventPrune(caseId: $0["case_id"], events: $0["n"]) }
        }
        if dryRun { return try await pool.read(read) }
        return try await pool.write { db in
            let found = try read(db)
            try db.execute(sql: """
                DELETE FROM case_events WHERE case_id IN
                  (SELECT case_id FROM cases WHERE status IN \(Self.finishedStatuses) AND finished_at < ?)
                """, arguments: [date])
            return found
        }
    }

    /// COMPLETED cases whose directories on the HPC are still to be removed (`hpc.cleanup:
    /// after_download`), oldest first. A case with an attempt that may still run (a GPU
    /// draining for it, a stop not yet confirmed) is left out until the stop is confirmed.
    public func casesAwaitingRemoteCleanup(limit: Int = 100) async throws -> [String] {
        try await pool.read { db in
            try String.fetchAll(db, sql: """
                SELECT case_id FROM cases c WHERE status = 'COMPLETED' AND remote_cleaned_at IS NULL
                  AND NOT EXISTS (SELECT 1 FROM gpu_resources g WHERE g.status = 'draining' AND g.drain_case = c.case_id)
                  AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.kind = 'stop_attempt' AND m.case_id = c.case_id)
                ORDER BY finished_at, case_id LIMIT ?
                """, arguments: [limit])
        }
    }

    /// Records that the directories of `caseId` on the HPC were removed, with a history entry
    /// listing them.
    public func markRemoteCleaned(_ caseId: String, removed: [String]) async throws {
        let now = now()
        try await pool.write { db in
            try db.execute(sql: "UPDATE cases SET remote_cleaned_at = ? WHERE case_id = ?", arguments: [now, caseId])
            guard let state = try Self.caseState(db, caseId) else { return }
            let what = removed.isEmpty ? "nothing was left to remove" : "removed " + removed.joined(separator: ", ")
            try Self.history(db, caseId: caseId, at: now, event: "remote_cleanup", status: state.status, step: nil, attempt: nil,
                             message: "HPC directories cleaned up (hpc.cleanup: after_download): \(what)")
        }
    }
}
