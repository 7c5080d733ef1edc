import Foundation
import MQICore

/// A communicator working on this state, as its heartbeat row says.
public struct InstanceRecord: Sendable, Codable, Equatable {
    public var name: String
    public var host: String
    public var pid: Int
    public var version: String?
    public var startedAt: Date
    public var heartbeatAt: Date
    /// Its heartbeat is recent (within the window `instances` was asked with).
    public var alive: Bool
    /// The messages it holds a lease on now (the work it is doing).
    public var leases: [HeldLease]

    enum CodingKeys: String, CodingKey {
        case name, host, pid, version, alive, leases
        case startedAt = "started_at"
        case heartbeatAt = "heartbeat_at"
    }
}

/// One message a communicator holds a lease on.
public struct HeldLease: Sendable, Codable, Equatable {
    public var kind: String
    public var caseId: String
    public var owner: String

    enum CodingKeys: String, CodingKey {
        case kind, owner
        case caseId = "case_id"
    }
}

extension Store {
    /// Records that this communicator (`instance`) is alive.
    public func heartbeat(host: String, pid: Int, version: String?, startedAt: Date) async throws {
        let now = now()
        let name = instance
        try await pool.write { db in
            try db.execute(sql: """
                INSERT INTO instances (name, host, pid, version, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (name) DO UPDATE SET host = excluded.host, pid = excluded.pid, version = excluded.version,
                    started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at
                """, arguments: [name, host, pid, version, startedAt, now])
        }
    }

    /// Removes this communicator's heartbeat row (a graceful stop: it is gone, not dead).
    public func removeHeartbeat() throws {
        let name = instance
        try pool.writeBlocking { db in try db.execute(sql: "DELETE FROM instances WHERE name = ?", arguments: [name]) }
    }

    /// The communicators that sent a heartbeat, alive when it is at most `aliveWithin` seconds
    /// old, each with the leases it holds; alive ones first, then by name.
    public func instances(aliveWithin: Double = 20) async throws -> [InstanceRecord] {
        let now = now()
        return try await pool.read { db in
            let leases = try SQLRow.fetchAll(db, sql: """
                SELECT kind, case_id, lease_owner FROM messages WHERE lease_owner IS NOT NULL AND lease_expires_at > ? ORDER BY id
                """, arguments: [now]).map { HeldLease(kind: $0["kind"], caseId: $0["case_id"], owner: $0["lease_owner"]) }
            return try SQLRow.fetchAll(db, sql: "SELECT * FROM instances ORDER BY name").map { row in
                let name: String = row["name"]
                let heartbeat: Date = row["heartbeat_at"]
                return InstanceRecord(name: name, host: row["host"], pid: row["pid"], version: row["version"], startedAt: row["started_at"],
                                      heartbeatAt: heartbeat, alive: now.timeIntervalSince(heartbeat) <= aliveWithin,
                                      leases: leases.filter { $0.owner.hasPrefix(name + "/") })
            }.sorted { ($0.alive ? 0 : 1, $0.name) < ($1.alive ? 0 : 1, $1.name) }
        }
    }
}
