import Foundation
import MQIStore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A private PostgreSQL 15 server for tests (`scripts/pg-server`): started once per test
/// process on 127.0.0.1 and a free port, stopped by the script's watchdog when the process ends.
/// Each test takes a database of its own (`freshDatabase()`).
public final class PostgresServer: Sendable {
    public let directory: String
    /// `postgresql://mqi@127.0.0.1:PORT/postgres`
    public let url: String
    public let port: Int

    /// `scripts/pg-server` in this repository.
    public static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../scripts/pg-server").standardizedFileURL.path
    }

    /// initdb, pg_ctl (on PATH or under /usr/lib/postgresql) and psql are installed (Debian
    /// packages postgresql, postgresql-client).
    public static var isAvailable: Bool {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/psql")
            && (FileManager.default.isExecutableFile(atPath: "/usr/lib/postgresql/15/bin/initdb")
                || FileManager.default.isExecutableFile(atPath: "/usr/local/bin/initdb"))
    }

    private static let started = Mutex<Result<PostgresServer, any Error>?>(nil)

    /// The server of this test process, started on first use (≈ 1 s).
    public static func shared() throws -> PostgresServer {
        try started.withLock { started in
            if let started { return try started.get() }
            let result = Result { try PostgresServer() }
            started = result
            return try result.get()
        }
    }

    init() throws {
        directory = (NSTemporaryDirectory() as NSString).appendingPathComponent("mqi-pg-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        let result = try runProcess("/bin/bash", [Self.script, "start", "--watch", "\(getpid())", directory])
        guard result.status == 0, let line = result.output.split(separator: "\n").last(where: { $0.hasPrefix("postgresql://") }) else {
            throw TestSupportError("scripts/pg-server start failed (\(result.status)): \(result.output)")
        }
        url = String(line)
        port = URLComponents(string: url)?.port ?? 0
    }

    /// Runs SQL through psql against `database` (default: the maintenance database).
    @discardableResult
    public func psql(_ sql: String, database: String = "postgres") throws -> String {
        let result = try runProcess("/usr/bin/psql", ["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                                      "postgresql://mqi@127.0.0.1:\(port)/\(database)", "-c", sql])
        guard result.status == 0 else { throw TestSupportError("psql failed (\(result.status)): \(result.output)") }
        return result.output
    }

    /// A new, empty database; returns its URL (`state.database`).
    public func freshDatabase(prefix: String = "t") throws -> String {
        let name = "\(prefix)_\(UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(16).lowercased())"
        try psql("CREATE DATABASE \(name)")
        return "postgresql://mqi@127.0.0.1:\(port)/\(name)"
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`) and starts it again on the same
    /// port with the same data: what a PostgreSQL restart does to the communicators.
    public func restart() throws {
        let result = try runProcess("/bin/bash", [Self.script, "restart", directory])
        guard result.status == 0 else { throw TestSupportError("scripts/pg-server restart failed (\(result.status)): \(result.output)") }
    }

    public func stop() throws {
        _ = try runProcess("/bin/bash", [Self.script, "stop", directory])
    }

    public func start() throws {
        let result = try runProcess("/bin/bash", [Self.script, "start", "--watch", "\(getpid())", directory, "\(port)"])
        guard result.status == 0 else { throw TestSupportError("scripts/pg-server start failed (\(result.status)): \(result.output)") }
    }
}

/// Which backend a store test runs on: the store contract holds on both.
public enum StoreBackendKind: String, CaseIterable, Sendable, CustomStringConvertible {
    case sqlite
    case postgres

    public var description: String { rawValue }
}
