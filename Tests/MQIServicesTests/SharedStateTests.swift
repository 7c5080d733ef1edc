import Foundation
import MQICore
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// Two real `mqi` communicators on one PostgreSQL state: killed with kill -9 at random, one
/// killed for good while it runs steps, PostgreSQL restarted under them.
@Suite(.serialized, .enabled(if: PostgresServer.isAvailable, "needs PostgreSQL 15 (Debian postgresql, postgresql-client)"))
struct SharedStateTests {
    static let names = ["comm-a", "comm-b"]
    /// `state.lease_sec` of both communicators: a dead one's work is taken over after this.
    static let leaseSec = 5.0

    /// Two communicators (`comm-a`, `comm-b`: own config, PID file and logs) sharing one
    /// PostgreSQL database, `local_logdata`, the HPC directories (transport local), the results
    /// directory and the GPU ids. The stand-in steps sleep a random while and write a ledger line
    /// when they start and when they end, with their GPU and the time.
    struct Site {
        let temp: TemporaryDirectory
        let database: String
        let cases: Int
        var ledger: String { temp.file("ledger.txt") }
        var results: String { temp.file("results") }

        func config(_ name: String) -> String { temp.file("\(name).yaml") }

        init(database: String, cases: Int, gpus: [Int], stepMs: ClosedRange<Int> = 200...2000, maxAttempts: Int = 12) throws {
            temp = try TemporaryDirectory("mqi-shared")
            self.database = database
            self.cases = cases
            let step = temp.file("step.sh")
            try """
                #!/bin/sh
                # step.sh LEDGER KIND CASE_DIR GPU [OUT]: a stand-in step of random length that logs
                # its start and its end on its GPU: start|end KIND CASE GPU EPOCH_SECONDS PID.
                case=$(basename "$3")
                echo "start $2 $case $4 $(date +%s.%N) $$" >> "$1"
                n=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
                ms=$((\(stepMs.lowerBound) + n % \(stepMs.count)))
                sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
                if [ -n "$5" ]; then mkdir -p "$5" && echo "dose of $case" > "$5/dose.txt"; fi
                echo "end $2 $case $4 $(date +%s.%N) $$" >> "$1"
                echo "$2 done"
                """.write(toFile: step, atomically: true, encoding: .utf8)
            let quoted = ShellQuote.quote(step), ledger = ShellQuote.quote(temp.file("ledger.txt"))
            for name in SharedStateTests.names {
                try """
                    scanner: { local_logdata: ./data, ready_marker: _CASE_READY, rescan_interval_sec: 5 }
                    state: { database: "\(database)", instance_name: \(name), pid_file: ./\(name)/mqi.pid, logs_dir: ./\(name)/logs, lease_sec: \(Int(SharedStateTests.leaseSec)) }
                    hpc: { transport: local, gpus: [\(gpus.map(String.init).joined(separator: ", "))] }
                    conductor:
                      remote_paths: { upload_dir: ./hpc/upload, download_dir: ./hpc/download }
                      results_dir: ./results
                    workflows:
                      default_qa:
                        - { name: upload_case_files, type: upload,   progress: 10 }
                        - { name: run_interpreter,   type: execute,  progress: 30 }
                        - { name: run_moqui_sim,     type: execute,  progress: 70, timeout_sec: 120 }
                        - { name: download_results,  type: download, progress: 90 }
                    remote_commands:
                      run_interpreter: "/bin/sh \(quoted) \(ledger) interpreter {case_dir} {gpu_id}"
                      run_moqui_sim: "/bin/sh \(quoted) \(ledger) simulation {case_dir} {gpu_id} {result_dir}"
                    retry: { max_attempts: \(maxAttempts), initial_delay_sec: 0.1, max_delay_sec: 1, multiplier: 2 }
                    metrics: { port: 0 }
                    gpu_monitor: { enabled: false }
                    """.write(toFile: config(name), atomically: true, encoding: .utf8)
            }
            try FileManager.default.createDirectory(atPath: temp.file("data"), withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: temp.file("out"), withIntermediateDirectories: true)
            for index in 1...cases {
                try DemoSite.writeCase(named: caseId(index), in: temp.file("data"), beams: 1)
            }
        }

        func caseId(_ index: Int) -> String { String(format: "CASE-%03d", index) }

        /// The state as the CLI opens it.
        func store() async throws -> Store {
            let path = config(SharedStateTests.names[0])
            return try await offPool { try Daemon.openStore(try ConfigLoader.load(path: path)) }
        }

