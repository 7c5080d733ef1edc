import Foundation
import GRDB
import MQICore

extension Store {
    /// Opens the state for a command that only reads (`mqi cases list`): the SQLite file
    /// read-only, so the command writes nothing, runs no migration and takes no lock the daemon
    /// holds, and skips what `open(state:)` does for a writer: a writer connection, GRDB's
    /// write transaction that makes sure the WAL exists, and the migrations.
    ///
    /// The same checks and errors as `open(state:)`: the file's access, a newer mqi's schema
    /// refused, SQLite's damage reported as such. Read-only only while the database's -wal and
    /// -shm exist (the daemon is running, the usual case): a read-only connection cannot remove
    /// the ones it would create, and those would then belong to whoever ran the command, not
    /// to the daemon's account. Falls back to `open(state:)`, unchanged, otherwise: for
    /// PostgreSQL, a database file that does not exist yet (created empty, as before), one
    /// without its -wal and -shm, and one with migrations still to run (migrated, as before:
    /// the reader's queries need the current schema).
    public static func openForReading(state: StateConfig, maxDeliveries: Int = 5) throws -> Store {
        let files = FileManager.default
        guard !state.isPostgres, files.fileExists(atPath: state.database), files.fileExists(atPath: state.database + "-wal"),
              files.fileExists(atPath: state.database + "-shm"),
              var store = try openReadOnly(path: state.database, maxDeliveries: maxDeliveries) else {
            return try open(state: state, maxDeliveries: maxDeliveries)
        }
        store.instance = state.instanceName
        store.leaseSec = state.leaseSec
        return store
    }

    /// The read-only store, or nil when the schema needs migrations this binary has.
    static func openReadOnly(path: String, maxDeliveries: Int) throws -> Store? {
        try checkAccess(path: path)
        // The lock `init(path:)` takes while it migrates: a reader never sees a migration half
        // way (each runs in its transaction anyway) nor opens a file being switched to WAL.
        let lock = lockDirectory((path as NSString).deletingLastPathComponent)
        defer { unlock(lock) }
        do {
            var configuration = Configuration()
            configuration.readonly = true
            configuration.busyMode = .timeout(30)
            configuration.maximumReaderCount = 1
            let database = try DatabasePool(path: path, configuration: configuration)
            try refuseNewerSchema(database, path: path)
            guard try database.read({ db in try migrator.hasCompletedMigrations(db) }) else {
                try database.close()
                return nil
            }
            return Store(backend: SQLiteBackend(pool: database), maxDeliveries: maxDeliveries, bell: QueueBell(), now: { Date() })
        } catch {
            throw classify(error, path: path)
        }
    }
}
