import Foundation
import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import Synchronization

/// `state.database: postgresql://user@host:port/database?sslmode=…`: where a PostgreSQL state
/// is. The password never comes from the URL (it would sit in the config): from
/// `state.password_file` or `PGPASSWORD`.
package struct PostgresLocation: Sendable, Equatable {
    package var host: String
    package var port: Int
    package var user: String
    package var database: String
    /// libpq's `sslmode`: disable, allow, prefer (default), require, verify-ca, verify-full.
    package var sslMode: String
    package var password: String?

    /// True for the URLs this backend serves (`postgresql://`, `postgres://`).
    package static func isURL(_ text: String) -> Bool {
        text.hasPrefix("postgresql://") || text.hasPrefix("postgres://")
    }

    package init(url: String, password: String? = nil) throws {
        guard Self.isURL(url), let components = URLComponents(string: url), let host = components.host, !host.isEmpty else {
            throw SQLBackendError("state.database \(url) is not a PostgreSQL URL of the form postgresql://USER@HOST[:PORT]/DATABASE")
        }
        if components.password != nil {
            throw SQLBackendError("state.database must not hold the password (it would sit in the config file): put it in state.password_file or PGPASSWORD")
        }
        self.host = host
        port = components.port ?? 5432
        user = components.user ?? ProcessInfo.processInfo.environment["PGUSER"] ?? "postgres"
        let path = components.path.hasPrefix("/") ? String(components.path.dropFirst()) : components.path
        database = path.isEmpty ? user : path
        sslMode = components.queryItems?.first { $0.name == "sslmode" }?.value ?? "prefer"
        guard ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"].contains(sslMode) else {
            throw SQLBackendError("state.database: unknown sslmode '\(sslMode)' (disable, allow, prefer, require, verify-ca or verify-full)")
        }
        self.password = password
    }

    /// Reads the password: `passwordFile` (its first line) wins over `PGPASSWORD`.
    package static func password(file: String?) throws -> String? {
        if let file, !file.isEmpty {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw SQLBackendError("cannot read state.password_file \(file) (it must be readable by uid \(getuid()))")
            }
            return text.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? ""
        }
        return ProcessInfo.processInfo.environment["PGPASSWORD"]
    }

    /// The URL without anything secret, for logs and errors.
    package var display: String { "postgresql://\(user)@\(host):\(port)/\(database)" }

    func configuration() throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        switch sslMode {
        case "disable", "allow":
            tls = .disable
        default:
            var client = TLSConfiguration.makeClientConfiguration()
            // require: encrypted, the certificate not checked (libpq's meaning); verify-ca and
            // verify-full check it against the system's trust store.
            if sslMode == "require" || sslMode == "prefer" { client.certificateVerification = .none }
            if sslMode == "verify-ca" { client.certificateVerification = .noHostnameVerification }
            let context = try NIOSSLContext(configuration: client)
            tls = sslMode == "prefer" ? .prefer(context) : .require(context)
        }
        var configuration = PostgresConnection.Configuration(host: host, port: port, username: user, password: password, database: database, tls: tls)
        configuration.options.connectTimeout = .seconds(5)
        return configuration
    }
}