        /// `mqi run` for communicator `name`; its output in `out/NAME-TAG.log` (JSON lines).
        func start(_ name: String, tag: String) throws -> MQIProcess {
            try MQIProcess(["run", "--config", config(name)], output: temp.file("out/\(name)-\(tag).log"))
        }

        /// SIGTERM to each; each stops gracefully (exit 0).
        func stop(_ processes: [MQIProcess]) async {
            for process in processes where process.isRunning { process.signal(SIGTERM) }
            for process in processes {
                let status = await process.wait(upTo: 30)
                #expect(status == 0, "\(process.outputPath) exit \(String(describing: status)): \(process.output.suffix(2000))")
            }
        }

        struct LedgerLine {
            var event: String, kind: String, caseId: String, gpu: String, time: Double, pid: String
            var run: String { "\(kind) \(caseId) \(pid)" }
        }

        func ledgerLines() -> [LedgerLine] {
            let text = (try? String(contentsOfFile: ledger, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { line in
                let parts = line.split(separator: " ").map(String.init)
                guard parts.count == 6, let time = Double(parts[4]) else { return nil }
                return LedgerLine(event: parts[0], kind: parts[1], caseId: parts[2], gpu: parts[3], time: time, pid: parts[5])
            }
        }

        /// Starts per "KIND CASE".
        func runs() -> [String: Int] {
            var counts: [String: Int] = [:]
            for line in ledgerLines() where line.event == "start" { counts["\(line.kind) \(line.caseId)", default: 0] += 1 }
            return counts
        }

        /// Steps started and not ended yet.
        func runningSteps() -> Int { runningCases().count }

        /// The cases whose step runs now (started, not ended).
        func runningCases() -> Set<String> {
            let lines = ledgerLines()
            let ended = Set(lines.filter { $0.event == "end" }.map(\.run))
            return Set(lines.filter { $0.event == "start" && !ended.contains($0.run) }.map(\.caseId))
        }

        func endedSteps() -> Int { ledgerLines().filter { $0.event == "end" }.count }

        /// Every step ended, and no two steps ran on one GPU at the same time.
        func gpuProblems() -> [String] {
            var problems: [String] = []
            let lines = ledgerLines()
            let ends = Dictionary(lines.filter { $0.event == "end" }.map { ($0.run, $0.time) }, uniquingKeysWith: max)
            var byGPU: [String: [(start: Double, end: Double, run: String)]] = [:]
            for line in lines where line.event == "start" {
                guard let end = ends[line.run] else {
                    problems.append("\(line.run) started on GPU \(line.gpu) and never ended")
                    continue
                }
                byGPU[line.gpu, default: []].append((line.time, end, line.run))
            }
            for (gpu, runs) in byGPU {
                let sorted = runs.sorted { $0.start < $1.start }
                for (previous, next) in zip(sorted, sorted.dropFirst()) where next.start < previous.end {
                    problems.append(String(format: "GPU %@: %@ started %.3f s before %@ ended", gpu, next.run, previous.end - next.start, previous.run))
                }
            }
            return problems
        }

        /// Case ids of every "new case found" line the communicators logged (all their runs).
        func announcedCases() -> [String] {
            let files = (try? FileManager.default.contentsOfDirectory(atPath: temp.file("out"))) ?? []
            var ids: [String] = []
            for file in files where file.hasSuffix(".log") {
                let text = (try? String(contentsOfFile: temp.file("out/\(file)"), encoding: .utf8)) ?? ""
                for line in text.split(separator: "\n") where line.contains("new case found") {
                    guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                          object["message"] as? String == "new case found", let id = object["case_id"] as? String else { continue }
                    ids.append(id)
                }
            }
            return ids
        }

        /// Polls until every case is registered and none is active and no message is left.
        func waitUntilAllDone(_ store: Store, within seconds: Double) async -> Bool {
            let deadline = Date().addingTimeInterval(seconds)
            while Date() < deadline {
                if let activity = try? await store.activity(), let counts = try? await store.statusCounts(),
                   activity.activeCases == 0, activity.queuedMessages == 0, counts.values.reduce(0, +) == cases {
                    return true
                }
                try? await Task.sleep(for: .milliseconds(250))
            }
            return false
        }

        /// Case counts and what is left in the queues, for a failure message.
        func describe(_ store: Store) async -> String {
            let counts = (try? await store.statusCounts())?.map { "\($0.key.rawValue) \($0.value)" }.sorted().joined(separator: ", ") ?? "?"
            let left = (try? await store.queuedMessages())?.map { "\($0.kindName) \($0.caseId) \($0.leaseOwner ?? "-") \($0.lastError ?? "")" } ?? []
            return "cases: \(counts); messages: \(left)"
        }

        /// Everything finished exactly once and nothing is left behind.
        /// `announcedOnce`: every case's "new case found" was logged exactly once (a kill -9 right
        /// after the registration commits can lose the line, so with kills: at most once).
        func expectCleanFinish(_ store: Store, announcedOnce: Bool) async throws {
            let all = try await store.cases()
            let expected = Set((1...cases).map(caseId))
            #expect(all.count == cases, "\(all.count) case rows for \(cases) cases")
            #expect(Set(all.map(\.caseId)) == expected)
            let unfinished = all.filter { $0.status != .completed }
            #expect(unfinished.isEmpty, "\(unfinished.map { "\($0.caseId) \($0.status.rawValue) \($0.error ?? "")" })")
            let runs = runs()
            for summary in all {
                #expect(runs["simulation \(summary.caseId)"] == 1, "simulation of \(summary.caseId) ran \(runs["simulation \(summary.caseId)"] ?? 0) times")
                #expect(runs["interpreter \(summary.caseId)"] == 1, "interpreter of \(summary.caseId) ran \(runs["interpreter \(summary.caseId)"] ?? 0) times")
                let dose = (results as NSString).appendingPathComponent("\(summary.caseId)/dose.txt")
                #expect(FileManager.default.fileExists(atPath: dose), "no \(dose)")
                let history = try await store.history(summary.caseId)
                #expect(history.filter { $0.event == "registered" }.count == 1, "\(summary.caseId): \(history.map(\.event))")
                #expect(!history.contains { $0.status == .failed }, "\(summary.caseId) was FAILED on the way: \(history.map { "\($0.event) \($0.status.rawValue) \($0.message)" })")
            }
            let problems = gpuProblems()
            #expect(problems.isEmpty, "\(problems)")
            let gpus = try await store.gpus()
            #expect(gpus.allSatisfy { $0.status == .free && $0.reservedBy == nil }, "\(gpus)")
            let left = try await store.queuedMessages()
            #expect(left.isEmpty, "left queued or leased: \(left.map { "\($0.kindName) \($0.caseId) \($0.leaseOwner ?? "-")" })")
            let dead = try await store.deadLetters()
            #expect(dead.isEmpty, "dead letters: \(dead)")
            let announced = announcedCases()
            let perCase = Dictionary(announced.map { ($0, 1) }, uniquingKeysWith: +)
            #expect(perCase.values.allSatisfy { $0 == 1 }, "announced more than once: \(perCase.filter { $0.value > 1 })")
            #expect(Set(announced).isSubset(of: expected))
            if announcedOnce { #expect(Set(announced) == expected, "never announced: \(expected.subtracting(announced).sorted())") }
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func twoCommunicatorsKilledAtRandomFinishEveryCaseOnce() async throws {
        let site = try Site(database: try PostgresServer.shared().freshDatabase(prefix: "shared_kill"), cases: 45, gpus: [0, 1, 2])
        defer { site.temp.remove() }
        let store = try await site.store()
        let started = Date()
        var running = [try site.start(Self.names[0], tag: "0"), try site.start(Self.names[1], tag: "0")]
        defer { for process in running where process.isRunning { process.signal(SIGKILL) } }
        var kills: [String] = []
        for round in 1...6 {
            try await Task.sleep(for: .milliseconds(Int.random(in: 500...2000)))
            let victim = Int.random(in: 0...1), name = Self.names[victim]
            let held = try await store.queuedMessages().filter { $0.leaseOwner?.hasPrefix(name + "/") == true }
            let active = try await store.activity().activeCases
            #expect(active > 0, "kill \(round) came after the work was done")
            running[victim].signal(SIGKILL)
            #expect(await running[victim].wait(upTo: 10) != nil)
            kills.append("\(name) holding \(held.count) (\(held.filter { $0.kindName == "execute_command" }.count) running steps) at \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
            try await Task.sleep(for: .milliseconds(Int.random(in: 200...1000)))
            running[victim] = try site.start(name, tag: "\(round)")
        }
        let done = await site.waitUntilAllDone(store, within: 150)
        let state = await site.describe(store)
        print("shared state, 2 communicators, kill -9 x6: \(site.cases) cases, 3 GPUs, \(String(format: "%.1f", Date().timeIntervalSince(started))) s; kills: \(kills.joined(separator: "; "))")
        await site.stop(running)
        try #require(done, "not finished: \(state)")
        try await site.expectCleanFinish(store, announcedOnce: false)
    }

    @Test(.timeLimit(.minutes(4)))
    func aCommunicatorKilledForGoodLeavesItsRunningStepsToTheOtherWithinTheLease() async throws {
        let site = try Site(database: try PostgresServer.shared().freshDatabase(prefix: "shared_failover"), cases: 6, gpus: [0, 1, 2],
                            stepMs: 3000...5000)
        defer { site.temp.remove() }
        let store = try await site.store()
        let (survivor, victim) = (Self.names[0], Self.names[1])
        let started = Date()
        let a = try site.start(survivor, tag: "0"), b = try site.start(victim, tag: "0")
        defer { for process in [a, b] where process.isRunning { process.signal(SIGKILL) } }
        // comm-b holds a step's command and the step runs.
        let holdsStep = await eventually(within: 60) {
            let running = site.runningCases()
            return (try? await store.queuedMessages())?.contains {
                $0.kindName == "execute_command" && $0.leaseOwner?.hasPrefix(victim + "/") == true && running.contains($0.caseId)
            } == true
        }
        try #require(holdsStep, "\(victim) never ran a step: \(b.output.suffix(2000))")
        b.signal(SIGKILL)
        let killedAt = Date()
        #expect(await b.wait(upTo: 10) != nil)
        let orphaned = try await store.queuedMessages().filter { $0.leaseOwner?.hasPrefix(victim + "/") == true }
        let orphanedSteps = Set(orphaned.filter { $0.kindName == "execute_command" }.map(\.id))
        try #require(!orphanedSteps.isEmpty, "\(victim) held no running step when it died: \(orphaned)")
        // Taken over: leased by the survivor, or already handled by it (gone from the queue).
        var takenOver: [Int64: Double] = [:]
        while takenOver.count < orphaned.count, Date().timeIntervalSince(killedAt) < Self.leaseSec + 30 {
            if let current = try? await store.queuedMessages() {
                let byId = Dictionary(uniqueKeysWithValues: current.map { ($0.id, $0) })
                let now = Date().timeIntervalSince(killedAt)
                for message in orphaned where takenOver[message.id] == nil {
                    if let still = byId[message.id], still.leaseOwner?.hasPrefix(survivor + "/") != true { continue }
                    takenOver[message.id] = now
                }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        let first = takenOver.values.min()
        let steps = orphanedSteps.map { takenOver[$0] }
        let lastStep = steps.contains { $0 == nil } ? nil : steps.compactMap { $0 }.max()
        print(String(format: "failover: %@ killed holding %d message(s), %d running step(s); %@ took the first over after %@, every running step after %@ (lease_sec %.0f)",
                     victim, orphaned.count, orphanedSteps.count, survivor, first.map { String(format: "%.2f s", $0) } ?? "never",
                     lastStep.map { String(format: "%.2f s", $0) } ?? "never", Self.leaseSec))
        #expect(first.map { $0 <= Self.leaseSec + 5 } == true, "first takeover: \(String(describing: first))")
        #expect(lastStep.map { $0 <= Self.leaseSec + 5 } == true, "running steps taken over: \(steps)")
        #expect(takenOver.count == orphaned.count, "never taken over: \(orphaned.filter { takenOver[$0.id] == nil })")

        let done = await site.waitUntilAllDone(store, within: 90)
        let state = await site.describe(store)
        if !done { await site.stop([a]) }
        try #require(done, "not finished: \(state)")
        // The dead one's heartbeat stopped at the kill; the survivor's goes on; no lease is the dead one's.
        let instances = try await store.instances()
        let dead = instances.first { $0.name == victim }, alive = instances.first { $0.name == survivor }
        #expect(dead.map { $0.heartbeatAt < killedAt.addingTimeInterval(1) && $0.leases.isEmpty } == true, "\(instances)")
        #expect(alive.map { $0.heartbeatAt > killedAt } == true, "\(instances)")
        print("failover run: 6 cases, \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
        await site.stop([a])
        try await site.expectCleanFinish(store, announcedOnce: false)
    }

    @Test(.timeLimit(.minutes(3)))
    func postgresRestartedTwiceWhileStepsRunFailsNothing() async throws {
        // A server of its own: restarting the shared one would cut every other test's connections.
        let server = try await offPool { try PostgresServer.startPrivate() }
        defer {
            try? server.stop()
            try? FileManager.default.removeItem(atPath: server.directory)
        }
        let site = try Site(database: try server.freshDatabase(prefix: "shared_restart"), cases: 10, gpus: [0, 1, 2], stepMs: 1000...3000)
        defer { site.temp.remove() }
        let started = Date()
        let running = [try site.start(Self.names[0], tag: "0"), try site.start(Self.names[1], tag: "0")]
        defer { for process in running where process.isRunning { process.signal(SIGKILL) } }
        // The test reads the database only after the restarts (through the ledger meanwhile), so
        // that what stalls is the communicators, never the test.
        var restarts: [String] = []
        for round in 1...2 {
            let ready = await eventually(within: 60) { site.runningSteps() > 0 }
            try #require(ready, "no step running before restart \(round)")
            try await Task.sleep(for: .milliseconds(Int.random(in: 0...1500)))
            let steps = site.runningSteps()
            let before = Date()
            try await offPool { try server.restart() }
            let back = Date()
            restarts.append(String(format: "restart %d with %d step(s) running at %.1f s took %.2f s", round, steps, before.timeIntervalSince(started), back.timeIntervalSince(before)))
            // The communicators work on: a step starts that they claimed after the restart.
            let workedOn = await eventually(within: 30) {
                site.ledgerLines().contains { $0.event == "start" && $0.time > back.timeIntervalSince1970 + 0.5 }
            }
            if !workedOn {
                let logs = running.map { "\($0.outputPath):\n\($0.output.suffix(1500))" }.joined(separator: "\n")
                Issue.record("no step started in the 30 s after PostgreSQL restart \(round): the communicators stopped working. \(restarts)\n\(logs)")
                await site.stop(running)
                return
            }
        }
        let store = try await site.store()
        let done = await site.waitUntilAllDone(store, within: 60)
        let state = await site.describe(store)
        print("shared state, PostgreSQL restarted twice: 10 cases, \(String(format: "%.1f", Date().timeIntervalSince(started))) s; \(restarts.joined(separator: "; "))")
        await site.stop(running)
        try #require(done, "not finished: \(state)")
        try await site.expectCleanFinish(store, announcedOnce: true)
        // An outage delays, it uses up no attempt.
        for summary in try await store.cases() {
            let attempts = try await store.history(summary.caseId).compactMap(\.attempt)
            #expect(attempts.allSatisfy { $0 == 1 }, "\(summary.caseId) attempts \(attempts)")
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func statusListsBothCommunicators() async throws {
        let site = try Site(database: try PostgresServer.shared().freshDatabase(prefix: "shared_status"), cases: 2, gpus: [0, 1], stepMs: 2000...3000)
        defer { site.temp.remove() }
        let store = try await site.store()
        let running = [try site.start(Self.names[0], tag: "0"), try site.start(Self.names[1], tag: "0")]
        defer { for process in running where process.isRunning { process.signal(SIGKILL) } }
        #expect(await eventually(within: 30) { (try? await store.instances())?.filter(\.alive).count == 2 })
        let text = try MQIProcess(["status", "--config", site.config(Self.names[0])], output: site.temp.file("out/status.txt"))
        #expect(await text.wait(upTo: 30) == 0, "\(text.output)")
        for name in Self.names {
            #expect(text.output.split(separator: "\n").contains { $0.contains(name) && $0.contains("alive") }, "\(name) not listed alive: \(text.output)")
        }
        let json = try MQIProcess(["status", "--json", "--config", site.config(Self.names[1])], output: site.temp.file("out/status.json"))
        #expect(await json.wait(upTo: 30) == 0, "\(json.output)")
        let object = try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any]
        let communicators = object?["communicators"] as? [[String: Any]] ?? []
        #expect(Set(communicators.compactMap { $0["name"] as? String }) == Set(Self.names), "\(json.output)")
        #expect(communicators.allSatisfy { $0["alive"] as? Bool == true }, "\(json.output)")
        await site.stop(running)
        // A graceful stop removes the heartbeat row: gone, not dead.
        #expect(try await store.instances().isEmpty)
    }
}
