import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs short commands on this machine (the local transport's compute side).
public struct LocalCommandRunner: CommandRunner {
    public init() {}

    public func capture(_ command: String, timeoutSec: Double) async throws -> CommandResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", command]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        let exited = OneShot()
        process.terminationHandler = { _ in exited.fire() }
        do {
            try process.run()
        } catch {
            throw TransportError("cannot run /bin/sh: \(error.localizedDescription)")
        }
        let pid = process.processIdentifier
        // Read on a Dispatch thread, not the (small) cooperative pool, concurrently with the
        // wait, so a full pipe never blocks the child.
        let output = OneShotValue<Data>()
        DispatchQueue.global().async { output.set(pipe.fileHandleForReading.readDataToEndOfFile()) }
        let finished = await withTaskGroup(of: Bool.self) { group in
            group.addTask { await exited.wait(); return exited.hasFired }
            group.addTask { try? await Task.sleep(for: .seconds(timeoutSec)); return false }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        if !exited.hasFired {
            // Timed out or cancelled (shutdown): end the child and wait for it, whatever the
            // cancellation state, before touching its status.
            kill(pid, SIGKILL)
            await Task.detached { await exited.wait() }.value
        }
        let data = await Task.detached { await output.value() }.value
        try Task.checkCancellation()
        guard finished else {
            throw TransportError("`\(command)` did not finish within \(timeoutSec) s", transient: true)
        }
        return CommandResult(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self))
    }
}

/// A value that arrives once, from any thread.
final class OneShotValue<Value: Sendable>: Sendable {
    private let arrived = OneShot()
    private let stored = MutexBox<Value?>(nil)

    func set(_ value: Value) {
        stored.set(value)
        arrived.fire()
    }

    func value() async -> Value {
        await arrived.wait()
        return stored.get()!
    }
}

import Synchronization

final class MutexBox<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func set(_ value: Value) { mutex.withLock { $0 = value } }
    func get() -> Value { mutex.withLock { $0 } }
}
