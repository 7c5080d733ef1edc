import Foundation

// The store's own small SQL interface, served by SQLite (GRDB) and PostgreSQL (postgres-nio)
// alike: every method of `Store` is written once against it. Its shape follows GRDB's
// (`db.execute(sql:arguments:)`, `SQLRow.fetchAll(db, sql:)`, `row["column"]`) so the SQL reads
// the same as before. Both backends store the same values: integers as 64-bit integers,
// booleans as 0/1, dates as UTC text `yyyy-MM-dd HH:mm:ss.SSS` (GRDB's format, so an existing
// SQLite file reads unchanged and text comparison orders dates).

/// One value as stored.
package enum SQLValue: Sendable, Equatable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
}

/// A Swift value that can be bound to a statement's `?`.
package protocol SQLBindable {
    var sqlValue: SQLValue { get }
}

/// A Swift value that can be read from a column.
package protocol SQLReadable {
    /// nil when the stored value cannot be read as this type.
    static func read(_ value: SQLValue) -> Self?
}

extension String: SQLBindable, SQLReadable {
    package var sqlValue: SQLValue { .text(self) }
    package static func read(_ value: SQLValue) -> String? {
        switch value {
        case .text(let text): text
        case .integer(let number): String(number)
        case .real(let number): String(number)
        case .null: nil
        }
    }
}

extension Int64: SQLBindable, SQLReadable {
    package var sqlValue: SQLValue { .integer(self) }
    package static func read(_ value: SQLValue) -> Int64? {
        switch value {
        case .integer(let number): number
        case .real(let number): Int64(exactly: number.rounded(.towardZero))
        case .text(let text): Int64(text)
        case .null: nil
        }
    }
}

extension Int: SQLBindable, SQLReadable {
    package var sqlValue: SQLValue { .integer(Int64(self)) }
    package static func read(_ value: SQLValue) -> Int? { Int64.read(value).map { Int($0) } }
}

extension Double: SQLBindable, SQLReadable {
    package var sqlValue: SQLValue { .real(self) }
    package static func read(_ value: SQLValue) -> Double? {
        switch value {
        case .real(let number): number
        case .integer(let number): Double(number)
        case .text(let text): Double(text)
        case .null: nil
        }
    }
}

extension Bool: SQLBindable, SQLReadable {
    package var sqlValue: SQLValue { .integer(self ? 1 : 0) }
    package static func read(_ value: SQLValue) -> Bool? { Int64.read(value).map { $0 != 0 } }
}

extension Date: SQLBindable, SQLReadable {
    package var sqlValue: SQLValue { .text(SQLDate.format(self)) }
    package static func read(_ value: SQLValue) -> Date? {
        switch value {
        case .text(let text): SQLDate.parse(text)
        // GRDB reads a number as seconds since 1970.
        case .integer(let number): Date(timeIntervalSince1970: Double(number))
        case .real(let number): Date(timeIntervalSince1970: number)
        case .null: nil
        }
    }
}

extension Optional: SQLBindable where Wrapped: SQLBindable {
    package var sqlValue: SQLValue { self?.sqlValue ?? .null }
}

extension Optional: SQLReadable where Wrapped: SQLReadable {
    package static func read(_ value: SQLValue) -> Wrapped?? {
        if case .null = value { return .some(nil) }
        guard let wrapped = Wrapped.read(value) else { return nil }
        return .some(wrapped)
    }
}

