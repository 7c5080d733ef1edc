import Foundation
import Logging
import MQICore
import MQITestSupport
import Testing
@testable import MQITransport
#if canImport(Glibc)
import Glibc
#endif

/// Scripts run in long-lived remote shells (`SSHShell`) against a real sshd whose account's rc
/// file counts login-shell start-ups (`SSHServer(slowLogin:)`): same answers as sessions of
/// their own, one login for many commands, and a shell that dies or hangs is replaced.
@Suite(.serialized, .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync"))
struct SSHShellTests {
    static let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    static func connection(_ server: SSHServer, shells: Int = 2) throws -> SSHConnection {
        try SSHConnection(config: server.sshConfig(), retry: RetryPolicy(maxAttempts: 3, initialDelaySec: 0.2, maxDelaySec: 1),
                          logger: quiet, reconnectPatienceSec: 5, persistentShells: shells)
    }

    static func isRunning(_ pid: pid_t) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return false }
        return !stat[stat.index(after: close)...].hasPrefix(" Z")
    }

    /// The same scripts give the same status, stdout, stderr through a shell as through a
    /// session of their own: bytes 0-255, outputs over 64 KiB, stdin, exit statuses (255 too).
    @Test(.timeLimit(.minutes(4)), arguments: SSHServer.installedShells(["/bin/bash", "/usr/bin/tcsh"]))
    func aShellAnswersLikeASessionOfItsOwn(shell: String) async throws {
        let server = try SSHServer(loginShell: shell, slowLogin: 0.05)
        defer { server.remove() }
        try await server.start()
        let shared = try Self.connection(server)
        let plain = try Self.connection(server, shells: 0)
        var bytes = Data((0...255).map { UInt8($0) })
        for _ in 0..<300 { bytes.append(contentsOf: (0...255).map { UInt8($0) }) }  // 77 KB of every byte value
        let cases: [(script: String, arguments: [String], stdin: Data?)] = [
            ("cat; printf 'err\\n' >&2", [], bytes),
            ("head -c 200000 /dev/zero | tr '\\0' o; head -c 100000 /dev/zero | tr '\\0' e >&2; exit 7", [], nil),
            (#"printf '[%s]' "$@"; exit 255"#, ["it's", "$HOME", "a\nb", "", "!!"], nil),
            ("read -r line; echo \"got $line\"; cat >/dev/null; echo \"$#\"", [], Data("first\nrest".utf8)),
            ("test -t 0 || echo no-terminal; cat", [], nil),
        ]
        for (script, arguments, stdin) in cases {
            let viaShell = try await shared.runScript(script, arguments: arguments, stdin: stdin, timeoutSec: 20)
            let viaSession = try await plain.runScript(script, arguments: arguments, stdin: stdin, timeoutSec: 20)
            #expect(viaShell.status == viaSession.status, "\(shell) \(script): \(viaShell.status) vs \(viaSession.status) \(viaShell.stderrText)")
            #expect(viaShell.stdout == viaSession.stdout, "\(shell) \(script): \(viaShell.stdout.count) vs \(viaSession.stdout.count) bytes")
            #expect(viaShell.stderr == viaSession.stderr, "\(shell) \(script): \(viaShell.stderrText) vs \(viaSession.stderrText)")
        }
        let first = try await shared.runScript("cat", stdin: bytes, timeoutSec: 20)
        #expect(first.stdout == bytes)
        // Every one of those commands went through the one shell: one login for them all.
        #expect(shared.persistentShellsStarted == 1)
        // closeMaster ends the shells: no ssh process of theirs is left (nor a zombie).
        let processes = shared.persistentShellProcesses
        #expect(processes.count == 1)
        await shared.closeMaster()
        await plain.closeMaster()
        #expect(processes.allSatisfy { !FileManager.default.fileExists(atPath: "/proc/\($0)") }, "ssh processes left: \(processes)")
        #expect(shared.persistentShellProcesses.isEmpty)
    }

    /// Thirty commands one after another start no login shell beyond the shell's own; eight at
    /// once fewer than one each; sessions of their own one each.
    @Test(.timeLimit(.minutes(4)))
    func manyCommandsStartAboutOneLoginShell() async throws {
        let server = try SSHServer(slowLogin: 0.1)
        defer { server.remove() }
        try await server.start()
        let connection = try Self.connection(server)
        let runner = SSHCommandRunner(connection: connection)
        _ = try await runner.capture("true", timeoutSec: 20)
        let before = server.loginShellStarts
        for index in 0..<30 {
            let result = try await runner.capture("echo poll-\(index)", timeoutSec: 20)
            #expect(result.output == "poll-\(index)\n")
        }
        let sequential = server.loginShellStarts - before
        #expect(sequential == 0, "\(sequential) login shells for 30 commands in a row")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<8 {
                group.addTask {
                    let result = try await runner.capture("echo burst-\(index)", timeoutSec: 20)
                    #expect(result.output == "burst-\(index)\n")
                }
            }
            try await group.waitForAll()
        }
        let burst = server.loginShellStarts - before - sequential
        print("30 commands in a row: \(sequential) login shell(s); 8 at once: \(burst) (the second shell, and sessions of their own when no shell came free within 0.5 s)")
        #expect(burst < 8, "\(burst) login shells for 8 commands at once")

        let plain = try Self.connection(server, shells: 0)
        let plainBefore = server.loginShellStarts
        for _ in 0..<5 { _ = try await SSHCommandRunner(connection: plain).capture("true", timeoutSec: 20) }
        #expect(server.loginShellStarts - plainBefore == 5, "the counter does not count sessions")
        await connection.closeMaster()
        await plain.closeMaster()
    }

    /// The pool's bookkeeping, with local processes standing in for shells: reuse, replacement
    /// after the maximum age, the wait for a busy one, and the hold-off after a failure.
    @Test(.timeLimit(.minutes(3)))
    func thePoolReusesAgesOutAndHoldsOff() async throws {
        let pool = SSHShellPool(limit: 1, waitSec: 0.2, maxAgeSec: 0.5)
        guard case .start = try #require(await pool.checkout()) else { Issue.record("no start"); return }
        let first = try SSHShell(arguments: ["sleep", "30"])
        pool.checkin(first)
        guard case .shell(let again) = try #require(await pool.checkout()) else { Issue.record("not reused"); return }
        #expect(again === first)
        // Busy: after the wait, a plain session.
        #expect(await pool.checkout() == nil)
        pool.checkin(again)
        try await Task.sleep(for: .seconds(0.6))
        // Too old: closed, and a new one is to be started.
        guard case .start = try #require(await pool.checkout()) else { Issue.record("not replaced"); return }
        #expect(!Self.isRunning(first.pid))
        pool.discard(nil, shellFault: true)
        // Held off for 1 s after a failure.
        #expect(await pool.checkout() == nil)
        try await Task.sleep(for: .seconds(1))
        guard case .start = try #require(await pool.checkout()) else { Issue.record("still held off"); return }
        pool.discard(nil, shellFault: false)
        #expect(pool.shellsStarted == 3)
    }

    /// A command that leaves a process in the background writing to its stdout returns at once,
    /// and what that process writes later is not taken for the next command's output.
    @Test(.timeLimit(.minutes(3)))
    func aBackgroundProcessHoldsNothingOpen() async throws {
        let server = try SSHServer(slowLogin: 0.05)
        defer { server.remove() }
        try await server.start()
        let connection = try Self.connection(server, shells: 1)
        _ = try await connection.runScript("true", timeoutSec: 20)
        let started = Date()
        // The background process writes 3 s later, inside the second command (a 4 s sleep);
        // a command held up by it would take those 3 s (the bound leaves room for CI's load).
        let first = try await connection.runScript("(sleep 3; echo late; echo late >&2) & echo now", timeoutSec: 20)
        #expect(first.stdoutText == "now\n")
        #expect(Date().timeIntervalSince(started) < 2.5, "the background process held the command up")
        try await Task.sleep(for: .seconds(0.5))
        let second = try await connection.runScript("sleep 4; echo mine", timeoutSec: 20)
        #expect(second.stdoutText == "mine\n" && second.stderr.isEmpty, "\(second.stdoutText) \(second.stderrText)")
        #expect(connection.persistentShellsStarted == 1)
        await connection.closeMaster()
    }

    /// kill -9 of the remote shell while it runs a command: an idempotent command runs again in
    /// a session of its own and succeeds, one that is not fails as transient; later commands
    /// get a new shell.
    @Test(.timeLimit(.minutes(4)))
    func aKilledShellFallsBackAndIsReplaced() async throws {
        let server = try SSHServer(slowLogin: 0.05)
        defer { server.remove() }
        try await server.start()
        let connection = try Self.connection(server, shells: 1)
        let temp = try TemporaryDirectory("mqi-shell-kill")
        defer { temp.remove() }
        try server.giveToUser(temp.path)
        // The script's parent is the shell's /bin/sh.
        func shellPid() async throws -> pid_t {
            let answer = try await connection.runScript("echo $PPID", timeoutSec: 20)
            return try #require(pid_t(answer.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)))
        }
        let firstShell = try await shellPid()
        #expect(Self.isRunning(firstShell))
        let marker = temp.file("runs")
        // 6 s: the kill must come while it runs, after the test sees the marker (late under load).
        let script = "echo run >> \(ShellQuote.quote(marker)); sleep 6; echo done"
        async let idempotent = connection.runScript(script, timeoutSec: 30)
        #expect(await eventually(within: 10) { FileManager.default.fileExists(atPath: marker) })
        kill(firstShell, SIGKILL)
        let output = try await idempotent
        #expect(output.stdoutText == "done\n" && output.status == 0)
        // Run twice: in the killed shell, then in a session of its own.
        #expect(try String(contentsOfFile: marker, encoding: .utf8) == "run\nrun\n")
        #expect(connection.persistentShellsStarted == 1)

        // A new shell after the hold-off (1 s after one failure).
        try await Task.sleep(for: .seconds(1.2))
        let secondShell = try await shellPid()
        #expect(secondShell != firstShell)
        #expect(connection.persistentShellsStarted == 2)

        // Not idempotent: not run again, a transient error.
        try? FileManager.default.removeItem(atPath: marker)
        async let once = connection.runScript(script, timeoutSec: 30, idempotent: false)
        #expect(await eventually(within: 10) { FileManager.default.fileExists(atPath: marker) })
        kill(secondShell, SIGKILL)
        do {
            _ = try await once
            Issue.record("a command cut off in a dead shell was reported as done")
        } catch let error as TransportError {
            #expect(error.isTransient, "\(error)")
        }
        try await Task.sleep(for: .seconds(6.5))
        #expect(try String(contentsOfFile: marker, encoding: .utf8) == "run\n")
        let meanwhile = try await connection.runScript("echo fine", timeoutSec: 20)
        #expect(meanwhile.stdoutText == "fine\n")
        await connection.closeMaster()
    }

    /// A command over its time limit: a transient timeout error at the limit, its remote
    /// processes killed, and the next command in a new shell.
    @Test(.timeLimit(.minutes(4)))
    func aTimeoutKillsTheCommandAndReplacesTheShell() async throws {
        let server = try SSHServer(loginShell: "/usr/bin/tcsh", slowLogin: 0.05)
        defer { server.remove() }
        try await server.start()
        let connection = try Self.connection(server, shells: 1)
        let temp = try TemporaryDirectory("mqi-shell-timeout")
        defer { temp.remove() }
        try server.giveToUser(temp.path)
        _ = try await connection.runScript("true", timeoutSec: 20)
        let pidFile = temp.file("pid")
        let started = Date()
        do {
            _ = try await connection.runScript("sh -c 'echo $$ > \(pidFile); exec sleep 60'", timeoutSec: 1.5)
            Issue.record("no timeout")
        } catch let error as TransportError {
            #expect(error.isTransient && error.message.contains("timeout"), "\(error)")
        }
        let took = Date().timeIntervalSince(started)
        #expect(took >= 1.5 && took < 15, "the timeout took \(took) s")
        let sleeper = try #require(pid_t((try? String(contentsOfFile: pidFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""))
        #expect(await eventually(within: 30) { !Self.isRunning(sleeper) }, "the command's process \(sleeper) still runs")
        let next = try await connection.runScript("echo next", timeoutSec: 20)
        #expect(next.stdoutText == "next\n")
        #expect(connection.persistentShellsStarted == 2)
        await connection.closeMaster()
    }
}
