import Foundation
import GRDB

/// The embedded default: one SQLite file in WAL mode through GRDB's pool (one writer at a time,
/// readers beside it). Statements are prepared once per connection and reused.
package struct SQLiteBackend: SQLBackend {
    package let pool: DatabasePool
    package var dialect: SQLDialect { .sqlite }

    package init(pool: DatabasePool) {
        self.pool = pool
    }

    package func write<T: Sendable>(_ mode: SQLWriteMode, _ body: @escaping @Sendable (any SQLConnection) throws -> T) async throws -> T {
        try await pool.write { db in try body(SQLiteConnection(db)) }
    }

    package func writeBlocking<T>(_ body: (any SQLConnection) throws -> T) throws -> T {
        try pool.write { db in try body(SQLiteConnection(db)) }
    }

    package func read<T: Sendable>(_ body: @escaping @Sendable (any SQLConnection) throws -> T) async throws -> T {
        try await pool.read { db in try body(SQLiteConnection(db)) }
    }

    package func readBlocking<T>(_ body: (any SQLConnection) throws -> T) throws -> T {
        try pool.read { db in try body(SQLiteConnection(db)) }
    }

    package func close() throws {
        try pool.close()
    }
}

/// A GRDB connection seen through `SQLConnection`.
final class SQLiteConnection: SQLConnection {
    let db: Database
    var dialect: SQLDialect { .sqlite }
    var changesCount: Int { db.changesCount }

    init(_ db: Database) {
        self.db = db
    }

    func execute(sql: String, arguments: SQLArguments) throws {
        if arguments.values.isEmpty {
            try db.execute(sql: sql)
        } else {
            try db.cachedStatement(sql: sql).execute(arguments: Self.arguments(arguments))
        }
    }

    func fetchRows(sql: String, arguments: SQLArguments) throws -> [SQLRow] {
        let statement = try db.cachedStatement(sql: sql)
        statement.arguments = Self.arguments(arguments)
        let columns = SQLColumns(statement.columnNames)
        let count = columns.names.count
        var rows: [SQLRow] = []
        let cursor = try Row.fetchCursor(statement)
        while let row = try cursor.next() {
            var values: [SQLValue] = []
            values.reserveCapacity(count)
            for index in 0..<count {
                let value: DatabaseValue = row[index]
                switch value.storage {
                case .null: values.append(.null)
                case .int64(let number): values.append(.integer(number))
                case .double(let number): values.append(.real(number))
                case .string(let text): values.append(.text(text))
                case .blob(let data): values.append(.text(String(decoding: data, as: UTF8.self)))
                }
            }
            rows.append(SQLRow(columns: columns, values: values))
        }
        return rows
    }

    static func arguments(_ arguments: SQLArguments) -> StatementArguments {
        StatementArguments(arguments.values.map { value -> DatabaseValue in
            switch value {
            case .null: .null
            case .integer(let number): number.databaseValue
            case .real(let number): number.databaseValue
            case .text(let text): text.databaseValue
            }
        })
    }
}
