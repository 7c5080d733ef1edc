import Foundation
import Logging
import MQICore
#if canImport(Glibc)
import Glibc
#endif

/// The one multiplexed OpenSSH connection to the HPC host, shared by every worker and the GPU
/// monitor. A ControlMaster (`ssh -M -N -f`, ControlPersist) owns the only TCP connection;
/// every command and every rsync goes through its socket. Client commands are run with
/// `ControlMaster=no` and `ProxyCommand=false`, so when the master is gone they fail instead of
/// opening a connection of their own: only `establish()` ever connects, within the budget
/// (`max_new_connections_per_min`) and with exponential backoff and full jitter while the host
/// is unreachable. A master left by a previous daemon (same host, user and options) is reused.
public actor SSHConnection {
    public nonisolated let config: SSHConfig
    public nonisolated let retry: RetryPolicy
    /// `/tmp/mqi-cm-<hash>/cm`: short, so it stays far below the ~100-byte socket path limit.
    public nonisolated let controlPath: String
    public nonisolated let controlPersistSec: Int
    /// How long one caller waits for an unreachable host (retrying with backoff) before failing.
    public nonisolated let reconnectPatienceSec: Double
    nonisolated let logger: Logger
    nonisolated let timing: Timing

    private var budget: SSHConnectionBudget
    private var masterUp = false
    private var failures = 0
    private var nextAttemptAt: Double = 0
    private var lastFailure: TransportError?
    private var connecting: Task<Void, any Error>?
    /// Connection attempts (TCP connections) this process made.
    public private(set) var connectionsOpened = 0

    /// Time, injectable so budget and backoff are tested without waiting.
    public struct Timing: Sendable {
        public var now: @Sendable () -> Double
        public var sleep: @Sendable (Double) async throws -> Void
        public var jitter: @Sendable (ClosedRange<Double>) -> Double

        public init(now: @escaping @Sendable () -> Double, sleep: @escaping @Sendable (Double) async throws -> Void,
                    jitter: @escaping @Sendable (ClosedRange<Double>) -> Double = { Double.random(in: $0) }) {
            self.now = now
            self.sleep = sleep
            self.jitter = jitter
        }

        public static let system: Timing = {
            let start = ContinuousClock.now
            return Timing(now: { let elapsed = ContinuousClock.now - start
                                 return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18 },
                          sleep: { seconds in try await Task.sleep(for: .seconds(seconds)) })
        }()
    }

    /// Whether the host answers: up when the master is, down when it cannot be established.
    public nonisolated let reachability: HostReachability

    /// Called for every new TCP connection (master) opened: the `mqi_ssh_connections_opened_total` metric.
    let onConnectionOpened: @Sendable () -> Void

    /// The long-lived remote shells that run `runScript`'s scripts without a session (and a
    /// login-shell start-up) each (`SSHShell`).
    nonisolated let shells: SSHShellPool

    /// `persistentShells`: how many long-lived remote shells commands may use at once (0: every
    /// command in a session of its own, as before).
    public init(config: SSHConfig, retry: RetryPolicy, logger: Logger, controlPersistSec: Int = 600,
                reconnectPatienceSec: Double = 12, timing: Timing = .system, persistentShells: Int = 2,
                onConnectionOpened: @escaping @Sendable () -> Void = {}) throws {
        self.onConnectionOpened = onConnectionOpened
        self.shells = SSHShellPool(limit: persistentShells)
        self.reconnectPatienceSec = reconnectPatienceSec
        self.config = config
        self.retry = retry
        self.logger = logger
        self.controlPersistSec = controlPersistSec
        self.timing = timing
        self.budget = SSHConnectionBudget(limit: config.maxNewConnectionsPerMin)
        self.reachability = HostReachability(host: config.host)
        signal(SIGPIPE, SIG_IGN)
        let directory = "/tmp/mqi-cm-" + Self.identity(config)
        try Self.makePrivateDirectory(directory)
        self.controlPath = directory + "/cm"
        if !config.strictHostKeyChecking {
            logger.warning("hpc.ssh.strict_host_key_checking is false: the host key of \(config.host) is NOT verified (a man-in-the-middle would not be noticed); set it to true and put the host's key in known_hosts_file",
                           metadata: ["ssh.host": "\(config.host)"])
        }
    }

    /// `user@host:port`, for messages.
    public nonisolated var destination: String {
        (config.user.map { $0 + "@" } ?? "") + config.host + ":\(config.port)"
    }

    // MARK: - ssh arguments

    /// Options every ssh invocation gets first (ssh keeps the first value of an option, so these
    /// cannot be overridden by `extra_options`).
    nonisolated var baseOptions: [String] {
        var options = ["-p", "\(config.port)"]
        if let user = config.user { options += ["-l", user] }
        if let identity = config.identityFile { options += ["-i", identity, "-o", "IdentitiesOnly=yes"] }
        options += ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=\(config.strictHostKeyChecking ? "yes" : "no")"]
        if let knownHosts = config.knownHostsFile { options += ["-o", "UserKnownHostsFile=\(Self.optionValue(knownHosts))"] }
        options += ["-o", "ConnectTimeout=\(max(1, Int(config.connectTimeoutSec.rounded(.up))))",
                    "-o", "ControlPath=\(controlPath)", "-o", "LogLevel=ERROR"]
        return options
    }

    nonisolated var tailOptions: [String] {
        config.extraOptions.flatMap { ["-o", $0] } + ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
    }

    /// Options of a command through the master; never a connection of its own.
    public nonisolated var clientOptions: [String] {
        baseOptions + ["-o", "ControlMaster=no", "-o", "ProxyCommand=false"] + tailOptions
    }

    nonisolated var masterOptions: [String] {
        baseOptions + ["-o", "ControlMaster=yes", "-o", "ControlPersist=\(controlPersistSec)"] + tailOptions
    }

    /// The host as ssh wants it last on its command line.
    nonisolated var hostArgument: String { config.host }

    /// The `rsync -e` value: ssh with the client options, quoted the way rsync splits it.
    public nonisolated var rsyncShell: String {
        (["ssh"] + clientOptions).map(Self.rsyncWord).joined(separator: " ")
    }

    /// `host:` for rsync (IPv6 literals bracketed).
    nonisolated var rsyncHost: String {
        config.host.contains(":") ? "[\(config.host)]:" : "\(config.host):"
    }

    // MARK: - the master

    /// Makes sure the master connection is up, opening it if needed (one attempt at a time for
    /// all callers, within the budget, after the backoff of earlier failures).
    ///
    /// While the host is unreachable this keeps trying, spaced by the backoff, for up to
    /// `reconnectPatienceSec` (a short outage, such as an sshd restart, costs a worker no
    /// delivery), then throws the last transient error. Permanent errors (host key, login) are
    /// thrown at once.
    public func ensureMaster() async throws {
        let started = timing.now()
        while true {
            if masterUp { return }
            do {
                if let connecting {
                    try await connecting.value
                } else {
                    let task = Task { try await self.establish() }
                    connecting = task
                    defer { connecting = nil }
                    try await task.value
                }
                return
            } catch let error as TransportError where error.isTransient && timing.now() - started < reconnectPatienceSec {
                try Task.checkCancellation()
                continue
            }
        }
    }

    /// Called by a client that found the master gone.
    func masterLost(_ reason: String) {
        guard masterUp else { return }
        masterUp = false
        logger.warning("the SSH connection to \(destination) was lost: \(reason); it will be re-established",
                       metadata: ["ssh.host": "\(config.host)"])
    }

    private func establish() async throws {
        if await checkMaster() {
            markUp(reused: true)
            return
        }
        let now = timing.now()
        if failures > 0, now < nextAttemptAt {
            if let lastFailure, !lastFailure.isTransient { throw lastFailure }
            let wait = nextAttemptAt - now
            logger.debug("waiting \(String(format: "%.1f", wait)) s before reconnecting to \(destination)")
            try await timing.sleep(wait)
        }
        let budgetWait = budget.waitTime(now: timing.now())
        if budgetWait > 0 {
            logger.warning("connection budget for \(destination) spent (\(budget.limit) new connections per minute): waiting \(String(format: "%.1f", budgetWait)) s",
                           metadata: ["ssh.host": "\(config.host)"])
            try await timing.sleep(budgetWait)
        }
        _ = budget.take(now: timing.now())
        connectionsOpened += 1
        // A socket left by a master that died would make the new master run without one.
        unlink(controlPath)
        let error = await startMaster()
        if error == nil, await checkMaster() {
            markUp(reused: false)
            return
        }
        let failure = error ?? TransportError("ssh to \(destination): the master connection did not come up", transient: true)
        failures += 1
        let delay = timing.jitter(0...retry.ceiling(attempt: failures))
        nextAttemptAt = timing.now() + delay
        lastFailure = failure
        if failure.isTransient { reachability.markUnreachable(reason: failure.message) }
        logger.warning("cannot connect to \(destination) (\(failures) failed attempt(s)); next attempt not before \(String(format: "%.1f", delay)) s: \(failure)",
                       metadata: ["ssh.host": "\(config.host)"])
        throw failure
    }

    private func markUp(reused: Bool) {
        masterUp = true
        reachability.markReachable()
        if !reused { onConnectionOpened() }
        if failures > 0 || !reused {
            logger.info(reused ? "reusing the SSH master connection to \(destination)"
                               : "opened the SSH master connection to \(destination) (\(budget.used(now: timing.now())) new connection(s) in the last minute)",
                        metadata: ["ssh.host": "\(config.host)"])
        }
        failures = 0
        lastFailure = nil
    }

    /// `ssh -M -N -f`: returns once the master is authenticated and in the background. Its
    /// stderr goes to a file (a pipe would stay open for as long as the master runs).
    private func startMaster() async -> TransportError? {
        let log = (controlPath as NSString).deletingLastPathComponent + "/master.log"
        let limit = config.connectTimeoutSec * 2 + 5
        // posix_spawn and waitpid, not Foundation's Process: the master forks into the
        // background and Process would not see the foreground ssh exit while the master lives.
        let arguments = ["ssh"] + masterOptions + ["-f", "-N", hostArgument]
        let pid: pid_t
        do {
            pid = try Self.spawn(arguments, stderrPath: log)
        } catch {
            return error as? TransportError ?? TransportError("cannot run ssh: \(error)")
        }
        let deadline = timing.now() + limit
        var status: Int32 = 0
        while true {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid || (reaped < 0 && errno != EINTR) { break }
            if timing.now() > deadline {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                return TransportError("ssh to \(destination): no connection within \(Int(limit)) s (timeout)", transient: true)
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        let exitStatus: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        if exitStatus == 0 { return nil }
        let text = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        return Self.classify(status: exitStatus, stderr: text, destination: destination, knownHosts: config.knownHostsFile)
    }

    /// Starts `/usr/bin/env arguments...` with stdin and stdout on /dev/null and stderr into `stderrPath`.
    static func spawn(_ arguments: [String], stderrPath: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, stderrPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let argv = (["/usr/bin/env"] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, "/usr/bin/env", &actions, nil, argv, environ)
        guard result == 0 else { throw TransportError("cannot run ssh: \(String(cString: strerror(result)))") }
        return pid
    }

    /// `ssh -O check`: whether a master answers on the control socket (no connection is made).
    public nonisolated func checkMaster() async -> Bool {
        guard FileManager.default.fileExists(atPath: controlPath) else { return false }
        let output = try? await SSHProcess.run("/usr/bin/env", ["ssh"] + baseOptions + ["-O", "check", hostArgument], timeoutSec: 10)
        return output?.status == 0
    }

    /// Stops the master (tests, benchmarks; the daemon leaves it to ControlPersist), and the
    /// remote shells with it.
    public func closeMaster() async {
        shells.closeAll()
        _ = try? await SSHProcess.run("/usr/bin/env", ["ssh"] + baseOptions + ["-O", "exit", hostArgument], timeoutSec: 10)
        masterUp = false
    }

    // MARK: - commands

    /// Runs `script` with `/bin/sh` on the HPC, with `arguments` as `$1`, `$2`, ... and `stdin`
    /// on its standard input, through the master: the only way anything runs there.
    ///
    /// The account's login shell (bash, dash, zsh, tcsh, csh, ...) parses whatever ssh sends,
    /// so what is sent is one line that every such shell passes on unchanged: `/bin/sh -c` with
    /// a fixed single-quoted one-line program, and the script (prefixed by `set -- ARGUMENTS`,
    /// quoted for /bin/sh) as base64 words. No newline, no `!`, no quote of the script ever
    /// meets the login shell.
    ///
    /// A failure of the connection (the master is gone) throws a transient `TransportError`
    /// after marking the master down; when `idempotent`, the script is run once more on a
    /// re-established master first. A non-zero exit of the script itself is returned.
    ///
    /// The script runs in one of the connection's long-lived remote shells when one is free (or
    /// comes free within a moment), with the same status, outputs and stdin; in a session of its
    /// own when none is, or when the shell fails before it took the script.
    nonisolated func runScript(_ script: String, arguments: [String] = [], stdin: Data? = nil, timeoutSec: Double,
                               idempotent: Bool = true) async throws -> SSHProcessOutput {
        // Built first even when a shell runs the script: a script too long for a session of its
        // own is refused whatever the shells' state.
        let command = try Self.scriptCommand(script, arguments: arguments)
        if shells.enabled,
           let output = try await runInShell(Self.program(script, arguments: arguments), stdin: stdin, timeoutSec: timeoutSec, idempotent: idempotent) {
            return output
        }
        return try await run(command, stdin: stdin, timeoutSec: timeoutSec, idempotent: idempotent)
    }

    /// What /bin/sh runs for `runScript`: the arguments set, then the script.
    static func program(_ script: String, arguments: [String]) -> String {
        // `set --` even without arguments: the script must not see the loader's words as `$@`.
        (["set --"] + arguments.map(ShellQuote.quote)).joined(separator: " ") + "\n" + script
    }

    /// Runs the program in a long-lived remote shell; nil when it is to run in a plain session
    /// (no shell free, shells held off after a failure, or the shell failed before it took it).
    private nonisolated func runInShell(_ program: String, stdin: Data?, timeoutSec: Double, idempotent: Bool) async throws -> SSHProcessOutput? {
        try await ensureMaster()
        guard let lease = await shells.checkout() else { return nil }
        let shell: SSHShell
        switch lease {
        case .shell(let idle):
            shell = idle
        case .start:
            do {
                shell = try SSHShell(arguments: ["ssh"] + clientOptions + [hostArgument, try Self.scriptCommand(SSHShell.serverScript, arguments: [])])
            } catch {
                shells.discard(nil, shellFault: true)
                logger.debug("cannot start a remote shell on \(destination): \(error)", metadata: ["ssh.host": "\(config.host)"])
                return nil
            }
        }
        guard let exchange = await shell.run(program: Data(program.utf8), stdin: stdin ?? Data(), nonce: shells.nextNonce(), timeoutSec: timeoutSec) else {
            shells.discard(shell, shellFault: false)
            if Task.isCancelled { throw CancellationError() }
            // The command may still run there: end the shell's session (its process group).
            await killRemoteSession(of: shell)
            throw TransportError("ssh to \(destination): the command did not finish within \(Int(timeoutSec)) s (timeout)", transient: true)
        }
        switch exchange {
        case .done(let output):
            shells.checkin(shell)
            return output
        case .notStarted(let reason):
            shells.discard(shell, shellFault: true)
            logger.debug("the remote shell on \(destination) did not take a command (\(reason)\(shell.sshMessage.isEmpty ? "" : "; ssh said: " + shell.sshMessage)); it runs in a session of its own",
                         metadata: ["ssh.host": "\(config.host)"])
            return nil
        case .lost(let reason):
            shells.discard(shell, shellFault: true)
            let detail = reason + (shell.sshMessage.isEmpty ? "" : "; ssh said: " + shell.sshMessage)
            logger.debug("the remote shell on \(destination) ended during a command: \(detail)", metadata: ["ssh.host": "\(config.host)"])
            // Run again in a session of its own only what may run twice (as after a lost connection).
            if idempotent { return nil }
            if await checkMaster() {
                throw TransportError("ssh to \(destination): the remote shell ended while the command ran (\(detail)); it may or may not have completed",
                                     transient: true)
            }
            await masterLost(detail)
            throw TransportError("ssh to \(destination): the connection was lost (\(detail))", transient: true)
        }
    }

    /// After a timeout in a shell: TERM, then KILL a second later, to the remote shell's session
    /// (the shell and whatever it ran; a step started with `setsid` has a session of its own), in
    /// a plain session. Best effort, at most 5 s: the timeout is reported either way.
    private nonisolated func killRemoteSession(of shell: SSHShell) async {
        guard let group = shell.remoteGroup, let leader = Int(group), leader > 1 else { return }
        let script = #"""
            [ "$(ps -o sid= -p "$1" 2>/dev/null | tr -d ' ')" = "$1" ] || exit 0
            kill -s TERM -- "-$1" 2>/dev/null
            (sleep 1; kill -s KILL -- "-$1") < /dev/null > /dev/null 2>&1 &
            exit 0
            """#
        guard let command = try? Self.scriptCommand(script, arguments: [String(leader)]) else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { _ = try? await self.run(command, timeoutSec: 5) }
            group.addTask { try? await Task.sleep(for: .seconds(5)) }
            await group.next()
            group.cancelAll()
        }
    }

    /// Long-lived remote shells started so far (each one ssh session).
    package nonisolated var persistentShellsStarted: Int { shells.shellsStarted }

    /// The local ssh processes of the idle long-lived shells (tests check none outlives `closeMaster`).
    package nonisolated var persistentShellProcesses: [Int32] { shells.idlePids }

    /// The program /bin/sh runs: decode the base64 words (its `$@`) and run the result. A host
    /// without `base64` fails (status 127) instead of silently running nothing.
    static let scriptLoader = #"s=$(printf %s "$@" | base64 -d) && eval "$s""#

    /// Linux refuses a single argument over 128 KiB (`MAX_ARG_STRLEN`), and sshd hands the whole
    /// command line to the login shell as one argument.
    static let maxCommandLength = 120_000

    /// The remote command line of `runScript`: `/bin/sh -c '<loader>' mqi-script <base64 words>`.
    static func scriptCommand(_ script: String, arguments: [String]) throws -> String {
        let program = Self.program(script, arguments: arguments)
        let encoded = Data(program.utf8).base64EncodedString()
        // Words of at most 1000 characters: old csh-family shells limit the length of one word.
        var words: [Substring] = []
        var start = encoded.startIndex
        while start < encoded.endIndex {
            let end = encoded.index(start, offsetBy: 1000, limitedBy: encoded.endIndex) ?? encoded.endIndex
            words.append(encoded[start..<end])
            start = end
        }
        let command = "/bin/sh -c \(ShellQuote.quote(scriptLoader)) mqi-script " + words.joined(separator: " ")
        guard command.utf8.count <= maxCommandLength else {
            throw TransportError("a remote script of \(program.utf8.count) bytes is too long for one ssh command line (at most about \(maxCommandLength * 3 / 4) bytes)")
        }
        return command
    }

    /// Runs `remoteCommand` (one string, parsed by the remote login shell) through the master.
    /// Private: every caller goes through `runScript`, whose command line does not depend on
    /// the login shell; a command line built by hand breaks on tcsh accounts.
    private nonisolated func run(_ remoteCommand: String, stdin: Data? = nil, timeoutSec: Double, idempotent: Bool = true) async throws -> SSHProcessOutput {
        var tries = 0
        while true {
            tries += 1
            try await ensureMaster()
            let output = try await SSHProcess.run("/usr/bin/env", ["ssh"] + clientOptions + [hostArgument, remoteCommand], stdin: stdin,
                                                  timeoutSec: timeoutSec)
            if output.timedOut {
                throw TransportError("ssh to \(destination): the command did not finish within \(Int(timeoutSec)) s (timeout)", transient: true)
            }
            guard output.status == 255 else { return output }
            // 255 is ssh's own failure, or the remote command's exit status: ask the master.
            if await checkMaster() { return output }
            await masterLost(output.stderrText.isEmpty ? "ssh exit 255" : output.stderrText)
            if !idempotent || tries >= 2 {
                throw TransportError("ssh to \(destination): the connection was lost (\(output.stderrText.isEmpty ? "ssh exit 255" : output.stderrText))",
                                     transient: true)
            }
        }
    }

    /// After an rsync failure that may be the connection's fault: true (and the master marked
    /// down) when the master is gone.
    nonisolated func connectionLost(_ reason: String) async -> Bool {
        if await checkMaster() { return false }
        await masterLost(reason)
        return true
    }

    // MARK: - helpers

    /// A transport error for an ssh failure: host key problems and refused authentication are
    /// permanent (a person must act), everything else (refused, unreachable, timeout, closed) is
    /// transient.
    public static func classify(status: Int32, stderr: String, destination: String, knownHosts: String?) -> TransportError {
        let text = stderr.isEmpty ? "exit status \(status)" : stderr
        if text.contains("Host key verification failed") || text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            || text.contains("host key for") && text.contains("has changed") {
            return TransportError("""
                ssh to \(destination): host key verification failed — the server's key is not in \(knownHosts ?? "the known_hosts file") \
                or does not match it. It is never accepted automatically: check the key's fingerprint with the HPC's administrator \
                and add it to hpc.ssh.known_hosts_file. ssh said: \(text)
                """, transient: false)
        }
        if text.contains("Permission denied") || text.contains("Too many authentication failures") {
            return TransportError("ssh to \(destination): authentication refused (check hpc.ssh.user and hpc.ssh.identity_file). ssh said: \(text)",
                                  transient: false)
        }
        return TransportError("ssh to \(destination) failed (exit \(status)): \(text)", transient: true)
    }

    /// 16 hex digits identifying the connection (user, host, port, keys, options): a master is
    /// shared only by clients that would have made the same connection.
    static func identity(_ config: SSHConfig) -> String {
        let key = [String(getuid()), config.host, String(config.port), config.user ?? "", config.identityFile ?? "", config.knownHostsFile ?? "",
                   String(config.strictHostKeyChecking), config.extraOptions.joined(separator: "\u{1}")].joined(separator: "\u{0}")
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in key.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }

    static func makePrivateDirectory(_ path: String) throws {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw TransportError("cannot create the SSH control directory \(path): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR, info.st_uid == getuid() else {
            throw TransportError("the SSH control directory \(path) is not a directory owned by this user; remove it")
        }
        chmod(path, 0o700)
    }

    /// An ssh option value with spaces, double-quoted as ssh's option parser expects.
    static func optionValue(_ value: String) -> String {
        value.contains(" ") ? "\"\(value)\"" : value
    }

    /// One word of rsync's `-e` command (rsync splits on spaces and honours quotes).
    static func rsyncWord(_ word: String) -> String {
        if !word.isEmpty, !word.contains(where: { " '\"\\".contains($0) }) { return word }
        if !word.contains("'") { return "'\(word)'" }
        return "\"\(word)\""
    }
}
