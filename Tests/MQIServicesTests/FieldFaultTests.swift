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

/// Faults seen in the field, caused for real: a pid reused after a reboot, a lease taken over by
/// another worker.
@Suite(.serialized)
struct FieldFaultTests {
    /// An unrelated process group of our own making (`setsid sleep 30`): what a recorded pid may
    /// name after a reboot or once pids wrapped around.
    static func unrelatedGroup(_ temp: TemporaryDirectory) throws -> pid_t {
        let pid = try ServiceAccount.spawn(["/usr/bin/setsid", "/bin/sleep", "30"], output: temp.file("unrelated.log"))
        // setsid execs sleep in a new session when its caller is not a group leader: pid == pgid.
        _ = waitUntil { getpgid(pid) == pid }
        return pid
    }

    static func waitUntil(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }

    static func reap(_ pid: pid_t) {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
    }

    static func bootID() throws -> String {
        try String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func startTime(_ pid: pid_t) throws -> String {
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        let fields = stat[stat.index(after: try #require(stat.lastIndex(of: ")")))...].split(separator: " ")
        return String(fields[19])
    }

    /// Identity lines that do not match the live process: another boot, or this boot with
    /// another leader start time (the pid was reused since).
    static func foreignIdentities(of pid: pid_t) throws -> [(String, String)] {
        let start = try startTime(pid)
        let otherStart = String((Int(start) ?? 0) + 1)
        return [("after a reboot", "00000000-1111-2222-3333-444444444444 \(start)\n"),
                ("same boot, pid reused", "\(try bootID()) \(otherStart)\n")]
    }

    @Test(.timeLimit(.minutes(3)))
    func aReusedPidIsNeitherWaitedOnNorSignalledLocally() async throws {
        let temp = try TemporaryDirectory("mqi-field")
        defer { temp.remove() }
        let victim = try Self.unrelatedGroup(temp)
        defer { Self.reap(victim) }
        let executor = LocalStepExecutor(uploadDir: temp.file("upload"), pollInterval: 0.05, killGraceSec: 1)
        for (index, (label, identity)) in try Self.foreignIdentities(of: victim).enumerated() {
            let run = StepRun(caseId: "CASE-\(index)", step: "sim", attempt: 1, command: "true", gpuIds: [0], timeoutSec: nil,
                              logPath: temp.file("logs/CASE-\(index).log"))
            let runDir = executor.runDirectory(run)
            try FileManager.default.createDirectory(atPath: temp.file("upload/CASE-\(index)"), withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
            try identity.write(toFile: runDir + "/identity", atomically: true, encoding: .utf8)
            try "\(victim)\n".write(toFile: runDir + "/pid", atomically: true, encoding: .utf8)

            // Adopt: the recorded group is not this attempt's, so the attempt ended (without an exit code).
            let started = Date()
            let outcome = try await executor.execute(run) { false }
            guard case .failed(let reason) = outcome else { Issue.record("\(label): expected an ended attempt, got \(outcome)"); continue }
            #expect(reason.contains("without recording an exit code"), "\(label): \(reason)")
            // The unrelated process sleeps 30 s: adoption must not wait for it (a loaded 2-core
            // machine has taken 5.4 s to answer).
            #expect(Date().timeIntervalSince(started) < 20, "\(label): waited on an unrelated process")
            // Stop: not ours to signal.
            try await executor.stop(run)
            try await Task.sleep(for: .milliseconds(300))
            #expect(LocalStepExecutor.processAlive(victim), "\(label): the unrelated process was signalled")
        }
    }

    /// A long step runs; another worker takes the message's lease (as a second daemon whose
    /// claim found the lease expired would). This daemon stops supervising the attempt, says so,
    /// publishes no result for it and leaves the step running for the new holder.
    @Test(.timeLimit(.minutes(4)))
    func aWorkerThatLosesItsLeaseStopsWorkingOnTheMessage() async throws {
        let temp = try TemporaryDirectory("mqi-lease")
        defer { temp.remove() }
        let caseDir = temp.file("site/data/CASE-1")
        try FileManager.default.createDirectory(atPath: caseDir, withIntermediateDirectories: true)
        try "plan\n".write(toFile: caseDir + "/plan.txt", atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: caseDir + "/_CASE_READY", contents: nil)
        let configPath = temp.file("site/config.yaml")
        try SampleConfigs.localSite(simCommand: "sleep 60", simStep: "simulate", scanner: "quiet_period_sec: 0, rescan_interval_sec: 30")
            .write(toFile: configPath, atomically: true, encoding: .utf8)
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
        let executor = LocalStepExecutor(uploadDir: config.conductor.uploadDir)
        let runDir = executor.runDirectory(StepRun(caseId: "CASE-1", step: "simulate", attempt: 1, command: "", gpuIds: [0],
                                                   timeoutSec: nil, logPath: ""))
        func output() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        #expect(await eventually(within: 30) {
            stepGroup = (try? String(contentsOfFile: runDir + "/pid", encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            return stepGroup != nil
        }, "the step never started: \(output().suffix(2000))")
        let group = try #require(stepGroup)

        // Another worker takes the lease, the way its claim would.
        let database = config.state.database
        func sql(_ statement: String) throws -> String {
            let out = temp.file("sqlite.out")
            let pid = try ServiceAccount.spawn(["/usr/bin/sqlite3", "-cmd", ".timeout 5000", database, statement], output: out)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1, errno == EINTR {}
            defer { unlink(out) }
            return (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        }
        _ = try sql("UPDATE messages SET lease_owner = 'other-host:4242', lease_expires_at = datetime('now', '+1 hour') WHERE kind = 'execute_command'")
        let owner = try sql("SELECT lease_owner FROM messages WHERE kind = 'execute_command'")
        #expect(owner.contains("other-host:4242"))
        let noticed = Date()
        // The lease is renewed every lease/3 (10 s): the daemon notices at its next renewal.
        #expect(await eventually(within: 20) { output().contains("lost the lease") }, "\(output().suffix(2000))")
        print("FieldFaultTests: the daemon noticed the lost lease after \(String(format: "%.1f", Date().timeIntervalSince(noticed))) s")
        try await Task.sleep(for: .seconds(1))

        // It stopped supervising: no result published, the message still the other worker's, the step untouched.
        let messages = try sql("SELECT kind || ':' || coalesce(lease_owner, '-') FROM messages")
        #expect(!messages.contains("execution_succeeded") && !messages.contains("execution_failed"), "\(messages)")
        #expect(messages.contains("execute_command:other-host:4242"), "\(messages)")
        let status = try sql("SELECT status FROM cases WHERE case_id = 'CASE-1'")
        #expect(status.contains("PROCESSING"), "\(status)")
        #expect(LocalStepExecutor.groupAlive(group), "the step was killed")
        #expect(!FileManager.default.fileExists(atPath: runDir + "/stopped"))
        #expect(!output().contains("process group was killed"))
    }
}
