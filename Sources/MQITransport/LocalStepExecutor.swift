import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Runs execute steps on this machine, detached, in `{upload_dir}/{case_id}`, under a run
/// directory `{upload_dir}/.mqi-runs/{case_id}/{step}.{attempt}/` (`RunDirectories`) that holds
/// `pid` (the process group) and, once the command ends, `exit_code`. A restarted daemon finds
/// the directory and adopts the attempt instead of starting it again; an attempt that an older
/// version started under `{case_id}/.mqi/` is adopted (and stopped) there.
public struct LocalStepExecutor: StepExecutor {
    public var uploadDir: String
    /// How often cancellation and adopted processes are checked.
    public var pollInterval: Double
    /// How long a process group gets between SIGTERM and SIGKILL.
    public var killGraceSec: Double

    public init(uploadDir: String, pollInterval: Double = 0.25, killGraceSec: Double = 3) {
        self.uploadDir = uploadDir
        self.pollInterval = pollInterval
        self.killGraceSec = killGraceSec
    }

    var layout: RunDirectories { RunDirectories(uploadDir: uploadDir) }

    /// Where a new attempt's run directory goes.
    public func runDirectory(_ run: StepRun) -> String {
        layout.runDirectory(caseId: run.caseId, step: run.runName, attempt: run.attempt)
    }

    /// The attempt's run directory as it is: the new location, or the old one inside the case
    /// directory when only that exists (an attempt started before an upgrade).
    func existingRunDirectory(_ run: StepRun) -> String {
        let current = runDirectory(run)
        let legacy = layout.legacyRunDirectory(caseId: run.caseId, step: run.runName, attempt: run.attempt)
        let files = FileManager.default
        return !files.fileExists(atPath: current) && files.fileExists(atPath: legacy) ? legacy : current
    }

