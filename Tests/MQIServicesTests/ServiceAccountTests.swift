import Foundation
import MQICore
import MQIStore
import MQITestSupport
import MQITransport
import Testing
@testable import MQIServices
#if canImport(Glibc)
import Glibc
#endif

/// Accounts and child processes for running the real `mqi` binary as another user.
enum ServiceAccount {
    /// The daemon's account (the README's `mqi`) and the account that writes the case files.
    static let daemon = "mqisvc"
    static let sender = "mqisender"

    /// Root, with useradd, runuser and chown: the tests can switch accounts.
    static var canSwitchUsers: Bool {
        getuid() == 0 && ["/usr/sbin/useradd", "/usr/sbin/runuser", "/bin/chown"].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Creates `name` (with a home directory, for ssh) unless it exists; returns its uid.
    @discardableResult
    static func ensure(_ name: String) throws -> uid_t {
        if let uid = uid(of: name) { return uid }
        let made = try run(["/usr/sbin/useradd", "-m", "-s", "/bin/sh", name])
        guard let uid = uid(of: name) else { throw TestSupportError("useradd \(name) failed (exit \(made.status)): \(made.output)") }
        return uid
    }

    static func uid(of name: String) -> uid_t? {
        getpwnam(name).map { $0.pointee.pw_uid }
    }

    static func owner(_ path: String) -> uid_t? {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_uid : nil
    }

    static func chown(_ path: String, to user: String) throws {
        let result = try run(["/bin/chown", "-R", "\(user):", path])
        guard result.status == 0 else { throw TestSupportError("chown -R \(user) \(path): \(result.output)") }
    }

    /// Runs a short command to its end, blocking; stdout and stderr together. posix_spawn, not
    /// Foundation's Process (which can hang in a process that also started sshd).
    static func run(_ argv: [String]) throws -> (status: Int32, output: String) {
        let output = (NSTemporaryDirectory() as NSString).appendingPathComponent("mqi-run-\(UUID().uuidString.prefix(8)).txt")
        defer { unlink(output) }
        let pid = try spawn(argv, output: output)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1, errno == EINTR {}
        return (exitStatus(status), (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
    }

    /// Starts `argv` with stdout and stderr appended to `output`.
    static func spawn(_ argv: [String], output: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let words = argv.map { strdup($0) } + [nil]
        defer { words.forEach { free($0) } }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, argv[0], &actions, nil, words, environ)
        guard result == 0 else { throw TestSupportError("cannot start \(argv[0]): \(String(cString: strerror(result)))") }
        return pid
    }

    /// The exit status of `pid`, or nil (and the process killed) if it ran past `seconds`.
    static func wait(_ pid: pid_t, upTo seconds: Double) async -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        var status: Int32 = 0
        while Date() < deadline {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid { return exitStatus(status) }
            if reaped < 0 && errno != EINTR { return nil }
            try? await Task.sleep(for: .milliseconds(50))
        }
        kill(pid, SIGKILL)
        _ = waitpid(pid, &status, 0)
        return nil
    }

    static func exitStatus(_ status: Int32) -> Int32 {
        (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// `mqi ARGS` as the daemon's account.
    static func mqiCommand(_ arguments: [String]) throws -> [String] {
        ["/usr/sbin/runuser", "-u", daemon, "--", try mqiExecutable()] + arguments
    }

    /// A demo site laid out as a service install has it: everything belongs to the daemon's
    /// account except the cases, which the sender wrote (world-readable, not writable by the
    /// daemon). One case file is read-only and dated in the past, to see modes and times travel.
    static func site(cases: Int, gpus: [Int] = [0, 1], prefix: String) throws -> (temp: TemporaryDirectory, site: DemoSite, sample: String) {
        try ensure(daemon)
        try ensure(sender)
        let temp = try TemporaryDirectory(prefix)
        chmod(temp.path, 0o755)
        let site = try DemoSite.create(at: temp.file("site"), cases: cases, gpus: gpus)
        // The tests look at the uploaded copies afterwards: keep them on the "HPC".
        let config = try String(contentsOfFile: site.configPath, encoding: .utf8)
        try config.replacingOccurrences(of: "\nconductor:\n", with: "\n  cleanup: never\nconductor:\n")
            .write(toFile: site.configPath, atomically: true, encoding: .utf8)
        try chown(site.directory, to: daemon)
        let logdata = temp.file("site/data/local_logdata")
        try chown(logdata, to: sender)
        let permissions = try run(["/bin/chmod", "-R", "u=rwX,go=rX", logdata])
        guard permissions.status == 0 else { throw TestSupportError("chmod: \(permissions.output)") }
        let first = (logdata as NSString).appendingPathComponent(DemoSite.caseID(1))
        guard let plan = try FileManager.default.contentsOfDirectory(atPath: first).first(where: { $0.hasPrefix("RP.") }) else {
            throw TestSupportError("no RP*.dcm in \(first)")
        }
        let sample = DemoSite.caseID(1) + "/" + plan
        let samplePath = (logdata as NSString).appendingPathComponent(sample)
        chmod(samplePath, 0o444)
        var times = [timespec(tv_sec: 1_577_934_245, tv_nsec: 0), timespec(tv_sec: 1_577_934_245, tv_nsec: 0)]
        _ = utimensat(AT_FDCWD, samplePath, &times, 0)
        return (temp, site, sample)
    }

    static func modeAndTime(_ path: String) -> (mode: mode_t, mtime: Int)? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return (info.st_mode & 0o7777, info.st_mtim.tv_sec)
    }
}

/// The daemon runs as the account the README installs (`User=mqi` in the unit), not as root,
/// against case files another account wrote and everyone may read: every case completes on both
/// transports, and no copy tries to keep the files' owner (a non-root account cannot chown).
@Suite(.serialized, .enabled(if: ServiceAccount.canSwitchUsers, "needs root, useradd and runuser to run the daemon as a service account"))
struct ServiceAccountTests {
    /// Runs the site's daemon as the service account until it is idle; the output on failure.
    static func runDaemon(_ site: DemoSite, temp: TemporaryDirectory, seconds: Double = 150) async throws {
        let log = temp.file("daemon.log")
        let pid = try ServiceAccount.spawn(try ServiceAccount.mqiCommand(["run", "--config", site.configPath, "--exit-when-idle", "--log-format", "text"]),
                                           output: log)
        let status = await ServiceAccount.wait(pid, upTo: seconds)
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(status == 0, "mqi run as \(ServiceAccount.daemon): exit \(status.map(String.init) ?? "none (killed)"): \(output.suffix(3000))")
    }

    /// Every case COMPLETED; the copies on the "HPC" and the results belong to `hpcOwner` and
    /// to the daemon, never to the sender; the sample file kept its mode and time.
    static func expectCompleted(_ site: DemoSite, cases: Int, sample: String, hpcOwner: uid_t) async throws {
        let config = try ConfigLoader.load(path: site.configPath)
        let store = try Daemon.openStore(config)
        let all = try await store.cases()
        #expect(all.count == cases)
        #expect(all.allSatisfy { $0.status == .completed }, "\(all.filter { $0.status != .completed }.map { "\($0.caseId): \($0.status.rawValue) \($0.error ?? "")" })")
        let daemonUID = try #require(ServiceAccount.uid(of: ServiceAccount.daemon))
        let senderUID = try #require(ServiceAccount.uid(of: ServiceAccount.sender))
        let source = (config.scanner.localLogdata as NSString).appendingPathComponent(sample)
        #expect(ServiceAccount.owner(source) == senderUID, "the premise: the sender owns the case files")
        let uploaded = (config.conductor.uploadDir as NSString).appendingPathComponent(sample)
        #expect(ServiceAccount.owner(uploaded) == hpcOwner, "\(uploaded) belongs to uid \(ServiceAccount.owner(uploaded).map(String.init) ?? "?")")
        let copied = ServiceAccount.modeAndTime(uploaded)
        #expect(copied?.mode == 0o444, "mode kept: \(String(copied?.mode ?? 0, radix: 8))")
        #expect(copied?.mtime == 1_577_934_245, "mtime kept")
        for summary in all {
            let results = (config.conductor.resultsDir as NSString).appendingPathComponent(summary.caseId)
            #expect(ResultManifest.verifyResults(at: results))
            #expect(ServiceAccount.owner(results) == daemonUID)
            for file in (try? FileManager.default.subpathsOfDirectory(atPath: results)) ?? [] {
                let owner = ServiceAccount.owner((results as NSString).appendingPathComponent(file))
                #expect(owner == daemonUID, "\(summary.caseId)/\(file) belongs to uid \(owner.map(String.init) ?? "?")")
            }
        }
        #expect(try await store.gpus().allSatisfy { $0.status == .free })
        #expect(try await store.deadLetters().isEmpty)
    }

    @Test(.timeLimit(.minutes(3)))
    func localTransportCompletesEveryCaseAsTheServiceAccount() async throws {
        let (temp, site, sample) = try ServiceAccount.site(cases: 4, prefix: "mqi-svc-local")
        defer { temp.remove() }
        try await Self.runDaemon(site, temp: temp)
        let daemonUID = try #require(ServiceAccount.uid(of: ServiceAccount.daemon))
        try await Self.expectCompleted(site, cases: 4, sample: sample, hpcOwner: daemonUID)
    }

    /// ssh: the daemon's ssh and rsync run as the service account (its own key and known_hosts,
    /// mode 600); the HPC login is root here, which `rsync -a` would have made chown every
    /// uploaded file to the sender's uid. The copies belong to the login account instead.
    @Test(.timeLimit(.minutes(4)), .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync"))
    func sshTransportCompletesEveryCaseAsTheServiceAccount() async throws {
        let server = try SSHServer()
        defer { server.stop(); server.remove() }
        try await server.start()
        let (temp, site, sample) = try ServiceAccount.site(cases: 3, prefix: "mqi-svc-ssh")
        defer { temp.remove() }
        let key = temp.file("site/ssh_key"), knownHosts = temp.file("site/known_hosts")
        try FileManager.default.copyItem(atPath: server.userKeyPath, toPath: key)
        try FileManager.default.copyItem(atPath: server.knownHostsPath, toPath: knownHosts)
        for file in [key, knownHosts] {
            try ServiceAccount.chown(file, to: ServiceAccount.daemon)
            chmod(file, 0o600)
        }
        var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        text = text.replacingOccurrences(of: "hpc:\n  transport: local\n  gpus: [0, 1]", with: """
            hpc:
              transport: ssh
              gpus: [0, 1]
              ssh:
                host: 127.0.0.1
                port: \(server.port)
                user: root
                identity_file: \(ShellQuote.quote(key))
                known_hosts_file: \(ShellQuote.quote(knownHosts))
                connect_timeout_sec: 5
                max_new_connections_per_min: 6
            """)
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        try ServiceAccount.chown(site.configPath, to: ServiceAccount.daemon)
        #expect(try ConfigLoader.load(path: site.configPath).hpc.transport == .ssh)
        try await Self.runDaemon(site, temp: temp, seconds: 200)
        try await Self.expectCompleted(site, cases: 3, sample: sample, hpcOwner: 0)
    }

    /// The unit the README installs, checked by systemd itself (with ExecStart pointing at the
    /// built binary, which `verify` requires to exist).
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze"),
                   "systemd-analyze is not installed: deploy/mqi-communicator.service is NOT checked"))
    func unitFilePassesSystemdAnalyzeVerify() throws {
        let unit = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../deploy/mqi-communicator.service").standardizedFileURL.path
        let text = try String(contentsOfFile: unit, encoding: .utf8)
        #expect(text.contains("\nUser=mqi\n"), "the unit runs the daemon as the mqi account")
        #expect(text.contains("ExecStart=/usr/local/bin/mqi run --config "))
        let temp = try TemporaryDirectory("mqi-unit")
        defer { temp.remove() }
        let copy = temp.file("mqi-communicator.service")
        try text.replacingOccurrences(of: "ExecStart=/usr/local/bin/mqi ", with: "ExecStart=\(try mqiExecutable()) ")
            .write(toFile: copy, atomically: true, encoding: .utf8)
        let result = try ServiceAccount.run(["/usr/bin/systemd-analyze", "verify", copy])
        // verify exits 0 even for unknown keys and bad values: any line about the unit is a finding.
        let findings = result.output.split(separator: "\n").filter { $0.contains("mqi-communicator") }
        #expect(result.status == 0 && findings.isEmpty, "systemd-analyze verify: exit \(result.status): \(result.output)")
    }
}