/// The shared state of several communicators: a PostgreSQL database through postgres-nio.
///
/// Every transaction runs on one of a few connections, each with its own thread (the store's
/// closures are synchronous, as with SQLite). Writes take one transaction-scoped advisory lock,
/// so they are serialized across every communicator exactly as SQLite serializes its writers:
/// a decision reads what it changes, and no invariant (one case per GPU, one registration per
/// case) needs more than that. Claims (`SQLWriteMode.rowLocks`) skip that lock and take their
/// message with `FOR UPDATE SKIP LOCKED`, so consumers in several processes never wait for each
/// other. A dropped connection, a restart of the server, a serialization failure or a deadlock
/// is retried (for up to `retryWindow` seconds) before an error reaches the caller; a failure
/// while committing is not retried (its outcome is unknown), it surfaces as an error.
package final class PostgresBackend: SQLBackend, Sendable {
    package let location: PostgresLocation
    package var dialect: SQLDialect { .postgres }
    let configuration: PostgresConnection.Configuration
    let logger: Logger
    let slots: SlotPool
    let blockingSlot: PostgresSlot
    let blockingLock = NSLock()
    let retryWindow: Double
    /// The longest a statement may go unanswered before its connection is given up (the
    /// store's statements take milliseconds; a copy by `migrate-to` a few seconds).
    let statementTimeout: Double = 60
    let translations = Mutex<[String: String]>([:])
    let listener = Mutex<Task<Void, Never>?>(nil)
    /// The key of the advisory lock every serialized write takes.
    static let writeLockKey: Int64 = 0x6D71_6901
    /// The channel a published message's queue name is sent on.
    package static let channel = "mqi_queue"

    package init(location: PostgresLocation, connections: Int = 4, retryWindow: Double = 30, logger: Logger = Logger(label: "mqi.store.postgres")) throws {
        self.location = location
        configuration = try location.configuration()
        self.logger = logger
        self.retryWindow = retryWindow
        slots = SlotPool((0..<max(1, connections)).map { PostgresSlot(id: $0) })
        blockingSlot = PostgresSlot(id: connections)
    }

    deinit {
        // Without waiting: the last reference may go on any thread, an event loop's included.
        listener.withLock { $0?.cancel() }
        for slot in slots.all + [blockingSlot] { slot.drop() }
    }

    // MARK: SQLBackend

    package func write<T: Sendable>(_ mode: SQLWriteMode, _ body: @escaping @Sendable (any SQLConnection) throws -> T) async throws -> T {
        try await onSlot { slot in try self.transact(slot, mode == .rowLocks ? .rowLocks : .serialized, body) }
    }

    package func writeBlocking<T>(_ body: (any SQLConnection) throws -> T) throws -> T {
        blockingLock.lock()
        defer { blockingLock.unlock() }
        return try transact(blockingSlot, .serialized, body)
    }

    package func read<T: Sendable>(_ body: @escaping @Sendable (any SQLConnection) throws -> T) async throws -> T {
        try await onSlot { slot in try self.transact(slot, .read, body) }
    }

    package func readBlocking<T>(_ body: (any SQLConnection) throws -> T) throws -> T {
        blockingLock.lock()
        defer { blockingLock.unlock() }
        return try transact(blockingSlot, .read, body)
    }

    package func close() throws {
        listener.withLock { $0?.cancel() }
        for slot in slots.all + [blockingSlot] { slot.closeNow() }
    }

    /// Runs `work` on a free connection's own thread.
    func onSlot<T: Sendable>(_ work: @escaping @Sendable (PostgresSlot) throws -> T) async throws -> T {
        let slot = await slots.acquire()
        defer { slots.release(slot) }
        return try await withCheckedThrowingContinuation { continuation in
            slot.queue.async { continuation.resume(with: Result { try work(slot) }) }
        }
    }

    enum Mode { case serialized, rowLocks, read }

    func transact<T>(_ slot: PostgresSlot, _ mode: Mode, _ body: (any SQLConnection) throws -> T) throws -> T {
        let deadline = Date().addingTimeInterval(retryWindow)
        var attempt = 0
        while true {
            attempt += 1
            var committing = false
            do {
                let connection = PostgresSQLConnection(try slot.open(self), backend: self, slot: slot)
                do {
                    switch mode {
                    case .serialized:
                        try connection.simple("BEGIN")
                        try connection.simple("SELECT pg_advisory_xact_lock(\(Self.writeLockKey))")
                    case .rowLocks:
                        try connection.simple("BEGIN")
                    case .read:
                        try connection.simple("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    }
                    let result = try body(connection)
                    committing = true
                    try connection.simple("COMMIT")
                    return result
                } catch {
                    // A dead connection is not asked to roll back (postgres-nio may never answer a
                    // query on a closing channel); the server rolls back what a lost connection left.
                    if !committing, Self.classify(error) != .connection, !connection.connection.isClosed {
                        try? connection.simple("ROLLBACK")
                    }
                    throw error
                }
            } catch {
                let kind = Self.classify(error)
                if kind == .connection { slot.drop() }
                let unknownOutcome = committing && mode != .read
                guard kind != .other, !unknownOutcome, Date() < deadline else { throw Self.describe(error, location: location) }
                if attempt == 2 || attempt % 20 == 0 {
                    logger.warning("PostgreSQL transaction retried (attempt \(attempt)): \(Self.describe(error, location: location))")
                }
                let pause = kind == .conflict ? Double.random(in: 0.002...0.02) : min(1.0, 0.1 * Double(attempt))
                Thread.sleep(forTimeInterval: pause)
            }
        }
    }

    enum Failure { case connection, conflict, other }

    static func classify(_ error: any Error) -> Failure {
        if let error = error as? PSQLError {
            if let state = error.serverInfo?[.sqlState] {
                // serialization_failure, deadlock_detected; admin/crash shutdown, cannot connect now;
                // connection exceptions (class 08).
                if state == "40001" || state == "40P01" { return .conflict }
                if state.hasPrefix("08") || state.hasPrefix("57P") { return .connection }
                return .other
            }
            switch error.code {
            case .server, .queryCancelled, .tooManyParameters, .invalidCommandTag, .messageDecodingFailure:
                return .other
            default:
                return .connection
            }
        }
        if error is ChannelError || error is IOError || error is NIOConnectionError || error is PostgresNoAnswer { return .connection }
        return .other
    }

    static func describe(_ error: any Error, location: PostgresLocation) -> any Error {
        if let error = error as? PSQLError {
            if let info = error.serverInfo {
                let message = info[.message] ?? "error"
                let detail = info[.detail].map { " (\($0))" } ?? ""
                return SQLBackendError("PostgreSQL \(location.display): \(message)\(detail) [SQLSTATE \(info[.sqlState] ?? "?")]")
            }
            let underlying = error.underlying.map { ": \($0)" } ?? ""
            return SQLBackendError("PostgreSQL \(location.display) unreachable: \(error.code)\(underlying)")
        }
        if classify(error) == .connection { return SQLBackendError("PostgreSQL \(location.display) unreachable: \(error)") }
        return error
    }

    /// `?` placeholders as `$1`, `$2`, … (outside quoted text and identifiers), cached per statement.
    func translate(_ sql: String) -> String {
        if let cached = translations.withLock({ $0[sql] }) { return cached }
        var out = ""
        out.reserveCapacity(sql.utf8.count + 16)
        var number = 0
        var quote: Character?
        for character in sql {
            if let open = quote {
                if character == open { quote = nil }
                out.append(character)
            } else if character == "'" || character == "\"" {
                quote = character
                out.append(character)
            } else if character == "?" {
                number += 1
                out += "$\(number)"
            } else {
                out.append(character)
            }
        }
        translations.withLock { $0[sql] = out }
        return out
    }

    // MARK: the doorbell across processes

    /// Rings `ring` with the queue name of every message any communicator publishes (`NOTIFY`
    /// sent in the publishing transaction), and with every queue after (re)connecting, as
    /// notifications sent while disconnected are lost. Reconnects until `close`.
    package func listen(_ ring: @escaping @Sendable (String?) -> Void) {
        let configuration = configuration
        let logger = logger
        let location = location
        let task = Task.detached {
            var failures = 0
            while !Task.isCancelled {
                do {
                    let connection = try await PostgresConnection.connect(configuration: configuration, id: 9_000, logger: logger)
                    do {
                        try await connection.listen(on: Self.channel) { notifications in
                            failures = 0
                            ring(nil)
                            for try await notification in notifications { ring(notification.payload) }
                        }
                    } catch {
                        try? await connection.close()
                        throw error
                    }
                    try? await connection.close()
                } catch {
                    if Task.isCancelled { break }
                    failures += 1
                    if failures == 1 { logger.warning("PostgreSQL notifications from \(location.display) interrupted (\(PostgresBackend.describe(error, location: location))); queues are polled until they are back") }
                }
                try? await Task.sleep(for: .seconds(min(5.0, 0.2 * Double(failures + 1))))
            }
        }
        listener.withLock { $0?.cancel(); $0 = task }
    }
}

/// A statement got no answer in time; its connection was closed.
struct PostgresNoAnswer: Error, CustomStringConvertible {
    var seconds: Double
    /// The connection closed while the statement waited for its answer.
    var closed = false
    var description: String {
        closed ? "the connection closed before the server answered" : "no answer from the server within \(Int(seconds)) s; the connection was closed"
    }
}

/// One connection and the thread its transactions run on.
final class PostgresSlot: @unchecked Sendable {
    let id: Int
    let queue: DispatchQueue
    /// Touched only by the transaction holding this slot.
    private var connection: PostgresConnection?

    init(id: Int) {
        self.id = id
        queue = DispatchQueue(label: "mqi.store.postgres.\(id)")
    }

    /// Whether the current connection closed, and the statement waiting on it now.
    private let watch = Mutex<(generation: Int, closed: Bool, waiter: DispatchSemaphore?)>((0, false, nil))

    func open(_ backend: PostgresBackend) throws -> PostgresConnection {
        if let connection, !connection.isClosed { return connection }
        let opened = try PostgresConnection.connect(on: PostgresConnection.defaultEventLoopGroup.any(), configuration: backend.configuration,
                                                    id: id, logger: backend.logger).wait()
        let generation = watch.withLock { state -> Int in
            state = (state.generation + 1, false, nil)
            return state.generation
        }
        // One callback per connection (not per statement): its close wakes the statement waiting.
        opened.closeFuture.whenComplete { [weak self] _ in self?.closed(generation) }
        connection = opened
        return opened
    }

    private func closed(_ generation: Int) {
        let waiter = watch.withLock { state -> DispatchSemaphore? in
            guard state.generation == generation else { return nil }
            state.closed = true
            return state.waiter
        }
        waiter?.signal()
    }

    /// Registers the statement waiting now; true if the connection is closed already.
    func watch(_ waiter: DispatchSemaphore) -> Bool {
        watch.withLock { state in
            state.waiter = waiter
            return state.closed
        }
    }

    func unwatch() {
        watch.withLock { $0.waiter = nil }
    }

    func drop() {
        if let connection {
            // Kept alive until the close completes (postgres-nio asserts a connection is closed
            // before it goes away).
            let closing: EventLoopFuture<Void> = connection.close()
            closing.whenComplete { _ in withExtendedLifetime(connection) {} }
        }
        connection = nil
    }

    func closeNow() {
        if let connection { let closing: EventLoopFuture<Void> = connection.close(); try? closing.wait() }
        connection = nil
    }
}

/// Hands out free slots; a caller waits (without blocking a thread) when all are busy.
final class SlotPool: Sendable {
    let all: [PostgresSlot]
    private let state: Mutex<(free: [PostgresSlot], waiters: [CheckedContinuation<PostgresSlot, Never>])>

    init(_ slots: [PostgresSlot]) {
        all = slots
        state = Mutex((free: slots, waiters: []))
    }

    func acquire() async -> PostgresSlot {
        if let slot = state.withLock({ $0.free.popLast() }) { return slot }
        return await withCheckedContinuation { continuation in
            let slot = state.withLock { state -> PostgresSlot? in
                if let slot = state.free.popLast() { return slot }
                state.waiters.append(continuation)
                return nil
            }
            if let slot { continuation.resume(returning: slot) }
        }
    }

    func release(_ slot: PostgresSlot) {
        let waiter = state.withLock { state -> CheckedContinuation<PostgresSlot, Never>? in
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.free.append(slot)
            return nil
        }
        waiter?.resume(returning: slot)
    }
}

/// A PostgreSQL connection inside one transaction, seen through `SQLConnection`.
final class PostgresSQLConnection: SQLConnection {
    let connection: PostgresConnection
    let backend: PostgresBackend
    let slot: PostgresSlot
    var dialect: SQLDialect { .postgres }
    private(set) var changesCount = 0

    init(_ connection: PostgresConnection, backend: PostgresBackend, slot: PostgresSlot) {
        self.connection = connection
        self.backend = backend
        self.slot = slot
    }

    /// One statement without arguments.
    func simple(_ sql: String) throws {
        _ = try run(sql, [])
    }

    func execute(sql: String, arguments: SQLArguments) throws {
        if arguments.values.isEmpty, sql.contains(";") {
            // Several statements (a migration): one at a time, as the extended protocol takes
            // one per message.
            for statement in Self.statements(sql) { _ = try run(statement, []) }
            changesCount = 0
            return
        }
        changesCount = try run(sql, arguments).metadata.rows ?? 0
    }

    /// `sql` split at the `;`s outside quotes and `$$` bodies.
    static func statements(_ sql: String) -> [String] {
        var statements: [String] = []
        var current = ""
        var quote: Character?
        var dollarBody = false
        var previous: Character = " "
        for character in sql {
            if dollarBody {
                if character == "$", previous == "$" { dollarBody = false }
            } else if let open = quote {
                if character == open { quote = nil }
            } else if character == "'" || character == "\"" {
                quote = character
            } else if character == "$", previous == "$" {
                dollarBody = true
                previous = " "
                current.append(character)
                continue
            } else if character == ";" {
                if !current.allSatisfy(\.isWhitespace) { statements.append(current) }
                current = ""
                previous = " "
                continue
            }
            current.append(character)
            previous = character
        }
        if !current.allSatisfy(\.isWhitespace) { statements.append(current) }
        return statements
    }

    func fetchRows(sql: String, arguments: SQLArguments) throws -> [SQLRow] {
        let result = try run(sql, arguments)
        guard let first = result.rows.first else { return [] }
        let columns = SQLColumns(first.map(\.columnName))
        return try result.rows.map { row in
            SQLRow(columns: columns, values: try row.map(Self.value))
        }
    }

    func run(_ sql: String, _ arguments: SQLArguments) throws -> PostgresQueryResult {
        var binds = PostgresBindings(capacity: arguments.values.count)
        for value in arguments.values {
            switch value {
            case .null: binds.appendNull()
            case .integer(let number): binds.append(number)
            case .real(let number): binds.append(number)
            case .text(let text): binds.append(text)
            }
        }
        let future = connection.query(PostgresQuery(unsafeSQL: backend.translate(sql), binds: binds), logger: backend.logger)
        return try Self.wait(for: future, connection: connection, slot: slot, seconds: backend.statementTimeout)
    }

    /// Waits for a statement's answer at most `seconds`: a connection that stops answering (a
    /// half-open socket, a server gone without a reset) is closed and the wait fails as a lost
    /// connection, which the transaction retries, instead of holding its thread forever.
    static func wait<Value: Sendable>(for future: EventLoopFuture<Value>, connection: PostgresConnection, slot: PostgresSlot, seconds: Double) throws -> Value {
        let answered = DispatchSemaphore(value: 0)
        let result = Mutex<Result<Value, any Error>?>(nil)
        future.whenComplete { outcome in
            result.withLock { if $0 == nil { $0 = outcome } }
            answered.signal()
        }
        // A statement in flight when its connection closes (the server restarted) may never be
        // answered by postgres-nio: the slot's close watch ends the wait, as a lost connection.
        if slot.watch(answered) { answered.signal() }
        defer { slot.unwatch() }
        let timedOut = answered.wait(timeout: .now() + seconds) == .timedOut
        if let outcome = result.withLock({ $0 }) { return try outcome.get() }
        if timedOut {
            let closing: EventLoopFuture<Void> = connection.close()
            closing.whenComplete { _ in withExtendedLifetime(connection) {} }
            throw PostgresNoAnswer(seconds: seconds)
        }
        throw PostgresNoAnswer(seconds: 0, closed: true)
    }

    static func value(_ cell: PostgresCell) throws -> SQLValue {
        guard var bytes = cell.bytes else { return .null }
        // The common types read straight from the binary result (a generic decode per cell
        // costs several times more).
        if cell.format == .binary {
            switch cell.dataType {
            case .int8: if let number = bytes.readInteger(as: Int64.self) { return .integer(number) }
            case .int4: if let number = bytes.readInteger(as: Int32.self) { return .integer(Int64(number)) }
            case .int2: if let number = bytes.readInteger(as: Int16.self) { return .integer(Int64(number)) }
            case .float8: if let bits = bytes.readInteger(as: UInt64.self) { return .real(Double(bitPattern: bits)) }
            case .bool: if let byte = bytes.readInteger(as: UInt8.self) { return .integer(byte == 0 ? 0 : 1) }
            case .text, .varchar, .name, .bpchar: return .text(bytes.readString(length: bytes.readableBytes) ?? "")
            default: break
            }
        }
        switch cell.dataType {
        case .int8, .int4, .int2:
            return .integer(try cell.decode(Int64.self))
        case .float8, .float4:
            return .real(try cell.decode(Double.self))
        case .bool:
            return .integer(try cell.decode(Bool.self) ? 1 : 0)
        case .numeric:
            let text = try cell.decode(String.self)
            if let number = Int64(text) { return .integer(number) }
            return .real(Double(text) ?? 0)
        default:
            return .text(try cell.decode(String.self))
        }
    }
}
