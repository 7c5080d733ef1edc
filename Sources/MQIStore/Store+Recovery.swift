import Foundation
import GRDB

extension Store {
    /// The outcome of opening the database at start-up.
    public struct Opened: Sendable {
        public var store: Store
        /// Where a damaged database was moved, if it was.
        public var setAside: String?
        /// Why it was set aside.
        public var problem: String?
    }

    /// Opens the database; one that cannot be opened or fails `PRAGMA quick_check` is renamed to
    /// `<name>.corrupt-<UTC timestamp>` (with its -wal and -shm files; never deleted) and a new
    /// one is created in its place.
    public static func openRecovering(path: String, maxDeliveries: Int = 5, bell: QueueBell = QueueBell(),
                                      now: @escaping @Sendable () -> Date = { Date() }) throws -> Opened {
        var problem: String?
        if FileManager.default.fileExists(atPath: path) {
            do {
                let store = try Store(path: path, maxDeliveries: maxDeliveries, bell: bell, now: now)
                let check = try store.pool.read { db in try String.fetchAll(db, sql: "PRAGMA quick_check") }
                if check == ["ok"] { return Opened(store: store) }
                problem = "quick_check: " + check.prefix(5).joined(separator: "; ")
                try store.pool.close()
            } catch {
                problem = problem ?? "\(error)"
            }
        }
        guard let problem else {
            return Opened(store: try Store(path: path, maxDeliveries: maxDeliveries, bell: bell, now: now))
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
