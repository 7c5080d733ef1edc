import Foundation
import MQICore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A private OpenSSH server on 127.0.0.1 and a free port, for tests: its own host key, a user
/// key authorized for root (or for a plain account with a chosen login shell),
/// `AuthorizedKeysFile` and `PidFile` in a temp dir, its log (`-e`) in `logPath`. `stop()`,
/// `killAll()` (the listener and its children: a server crash) and `restart()` on the same port.
public final class SSHServer: Sendable {
    public let temp: TemporaryDirectory
    public let port: Int
    /// The account the client logs in as: `root`, `mqihpc-<shell>` (see `init(loginShell:)`), or
    /// `mqislow-<shell>` (`slowLogin`).
    public let user: String
    public var configPath: String { temp.file("sshd_config") }
    public var logPath: String { temp.file("sshd.log") }
    public var knownHostsPath: String { temp.file("known_hosts") }
    public var userKeyPath: String { temp.file("user_key") }
    public var hostKeyPath: String { temp.file("host_key") }
    private let listener = Mutex<pid_t?>(nil)

    /// sshd, ssh, rsync and ssh-keygen are installed (a condition for tests).
    public static var isAvailable: Bool {
        ["/usr/sbin/sshd", "/usr/bin/ssh", "/usr/bin/rsync", "/usr/bin/ssh-keygen"].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// `loginShell` nil: log in as root. Otherwise as the plain account `mqihpc-<shell name>`
    /// (`mqihpc-tcsh` for `/usr/bin/tcsh`) whose login shell is `loginShell`, created if missing
    /// (`useradd -m`, unlocked for key login). The key file is readable by that account (sshd
    /// reads it as the user); what the account must write to, give it with `giveToUser(_:)`.
    /// `extraConfig`: more sshd_config lines (e.g. `SetEnv SLURM_CONF=…` for the sessions).
    /// `slowLogin`: log in as the account `mqislow-<shell name>` (bash, zsh or tcsh; bash when
    /// `loginShell` is nil) whose rc file sleeps that many seconds and counts each login shell's
    /// start-up (`loginShellStarts`), standing in for an HPC account that loads environment
    /// modules; the other accounts are left alone.
    public init(loginShell: String? = nil, extraConfig: String = "", slowLogin: Double? = nil) throws {
        temp = try TemporaryDirectory("mqi-sshd")
        port = try Self.freePort()
        var extraConfig = extraConfig
        if let slowLogin {
            let shell = loginShell ?? "/bin/bash"
            user = try Self.ensureAccount(loginShell: shell, prefix: "mqislow-")
            try Self.installLoginHook(user: user, shell: shell)
            FileManager.default.createFile(atPath: temp.file("logins"), contents: nil)
            chmod(temp.file("logins"), 0o666)
            extraConfig += "\nSetEnv MQI_LOGIN_COUNTER=\(temp.file("logins")) MQI_LOGIN_SLEEP=\(slowLogin)\n"
        } else if let loginShell {
            user = try Self.ensureAccount(loginShell: loginShell)
        } else {
            user = "root"
        }
        try Self.keygen(hostKeyPath)
        try Self.keygen(userKeyPath)
        try FileManager.default.copyItem(atPath: userKeyPath + ".pub", toPath: temp.file("authorized_keys"))
        chmod(temp.path, 0o755)
        chmod(temp.file("authorized_keys"), 0o644)
        try """
            Port \(port)
            ListenAddress 127.0.0.1
            HostKey \(hostKeyPath)
            AuthorizedKeysFile \(temp.file("authorized_keys"))
            StrictModes no
            UsePAM no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            MaxStartups 100:30:200
            MaxSessions 100
            UseDNS no
            PrintMotd no
            PidFile \(temp.file("sshd.pid"))
            \(extraConfig)
            """.write(toFile: configPath, atomically: true, encoding: .utf8)
        let hostKey = try String(contentsOfFile: hostKeyPath + ".pub", encoding: .utf8).split(separator: " ").prefix(2).joined(separator: " ")
        try "[127.0.0.1]:\(port) \(hostKey)\n".write(toFile: knownHostsPath, atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        let check = try Self.run("/usr/sbin/sshd", ["-t", "-f", configPath])
        guard check.status == 0 else { throw TestSupportError("sshd -t rejected \(configPath): \(check.output)") }
    }

    /// The client side: `user` with the user key, the server's key in `knownHosts`.
    public func sshConfig(knownHosts: String? = nil, maxNewConnectionsPerMin: Int = 6, connectTimeoutSec: Double = 5) -> SSHConfig {
        SSHConfig(host: "127.0.0.1", port: port, user: user, identityFile: userKeyPath, knownHostsFile: knownHosts ?? knownHostsPath,
                  strictHostKeyChecking: true, connectTimeoutSec: connectTimeoutSec, maxNewConnectionsPerMin: maxNewConnectionsPerMin)
    }

    /// The `hpc:` section of a config for this server.
    public func hpcYAML(gpus: [Int], knownHosts: String? = nil) -> String {
        """
        hpc:
          transport: ssh
          gpus: [\(gpus.map(String.init).joined(separator: ", "))]
          ssh:
            host: 127.0.0.1
            port: \(port)
            user: \(user)
            identity_file: \(ShellQuote.quote(userKeyPath))
            known_hosts_file: \(ShellQuote.quote(knownHosts ?? knownHostsPath))
            connect_timeout_sec: 5
            max_new_connections_per_min: 6
        """
    }

    /// The login shells of the installed shells among `candidates` (for tests over several shells).
    public static func installedShells(_ candidates: [String] = ["/bin/bash", "/usr/bin/tcsh", "/usr/bin/zsh", "/bin/dash"]) -> [String] {
        candidates.filter { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Login shells started in this server's sessions so far (with `slowLogin`; 0 otherwise):
    /// every ssh session (a command, an rsync, a long-lived shell) starts one.
    public var loginShellStarts: Int {
        ((try? String(contentsOfFile: temp.file("logins"), encoding: .utf8)) ?? "").split(separator: "\n").count
    }

    /// The hook in the account's rc file (the one its shell reads for `ssh host command`): with
    /// `MQI_LOGIN_COUNTER` and `MQI_LOGIN_SLEEP` in the session's environment (set by the
    /// server's `SetEnv`), one line appended to the counter and a sleep.
    static func installLoginHook(user: String, shell: String) throws {
        guard let entry = getpwnam(user) else { throw TestSupportError("no account \(user)") }
        let home = String(cString: entry.pointee.pw_dir)
        let uid = entry.pointee.pw_uid, gid = entry.pointee.pw_gid
        let marker = "# mqi-login-hook"
        let rcFile: String, hook: String
        switch (shell as NSString).lastPathComponent {
        case "bash":
            rcFile = home + "/.bashrc"
            hook = #"[ -z "$MQI_LOGIN_COUNTER" ] || echo login >> "$MQI_LOGIN_COUNTER"; [ -z "$MQI_LOGIN_SLEEP" ] || sleep "$MQI_LOGIN_SLEEP""#
        case "zsh":
            rcFile = home + "/.zshenv"
            hook = #"[ -z "$MQI_LOGIN_COUNTER" ] || echo login >> "$MQI_LOGIN_COUNTER"; [ -z "$MQI_LOGIN_SLEEP" ] || sleep "$MQI_LOGIN_SLEEP""#
        case "tcsh", "csh":
            rcFile = home + "/.tcshrc"
            hook = "if ( $?MQI_LOGIN_COUNTER ) echo login >> \"$MQI_LOGIN_COUNTER\"\nif ( $?MQI_LOGIN_SLEEP ) sleep $MQI_LOGIN_SLEEP"
        default:
            throw TestSupportError("slowLogin needs a bash, zsh or tcsh account (\(shell) reads no rc file for ssh commands)")
        }
        try accountLock.withLock { _ in
            let old = (try? String(contentsOfFile: rcFile, encoding: .utf8)) ?? ""
            guard !old.contains(marker) else { return }
            // First: Debian's .bashrc returns early for non-interactive shells.
            try (marker + "\n" + hook + "\n" + old).write(toFile: rcFile, atomically: true, encoding: .utf8)
            _ = chown(rcFile, uid, gid)
            chmod(rcFile, 0o644)
        }
    }

    /// Creates (once) the account `<prefix><shell name>` (`mqihpc-tcsh`) with `loginShell`,
    /// unlocked for key login.
    static func ensureAccount(loginShell: String, prefix: String = "mqihpc-") throws -> String {
        guard FileManager.default.isExecutableFile(atPath: loginShell) else {
            throw TestSupportError("the login shell \(loginShell) is not installed (scripts/test installs tcsh)")
        }
        let name = prefix + (loginShell as NSString).lastPathComponent
        try accountLock.withLock { _ in
            if let entry = getpwnam(name) {
                if String(cString: entry.pointee.pw_shell) != loginShell {
                    let changed = try run("/usr/sbin/usermod", ["-s", loginShell, name])
                    guard changed.status == 0 else { throw TestSupportError("usermod -s \(loginShell) \(name) failed: \(changed.output)") }
                }
            } else {
                let added = try run("/usr/sbin/useradd", ["-m", "-s", loginShell, name])
                // Another test process may have made it at the same moment.
                guard added.status == 0 || getpwnam(name) != nil else { throw TestSupportError("useradd \(name) failed: \(added.output)") }
            }
            // A new account is locked (`!`): sshd refuses it even with a key.
            let unlocked = try run("/usr/sbin/usermod", ["-p", "*", name])
            guard unlocked.status == 0 else { throw TestSupportError("usermod -p '*' \(name) failed: \(unlocked.output)") }
        }
        return name
    }

    private static let accountLock = Mutex<Void>(())

    /// Gives `paths` (recursively) to the login account, so remote commands can write there.
    public func giveToUser(_ paths: String...) throws {
        guard user != "root" else { return }
        for path in paths {
            let result = try Self.run("/bin/chown", ["-R", "\(user):", path])
            guard result.status == 0 else { throw TestSupportError("chown -R \(user): \(path) failed: \(result.output)") }
        }
    }

    /// A known_hosts file that lists another key for this server (a mismatch).
    public func writeMismatchedKnownHosts() throws -> String {
        let other = temp.file("other_host_key")
        if !FileManager.default.fileExists(atPath: other) { try Self.keygen(other) }
        let key = try String(contentsOfFile: other + ".pub", encoding: .utf8).split(separator: " ").prefix(2).joined(separator: " ")
        let path = temp.file("known_hosts_wrong")
        try "[127.0.0.1]:\(port) \(key)\n".write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Starts the listener. posix_spawn, not Foundation's Process: sshd closes the descriptor
    /// Process watches, and Process's monitor thread would then block on it until sshd exits.
    public func start() async throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        let words: [String] = ["/usr/sbin/sshd", "-D", "-e", "-f", configPath]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, "/usr/sbin/sshd", &actions, nil, argv, environ)
        guard result == 0 else { throw TestSupportError("cannot start sshd: \(String(cString: strerror(result)))") }
        listener.withLock { $0 = pid }
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if Self.canConnect(port) { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestSupportError("sshd did not listen on 127.0.0.1:\(port): \((try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")")
    }

    /// SIGTERM to the listener and its children (their sessions end).
    public func stop() {
        signalAll(SIGTERM)
    }

    /// SIGKILL to the listener and every process below it: established connections (and the
    /// client's ControlMaster with them) drop, as when the server crashes.
    public func killAll() {
        signalAll(SIGKILL)
    }

    public func restart() async throws {
        try await start()
    }

    /// "Accepted publickey" lines in the log: one per new connection.
    public var acceptedConnections: Int {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        return text.components(separatedBy: "Accepted publickey").count - 1
    }

    public func remove() {
        stop()
        temp.remove()
    }

    private func signalAll(_ signal: Int32) {
        guard let root = listener.withLock({ $0 }) else { return }
        // Only the server's own processes: killing the user's shells too could leave their
        // start-up files half done (pyenv's rehash lock in root's .bashrc here), and every later
        // ssh session would wait on it.
        for pid in Self.descendants(of: root).reversed() where Self.command(of: pid) == "sshd" { kill(pid, signal) }
        kill(root, signal)
        var status: Int32 = 0
        _ = waitpid(root, &status, 0)
        listener.withLock { $0 = nil }
    }

    static func command(of pid: pid_t) -> String? {
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Every process below `root`, parents before children.
    static func descendants(of root: pid_t) -> [pid_t] {
        var children: [pid_t: [pid_t]] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = pid_t(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, let parent = pid_t(fields[1]) { children[parent, default: []].append(pid) }
        }
        var result: [pid_t] = [], queue = [root]
        while let next = queue.first {
            queue.removeFirst()
            for child in children[next] ?? [] {
                result.append(child)
                queue.append(child)
            }
        }
        return result
    }

    static func canConnect(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestSupportError("socket() failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw TestSupportError("cannot find a free port on 127.0.0.1") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func keygen(_ path: String) throws {
        let result = try run("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "mqi-test", "-f", path])
        guard result.status == 0 else { throw TestSupportError("ssh-keygen failed: \(result.output)") }
    }

    static func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        try runProcess(executable, arguments)
    }
}
