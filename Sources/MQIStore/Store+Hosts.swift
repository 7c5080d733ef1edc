import Foundation
import MQICore

extension Store {
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
            try SQLRow.fetchAll(db, sql: "SELECT * FROM hosts ORDER BY host").map {
                HostState(host: $0["host"], reachable: $0["reachable"], since: $0["since"], reason: $0["reason"])
            }
        }
    }
}
