import Foundation
import MQICore

/// One page of cases, newest first, and the cursor of the next page (nil on the last page).
public struct CasePage: Sendable, Equatable {
    public var cases: [CaseSummary]
    public var nextCursor: String?
}

/// Cases that finished in one hour.
public struct ThroughputBucket: Sendable, Equatable, Codable {
    /// The start of the hour (UTC).
    public var hour: Date
    public var completed: Int
    public var failed: Int
    public var cancelled: Int
}

/// A cursor the client sent back that this store did not make.
public struct InvalidCursor: Error, Sendable, CustomStringConvertible {
    public var description: String { "the cursor is not one this server returned; start again without a cursor" }
}

/// Queries for the operators' JSON API and dashboard. Every list is bounded and served from an
/// index (`v4-api-indexes`): nothing here loads the whole table.
extension Store {
    /// Cases newest first (by `created_at`, then insertion order), at most `limit`, optionally of one
    /// status and/or whose id contains `query` (case-insensitive for ASCII). `cursor` is the
    /// `nextCursor` of the previous page (keyset pagination: stable while cases are added).
    /// `receivedFrom` / `receivedTo`: only cases registered at or after / before these times.
    public func casesPage(status: CaseStatus? = nil, query: String? = nil, receivedFrom: Date? = nil, receivedTo: Date? = nil,
                          limit: Int = 50, cursor: String? = nil) async throws -> CasePage {
        let limit = min(max(1, limit), 500)
        var position: (createdAt: String, rowid: Int64)?
        if let cursor, !cursor.isEmpty {
            guard let decoded = Self.decodeCursor(cursor) else { throw InvalidCursor() }
            position = decoded
        }
        var conditions: [String] = []
        var arguments: [(any SQLBindable)?] = []
        if let status {
            conditions.append("status = ?")
            arguments.append(status.rawValue)
        }
        if let query, !query.isEmpty {
            conditions.append("case_id \(pool.dialect == .postgres ? "ILIKE" : "LIKE") ? ESCAPE '\\'")
            arguments.append("%" + Self.likeEscaped(query) + "%")
        }
        if let receivedFrom {
            conditions.append("created_at >= ?")
            arguments.append(receivedFrom)
        }
        if let receivedTo {
            conditions.append("created_at < ?")
            arguments.append(receivedTo)
        }
        if let position {
            // Row values use the (status,) created_at index with its implicit rowid.
            conditions.append("(created_at, rowid) < (?, ?)")
            arguments.append(position.createdAt)
            arguments.append(position.rowid)
        }
        let whereClause = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        arguments.append(limit + 1)
        let sql = "SELECT rowid AS _rowid, CAST(created_at AS TEXT) AS _created, * FROM cases \(whereClause) ORDER BY created_at DESC, rowid DESC LIMIT ?"
        let finalArguments = SQLArguments(arguments)
        return try await pool.read { db in
            let rows = try SQLRow.fetchAll(db, sql: sql, arguments: finalArguments)
            let page = rows.prefix(limit)
            var next: String?
            if rows.count > limit, let last = page.last {
                next = Self.encodeCursor(createdAt: last["_created"], rowid: last["_rowid"])
            }
            return CasePage(cases: try Self.withBeams(db, page.map(Self.summary)), nextCursor: next)
        }
    }

    /// How `casesPage` runs its query (EXPLAIN QUERY PLAN lines), for tests that check an index is used.
    public func casesPagePlan(status: CaseStatus?, withCursor: Bool) async throws -> [String] {
        var sql = "EXPLAIN QUERY PLAN SELECT rowid, * FROM cases WHERE 1"
        if status != nil { sql += " AND status = 'X'" }
        if withCursor { sql += " AND (created_at, rowid) < ('2025-01-01', 5)" }
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT 51"
        let statement = sql
        return try await pool.read { db in
            try SQLRow.fetchAll(db, sql: statement).map { $0["detail"] as String? ?? "" }
        }
    }

    /// Cases changed at or after `since` (by `updated_at`), oldest change first, at most `limit`.
    public func casesUpdated(since: Date, limit: Int = 500) async throws -> [CaseSummary] {
        try await pool.read { db in
            try Self.withBeams(db, SQLRow.fetchAll(db, sql: "SELECT * FROM cases WHERE updated_at >= ? ORDER BY updated_at, rowid LIMIT ?",
                                                arguments: [since, limit]).map(Self.summary))
        }
    }

    /// The newest `updated_at` of any case (nil with no cases).
    public func lastCaseUpdate() async throws -> Date? {
        try await pool.read { db in try Date.fetchOne(db, sql: "SELECT max(updated_at) FROM cases") }
    }

    /// Cases that reached COMPLETED, FAILED or CANCELLED per hour since `since` (hours with none are
    /// included, oldest first).
    public func throughput(since: Date, until: Date) async throws -> [ThroughputBucket] {
        let counts = try await pool.read { db -> [String: (Int, Int, Int)] in
            var counts: [String: (Int, Int, Int)] = [:]
            for row in try SQLRow.fetchAll(db, sql: """
                SELECT substr(finished_at, 1, 13) AS hour, status, count(*) AS n FROM cases
                WHERE finished_at >= ? GROUP BY hour, status
                """, arguments: [since]) {
                let hour: String = row["hour"]
                var entry = counts[hour] ?? (0, 0, 0)
                switch row["status"] as String {
                case CaseStatus.completed.rawValue: entry.0 += row["n"] as Int
                case CaseStatus.failed.rawValue: entry.1 += row["n"] as Int
                case CaseStatus.cancelled.rawValue: entry.2 += row["n"] as Int
                default: break
                }
                counts[hour] = entry
            }
            return counts
        }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyy-MM-dd HH"
        var hour = calendar.dateInterval(of: .hour, for: since)?.start ?? since
        var buckets: [ThroughputBucket] = []
        while hour <= until {
            let entry = counts[formatter.string(from: hour)] ?? (0, 0, 0)
            buckets.append(ThroughputBucket(hour: hour, completed: entry.0, failed: entry.1, cancelled: entry.2))
            hour = hour.addingTimeInterval(3600)
        }
        return buckets
    }

    /// Whether a dead letter with this id exists.
    public func deadLetterExists(_ id: Int64) async throws -> Bool {
        try await pool.read { db in
            try Bool.fetchOne(db, sql: "SELECT EXISTS(SELECT 1 FROM dead_letters WHERE id = ?)", arguments: [id]) ?? false
        }
    }

    // MARK: cursor

    static func encodeCursor(createdAt: String, rowid: Int64) -> String {
        let text = "\(rowid)|\(createdAt)"
        return Data(text.utf8).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }

    static func decodeCursor(_ cursor: String) -> (createdAt: String, rowid: Int64)? {
        var base64 = cursor.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        guard cursor.count <= 200, let data = Data(base64Encoded: base64), let text = String(data: data, encoding: .utf8),
              let bar = text.firstIndex(of: "|"), let rowid = Int64(text[..<bar]) else { return nil }
        let createdAt = String(text[text.index(after: bar)...])
        guard !createdAt.isEmpty, createdAt.count <= 40 else { return nil }
        return (createdAt, rowid)
    }

    static func likeEscaped(_ text: String) -> String {
        var out = ""
        for character in text {
            if character == "%" || character == "_" || character == "\\" { out.append("\\") }
            out.append(character)
        }
        return out
    }
}