/// Dates as UTC text with milliseconds, the format GRDB writes.
package enum SQLDate {
    package static func format(_ date: Date) -> String {
        // Whole milliseconds, rounded down as GRDB does, so a date read back compares equal to
        // the text it was written as.
        let milliseconds = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        var seconds = milliseconds / 1000
        var millis = milliseconds % 1000
        if millis < 0 { millis += 1000; seconds -= 1 }
        var days = seconds / 86_400
        var secondOfDay = seconds % 86_400
        if secondOfDay < 0 { secondOfDay += 86_400; days -= 1 }
        let (year, month, day) = civil(fromDays: days)
        var out = [UInt8]()
        out.reserveCapacity(23)
        func digits(_ value: Int64, _ count: Int) {
            var divisor: Int64 = 1
            for _ in 1..<count { divisor *= 10 }
            var rest = value
            while divisor > 0 {
                out.append(UInt8(48 + (rest / divisor) % 10))
                rest %= divisor
                divisor /= 10
            }
        }
        digits(year, 4); out.append(45); digits(month, 2); out.append(45); digits(day, 2)
        out.append(32)
        digits(secondOfDay / 3600, 2); out.append(58); digits(secondOfDay / 60 % 60, 2); out.append(58); digits(secondOfDay % 60, 2)
        out.append(46); digits(millis, 3)
        return String(decoding: out, as: UTF8.self)
    }

    /// Reads `yyyy-MM-dd`, optionally followed by ` HH:mm`, `:ss`, `.SSS…` (a `T` separator and
    /// a trailing `Z` accepted), all UTC; nil for anything else.
    package static func parse(_ text: String) -> Date? {
        var utf8 = Array(text.utf8)
        if utf8.last == 90 { utf8.removeLast() } // Z
        func number(_ from: Int, _ count: Int) -> Int64? {
            guard from + count <= utf8.count else { return nil }
            var value: Int64 = 0
            for index in from..<(from + count) {
                let byte = utf8[index]
                guard byte >= 48, byte <= 57 else { return nil }
                value = value * 10 + Int64(byte - 48)
            }
            return value
        }
        guard utf8.count >= 10, utf8[4] == 45, utf8[7] == 45,
              let year = number(0, 4), let month = number(5, 2), let day = number(8, 2),
              (1...12).contains(month), (1...31).contains(day) else { return nil }
        var seconds = days(fromCivil: year, month, day) * 86_400
        var fraction = 0.0
        if utf8.count > 10 {
            guard utf8.count >= 16, utf8[10] == 32 || utf8[10] == 84, utf8[13] == 58,
                  let hour = number(11, 2), let minute = number(14, 2) else { return nil }
            seconds += hour * 3600 + minute * 60
            if utf8.count > 16 {
                guard utf8.count >= 19, utf8[16] == 58, let second = number(17, 2) else { return nil }
                seconds += second
                if utf8.count > 19 {
                    guard utf8[19] == 46, utf8.count > 20 else { return nil }
                    var scale = 0.1
                    for byte in utf8[20...] {
                        guard byte >= 48, byte <= 57 else { return nil }
                        fraction += Double(byte - 48) * scale
                        scale /= 10
                    }
                }
            }
        }
        return Date(timeIntervalSince1970: Double(seconds) + fraction)
    }

    // Howard Hinnant's days-from-civil algorithms (proleptic Gregorian calendar).
    static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    package static func civil(fromDays days: Int64) -> (Int64, Int64, Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}

/// A statement's arguments, in the order of its `?`s.
package struct SQLArguments: ExpressibleByArrayLiteral, Sendable {
    package var values: [SQLValue]

    package init(arrayLiteral elements: (any SQLBindable)?...) {
        values = elements.map { $0?.sqlValue ?? .null }
    }

    package init(_ elements: [(any SQLBindable)?]) {
        values = elements.map { $0?.sqlValue ?? .null }
    }

    package init(values: [SQLValue]) {
        self.values = values
    }

    package mutating func append(_ element: (any SQLBindable)?) {
        values.append(element?.sqlValue ?? .null)
    }
}

/// The names of a result's columns, shared by its rows.
package final class SQLColumns: Sendable {
    package let names: [String]
    let index: [String: Int]

    package init(_ names: [String]) {
        self.names = names
        var index: [String: Int] = [:]
        for (position, name) in names.enumerated() where index[name] == nil { index[name] = position }
        self.index = index
    }
}

/// One result row. `row["column"]` reads a column as the type asked for; a non-optional type
/// on NULL or on a value of another kind is a programming error (as in GRDB).
package struct SQLRow: Sendable {
    package let columns: SQLColumns
    package let values: [SQLValue]

    package init(columns: SQLColumns, values: [SQLValue]) {
        self.columns = columns
        self.values = values
    }

    package subscript<Value: SQLReadable>(_ name: String) -> Value {
        let value = columns.index[name].map { values[$0] } ?? .null
        guard let read = Value.read(value) else {
            fatalError("column \(name) holds \(value), not a \(Value.self)")
        }
        return read
    }

    package subscript<Value: SQLReadable>(_ position: Int) -> Value {
        guard let read = Value.read(values[position]) else {
            fatalError("column \(position) holds \(values[position]), not a \(Value.self)")
        }
        return read
    }

    package static func fetchAll(_ db: any SQLConnection, sql: String, arguments: SQLArguments = []) throws -> [SQLRow] {
        try db.fetchRows(sql: sql, arguments: arguments)
    }

    package static func fetchOne(_ db: any SQLConnection, sql: String, arguments: SQLArguments = []) throws -> SQLRow? {
        try db.fetchRows(sql: sql, arguments: arguments).first
    }
}

extension SQLReadable {
    /// The first column of every row.
    package static func fetchAll(_ db: any SQLConnection, sql: String, arguments: SQLArguments = []) throws -> [Self] {
        try db.fetchRows(sql: sql, arguments: arguments).compactMap { $0.values.first.flatMap(Self.read) }
    }

    /// The first column of the first row; nil when there is no row or it is NULL.
    package static func fetchOne(_ db: any SQLConnection, sql: String, arguments: SQLArguments = []) throws -> Self? {
        try db.fetchRows(sql: sql, arguments: arguments).first?.values.first.flatMap(Self.read)
    }
}

/// The SQL dialect a connection speaks, for the few places where they differ.
package enum SQLDialect: Sendable {
    case sqlite
    case postgres
}

/// A connection inside one transaction. Not thread-safe: used by one transaction's closure.
package protocol SQLConnection: AnyObject {
    var dialect: SQLDialect { get }
    /// Rows changed by the last `execute`.
    var changesCount: Int { get }
    /// Runs one statement (or, without arguments, several separated by `;`).
    func execute(sql: String, arguments: SQLArguments) throws
    func fetchRows(sql: String, arguments: SQLArguments) throws -> [SQLRow]
}

extension SQLConnection {
    package func execute(sql: String) throws {
        try execute(sql: sql, arguments: [])
    }
}

/// Where the store's transactions run: a SQLite file or a PostgreSQL database.
package protocol SQLBackend: Sendable {
    var dialect: SQLDialect { get }
    /// One write transaction. `.serialized` writes run one at a time across every process that
    /// shares the database (as SQLite runs its writers), so a decision reads what it changes.
    func write<T: Sendable>(_ mode: SQLWriteMode, _ body: @escaping @Sendable (any SQLConnection) throws -> T) async throws -> T
    /// The same, blocking the calling thread (for a shutdown path that must not be cancelled).
    func writeBlocking<T>(_ body: (any SQLConnection) throws -> T) throws -> T
    /// One read-only transaction over a consistent snapshot.
    func read<T: Sendable>(_ body: @escaping @Sendable (any SQLConnection) throws -> T) async throws -> T
    func readBlocking<T>(_ body: (any SQLConnection) throws -> T) throws -> T
    func close() throws
}

extension SQLBackend {
    package func write<T: Sendable>(_ body: @escaping @Sendable (any SQLConnection) throws -> T) async throws -> T {
        try await write(.serialized, body)
    }
}

/// How a write transaction is isolated from the others.
package enum SQLWriteMode: Sendable {
    /// One at a time (the default).
    case serialized
    /// Beside the others, relying on row locks the statements take (`FOR UPDATE SKIP LOCKED`):
    /// only for claiming a queue's message. SQLite serializes it anyway.
    case rowLocks
}

/// A store error that says what went wrong in the operator's words.
package struct SQLBackendError: Error, CustomStringConvertible, Sendable {
    package var description: String
    package init(_ description: String) { self.description = description }
}
