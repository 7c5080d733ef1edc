import Foundation
import MQICore
import MQIStore
import MQITransport
import MQITestSupport
import Testing
@testable import MQIServices

/// A stopped case's step never outlives the stop, and its GPU is not handed out before the stop
/// is confirmed: the real `mqi` binary, one GPU, the local transport, a real SQLite file.
@Suite(.serialized)
struct DurableStopTests {
    /// One GPU; each case carries its own `sim.sh` (run from its uploaded directory), which logs
    /// `start`, `end` or `killed` lines with nanosecond times to a ledger.
    struct Site {
        let temp: TemporaryDirectory
        var config: String { temp.file("config.yaml") }
        var ledger: String { temp.file("ledger.txt") }

        init() throws {
            temp = try TemporaryDirectory("mqi-stop")
            try SampleConfigs.localSite(simCommand: "/bin/sh ./sim.sh \(ShellQuote.quote(ledger)) {case_id} {result_dir}", simKeys: "timeout_sec: 300",
                                        retryAttempts: 3)
                .write(toFile: config, atomically: true, encoding: .utf8)
            try FileManager.default.createDirectory(atPath: temp.file("data"), withIntermediateDirectories: true)
        }

        /// A case whose simulation sleeps `seconds` and, on SIGTERM, takes `termSec` to exit.
        func addCase(_ name: String, seconds: Int, termSec: Int = 0) throws {
            let dir = temp.file("data/\(name)")
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try """
                #!/bin/sh
                # sim.sh LEDGER CASE OUT
                trap 'sleep \(termSec); echo "$2 killed $(date +%s%N)" >> "$1"; exit 143' TERM
                echo "$2 start $(date +%s%N) $$" >> "$1"
                sleep \(seconds) &
                wait $!
                mkdir -p "$3" && echo "dose of $2" > "$3/dose.txt"
                echo "$2 end $(date +%s%N)" >> "$1"
                """.write(toFile: dir + "/sim.sh", atomically: true, encoding: .utf8)
            try "x\n".write(toFile: dir + "/PlanInfo.txt", atomically: true, encoding: .utf8)
            try "".write(toFile: dir + "/_CASE_READY", atomically: true, encoding: .utf8)
        }

        struct Line {
            var caseId: String
            var event: String
            var ns: UInt64
            var pid: Int32?
        }

