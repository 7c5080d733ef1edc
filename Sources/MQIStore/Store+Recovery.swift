import Foundation
import GRDB
#if canImport(Glibc)
import Glibc
#endif

extension Store {
    /// The outcome of opening the database at start-up.
    public struct Opened: Sendable {
        public var store: Store
        /// Where a damaged database was moved, if it was.
        public var setAside: String?
        /// Why it was set aside.
        public var problem: String?
    }

    /// Opens the database at start-up. Only a damaged one (SQLITE_CORRUPT, SQLITE_NOTADB, or a
    /// failed `PRAGMA quick_check`) is renamed to `<name>.corrupt-<UTC timestamp>` (with its -wal
    /// and -shm files; never deleted) and a new one is created in its place. Any other problem
    /// (permissions, a full disk, a read-only directory, a failed migration, a database of a
    /// newer version) throws a ``StoreOpenError`` and touches nothing.
    public static func openRecovering(path: String, maxDeliveries: Int = 5, bell: QueueBell = QueueBell(),
                                      now: @escaping @Sendable () -> Date = { Date() }) throws -> Opened {
        try checkAccess(path: path)
        var problem: String?
        if FileManager.default.fileExists(atPath: path) {
            do {
                let store = try Store(path: path, maxDeliveries: maxDeliveries, bell: bell, now: now)
                let check = try store.pool.readBlocking { db in try String.fetchAll(db, sql: "PRAGMA quick_check") }
                if check == ["ok"] { return Opened(store: store) }
                problem = "quick_check: " + check.prefix(5).joined(separator: "; ")
                try store.pool.close()
            } catch let error as DatabaseError where isDamage(error) {
                problem = "\(error)"
            } catch {
                throw classify(error, path: path)
            }
        }
        guard let problem else {
            do {
                return Opened(store: try Store(path: path, maxDeliveries: maxDeliveries, bell: bell, now: now))
            } catch {
                throw classify(error, path: path)
            }
        }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        let target = "\(path).corrupt-\(formatter.string(from: now()))"
        for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
            try FileManager.default.moveItem(atPath: path + suffix, toPath: target + suffix)
        }
        let store = try Store(path: path, maxDeliveries: maxDeliveries, bell: bell, now: now)
        return Opened(store: store, setAside: target, problem: problem)
    }

    /// Opens the database for a command (`mqi status`, `mqi cases ...`): never sets anything
    /// aside; every problem is a ``StoreOpenError`` that says what to do.
    public static func open(path: String, maxDeliveries: Int = 5) throws -> Store {
        try checkAccess(path: path)
        do {
            return try Store(path: path, maxDeliveries: maxDeliveries)
        } catch {
            throw classify(error, path: path)
        }
    }

    /// SQLite's own verdict that the file is damaged or is no database: the only errors for
    /// which the file is set aside.
    static func isDamage(_ error: DatabaseError) -> Bool {
        error.resultCode == .SQLITE_CORRUPT || error.resultCode == .SQLITE_NOTADB
    }

    static func classify(_ error: any Error, path: String) -> StoreOpenError {
        if let error = error as? StoreOpenError { return error }
        if let error = error as? DatabaseError {
            if isDamage(error) {
                return StoreOpenError(.damaged, path: path, "the state database \(path) is damaged: \(error); `mqi run` sets it aside (renamed, never deleted) and rebuilds it from scanner.local_logdata at start")
            }
            switch error.resultCode {
            case .SQLITE_READONLY, .SQLITE_PERM, .SQLITE_CANTOPEN, .SQLITE_AUTH:
                return StoreOpenError(.notWritable, path: path, "database file \(path) (or its -wal/-shm) is not writable by uid \(getuid()): \(error); fix its ownership (chown) or permissions, or those of its directory")
            case .SQLITE_FULL:
                return StoreOpenError(.cannotOpen, path: path, "cannot write the state database \(path): the disk is full (\(error)); free space on its file system; nothing was changed")
            default:
                break
            }
        }
        return StoreOpenError(.cannotOpen, path: path, "cannot open the state database \(path): \(error); nothing was changed (it is set aside only when SQLite reports it damaged)")
    }

    /// Refuses, before anything is written, a database file (or its -wal, -shm or lock file) or
    /// directory that this user cannot write: SQLite would otherwise fail later, or open it
    /// read-only.
    public static func checkAccess(path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        if FileManager.default.fileExists(atPath: directory), access(directory, W_OK | X_OK) != 0 {
            let reason = String(cString: strerror(errno))
            throw StoreOpenError(.notWritable, path: path, "database directory \(directory) is not writable by uid \(getuid()): \(reason) (SQLite creates the -wal and -shm files of \(path) there); fix its ownership (chown) or permissions")
        }
        for suffix in ["", "-wal", "-shm", ".lock"] where FileManager.default.fileExists(atPath: path + suffix) {
            if access(path + suffix, R_OK | W_OK) != 0 {
                let reason = String(cString: strerror(errno))
                throw StoreOpenError(.notWritable, path: path, "database file \(path) (or its -wal/-shm/.lock) is not writable by uid \(getuid()): \(path + suffix): \(reason); fix its ownership (chown) or permissions")
            }
        }
    }

    /// Refuses a database that a newer mqi migrated (its `grdb_migrations` lists a migration
    /// this binary does not know): migrating or rebuilding it would lose that version's data.
    static func refuseNewerSchema(_ pool: DatabasePool, path: String) throws {
        let applied = try pool.read { db in try migrator.appliedIdentifiers(db) }
        let unknown = applied.subtracting(migrator.migrations).sorted()
        guard unknown.isEmpty else {
            throw StoreOpenError(.newerVersion, path: path, "the state database \(path) was written by a newer version of mqi (unknown migration(s) \(unknown.joined(separator: ", "))); run that version, or restore a backup made for this one; the database was not changed")
        }
    }

    /// Records a case found with complete, verified results already in place (after the database
    /// was rebuilt) as COMPLETED without running anything. Returns whether it was new.
    @discardableResult
    public func registerCompletedCase(_ caseId: String, workflow: String, note: String) async throws -> Bool {
        let now = now()
        return try await pool.write { db -> Bool in
            try db.execute(sql: """
                INSERT INTO cases (case_id, status, workflow, progress, created_at, updated_at, finished_at) VALUES (?, 'COMPLETED', ?, 100, ?, ?, ?)
                ON CONFLICT(case_id) DO NOTHING
                """, arguments: [caseId, workflow, now, now, now])
            guard db.changesCount == 1 else { return false }
            try Self.history(db, caseId: caseId, at: now, event: "recovered", status: .completed, step: nil, attempt: nil, message: note)
            return true
        }
    }
}

/// Why the state database could not be opened; `description` says what, where and what to do.
public struct StoreOpenError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable {
        let name: String
        /// SQLite reports the file damaged or no database (`mqi run` sets it aside).
        public static let damaged = Code(name: "damaged")
        /// The file, its -wal/-shm, or its directory cannot be written by this user.
        public static let notWritable = Code(name: "not writable")
        /// A newer mqi migrated it.
        public static let newerVersion = Code(name: "newer version")
        /// Any other error (full disk, failed migration, ...).
        public static let cannotOpen = Code(name: "cannot open")
    }

    public var code: Code
    public var path: String
    public var description: String

    init(_ code: Code, path: String, _ description: String) {
        self.code = code
        self.path = path
        self.description = description
    }
}
