import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The daemon's PID file, held with an advisory lock (`flock`) for the daemon's life, so a
/// second instance on the same config refuses to start. A file left by a dead process is not
/// locked, so it is simply taken over. The same lock on `<database>.lock` keeps a second daemon
/// off the same database even when its config names another PID file.
public final class PIDLock: Sendable {
    public let path: String
    private let fd: Int32
    /// The PID a previous, dead daemon left in the file, if any.
    public let stalePID: Int32?

    public struct AlreadyRunning: Error, CustomStringConvertible {
        public var pid: Int32?
        public var path: String
        /// The database the lock guards, for the lock beside the database.
        public var database: String?
        public var description: String {
            if let database {
                return "another mqi daemon\(pid.map { " (PID \($0))" } ?? "") is already using the database \(database) (lock file \(path)); stop it, or give this config its own state.database"
            }
            return "another mqi daemon is already running\(pid.map { " (PID \($0))" } ?? "") with PID file \(path)"
        }
    }

    /// Locks `path`; `database` names the database this lock guards (in messages).
    public init(path: String, database: String? = nil) throws {
        self.path = path
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            let what = database.map { "the lock file of the database \($0)" } ?? "PID file"
            throw PIDLockError("cannot open \(what) \(path) as uid \(getuid()): \(String(cString: strerror(errno))); fix its ownership (chown) or permissions, or those of its directory")
        }
        let previous = Self.readPID(fd)
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw AlreadyRunning(pid: previous, path: path, database: database)
        }
        self.fd = fd
        self.stalePID = previous.flatMap { $0 != getpid() ? $0 : nil }
        let text = "\(getpid())\n"
        _ = ftruncate(fd, 0)
        _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
        _ = fsync(fd)
    }

    /// Whether a daemon holds the lock on `path` right now (for `mqi status`).
    public static func holder(of path: String) -> (running: Bool, pid: Int32?) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return (false, nil) }
        defer { close(fd) }
        let pid = readPID(fd)
        if flock(fd, LOCK_SH | LOCK_NB) == 0 {
            flock(fd, LOCK_UN)
            return (false, pid)
        }
        return (true, pid)
    }

    static func readPID(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 31, 0) }
        guard count > 0 else { return nil }
        return Int32(String(decoding: buffer[0..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Removes the file and drops the lock (clean shutdown).
    public func release() {
        unlink(path)
        flock(fd, LOCK_UN)
        close(fd)
    }
}

public struct PIDLockError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
