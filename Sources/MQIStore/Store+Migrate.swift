import Foundation
import MQICore

extension Store {
    /// The tables `copyState` copies, in an order that keeps references valid. `readiness_probe`
    /// and `instances` are left out: they describe a running daemon, not the state. The webhooks'
    /// outbox and cursors are copied with their ids: events not delivered yet are delivered from
    /// the new state, none twice.
    static let copiedTables = ["cases", "case_events", "case_plan_beams", "beam_runs", "gpu_resources", "messages", "dead_letters",
                               "hosts", "scheduler_jobs", "deliveries", "outbox", "webhook_cursors"]
    /// Tables whose `id` the target numbers itself afterwards (identity columns on PostgreSQL).
    static let identityTables = ["case_events", "messages", "dead_letters", "outbox"]

    /// Copies this SQLite state (cases, history, queues, dead letters, GPU table, …) into `target`,
    /// which must be empty, in one transaction of the target: it has everything or nothing.
    /// Rows keep their ids and their order. Returns the rows copied per table.
    public func copyState(to target: Store) async throws -> [(table: String, rows: Int)] {
        guard pool.dialect == .sqlite else { throw StoreError("only a SQLite state is copied (mqi db migrate-to)") }
        let tables = Self.copiedTables
        let source: [(String, [SQLRow])] = try await pool.read { db in
            // SQLite's rowid order is insertion order, which keyset pagination relies on; `*`
            // leaves the rowid out, so the target numbers its own.
            try tables.map { table in (table, try SQLRow.fetchAll(db, sql: "SELECT * FROM \(table) ORDER BY rowid")) }
        }
        let targetDialect = target.pool.dialect
        return try await target.pool.write { db in
            for table in tables {
                if let count = try Int.fetchOne(db, sql: "SELECT count(*) FROM \(table)"), count > 0 {
                    throw StoreError("the target database is not empty: \(table) has \(count) row(s); migrate into a new, empty database")
                }
            }
            var copied: [(table: String, rows: Int)] = []
            for (table, rows) in source {
                guard let first = rows.first else {
                    copied.append((table, 0))
                    continue
                }
                let columns = first.columns.names
                // Several rows per statement (fewer round trips), within PostgreSQL's 65535 parameters.
                let perStatement = max(1, min(500, 30_000 / max(1, columns.count)))
                let rowPlaceholder = "(" + Array(repeating: "?", count: columns.count).joined(separator: ", ") + ")"
                var start = 0
                while start < rows.count {
                    let batch = rows[start..<min(start + perStatement, rows.count)]
                    let sql = "INSERT INTO \(table) (\(columns.joined(separator: ", "))) VALUES "
                        + Array(repeating: rowPlaceholder, count: batch.count).joined(separator: ", ")
                    try db.execute(sql: sql, arguments: SQLArguments(values: batch.flatMap(\.values)))
                    start += batch.count
                }
                if targetDialect == .postgres, Self.identityTables.contains(table) {
                    _ = try SQLRow.fetchAll(db, sql: "SELECT setval(pg_get_serial_sequence('\(table)', 'id'), (SELECT max(id) FROM \(table)))")
                }
                copied.append((table, rows.count))
            }
            return copied
        }
    }
}
