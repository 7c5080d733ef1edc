import Foundation
import Logging
import MQICore
import MQIServices
import MQITransport
import Synchronization

/// A fresh directory under the system temp dir, removed by `remove()`.
public struct TemporaryDirectory: Sendable {
    public let path: String

    public init(_ prefix: String = "mqi-test") throws {
        path = (NSTemporaryDirectory() as NSString).appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    public func file(_ relative: String) -> String {
        (path as NSString).appendingPathComponent(relative)
    }

    public func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// Log records kept in memory, for tests that assert on what was logged (never bootstraps).
public final class CapturedLogs: Sendable {
    public struct Record: Sendable {
        public var level: Logger.Level
        public var message: String
        public var metadata: [String: String]
    }

    private let records = Mutex<[Record]>([])

    public init() {}

    public var all: [Record] { records.withLock { $0 } }

    public func messages(at level: Logger.Level) -> [String] {
        all.filter { $0.level == level }.map(\.message)
    }

    public func logger(_ label: String = "test", level: Logger.Level = .debug) -> Logger {
        Logger(label: label) { _ in CapturingHandler(logs: self, logLevel: level) }
    }

    func append(_ record: Record) {
        records.withLock { $0.append(record) }
    }
}

struct CapturingHandler: LogHandler {
    let logs: CapturedLogs
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        logs.append(.init(level: event.level, message: event.message.description, metadata: merged.mapValues { "\($0)" }))
    }
}

/// Polls `condition` until it holds or `seconds` pass.
public func eventually(within seconds: Double = 10, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}

/// The `mqi` executable SwiftPM built next to the test bundle.
public func mqiExecutable() throws -> String {
    var directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = directory.appendingPathComponent("mqi").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        directory = directory.deletingLastPathComponent()
    }
    let fallback = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.build/debug/mqi").standardizedFileURL.path
    if FileManager.default.isExecutableFile(atPath: fallback) { return fallback }
    throw TestSupportError("cannot find the mqi executable near \(CommandLine.arguments[0])")
}

public struct TestSupportError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A running `mqi` process with its output (stdout and stderr) appended to a file.
///
/// Started with `StepSpawner.spawn` (stdin on /dev/null, nothing else inherited, in the tests'
/// session: they signal it by pid) and watched with `waitpid` on its own pid, not with
/// Foundation's `Process`: on Linux that learns of an exit through a descriptor the child
/// inherits, which the daemon's children can keep open, and a CI run hung for good in
/// `Process.waitUntilExit` that way. The child is reaped exactly once, by whichever caller first
/// sees it gone; a child still running when the object goes is killed (SIGKILL) and reaped, so a
/// failed test leaves no daemon behind.
public final class MQIProcess: Sendable {
    public let pid: Int32
    public let outputPath: String
    /// The wait status once reaped; `.lost` if something else in this process reaped it.
    private let ending = Mutex<Ending?>(nil)

    private enum Ending {
        case exited(Int32)
        case signalled(Int32)
        case lost
    }

    /// `launcher`: a command (absolute path first) that execs `mqi` in its own process, given as
    /// its last argument followed by `arguments` (e.g. `unshare --mount ... sh -c '...; exec "$0" "$@"'`).
    public init(_ arguments: [String], output: String, environment: [String: String] = [:], launcher: [String] = []) throws {
        outputPath = output
        let mqi = try mqiExecutable()
        let executable = launcher.first ?? mqi
        let merged = environment.isEmpty ? ProcessInfo.processInfo.environment : ProcessInfo.processInfo.environment.merging(environment) { $1 }
        // Appended, not truncated: some tests restart a daemon onto the same file.
        guard let pid = try StepSpawner.spawn(executable, arguments: launcher.isEmpty ? arguments : Array(launcher.dropFirst()) + [mqi] + arguments,
                                              environment: merged, directory: FileManager.default.currentDirectoryPath,
                                              output: output, appendOutput: true, newSession: false) else {
            throw TestSupportError("cannot run \(executable): posix_spawn lacks glibc's closefrom/chdir extensions (glibc < 2.34)")
        }
        self.pid = pid
    }

