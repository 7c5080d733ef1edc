import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What a finished child process left: its status and both outputs, read concurrently.
struct SSHProcessOutput: Sendable {
    var status: Int32
    var stdout: Data
    var stderr: Data
    var timedOut: Bool

    var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    var stderrText: String { String(decoding: stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
}

/// Runs `ssh`, `rsync` and `sha256sum` children. Both pipes are drained by dispatch read
/// handlers (never a blocked cooperative thread, never a full pipe); stdin is written from a
/// dispatch queue. A timeout or a cancelled task kills the child.
enum SSHProcess {
    static func run(_ executable: String, _ arguments: [String], stdin: Data? = nil,
                    timeoutSec: Double?) async throws -> SSHProcessOutput {
        // posix_spawn and waitpid rather than Foundation's Process: Process detects the end of a
        // child through a descriptor the child inherits, which ssh hands over to the
        // ControlMaster it forks, so some exits were never reported.
        var outFDs: [Int32] = [-1, -1], errFDs: [Int32] = [-1, -1], inFDs: [Int32] = [-1, -1]
        // Close-on-exec from the start: a child spawned meanwhile by another thread (a long-lived
        // shell, the master) must not inherit them, or the end of file would wait for it.
        func cloexecPipe(_ fds: inout [Int32]) -> Bool {
            systemPipe2(&fds, O_CLOEXEC) == 0
        }
        guard cloexecPipe(&outFDs), cloexecPipe(&errFDs), stdin == nil || cloexecPipe(&inFDs) else {
            throw TransportError("cannot create pipes: \(String(cString: strerror(errno)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if stdin == nil {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        } else {
            posix_spawn_file_actions_adddup2(&actions, inFDs[0], 0)
        }
        posix_spawn_file_actions_adddup2(&actions, outFDs[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errFDs[1], 2)
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        close(outFDs[1])
        close(errFDs[1])
        if stdin != nil { close(inFDs[0]) }
        guard spawned == 0 else {
            close(outFDs[0]); close(errFDs[0])
            if stdin != nil { close(inFDs[1]) }
            throw TransportError("cannot run \(executable): \(String(cString: strerror(spawned)))")
        }
        let collected = Collected()
        let outDone = OneShot(), errDone = OneShot()
        // Blocking reads on dispatch threads (not the cooperative pool): read() returning 0 is a
        // reliable end of file.
        Self.drain(outFDs[0], done: outDone) { bytes in collected.out.withLock { $0.append(contentsOf: bytes) } }
        Self.drain(errFDs[0], done: errDone) { bytes in collected.err.withLock { $0.append(contentsOf: bytes) } }
        if let stdin {
            let writer = FileHandle(fileDescriptor: inFDs[1], closeOnDealloc: true)
            DispatchQueue.global().async {
                // EPIPE (the child did not read it all) is the child's business; SIGPIPE is ignored.
                try? writer.write(contentsOf: stdin)
                try? writer.close()
            }
        }
        var status: Int32 = 0
        var finished = false
        var cancelled = false
        let deadline = timeoutSec.map { Date().addingTimeInterval($0) }
        var pause = 1
        while true {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid || (reaped < 0 && errno != EINTR) {
                finished = true
                break
            }
            if Task.isCancelled {
                cancelled = true
                break
            }
            if let deadline, Date() > deadline { break }
            try? await Task.sleep(for: .milliseconds(pause))
            pause = min(pause * 2, 20)
        }
        if !finished {
            kill(pid, SIGKILL)
            _ = waitpid(pid, &status, 0)
        }
        // A grandchild may hold a pipe open after the child's exit: wait a little, not forever.
        let drainWait: Double = cancelled ? 0 : 2
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await outDone.wait(); await errDone.wait() }
            group.addTask { try? await Task.sleep(for: .seconds(drainWait)) }
            await group.next()
            group.cancelAll()
        }
        if cancelled { throw CancellationError() }
        let exitStatus: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return SSHProcessOutput(status: exitStatus, stdout: collected.out.withLock { $0 },
                                stderr: collected.err.withLock { $0 }, timedOut: !finished)
    }

    static func drain(_ fd: Int32, done: OneShot, append: @escaping @Sendable (ArraySlice<UInt8>) -> Void) {
        DispatchQueue.global().async {
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = read(fd, &chunk, chunk.count)
                if count > 0 {
                    append(chunk[0..<count])
                } else if count < 0 && errno == EINTR {
                    continue
                } else {
                    break
                }
            }
            close(fd)
            done.fire()
        }
    }

    final class Collected: Sendable {
        let out = Mutex(Data())
        let err = Mutex(Data())
    }
}

extension OneShot {
    /// Waits even when the current task is cancelled (for cleanup that must finish).
    func waitUncancellable() async {
        let task = Task { await self.wait() }
        await task.value
    }
}
