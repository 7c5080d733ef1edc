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
        // Read concurrently with the wait, so a full pipe never blocks the child.
        let reader = Task.detached { pipe.fileHandleForReading.readDataToEndOfFile() }
        let finished = await withTaskGroup(of: Bool.self) { group in
            group.addTask { await exited.wait(); return true }
            group.addTask { try? await Task.sleep(for: .seconds(timeoutSec)); return false }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
        if !finished {
            kill(pid, SIGKILL)
            await exited.wait()
        }
        let data = await reader.value
        let output = String(decoding: data, as: UTF8.self)
        guard finished else {
            throw TransportError("`\(command)` did not finish within \(timeoutSec) s", transient: true)
        }
        return CommandResult(status: process.terminationStatus, output: output)
    }
}
