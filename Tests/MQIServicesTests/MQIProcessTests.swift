import Foundation
import MQICore
import MQITransport
import MQITestSupport
import Testing
import MQIServices

/// The tests' handle on a real `mqi` process: its exit seen with `waitpid`, even when the
/// daemon's children outlive it.
struct MQIProcessTests {
    /// A site with one case whose simulation writes its pid to `stepPid` and sleeps 300 s.
    struct Site {
        let temp: TemporaryDirectory
        var config: String { temp.file("config.yaml") }
        var stepPid: String { temp.file("step.pid") }

        init() throws {
            temp = try TemporaryDirectory("mqi-process")
            let step = temp.file("step.sh")
            try """
                #!/bin/sh
                echo $$ > "$1.tmp" && mv "$1.tmp" "$1"
                exec sleep 300
                """.write(toFile: step, atomically: true, encoding: .utf8)
            try SampleConfigs.localSite(simCommand: "/bin/sh \(ShellQuote.quote(step)) \(ShellQuote.quote(stepPid))", simKeys: "timeout_sec: 600")
                .write(toFile: config, atomically: true, encoding: .utf8)
            try FileManager.default.createDirectory(atPath: temp.file("data"), withIntermediateDirectories: true)
        }

        func daemon() throws -> MQIProcess {
            try MQIProcess(["run", "--config", config, "--log-format", "text"], output: temp.file("daemon.log"))
        }

        /// The running step's pid, once it has written it.
        func step() -> Int32? {
            (try? String(contentsOfFile: stepPid, encoding: .utf8)).flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }

        /// Kills the step's process group (the step wrapper's session), never the tests' own.
        func killStep() {
            guard let pid = step() else { return }
            let group = getpgid(pid)
            if group > 1, group != getpgrp() { kill(-group, SIGKILL) } else { kill(pid, SIGKILL) }
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func exitStatusesAreReportedAndOutputIsAppended() async throws {
        let temp = try TemporaryDirectory("mqi-process")
        defer { temp.remove() }
        let output = temp.file("out.txt")
        try "earlier run\n".write(toFile: output, atomically: true, encoding: .utf8)

        let help = try MQIProcess(["--help"], output: output)
        #expect(await help.wait(upTo: 60) == 0, "\(help.output)")
        #expect(!help.isRunning && help.terminationStatus == 0 && help.terminationSignal == nil)
        // A usage error is ArgumentParser's exit code 64; the file keeps what was there.
        let wrong = try MQIProcess(["no-such-command"], output: output)
        #expect(await wrong.wait(upTo: 60) == 64, "\(wrong.output)")
        #expect(wrong.terminationSignal == nil)
        let text = help.output
        #expect(text.hasPrefix("earlier run\n"), "\(text)")
        #expect(text.contains("USAGE:") && text.contains("no-such-command"), "\(text)")
    }

    @Test(.timeLimit(.minutes(4)))
    func aKilledDaemonIsSeenGoneBySeveralWaitersAtOnce() async throws {
        let site = try Site()
        defer { site.temp.remove() }
        let daemon = try site.daemon()
        #expect(await eventually(within: 60) { daemon.output.contains("mqi daemon started") }, "\(daemon.output)")
        #expect(daemon.isRunning && daemon.terminationStatus == nil && daemon.terminationSignal == nil)
        #expect(await daemon.wait(upTo: 0.2) == nil, "a running daemon has no status")

        daemon.signal(SIGKILL)
        let killed = Date()
        // Several tasks wait at once: each sees the one status (reaped once).
        async let first = daemon.wait(upTo: 60)
        async let second = daemon.wait(upTo: 60)
        async let third = daemon.wait(upTo: 60)
        let statuses = await [first, second, third]
        let seconds = Date().timeIntervalSince(killed)
        #expect(statuses == [137, 137, 137], "\(statuses) after \(seconds) s")
        #expect(seconds < 50, "kill -9 seen \(seconds) s late")
        #expect(daemon.terminationSignal == SIGKILL && daemon.terminationStatus == 137 && !daemon.isRunning)
        #expect(!LocalStepExecutor.processAlive(daemon.pid), "/proc still shows the killed daemon: it was not reaped")
        // Signalling a reaped process sends nothing (its pid may be another's by now).
        daemon.signal(SIGKILL)
        #expect(await daemon.wait(upTo: 1) == 137)
    }

    @Test(.timeLimit(.minutes(3)))
    func aKilledDaemonWhoseStepRunsOnIsSeenGone() async throws {
        let site = try Site()
        defer { site.temp.remove() }
        defer { site.killStep() }
        try DemoSite.writeCase(named: "CASE-001", in: site.temp.file("data"), beams: 1)
        let daemon = try site.daemon()
        #expect(await eventually(within: 90) { site.step().map(LocalStepExecutor.processAlive) == true }, "the step never started:\n\(daemon.output.suffix(3000))")
        let step = try #require(site.step())

        daemon.signal(SIGKILL)
        let killed = Date()
        let status = await daemon.wait(upTo: 60)
        let seconds = Date().timeIntervalSince(killed)
        #expect(status == 137, "status \(String(describing: status)) \(seconds) s after kill -9:\n\(daemon.output.suffix(2000))")
        #expect(seconds < 50, "kill -9 seen \(seconds) s late")
        #expect(LocalStepExecutor.processAlive(step), "the step (its own session) outlives the daemon")
    }

    @Test(.timeLimit(.minutes(4)))
    func aDaemonStillRunningWhenItsHandleGoesIsKilled() async throws {
        let site = try Site()
        defer { site.temp.remove() }
        var daemon: MQIProcess? = try site.daemon()
        let pid = try #require(daemon?.pid)
        #expect(await eventually(within: 60) { daemon?.output.contains("mqi daemon started") == true })
        daemon = nil
        // Killed and reaped (on a thread of its own): /proc no longer shows it, not even as a zombie.
        #expect(await eventually(within: 30) { !LocalStepExecutor.processAlive(pid) && !FileManager.default.fileExists(atPath: "/proc/\(pid)") })
    }
}