    public func execute(_ run: StepRun, shouldCancel: @escaping @Sendable () async -> Bool) async throws -> StepOutcome {
        let runDir = existingRunDirectory(run)
        let files = FileManager.default
        if files.fileExists(atPath: runDir) {
            // Adopt: this attempt was started before (by this daemon before a restart).
            if let code = Self.readExitCode(runDir) { return StepOutcome.exited(code, run) }
            // Stopped (cancelled, failed, retried) before or while it ran: the stop kills what is left.
            if files.fileExists(atPath: runDir + "/stopped") { return .cancelled }
            if try await readPid(runDir, waitUpTo: 2) == nil {
                // The daemon died between creating the directory and starting the command.
                try files.removeItem(atPath: runDir)
                return try await execute(run, shouldCancel: shouldCancel)
            }
            let attributes = try? files.attributesOfItem(atPath: runDir)
            let started = attributes?[.modificationDate] as? Date ?? Date()
            return try await supervise(run, runDir: runDir, exited: nil, started: started, shouldCancel: shouldCancel)
        }
        // The command runs in the case directory (created here as before, when it ran inside it).
        try files.createDirectory(atPath: layout.caseDirectory(run.caseId), withIntermediateDirectories: true)
        try files.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        try files.createDirectory(atPath: (run.logPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        for file in run.inputFiles {
            do {
                try files.createDirectory(atPath: (file.path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try Data(file.content.utf8).write(to: URL(fileURLWithPath: file.path), options: .atomic)
            } catch {
                try? files.removeItem(atPath: runDir)
                throw TransportError("cannot write input file \(file.path): \(error.localizedDescription)")
            }
        }
        let exited = try spawn(run, runDir: runDir)
        return try await supervise(run, runDir: runDir, exited: exited, started: Date(), shouldCancel: shouldCancel)
    }

    /// Waits for the attempt's end (its own child, or an adopted process group), its timeout or
    /// its cancellation.
    func supervise(_ run: StepRun, runDir: String, exited: OneShot?, started: Date, shouldCancel: @escaping @Sendable () async -> Bool) async throws -> StepOutcome {
        // Set before the process group is killed, so the exit that follows reports why.
        let verdict = Verdict()
        return try await withThrowingTaskGroup(of: StepOutcome?.self) { group in
            group.addTask {
                if let exited {
                    await exited.wait()
                    // Shutdown: stop waiting, leave the command running for the next daemon.
                    if !exited.hasFired { throw CancellationError() }
                } else {
                    try await self.waitForAdopted(runDir)
                }
                if let decided = verdict.value.withLock({ $0 }) { return decided }
                guard let code = Self.readExitCode(runDir) else {
                    return .failed(reason: "the command's process group ended without recording an exit code (killed by a signal?)")
                }
                return StepOutcome.exited(code, run)
            }
            group.addTask {
                while true {
                    try await Task.sleep(for: .seconds(self.pollInterval))
                    var decided: StepOutcome?
                    if await shouldCancel() {
                        decided = .cancelled
                    } else if let timeout = run.timeoutSec, Date().timeIntervalSince(started) >= timeout {
                        decided = .failed(reason: "timed out after \(Self.format(timeout)) s (timeout_sec); the process group was killed")
                    }
                    if let decided {
                        verdict.value.withLock { $0 = decided }
                        // Cancelled within moments of the start: the wrapper records its process
                        // group first thing; wait for that rather than kill nothing.
                        if let exited, !exited.hasFired { _ = try? await self.readPid(runDir, waitUpTo: 2) }
                        guard await self.killGroup(runDir) else {
                            throw TransportError("the process group of \(run.step) attempt \(run.attempt) of case \(run.caseId) is still alive after SIGKILL",
                                                 transient: true)
                        }
                        return decided
                    }
                }
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let outcome = first else {
                throw CancellationError()
            }
            return outcome
        }
    }

    /// Starts the wrapper in a new session; the returned signal fires when it exits.
    func spawn(_ run: StepRun, runDir: String) throws -> OneShot {
        let wrapperArguments = ["-c", Self.stepWrapper, "mqi-step", runDir, run.logPath, run.command]
        let arguments = ["-w", "/bin/sh"] + wrapperArguments
        var environment = ProcessInfo.processInfo.environment
        environment.merge(run.environment) { $1 }
        let caseDir = layout.caseDirectory(run.caseId)
        // The wrapper shell itself leads a new session (what `setsid -w` did, without its process).
        let spawned: pid_t?
        do {
            spawned = try StepSpawner.spawn("/bin/sh", arguments: wrapperArguments, environment: environment, directory: caseDir)
        } catch {
            throw TransportError("cannot start step \(run.step) of case \(run.caseId): \(error)")
        }
        if let pid = spawned {
            let exited = OneShot()
            StepSpawner.reap(pid) { exited.fire() }
            return exited
        }
        // posix_spawn's chdir/closefrom extensions are missing (glibc < 2.34): Foundation's Process.
        let exited = OneShot()
        let process = Process()
        process.terminationHandler = { _ in exited.fire() }
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
        process.arguments = arguments
        process.environment = environment
        process.currentDirectoryURL = URL(fileURLWithPath: caseDir)
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw TransportError("cannot start step \(run.step) of case \(run.caseId): \(error.localizedDescription)")
        }
        return exited
    }

    /// `RunDirectories.stepWrapper`'s protocol (`identity`, `pid`, `stopped`, `exit_code`), with
    /// the command run by a subshell of the wrapper instead of a new `/bin/sh`: a fork without
    /// an exec, one program start fewer on the way to every step's command. The subshell runs it
    /// as `sh -c` would: no positional parameters, none of the wrapper's names, and its `exit`
    /// or `exec` ends only the subshell, so the wrapper still records the exit code.
    static let stepWrapper = RunDirectories.recordIdentity + #"""
        echo $$ > "$1/pid" || exit 127
        if [ -e "$1/stopped" ]; then echo 143 > "$1/exit_code"; exit 143; fi
        ( unset -f mqi_identity; unset d b s; eval "set --
        $3" ) > "$2" 2>&1 < /dev/null
        code=$?
        echo $code > "$1/exit_code"
        exit $code
        """#

    func waitForAdopted(_ runDir: String) async throws {
        while Self.readExitCode(runDir) == nil {
            guard let pid = Self.readPidNow(runDir), Self.isOurs(runDir, pid), Self.groupAlive(pid) else { return }
            try await Task.sleep(for: .seconds(pollInterval))
        }
    }

    func readPid(_ runDir: String, waitUpTo seconds: Double) async throws -> pid_t? {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let pid = Self.readPidNow(runDir) { return pid }
            try await Task.sleep(for: .milliseconds(50))
        }
        return Self.readPidNow(runDir)
    }

    static func readPidNow(_ runDir: String) -> pid_t? {
        guard let text = try? String(contentsOfFile: runDir + "/pid", encoding: .utf8), text.hasSuffix("\n") else { return nil }
        return pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    static func readExitCode(_ runDir: String) -> Int32? {
        guard let text = try? String(contentsOfFile: runDir + "/exit_code", encoding: .utf8), text.hasSuffix("\n") else { return nil }
        return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    public func stop(_ run: StepRun) async throws {
        let runDir = existingRunDirectory(run)
        // No run directory and no case directory (never uploaded, or removed): nothing of this
        // attempt can run. With the case there, the run directory is created with `stopped`, so
        // a start that comes later does not run the command.
        guard FileManager.default.fileExists(atPath: runDir) || FileManager.default.fileExists(atPath: layout.caseDirectory(run.caseId)) else { return }
        do {
            try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
            try Data("\n".utf8).write(to: URL(fileURLWithPath: runDir + "/stopped"))
        } catch {
            throw TransportError("cannot mark \(runDir) stopped: \(error.localizedDescription)")
        }
        guard Self.readExitCode(runDir) == nil, let pgid = Self.readPidNow(runDir), Self.isOurs(runDir, pgid) else { return }
        guard await killGroup(runDir) else {
            throw TransportError("the process group \(pgid) of \(run.step) attempt \(run.attempt) of case \(run.caseId) is still alive after SIGKILL",
                                 transient: true)
        }
    }

    /// SIGTERM to the whole process group, SIGKILL after the grace period, and waits until no
    /// process of the group is left. False if one is still alive after all.
    @discardableResult
    func killGroup(_ runDir: String) async -> Bool {
        guard let pgid = Self.readPidNow(runDir), pgid > 1 else { return true }
        // A pid from before a reboot, or reused since: not ours to signal.
        guard Self.isOurs(runDir, pgid) else { return true }
        // Members that exist before the group signal all receive it. A process that joins the
        // group afterwards (forked by a shell that had already taken its SIGTERM, e.g. one whose
        // TERM trap was pending while it started `sleep &`) never saw it and would otherwise live
        // out the whole grace period: each newcomer gets a SIGTERM of its own.
        var signalled = Set(Self.groupMembers(pgid) ?? [])
        _ = kill(-pgid, SIGTERM)
        let deadline = Date().addingTimeInterval(killGraceSec)
        while Date() < deadline {
            guard let members = Self.groupMembers(pgid) else { try? await Task.sleep(for: .milliseconds(50)); continue }
            if members.isEmpty { break }
            for pid in members where !signalled.contains(pid) {
                signalled.insert(pid)
                _ = kill(pid, SIGTERM)
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        // Bounded: a zombie nobody reaps would otherwise keep the group "alive" forever.
        let hardDeadline = Date().addingTimeInterval(10)
        while Self.groupAlive(pgid), Date() < hardDeadline {
            _ = kill(-pgid, SIGKILL)
            try? await Task.sleep(for: .milliseconds(20))
        }
        return !Self.groupAlive(pgid)
    }

    /// This boot's id.
    static let bootID: String? = (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
        .trimmingCharacters(in: .whitespacesAndNewlines)

    /// The start time (clock ticks since boot) of `pid`, if it exists.
    static func startTime(_ pid: pid_t) -> String? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 19 ? String(fields[19]) : nil
    }

    /// Whether `pgid` recorded in `runDir` still names the attempt's process group: recorded in
    /// this boot, and its leader (if it still exists) is the process that was started then.
    /// A run directory without `identity` (written by an older version) is trusted.
    static func isOurs(_ runDir: String, _ pgid: pid_t) -> Bool {
        guard let text = try? String(contentsOfFile: runDir + "/identity", encoding: .utf8), text.hasSuffix("\n") else { return true }
        let recorded = text.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
        guard recorded.count == 2 else { return true }
        if let boot = bootID, !recorded[0].isEmpty, boot != recorded[0] { return false }
        if let start = startTime(pgid), start != recorded[1] { return false }
        return true
    }

    /// Whether any live (non-zombie) process is in the group. `kill(-pgid, 0)` alone is not
    /// enough: a zombie nobody reaps (PID 1 in some containers) still counts for it.
    public static func groupAlive(_ pgid: pid_t) -> Bool {
        guard kill(-pgid, 0) == 0 || errno == EPERM else { return false }
        guard let members = groupMembers(pgid) else { return true }
        return !members.isEmpty
    }

    /// The live (non-zombie) processes of the group, from /proc; nil when /proc cannot be read.
    static func groupMembers(_ pgid: pid_t) -> [pid_t]? {
        guard kill(-pgid, 0) == 0 || errno == EPERM else { return [] }
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return nil }
        var members: [pid_t] = []
        for entry in entries where entry.first?.isNumber == true {
            guard let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // After "pid (comm) ": state ppid pgrp ...
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 2, fields[2] == "\(pgid)", fields[0] != "Z", let pid = pid_t(entry) { members.append(pid) }
        }
        return members
    }

    /// Whether `pid` is a live process (not gone, not a zombie).
    public static func processAlive(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 || errno == EPERM else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(after: close)...].split(separator: " ").first != "Z"
    }

    static func format(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }
}


/// An event that happens once; waiters before and after it are all released. A waiting task
/// that is cancelled stops waiting.
public final class OneShot: Sendable {
    private struct State {
        var fired = false
        var nextId = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    public func fire() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.fired = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    public var hasFired: Bool { state.withLock { $0.fired } }

    public func wait() async {
        let id = state.withLock { state -> Int in
            state.nextId += 1
            return state.nextId
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if state.fired || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }
}

/// Why the executor ended an attempt itself (cancel, timeout), shared between its watchers.
final class Verdict: Sendable {
    let value = Mutex<StepOutcome?>(nil)
}

/// Starts step wrappers with `posix_spawn` directly, each in a new session, and reaps each on a
/// thread of its own.
///
/// Every process a step starts costs milliseconds on a busy 2-core host, and they are all on the
/// path from one step's end to the next one's start. The old path ran six (`setsid`, its fork,
/// the wrapper, `mv` of the pid file, the command's shell, `mv` of the exit code); this one runs
/// three (the wrapper in its own session, the command's shell, and the command). mqi-bench
/// measured on 2 cores: 143–148 → 183–192 steps/s, step overhead p50 41–45 → 30–36 ms.
///
/// It also avoids Foundation's `Process` for steps: on Linux it learns of an exit through a
/// socket the child inherits and closes the parent's other descriptors from a list taken before
/// the spawn, so a descriptor another thread opens meanwhile can leak into a long-running step.
/// Here the child gets /dev/null on 0–2 and nothing else (`closefrom(3)`), and its exit is
/// observed with `waitpid`.
package enum StepSpawner {
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32

    /// glibc's extensions, looked up at run time (Swift's Glibc module does not declare them).
    private static let extensions: (closeFrom: AddCloseFrom, chdir: AddChdir)? = {
        guard let handle = dlopen(nil, RTLD_NOW),
              let closeFrom = dlsym(handle, "posix_spawn_file_actions_addclosefrom_np"),
              let chdir = dlsym(handle, "posix_spawn_file_actions_addchdir_np") else { return nil }
        return (unsafeBitCast(closeFrom, to: AddCloseFrom.self), unsafeBitCast(chdir, to: AddChdir.self))
    }()

    /// The child's pid, or nil when posix_spawn lacks the extensions this needs. Stdout and
    /// stderr go to `output` when given (else /dev/null), truncated first unless `appendOutput`;
    /// a step leads a session of its own, a tool the tests run to its end (`runProcess`) need not.
    package static func spawn(_ path: String, arguments: [String], environment: [String: String], directory: String,
                              output: String? = nil, appendOutput: Bool = false, newSession: Bool = true) throws -> pid_t? {
        guard let extensions else { return nil }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The child leads a new session, and so its own process group (POSIX_SPAWN_SETSID, glibc 2.26),
        // with default signal handling and nothing blocked: the daemon ignores SIGTERM/SIGINT (the
        // service lifecycle handles them) and SIGPIPE, and an ignored signal would be inherited,
        // so the step would shrug off the SIGTERM of a cancel or timeout.
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        posix_spawnattr_setflags(&attributes, Int16((newSession ? 0x80 : 0) | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        var status: Int32 = 0
        if let output {
            status = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            if status == 0 { status = posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | (appendOutput ? O_APPEND : O_TRUNC), 0o600) }
            if status == 0 { status = posix_spawn_file_actions_adddup2(&actions, 1, 2) }
        } else {
            for fd: Int32 in 0...2 where status == 0 {
                status = posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0)
            }
        }
        if status == 0 { status = extensions.chdir(&actions, directory) }
        if status == 0 { status = extensions.closeFrom(&actions, 3) }
        guard status == 0 else { throw TransportError("cannot prepare to start \(path): \(String(cString: strerror(status)))") }
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        status = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
        guard status == 0 else { throw TransportError("cannot start \(path): \(String(cString: strerror(status)))") }
        return pid
    }

    /// Waits for `pid` on a dedicated thread (a blocking `waitpid`, never on the cooperative
    /// pool) and calls `exited` once it is gone.
    static func reap(_ pid: pid_t, exited: @escaping @Sendable () -> Void) {
        let thread = Thread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1, errno == EINTR {}
            exited()
        }
        thread.stackSize = 64 * 1024
        thread.start()
    }
}
