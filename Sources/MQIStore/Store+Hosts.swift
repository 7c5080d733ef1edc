import Foundation
import MQICore

extension Store {
    /// Records whether the HPC host answers (kept for `mqi status`, which runs in another process).
    public func recordHost(_ state: HostState) async throws {
        let now = now()
        try await pool.write { db in
            // A change of reachability is told to the webhooks (a first record only when the host is away).
            let before = try Bool.fetchOne(db, sql: "SELECT reachable FROM hosts WHERE host = ?", arguments: [state.host])
            if before != state.reachable, before != nil || !state.reachable {
                try Self.recordEvent(db, state.reachable ? .hpcReachable : .hpcUnreachable, caseId: nil,
                                     status: state.reachable ? "reachable" : "unreachable", error: state.reachable ? nil : (state.reason ?? "no answer"),
                                     detail: ["host": state.host], at: now)
            }
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
