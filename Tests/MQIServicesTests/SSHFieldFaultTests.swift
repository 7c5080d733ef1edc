import Foundation
import MQICore
import MQIStore
import MQITestSupport
@testable import MQITransport
import Testing
@testable import MQIServices
#if canImport(Glibc)
import Glibc
#endif

/// Field faults over ssh, against a real sshd and a plain login account (bash): a case cancelled
/// while the HPC host is down, and a recorded pid that names another process on the host.
@Suite(.serialized, .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync (scripts/test installs them)"))
struct SSHFieldFaultTests {
    /// A site with one case whose `simulate` step sleeps 300 s on the "HPC" (this machine over
    /// ssh as `server.user`), one GPU. Returns the config path.
    static func site(_ temp: TemporaryDirectory, _ server: SSHServer) throws -> String {
        let caseDir = temp.file("site/data/CASE-1")
        try FileManager.default.createDirectory(atPath: caseDir, withIntermediateDirectories: true)
        try "plan\n".write(toFile: caseDir + "/plan.txt", atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: caseDir + "/_CASE_READY", contents: nil)
        for hpc in ["upload", "download"] {
            try FileManager.default.createDirectory(atPath: temp.file("site/hpc/\(hpc)"), withIntermediateDirectories: true)
        }
        try server.giveToUser(temp.file("site/hpc"))
        // Failed connection attempts during the outage count against the budget too; the default
        // (6 a minute) would make the reconnection wait for it (see OutageTests).
        let hpc = server.hpcYAML(gpus: [0]).replacingOccurrences(of: "max_new_connections_per_min: 6", with: "max_new_connections_per_min: 30")
        let configPath = temp.file("site/config.yaml")
        try ("""
            scanner: { local_logdata: ./data, ready_marker: _CASE_READY, quiet_period_sec: 0, rescan_interval_sec: 30, workflow: long }
            state: { database: ./var/mqi.sqlite, pid_file: ./var/mqi.pid, logs_dir: ./var/logs }
            conductor:
              remote_paths: { upload_dir: ./hpc/upload, download_dir: ./hpc/download }
              results_dir: ./var/results
            workflows:
              long:
                - { name: upload_case_files, type: upload, progress: 10 }
                - { name: simulate, type: execute, progress: 50 }
                - { name: download_results, type: download, progress: 90 }
            remote_commands:
              simulate: "sleep 300"
            retry: { max_attempts: 2, initial_delay_sec: 0.2, max_delay_sec: 1, multiplier: 2 }
            logging: { level: info }
            metrics: { host: 127.0.0.1, port: 0 }
            gpu_monitor: { enabled: false }

            """ + hpc + "\n").write(toFile: configPath, atomically: true, encoding: .utf8)
        return configPath
    }

    /// `mqi ARGS --config CONFIG`: exit status and output (posix_spawn: Foundation's Process can
    /// hang in a process that also started sshd).
    static func cli(_ arguments: [String], config: String, output: String) async throws -> (status: Int32?, output: String) {
        try? FileManager.default.removeItem(atPath: output)
        let pid = try ServiceAccount.spawn([try mqiExecutable()] + arguments + ["--config", config], output: output)
        let status = await ServiceAccount.wait(pid, upTo: 30)
        return (status, (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
    }

    /// The HPC host goes down while a step runs; the operator cancels the case meanwhile. The GPU
    /// stays draining (with the reason) until the host is back and the step's process group is
    /// gone; nothing is dead-lettered and the case stays CANCELLED.
    @Test(.timeLimit(.minutes(3)))
    func aCaseCancelledWhileTheHostIsDownIsStoppedWhenItIsBack() async throws {
        let server = try SSHServer(loginShell: "/bin/bash")
        defer { server.remove() }
        try await server.start()
        let temp = try TemporaryDirectory("mqi-ssh-cancel")
        defer { temp.remove() }
        let configPath = try Self.site(temp, server)
        let config = try ConfigLoader.load(path: configPath)
        let log = temp.file("daemon.log")
        let daemon = try ServiceAccount.spawn([try mqiExecutable(), "run", "--config", configPath, "--log-format", "text"], output: log)
        var stepGroup: pid_t?
        defer {
            kill(daemon, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(daemon, &status, 0)
            if let stepGroup { kill(-stepGroup, SIGKILL) }
        }
        func output() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        let runDir = RunDirectories(uploadDir: config.conductor.uploadDir).runDirectory(caseId: "CASE-1", step: "simulate", attempt: 1)
        #expect(await eventually(within: 60) {
            stepGroup = (try? String(contentsOfFile: runDir + "/pid", encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            return stepGroup != nil
        }, "the step never started: \(output().suffix(2000))")
        let group = try #require(stepGroup)
        #expect(LocalStepExecutor.groupAlive(group))
        let store = try Daemon.openStore(config)

        // The host goes down (sshd and its connections, the daemon's ControlMaster with them).
        server.killAll()
        let down = Date()
        #expect(await eventually(within: 30) { (try? await store.hosts().first?.reachable) == false }, "the outage is not recorded: \(output().suffix(2000))")

        let cancel = try await Self.cli(["cases", "cancel", "CASE-1"], config: configPath, output: temp.file("cancel.txt"))
        #expect(cancel.status == 0, "\(cancel.output)")
        #expect(await eventually(within: 20) { (try? await store.gpus().first?.status) == .draining }, "\(output().suffix(2000))")
        // The stop cannot be confirmed while the host is down: `mqi gpus` says what it waits for and why.
        var gpus = (status: Int32?.none, output: "")
        let explained = await eventually(within: 20) {
            gpus = (try? await Self.cli(["gpus"], config: configPath, output: temp.file("gpus.txt"))) ?? (nil, "")
            return gpus.output.contains("draining: waits for CASE-1 attempt 1 to stop (") && gpus.output.contains("stop not confirmed yet: the HPC host 127.0.0.1 is unreachable since")
        }
        #expect(explained, "\(gpus.output)\n\(output().suffix(2000))")
        print("SSHFieldFaultTests: mqi gpus during the outage: \(gpus.output.split(separator: "\n").filter { $0.contains("draining") })")
        #expect(LocalStepExecutor.groupAlive(group), "the step kept running on the host while it could not be reached")
        #expect(try await store.caseSummary("CASE-1")?.status == .cancelled)

        // The host is back: the step is killed, the GPU freed.
        try await Task.sleep(for: .seconds(max(0, 8 - Date().timeIntervalSince(down))))
        try await server.restart()
        let back = Date()
        #expect(await eventually(within: 60) { !LocalStepExecutor.groupAlive(group) }, "the cancelled step still runs: \(output().suffix(2000))")
        let killed = Date().timeIntervalSince(back)
        let free = await eventually(within: 60) { (try? await store.gpus().allSatisfy { $0.status == .free }) == true }
        let gpuStates = (try? await store.gpus()).map { $0.map { "\($0.gpuId): \($0.status.rawValue) \($0.holder ?? "")" } } ?? []
        #expect(free, "\(gpuStates)\n\(output().suffix(2000))")
        let freed = Date().timeIntervalSince(back)
        print("SSHFieldFaultTests: sshd back; step killed after \(String(format: "%.2f", killed)) s, GPU free after \(String(format: "%.2f", freed)) s")
        #expect(FileManager.default.fileExists(atPath: runDir + "/stopped"))
        try await Task.sleep(for: .seconds(1))
        #expect(try await store.caseSummary("CASE-1")?.status == .cancelled)
        #expect(try await store.deadLetters().isEmpty)
        let history = try await store.history("CASE-1").map(\.message)
        #expect(history.contains { $0.contains("confirmed stopped") }, "\(history)")
    }

    /// A run directory whose `identity` says its `pid` belonged to another process (another
    /// boot, or this boot with another start time) while that pid now names a live process
    /// group of the login account: the ssh executor treats the attempt as ended without an exit
    /// code and does not signal the group. A control run with the true identity shows the
    /// account could have killed it.
    @Test(.timeLimit(.minutes(4)))
    func aReusedPidIsNeitherWaitedOnNorSignalledOverSSH() async throws {
        let server = try SSHServer(loginShell: "/bin/bash")
        defer { server.remove() }
        try await server.start()
        let temp = try TemporaryDirectory("mqi-ssh-field")
        defer { temp.remove() }
        let upload = temp.file("upload")
        try FileManager.default.createDirectory(atPath: upload, withIntermediateDirectories: true)
        try server.giveToUser(upload)
        let connection = try SSHConnection(config: server.sshConfig(), retry: RetryPolicy(maxAttempts: 3, initialDelaySec: 0.2, maxDelaySec: 1),
                                           logger: CapturedLogs().logger(level: .info), reconnectPatienceSec: 5)
        let executor = SSHStepExecutor(connection: connection, uploadDir: upload, pollInterval: 0.1, killGraceSec: 1,
                                       logger: CapturedLogs().logger(level: .info))

        // The unrelated process group, the login account's own (so the account could signal it).
        let victimFile = upload + "/victim.pid"
        let spawned = try await connection.runScript(#"setsid -f /bin/sh -c 'echo $$ > "$1"; exec sleep 60' mqi-victim "$1" < /dev/null > /dev/null 2>&1"#,
                                                     arguments: [victimFile], timeoutSec: 20)
        #expect(spawned.status == 0, "\(spawned.stderrText)")
        var victimPid: pid_t?
        _ = FieldFaultTests.waitUntil {
            victimPid = (try? String(contentsOfFile: victimFile, encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            return victimPid.map { getpgid($0) == $0 } ?? false
        }
        let victim = try #require(victimPid, "the unrelated process did not start")
        defer { kill(-victim, SIGKILL) }
        #expect(try FileManager.default.attributesOfItem(atPath: "/proc/\(victim)")[.ownerAccountName] as? String == server.user)

        func prepare(_ caseId: String, identity: String) throws -> StepRun {
            let run = StepRun(caseId: caseId, step: "sim", attempt: 1, command: "true", gpuIds: [0], timeoutSec: nil,
                              logPath: temp.file("logs/\(caseId).log"))
            let runDir = executor.runDirectory(run)
            try FileManager.default.createDirectory(atPath: executor.caseDirectory(run), withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
            try identity.write(toFile: runDir + "/identity", atomically: true, encoding: .utf8)
            try "\(victim)\n".write(toFile: runDir + "/pid", atomically: true, encoding: .utf8)
            try server.giveToUser(upload)
            return run
        }

        for (index, (label, identity)) in try FieldFaultTests.foreignIdentities(of: victim).enumerated() {
            let run = try prepare("CASE-\(index)", identity: identity)
            // Adopt: the recorded group is not this attempt's, so the attempt ended (without an exit code).
            let started = Date()
            let outcome = try await executor.execute(run) { false }
            guard case .failed(let reason) = outcome else { Issue.record("\(label): expected an ended attempt, got \(outcome)"); continue }
            #expect(reason.contains("without recording an exit code"), "\(label): \(reason)")
            #expect(Date().timeIntervalSince(started) < 25, "\(label): waited on an unrelated process")
            // Stop: not ours to signal.
            try await executor.stop(run)
            try await Task.sleep(for: .milliseconds(300))
            #expect(LocalStepExecutor.processAlive(victim), "\(label): the unrelated process was signalled")
            #expect(FileManager.default.fileExists(atPath: executor.runDirectory(run) + "/stopped"))
        }

        // Control: with its true identity the group is this attempt's, and the stop kills it.
        let truth = try prepare("CASE-own", identity: "\(try FieldFaultTests.bootID()) \(try FieldFaultTests.startTime(victim))\n")
        try await executor.stop(truth)
        #expect(FieldFaultTests.waitUntil { !LocalStepExecutor.processAlive(victim) }, "the control stop did not kill the account's own process group")
        await connection.closeMaster()
    }
}