    deinit {
        guard reap() == nil else { return }
        kill(pid, SIGKILL)
        // Reaped on a thread of its own: a killed process can take seconds to leave the kernel
        // under load, and this may run on a cooperative thread.
        let pid = pid
        Thread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1, errno == EINTR {}
        }.start()
    }

    /// How it ended, reaping it if it has just ended; nil while it runs.
    private func reap() -> Ending? {
        ending.withLock { ending -> Ending? in
            if let ending { return ending }
            var status: Int32 = 0
            var result: pid_t
            repeat { result = waitpid(pid, &status, WNOHANG) } while result == -1 && errno == EINTR
            if result == 0 { return nil }
            if result == pid {
                ending = (status & 0x7f) == 0 ? .exited((status >> 8) & 0xff) : .signalled(status & 0x7f)
            } else {
                ending = .lost
            }
            return ending
        }
    }

    public var isRunning: Bool { reap() == nil }

    /// The exit code, or 128 + the signal that ended it (137 for kill -9); -1 if its status was
    /// lost (something else reaped it); nil while it runs.
    public var terminationStatus: Int32? {
        switch reap() {
        case nil: nil
        case .exited(let code): code
        case .signalled(let signal): 128 + signal
        case .lost: -1
        }
    }

    /// The signal that ended it; nil while it runs or when it exited by itself.
    public var terminationSignal: Int32? {
        if case .signalled(let signal) = reap() { return signal }
        return nil
    }

    /// Sends `signal`, unless it has already been reaped (its pid may then be another process's).
    public func signal(_ signal: Int32) {
        ending.withLock { ending in
            if ending == nil { kill(pid, signal) }
        }
    }

    /// Waits for the exit, polling every 20 ms; the `terminationStatus`, or nil if it did not
    /// exit within `seconds`.
    public func wait(upTo seconds: Double) async -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let status = terminationStatus { return status }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return terminationStatus
    }

    /// Blocks this thread until the exit and returns the `terminationStatus`. Only for where no
    /// `await` is possible (a `defer` right after SIGKILL); anywhere else use `wait(upTo:)`.
    @discardableResult
    public func waitUntilExit() -> Int32 {
        while true {
            if let status = terminationStatus { return status }
            usleep(20_000)
        }
    }

    public var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }
}

/// Runs `executable arguments...` to its end with stdin on /dev/null and stdout and stderr
/// together (the environment is this process's, with `environment` merged over it).
///
/// The output goes to a temporary file, not a pipe: a pipe's write end can leak into a child
/// another test starts at the same moment (Foundation's Process does not close it there), and a
/// long-lived one (sshd, storescp, a daemon) would then keep the read from ever ending — seen
/// here as a test's cooperative thread blocked for minutes.
public func runProcess(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
    let outputPath = (NSTemporaryDirectory() as NSString).appendingPathComponent("mqi-run-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(atPath: outputPath) }
    // posix_spawn (the steps' spawner: closefrom 3, default signals) and waitpid on its own pid,
    // not Foundation's Process: a CI run hung for good in Process.waitUntilExit after the child
    // (scripts/pg-server start) had exited and was gone, its end never reported; waitpid cannot
    // miss it.
    let merged = environment.isEmpty ? ProcessInfo.processInfo.environment : ProcessInfo.processInfo.environment.merging(environment) { $1 }
    guard let pid = try StepSpawner.spawn(executable, arguments: arguments, environment: merged,
                                          directory: FileManager.default.currentDirectoryPath, output: outputPath, newSession: false) else {
        throw TestSupportError("cannot run \(executable): posix_spawn lacks glibc's closefrom/chdir extensions (glibc < 2.34)")
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1 {
        guard errno == EINTR else { throw TestSupportError("waitpid for \(executable): \(String(cString: strerror(errno)))") }
    }
    let exitStatus: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    let data = FileManager.default.contents(atPath: outputPath) ?? Data()
    return (exitStatus, String(decoding: data, as: UTF8.self))
}

/// Runs blocking work (a child process to its end, a cluster's start script) on a thread of its
/// own, so an async test does not hold one of the few cooperative threads (one per core) that
/// every other test running beside it needs.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}
