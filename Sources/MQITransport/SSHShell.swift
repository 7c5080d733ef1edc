import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One long-lived `/bin/sh` on the HPC, reached through the ControlMaster: a single ssh session
/// (one login-shell start-up) that then runs any number of scripts, one at a time, fed to it
/// framed on its standard input (the technique of Ansible's pipelining and Mitogen).
///
/// Protocol, one request at a time:
/// - client: `MQI-REQ <nonce> <script bytes> <stdin bytes>\n`, the script, the stdin bytes;
/// - shell: `MQI-GOT <nonce>\n` once it has read the request (before it runs anything), then
///   runs the script with `/bin/sh` (stdin from the bytes, stdout and stderr into files made
///   afresh for each request, so a background process never holds the session's output open
///   nor writes into the next command's output), then
///   `MQI-DONE <nonce> <status> <stdout bytes> <stderr bytes>\n` and both outputs.
///
/// `MQI-GOT` tells a request the shell never started (safe to run elsewhere) from one that may
/// have run. Its files live in `$TMPDIR/mqi-shell.<pid>.*`, removed when it ends (and by the
/// account's next shell when it was killed). At start the shell prints
/// `MQI-SHELL <pid> <process group>`; the group is what a timeout kills remotely.
final class SSHShell: Sendable {
    /// What an exchange came to.
    enum Exchange: Sendable {
        case done(SSHProcessOutput)
        /// The shell ended or misbehaved before it acknowledged the request: nothing ran.
        case notStarted(String)
        /// The shell ended or misbehaved after it acknowledged the request: it may have run.
        case lost(String)
    }

    let pid: pid_t
    private let input: Int32
    private let reader: FrameReader
    private let collected = SSHProcess.Collected()
    private struct State {
        var reaped = false
        var closed = false
        var remoteGroup: String?
        var exchanges = 0
    }
    private let state = Mutex(State())
    /// When the shell was started (`ContinuousClock`), for logs.
    let started = ContinuousClock.now