        func lines() -> [Line] {
            let text = (try? String(contentsOfFile: ledger, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { line in
                let parts = line.split(separator: " ")
                guard parts.count >= 3, let ns = UInt64(parts[2]) else { return nil }
                return Line(caseId: String(parts[0]), event: String(parts[1]), ns: ns, pid: parts.count > 3 ? Int32(parts[3]) : nil)
            }
        }

        func line(_ caseId: String, _ event: String) -> Line? {
            lines().first { $0.caseId == caseId && $0.event == event }
        }

        func store() throws -> Store {
            try Daemon.openStore(try ConfigLoader.load(path: config))
        }

        func daemon(tag: String, _ extra: [String] = []) throws -> MQIProcess {
            try MQIProcess(["run", "--config", config, "--log-format", "text"] + extra, output: temp.file("daemon-\(tag).log"))
        }

        func cli(_ arguments: [String], tag: String) async throws -> (status: Int32?, output: String) {
            let process = try MQIProcess(arguments + ["--config", config], output: temp.file("cli-\(tag).log"))
            let status = await process.wait(upTo: 30)
            return (status, process.output)
        }

        /// The simulations never overlapped on the one GPU: each start comes after the previous
        /// run's end or confirmed kill.
        func expectOneAtATime() {
            var intervals: [(String, UInt64, UInt64)] = []
            for start in lines() where start.event == "start" {
                let finish = lines().first { $0.caseId == start.caseId && ($0.event == "end" || $0.event == "killed") && $0.ns >= start.ns }
                intervals.append((start.caseId, start.ns, finish?.ns ?? UInt64.max))
            }
            intervals.sort { $0.1 < $1.1 }
            for (previous, next) in zip(intervals, intervals.dropFirst()) {
                #expect(next.1 >= previous.2, "\(next.0) started on GPU 0 while \(previous.0) still ran")
            }
        }
    }

    /// The simulation's shell (the ledger's pid) is alive.
    static func alive(_ pid: Int32?) -> Bool {
        guard let pid else { return false }
        return LocalStepExecutor.processAlive(pid)
    }

    @Test(.timeLimit(.minutes(3)))
    func aCaseCancelledWhileTheDaemonIsDownHasItsStepKilledOnRestartBeforeItsGPUIsReused() async throws {
        let site = try Site()
        defer { site.temp.remove() }
        try site.addCase("CASE-A", seconds: 120)
        let first = try site.daemon(tag: "first")
        #expect(await eventually(within: 30) { site.line("CASE-A", "start") != nil }, "\(first.output.suffix(2000))")
        // Two more cases wait for the one GPU.
        try site.addCase("CASE-B", seconds: 1)
        try site.addCase("CASE-C", seconds: 1)
        let store = try site.store()
        #expect(await eventually(within: 30) { (try? await store.statusCounts()[.pendingResource]) == 2 })
        first.signal(SIGTERM)
        #expect(await first.wait(upTo: 30) == 0, "\(first.output.suffix(2000))")
        let simulation = site.line("CASE-A", "start")?.pid
        #expect(Self.alive(simulation), "SIGTERM leaves running steps running")

        let cancel = try await site.cli(["cases", "cancel", "CASE-A"], tag: "cancel")
        #expect(cancel.status == 0, "\(cancel.output)")
        let gpu = try #require(try await store.gpus().first)
        #expect(gpu.status == .draining)
        #expect(gpu.drain?.caseId == "CASE-A")
        let gpus = try await site.cli(["gpus"], tag: "gpus")
        #expect(gpus.output.contains("draining: waits for CASE-A attempt 1 to stop"), "\(gpus.output)")
        #expect(Self.alive(simulation), "nothing kills it while the daemon is down")

        let restarted = Date()
        let second = try site.daemon(tag: "second", ["--exit-when-idle"])
        #expect(await eventually(within: 30) { !Self.alive(simulation) }, "the cancelled simulation still runs after the restart")
        print("cancelled while down: step killed \(String(format: "%.2f", Date().timeIntervalSince(restarted))) s after the restart")
        #expect(await second.wait(upTo: 60) == 0, "\(second.output.suffix(3000))")

        let killed = try #require(site.line("CASE-A", "killed"))
        for later in ["CASE-B", "CASE-C"] {
            let start = try #require(site.line(later, "start"))
            #expect(start.ns > killed.ns, "\(later) started on GPU 0 before CASE-A's simulation was gone")
            #expect(try await store.caseSummary(later)?.status == .completed)
        }
        site.expectOneAtATime()
        #expect(try await store.caseSummary("CASE-A")?.status == .cancelled)
        #expect(try await store.gpus().allSatisfy { $0.status == .free })
        #expect(try await store.deadLetters().isEmpty)
        let history = try await store.history("CASE-A").map(\.message)
        #expect(history.contains { $0.contains("confirmed stopped") }, "\(history)")
    }

    @Test(.timeLimit(.minutes(4)))
    func aCancelWhileRunningHandsTheGPUOnOnlyOnceTheOldProcessGroupIsGone() async throws {
        let site = try Site()
        defer { site.temp.remove() }
        // CASE-A takes 2 s to shut down after SIGTERM (an engine flushing its output).
        try site.addCase("CASE-A", seconds: 120, termSec: 2)
        let daemon = try site.daemon(tag: "only", ["--exit-when-idle"])
        #expect(await eventually(within: 30) { site.line("CASE-A", "start") != nil }, "\(daemon.output.suffix(2000))")
        try site.addCase("CASE-B", seconds: 1)
        let store = try site.store()
        #expect(await eventually(within: 30) { (try? await store.caseSummary("CASE-B")?.status) == .pendingResource })
        let cancel = try await site.cli(["cases", "cancel", "CASE-A"], tag: "cancel")
        #expect(cancel.status == 0, "\(cancel.output)")
        #expect(await daemon.wait(upTo: 60) == 0, "\(daemon.output.suffix(3000))")
        let killed = try #require(site.line("CASE-A", "killed"))
        let start = try #require(site.line("CASE-B", "start"))
        #expect(start.ns > killed.ns, "CASE-B started while CASE-A's simulation was still shutting down")
        #expect(try await store.caseSummary("CASE-B")?.status == .completed)
        site.expectOneAtATime()
    }

    /// A message in flight whenever the daemon dies is not redelivered forever: each crash counts
    /// (restarts do not reset the count), a graceful restart does not, and after `max_attempts`
    /// the message goes to the dead letters, the case FAILS and its step is stopped.
    @Test(.timeLimit(.minutes(3)))
    func aMessageInFlightAtEveryCrashReachesTheDeadLettersInsteadOfCrashLooping() async throws {
        let site = try Site()
        defer { site.temp.remove() }
        try site.addCase("CASE-A", seconds: 120)
        let store = try site.store()
        func deliveries() async throws -> Int? {
            try await store.queuedMessages().first { $0.kind == .executeCommand }?.deliveries
        }
        var daemon = try site.daemon(tag: "0")
        #expect(await eventually(within: 30) { site.line("CASE-A", "start") != nil }, "\(daemon.output.suffix(2000))")
        // A graceful restart gives the message back uncounted.
        daemon.signal(SIGTERM)
        #expect(await daemon.wait(upTo: 30) == 0)
        #expect(try await deliveries() == 0)
        // Three crashes while the step is handled (adopted) by the daemon.
        for round in 1...3 {
            daemon = try site.daemon(tag: "\(round)")
            #expect(await eventually(within: 30) { (try? await deliveries()) == round }, "round \(round): \(daemon.output.suffix(2000))")
            try await Task.sleep(for: .milliseconds(300))
            daemon.signal(SIGKILL)
            #expect(await daemon.wait(upTo: 10) != nil)
        }
        let last = try site.daemon(tag: "last", ["--exit-when-idle"])
        #expect(await last.wait(upTo: 60) == 0, "\(last.output.suffix(3000))")
        let dead = try await store.deadLetters()
        #expect(dead.map(\.kind) == [.executeCommand])
        #expect(dead.first?.error.contains("gave up after 3 deliveries") == true, "\(dead)")
        let summary = try #require(try await store.caseSummary("CASE-A"))
        #expect(summary.status == .failed)
        #expect(site.lines().filter { $0.caseId == "CASE-A" && $0.event == "start" }.count == 1, "the simulation never ran twice")
        #expect(site.line("CASE-A", "killed") != nil, "the dead-lettered attempt was stopped")
        #expect(try await store.gpus().allSatisfy { $0.status == .free })
    }
}
