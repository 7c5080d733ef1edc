import Foundation

extension PostgresServer {
    /// A PostgreSQL server of the caller's own, not the process's shared one: for a test that
    /// restarts or stops it (every other test of the process uses `shared()` meanwhile).
    /// Stopped by its watchdog when the test process ends; `stop()` it and remove `directory`
    /// when done.
    public static func startPrivate() throws -> PostgresServer {
        try PostgresServer()
    }
}