    /// The program the remote /bin/sh runs (sent as the command of the ssh session, through
    /// `SSHConnection.scriptCommand`, so every login shell passes it on unchanged).
    static let serverScript = #"""
        for o in "${TMPDIR:-/tmp}"/mqi-shell.*.*; do
          p=${o##*/mqi-shell.}; p=${p%%.*}
          [ -O "$o" ] && ! kill -0 "$p" 2>/dev/null && rm -rf "$o"
        done
        t=$(mktemp -d "${TMPDIR:-/tmp}/mqi-shell.$$.XXXXXX") || exit 1
        trap 'rm -rf "$t"' EXIT
        trap 'exit 129' HUP
        trap 'exit 141' PIPE
        trap 'exit 143' TERM
        echo "MQI-SHELL $$ $(ps -o pgid= -p $$ | tr -d ' ')"
        while IFS=' ' read -r w n s i; do
          [ "$w" = MQI-REQ ] || exit 2
          rm -f "$t/i" "$t/o" "$t/e"
          head -c "$s" > "$t/s" || exit 3
          if [ "$i" -gt 0 ]; then head -c "$i" > "$t/i" || exit 3; else : > "$t/i"; fi
          echo "MQI-GOT $n"
          /bin/sh "$t/s" < "$t/i" > "$t/o" 2> "$t/e"
          r=$?
          echo "MQI-DONE $n $r $(wc -c < "$t/o") $(wc -c < "$t/e")"
          cat "$t/o" "$t/e"
        done
        """#

    /// Starts `/usr/bin/env arguments...` (the ssh command line of the shell) with its stdin and
    /// stdout on pipes of ours and its stderr drained into memory (for messages).
    init(arguments: [String]) throws {
        var inFDs: [Int32] = [-1, -1], outFDs: [Int32] = [-1, -1], errFDs: [Int32] = [-1, -1]
        guard systemPipe2(&inFDs, O_CLOEXEC) == 0 else { throw TransportError("cannot create pipes: \(String(cString: strerror(errno)))") }
        guard systemPipe2(&outFDs, O_CLOEXEC) == 0 else {
            Glibc.close(inFDs[0]); Glibc.close(inFDs[1])
            throw TransportError("cannot create pipes: \(String(cString: strerror(errno)))")
        }
        guard systemPipe2(&errFDs, O_CLOEXEC) == 0 else {
            Glibc.close(inFDs[0]); Glibc.close(inFDs[1]); Glibc.close(outFDs[0]); Glibc.close(outFDs[1])
            throw TransportError("cannot create pipes: \(String(cString: strerror(errno)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inFDs[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outFDs[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errFDs[1], 2)
        let argv = (["/usr/bin/env"] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var child: pid_t = 0
        let spawned = posix_spawn(&child, "/usr/bin/env", &actions, nil, argv, environ)
        Glibc.close(inFDs[0]); Glibc.close(outFDs[1]); Glibc.close(errFDs[1])
        guard spawned == 0 else {
            Glibc.close(inFDs[1]); Glibc.close(outFDs[0]); Glibc.close(errFDs[0])
            throw TransportError("cannot run ssh: \(String(cString: strerror(spawned)))")
        }
        pid = child
        input = inFDs[1]
        reader = FrameReader(fd: outFDs[0])
        SSHProcess.drain(errFDs[0], done: OneShot()) { [collected] bytes in
            collected.err.withLock { if $0.count < 16384 { $0.append(contentsOf: bytes) } }
        }
    }

    deinit {
        close()
    }

    /// The remote shell's process group (its login session), once it said so.
    var remoteGroup: String? { state.withLock { $0.remoteGroup } }

    /// Requests answered so far.
    var exchanges: Int { state.withLock { $0.exchanges } }

    /// What ssh said on its stderr (trimmed), for messages.
    var sshMessage: String {
        String(decoding: collected.err.withLock { $0 }, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Whether the local ssh process still runs (it ends with the remote shell or the master).
    var isAlive: Bool {
        state.withLock { state in
            if state.reaped || state.closed { return false }
            var status: Int32 = 0
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid || (result < 0 && errno == ECHILD) { state.reaped = true }
            return !state.reaped
        }
    }

    /// Kills the local ssh (the remote shell sees its session end), reaps it and closes our ends
    /// of its pipes. Idempotent.
    func close() {
        let (first, reap) = state.withLock { state -> (Bool, Bool) in
            guard !state.closed else { return (false, false) }
            state.closed = true
            return (true, !state.reaped)
        }
        guard first else { return }
        if reap {
            kill(pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            state.withLock { $0.reaped = true }
        }
        Glibc.close(input)
        // The reader's descriptor is closed by the exchange thread if one runs, else here.
        reader.closeWhenIdle()
    }

    /// Kills the local ssh without reaping or closing anything: an exchange blocked on the
    /// shell returns. For a timeout or a cancellation (`close()` follows).
    func interrupt() {
        let alive = state.withLock { !$0.reaped && !$0.closed }
        if alive { kill(pid, SIGKILL) }
    }

    /// Sends one request and reads its answer: blocking, on a thread of its own (`run`).
    func exchangeBlocking(program: Data, stdin: Data, nonce: String) -> Exchange {
        var request = Data("MQI-REQ \(nonce) \(program.count) \(stdin.count)\n".utf8)
        request.append(program)
        request.append(stdin)
        let written = request.withUnsafeBytes { buffer -> Bool in
            var offset = 0
            while offset < buffer.count {
                let count = write(input, buffer.baseAddress! + offset, buffer.count - offset)
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { return false }
                offset += count
            }
            return true
        }
        guard written else { return .notStarted("the shell's input is closed (\(String(cString: strerror(errno))))") }
        return reader.session { reader -> Exchange in
            // Lines before the acknowledgement: the shell's greeting, or whatever the account's
            // rc file printed.
            while true {
                guard let line = reader.readLine() else { return .notStarted("the shell ended before it read the request") }
                if let range = line.range(of: "MQI-SHELL ") {
                    let words = line[range.upperBound...].split(separator: " ")
                    if words.count >= 2 { state.withLock { $0.remoteGroup = String(words[1]) } }
                    continue
                }
                if line == "MQI-GOT \(nonce)" { break }
                if line.hasPrefix("MQI-") { return .notStarted("unexpected answer from the shell: \(line.prefix(200))") }
            }
            guard let header = reader.readLine() else { return .lost("the shell ended while the command ran") }
            let words = header.split(separator: " ")
            guard words.count == 5, words[0] == "MQI-DONE", words[1] == nonce, let status = Int32(words[2]),
                  let outCount = Int(words[3]), let errCount = Int(words[4]), outCount >= 0, errCount >= 0 else {
                return .lost("unexpected answer from the shell: \(header.prefix(200))")
            }
            guard let out = reader.read(count: outCount), let err = reader.read(count: errCount) else {
                return .lost("the shell ended while it sent the command's output")
            }
            state.withLock { $0.exchanges += 1 }
            return .done(SSHProcessOutput(status: status, stdout: out, stderr: err, timedOut: false))
        } ?? .notStarted("the shell is closed")
    }

    /// Runs one request with a time limit. On timeout or cancellation the local ssh is killed
    /// (the shell is then of no further use) and nil is returned; the caller tells which.
    func run(program: Data, stdin: Data, nonce: String, timeoutSec: Double) async -> Exchange? {
        await withTaskGroup(of: Exchange?.self) { group in
            // A continuation, not a cancellable wait: the thread's answer is always awaited, so
            // no read of this shell is left behind when the group ends.
            group.addTask {
                await withCheckedContinuation { continuation in
                    DispatchQueue.global().async {
                        continuation.resume(returning: self.exchangeBlocking(program: program, stdin: stdin, nonce: nonce))
                    }
                }
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(timeoutSec))
                return nil
            }
            let first = await group.next()!
            group.cancelAll()
            if first != nil { return first }
            // Timed out or cancelled: ssh is killed, and the exchange returns at once (with the
            // command's answer if it came in the meantime).
            interrupt()
            let second = await group.next()!
            if case .done = second { return second }
            return nil
        }
    }
}

/// glibc's `pipe2`, which the Glibc module does not export: descriptors that are close-on-exec
/// from the start, so no child spawned meanwhile by another thread inherits them.
@_silgen_name("pipe2")
func systemPipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32

/// Buffered reads of lines and exact byte counts from a pipe, used by one exchange at a time.
final class FrameReader: Sendable {
    private struct State {
        var fd: Int32
        var buffer: [UInt8] = []
        var start = 0
        var busy = false
        var closeRequested = false
    }
    private let state: Mutex<State>

    init(fd: Int32) {
        state = Mutex(State(fd: fd))
    }

    /// Runs `body` with exclusive use of the reader (nil when it is closed).
    func session<T>(_ body: (inout Session) -> T) -> T? {
        var session: Session
        do {
            let taken = state.withLock { state -> Session? in
                guard state.fd >= 0, !state.busy else { return nil }
                state.busy = true
                return Session(fd: state.fd, buffer: state.buffer, start: state.start)
            }
            guard let taken else { return nil }
            session = taken
        }
        let result = body(&session)
        state.withLock { state in
            state.buffer = session.buffer
            state.start = session.start
            state.busy = false
            if state.closeRequested, state.fd >= 0 {
                Glibc.close(state.fd)
                state.fd = -1
            }
        }
        return result
    }

    func closeWhenIdle() {
        state.withLock { state in
            state.closeRequested = true
            if !state.busy, state.fd >= 0 {
                Glibc.close(state.fd)
                state.fd = -1
            }
        }
    }

    struct Session {
        let fd: Int32
        var buffer: [UInt8]
        var start: Int

        /// Reads more into the buffer; false at end of file or on an error.
        mutating func fill() -> Bool {
            if start > 0 && start >= buffer.count / 2 {
                buffer.removeFirst(start)
                start = 0
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = Glibc.read(fd, &chunk, chunk.count)
                if count > 0 {
                    buffer.append(contentsOf: chunk[0..<count])
                    return true
                }
                if count < 0 && errno == EINTR { continue }
                return false
            }
        }

        /// The next line without its newline; nil at end of file (or a line over 1 MiB).
        mutating func readLine() -> String? {
            var searched = start
            while true {
                if let newline = buffer[searched...].firstIndex(of: UInt8(ascii: "\n")) {
                    let line = String(decoding: buffer[start..<newline], as: UTF8.self)
                    start = newline + 1
                    return line
                }
                searched = buffer.count
                guard buffer.count - start < 1 << 20 else { return nil }
                let offset = searched - start
                guard fill() else { return nil }
                searched = start + offset
            }
        }

        /// Exactly `count` bytes; nil at end of file before that.
        mutating func read(count: Int) -> Data? {
            while buffer.count - start < count {
                guard fill() else { return nil }
            }
            let data = Data(buffer[start..<(start + count)])
            start += count
            return data
        }
    }
}
