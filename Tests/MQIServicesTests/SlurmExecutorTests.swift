import Foundation
import MQICore
import MQIStore
import MQITransport
import MQITestSupport
import Testing
@testable import MQIServices

/// `hpc.executor: slurm` against a real single-node Slurm (slurmctld + slurmd + munge, two fake
/// GPUs; `scripts/slurm-cluster`), through the real `mqi` binary and a real SQLite file.
@Suite(.serialized, .enabled(if: SlurmCluster.isAvailable, "Slurm (slurmctld, slurmd, munge) is not installed (scripts/test installs it)"))
struct SlurmExecutorTests {
    /// Four steps: upload, the interpreter (1 GPU), the simulation (1 GPU), download. Each
    /// execute step logs its start (with its Slurm job id and CUDA_VISIBLE_DEVICES) and end to a
    /// ledger, and sleeps the seconds in the case's `secs` file (default `seconds`).
    struct Site: Sendable {
        let temp: TemporaryDirectory
        let cluster: SlurmCluster
        var config: String { temp.file("config.yaml") }
        var ledger: String { temp.file("ledger.txt") }
        var database: String { temp.file("var/mqi.sqlite") }
        /// PATH entries put before the system's for the daemon (shims of Slurm's commands).
        var shims: String { temp.file("shims") }

        init(maxJobs: Int = 32, seconds: Double = 1, timeoutSec: Int = 300, pollSec: Double = 0.5, gpus: Int = 1,
             hpcYAML: String = "hpc: { transport: local, executor: slurm", root: String? = nil, cluster: SlurmCluster? = nil) throws {
            temp = try TemporaryDirectory("mqi-slurm-site")
            self.cluster = try cluster ?? SlurmCluster()
            try FileManager.default.createDirectory(atPath: temp.file("data"), withIntermediateDirectories: true)
            try FileManager.default.createDirectory(atPath: shims, withIntermediateDirectories: true)
            let step = temp.file("step.sh")
            try """
                #!/bin/sh
                # step.sh LEDGER KIND CASE_ID CASE_DIR GPU_ID [OUT]
                secs=\(seconds)
                if [ "$2" = simulation ] && [ -f "$4/secs" ]; then secs=$(cat "$4/secs"); fi
                echo "$3 $2 start $(date +%s%N) ${SLURM_JOB_ID:-none} ${CUDA_VISIBLE_DEVICES:-none} $5" >> "$1"
                echo "running $2 of $3"
                sleep "$secs"
                if [ -n "$6" ]; then mkdir -p "$6" && echo "dose of $3" > "$6/dose.txt"; fi
                echo "$3 $2 end $(date +%s%N)" >> "$1"
                """.write(toFile: step, atomically: true, encoding: .utf8)
            chmod(step, 0o755)
            // Without GPUs the commands cannot name one ({gpu_id} is a config error there).
            let gpuWord = gpus > 0 ? "{gpu_id}" : "none"
            let gpuKey = gpus > 0 ? "gpus: \(gpus)" : "gpu: false"
            // `hpcYAML` is an open flow mapping: the slurm section closes it.
            let hpc = hpcYAML + ", slurm: { max_jobs: \(maxJobs), poll_interval_sec: \(pollSec) } }"
            let upload = root.map { $0 + "/upload" } ?? "./hpc/upload"
            let download = root.map { $0 + "/download" } ?? "./hpc/download"
            try """
                scanner: { local_logdata: ./data, ready_marker: _CASE_READY, rescan_interval_sec: 2 }
                state: { database: ./var/mqi.sqlite, pid_file: ./var/mqi.pid, logs_dir: ./var/logs }
                \(hpc)
                conductor:
                  remote_paths: { upload_dir: \(upload), download_dir: \(download) }
                  results_dir: ./var/results
                workflows:
                  default_qa:
                    - { name: upload_case_files, type: upload,   progress: 10 }
                    - { name: run_interpreter,   type: execute,  progress: 30, \(gpuKey), timeout_sec: \(timeoutSec) }
                    - { name: run_moqui_sim,     type: execute,  progress: 50, \(gpuKey), timeout_sec: \(timeoutSec) }
                    - { name: download_results,  type: download, progress: 90 }
                remote_commands:
                  run_interpreter: "/bin/sh \(ShellQuote.quote(step)) \(ShellQuote.quote(ledger)) interpreter {case_id} {case_dir} \(gpuWord)"
                  run_moqui_sim: "/bin/sh \(ShellQuote.quote(step)) \(ShellQuote.quote(ledger)) simulation {case_id} {case_dir} \(gpuWord) {result_dir}"
                retry: { max_attempts: 5, initial_delay_sec: 0.2, max_delay_sec: 1, multiplier: 2 }
                metrics: { port: 0 }
                gpu_monitor: { enabled: false }
                """.write(toFile: config, atomically: true, encoding: .utf8)
        }

        func addCase(_ name: String, seconds: Double? = nil) throws {
            let dir = temp.file("data/\(name)")
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try "x\n".write(toFile: dir + "/PlanInfo.txt", atomically: true, encoding: .utf8)
            if let seconds { try "\(seconds)\n".write(toFile: dir + "/secs", atomically: true, encoding: .utf8) }
            try "".write(toFile: dir + "/_CASE_READY", atomically: true, encoding: .utf8)
        }

        /// The daemon, with Slurm's environment and the shims first on PATH.
        func start(_ name: String) throws -> MQIProcess {
            let path = shims + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")
            return try MQIProcess(["run", "--config", config, "--log-format", "text"], output: temp.file("\(name).log"),
                                  environment: cluster.environment.merging(["PATH": path]) { $1 })
        }

        func cli(_ arguments: [String]) async throws -> (status: Int32, output: String) {
            let (executable, config) = (try mqiExecutable(), config)
            return try await offPool { try runProcess(executable, arguments + ["--config", config]) }
        }

        struct Line {
            var caseId: String
            var kind: String
            var event: String
            var ns: UInt64
            var job: String?
            var cuda: String?
            var gpuId: String?
        }

        func lines() -> [Line] {
            let text = (try? String(contentsOfFile: ledger, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { line in
                let p = line.split(separator: " ").map(String.init)
                guard p.count >= 4, let ns = UInt64(p[3]) else { return nil }
                return Line(caseId: p[0], kind: p[1], event: p[2], ns: ns, job: p.count > 4 ? p[4] : nil, cuda: p.count > 5 ? p[5] : nil,
                            gpuId: p.count > 6 ? p[6] : nil)
            }
        }

        func starts(_ caseId: String, _ kind: String) -> Int {
            lines().filter { $0.caseId == caseId && $0.kind == kind && $0.event == "start" }.count
        }

        /// Most steps running at once, from the ledger's start and end lines.
        func mostAtOnce() -> Int {
            var points: [(UInt64, Int)] = []
            for line in lines() { points.append((line.ns, line.event == "start" ? 1 : -1)) }
            var running = 0, most = 0
            for (_, delta) in points.sorted(by: { $0.0 == $1.0 ? $0.1 < $1.1 : $0.0 < $1.0 }) {
                running += delta
                most = max(most, running)
            }
            return most
        }

        /// The communicator's jobs Slurm knows now (all states): id, name, state.
        func squeue() async -> [(id: String, name: String, state: String)] {
            let environment = cluster.environment
            guard let result = try? await offPool({ try runProcess("/usr/bin/env", ["squeue", "-h", "--states=all", "-o", "%i|%j|%T"], environment: environment) }),
                  result.status == 0 else { return [] }
            return result.output.split(separator: "\n").compactMap { line in
                let p = line.split(separator: "|").map(String.init)
                return p.count == 3 && p[1].hasPrefix("mqi.") ? (p[0], p[1], p[2]) : nil
            }
        }

        func store() throws -> Store { try Store(path: database) }
    }

    static let active: Set<String> = ["PENDING", "RUNNING", "CONFIGURING", "COMPLETING"]

    /// Samples `squeue` until `done` says stop: the most of the communicator's jobs Slurm held
    /// at once (queued + running), and whether a PENDING one with a reason was seen.
    static func sample(_ site: Site, until done: @escaping @Sendable () async -> Bool) async -> (most: Int, samples: Int) {
        var most = 0, samples = 0
        while await !done() {
            let jobs = await site.squeue().filter { active.contains($0.state) }
            most = max(most, jobs.count)
            samples += 1
            try? await Task.sleep(for: .milliseconds(200))
        }
        return (most, samples)
    }

    @Test(.timeLimit(.minutes(4)))
    func tenCasesRunOnceEachAndSlurmPlacesThem() async throws {
        let site = try await offPool { try Site(maxJobs: 3, seconds: 1) }
        defer { site.cluster.stop(); site.temp.remove() }
        let names = (1...10).map { String(format: "SLURM-%03d", $0) }
        for name in names { try site.addCase(name) }
        let daemon = try site.start("daemon")
        defer { daemon.signal(SIGKILL) }
        let store = try site.store()
        let started = Date()
        let finished = { @Sendable in ((try? await store.cases(status: .completed).count) ?? 0) == names.count || Date().timeIntervalSince(started) > 180 }
        let sampled = await Self.sample(site, until: finished)
        let completed = try await store.cases(status: .completed).map(\.caseId)
        #expect(Set(completed) == Set(names), "not all completed: \(completed)\n\(daemon.output.suffix(3000))")
        print("10 cases through Slurm in \(String(format: "%.1f", Date().timeIntervalSince(started))) s; at most \(sampled.most) job(s) in Slurm at once (\(sampled.samples) samples)")
        for name in names {
            #expect(site.starts(name, "interpreter") == 1, "\(name) interpreter ran \(site.starts(name, "interpreter")) times")
            #expect(site.starts(name, "simulation") == 1, "\(name) simulation ran \(site.starts(name, "simulation")) times")
        }
        // Slurm placed them: never more than its 2 GPUs at once, and max_jobs held.
        #expect(site.mostAtOnce() <= 2, "\(site.mostAtOnce()) GPU steps ran at once on 2 GPUs")
        #expect(sampled.most <= 3, "max_jobs 3, but \(sampled.most) jobs were in Slurm at once")
        let starts = site.lines().filter { $0.event == "start" }
        #expect(starts.allSatisfy { $0.job != "none" && ($0.cuda == "0" || $0.cuda == "1") && $0.gpuId == "0" }, "\(starts.map { "\($0.job ?? "") \($0.cuda ?? "") \($0.gpuId ?? "")" })")
        // Every job is on record with the GPU Slurm gave it, and the jobs are distinct.
        var ids: Set<String> = []
        for name in names {
            let jobs = try await store.schedulerJobs(caseId: name)
            #expect(jobs.count == 2, "\(name): \(jobs)")
            #expect(jobs.allSatisfy { $0.state == "COMPLETED" && ($0.gpus == "0" || $0.gpus == "1") }, "\(name): \(jobs)")
            ids.formUnion(jobs.map(\.jobId))
        }
        #expect(ids.count == 20)
        #expect(try await store.gpus().allSatisfy { $0.reservedBy == nil }, "a GPU id was reserved under Slurm")
    }

    /// The same over `transport: ssh`: sbatch, squeue and scancel run on the test sshd's side as
    /// a plain account (bash login shell), whose jobs Slurm runs as that account.
    @Test(.enabled(if: SSHServer.isAvailable, "sshd is not installed"), .timeLimit(.minutes(4)))
    func overSSHTheJobsAreSubmittedOnTheHPCSide() async throws {
        let cluster = try await offPool { try SlurmCluster() }
        defer { cluster.stop() }
        let server = try SSHServer(loginShell: "/bin/bash", extraConfig: "SetEnv SLURM_CONF=\(cluster.confPath)")
        defer { server.remove() }
        try await server.start()
        let hpcRoot = server.temp.file("hpc")
        for directory in ["upload", "download"] {
            try FileManager.default.createDirectory(atPath: hpcRoot + "/" + directory, withIntermediateDirectories: true)
        }
        try server.giveToUser(hpcRoot)
        let ssh = "ssh: { host: 127.0.0.1, port: \(server.port), user: \(server.user), identity_file: \(ShellQuote.quote(server.userKeyPath)), known_hosts_file: \(ShellQuote.quote(server.knownHostsPath)), connect_timeout_sec: 5, max_new_connections_per_min: 30 }"
        let site = try await offPool { try Site(seconds: 1, hpcYAML: "hpc: { transport: ssh, executor: slurm, \(ssh)", root: hpcRoot, cluster: cluster) }
        defer { site.temp.remove() }
        // The jobs (run as the ssh account) read the step script and write the ledger.
        chmod(site.temp.path, 0o755)
        FileManager.default.createFile(atPath: site.ledger, contents: nil)
        chmod(site.ledger, 0o666)
        let names = (1...4).map { String(format: "SSH-%03d", $0) }
        for name in names { try site.addCase(name) }
        let daemon = try site.start("daemon")
        defer { daemon.signal(SIGKILL) }
        let store = try site.store()
        let done = await eventually(within: 150) { ((try? await store.cases(status: .completed).count) ?? 0) == names.count }
        let states = try await store.cases().map { "\($0.caseId) \($0.status) \($0.error ?? "")" }
        #expect(done, "not all completed: \(states)\n\(daemon.output.suffix(3000))")
        for name in names {
            #expect(site.starts(name, "interpreter") == 1 && site.starts(name, "simulation") == 1, "\(name) ran a step twice or never")
        }
        let jobs = cluster.completedJobs().filter { $0.name.hasPrefix("mqi.") }
        #expect(jobs.count == 8, "\(jobs)")
        #expect(jobs.allSatisfy { $0.user.hasPrefix(server.user) }, "jobs not run as \(server.user): \(jobs.map(\.user))")
    }

    @Test(.timeLimit(.minutes(4)))
    func killMinusNineTwiceWhileJobsAreQueuedAndRunningSubmitsNothingTwice() async throws {
        let site = try await offPool { try Site(seconds: 2) }
        defer { site.cluster.stop(); site.temp.remove() }
        let names = (1...8).map { String(format: "KILL-%03d", $0) }
        for name in names { try site.addCase(name) }
        let store = try site.store()
        var daemon = try site.start("daemon-0")
        for round in 1...2 {
            // Wait until Slurm holds a running and a queued job of ours, then kill -9.
            let busy = await eventually(within: 60) {
                let jobs = await site.squeue()
                return jobs.contains { $0.state == "RUNNING" } && jobs.contains { $0.state == "PENDING" }
            }
            #expect(busy, "round \(round): never saw a running and a queued job")
            daemon.signal(SIGKILL)
            _ = await daemon.wait(upTo: 10)
            try await Task.sleep(for: .milliseconds(Int.random(in: 200...1500)))
            daemon = try site.start("daemon-\(round)")
        }
        defer { daemon.signal(SIGKILL) }
        let allDone = await eventually(within: 150) { ((try? await store.cases(status: .completed).count) ?? 0) == names.count }
        let states = try await store.cases().map { "\($0.caseId) \($0.status)" }
        #expect(allDone, "not all completed: \(states)\n\(daemon.output.suffix(3000))")
        for name in names {
            #expect(site.starts(name, "interpreter") == 1 && site.starts(name, "simulation") == 1, "\(name) ran a step twice")
        }
        // No job submitted twice: every job name once among all jobs Slurm knows or finished.
        let names2 = site.cluster.jobNamesCompleted().filter { $0.hasPrefix("mqi.") }
        #expect(names2.count == Set(names2).count, "a job name appears twice in jobcomp: \(names2.sorted())")
        #expect(names2.count == 16, "\(names2.count) jobs finished, expected 16")
    }

    @Test(.timeLimit(.minutes(3)))
    func aCrashRightAfterSbatchBeforeTheIdIsRecordedSubmitsNothingTwice() async throws {
        let site = try await offPool { try Site(seconds: 1) }
        defer { site.cluster.stop(); site.temp.remove() }
        // An sbatch that, the first time, lets the job be queued, then kills the daemon and the
        // script that ran it before it can write the job id down.
        let realSbatch = try #require(["/usr/bin/sbatch", "/usr/local/bin/sbatch"].first { FileManager.default.isExecutableFile(atPath: $0) })
        let flag = site.temp.file("crashed")
        let shim = site.shims + "/sbatch"
        try """
            #!/bin/sh
            out=$(\(realSbatch) "$@") || exit $?
            if [ ! -e \(ShellQuote.quote(flag)) ]; then
                echo "$out" > \(ShellQuote.quote(flag))
                script=$(ps -o ppid= -p $PPID | tr -d ' ')
                kill -9 "$script" $(cat \(ShellQuote.quote(site.temp.file("var/mqi.pid")))) 2>/dev/null
                exit 1
            fi
            echo "$out"
            """.write(toFile: shim, atomically: true, encoding: .utf8)
        chmod(shim, 0o755)
        try site.addCase("CRASH-001")
        let store = try site.store()
        let first = try site.start("daemon-0")
        #expect(await first.wait(upTo: 60) != nil, "the daemon was not killed by the sbatch shim")
        let jobId = try String(contentsOfFile: flag, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let runDirs = try FileManager.default.subpathsOfDirectory(atPath: site.temp.file("hpc/upload/.mqi-runs"))
        #expect(!runDirs.contains { $0.hasSuffix("/jobid") }, "the job id was recorded before the crash: \(runDirs)")
        let second = try site.start("daemon-1")
        defer { second.signal(SIGKILL) }
        #expect(await eventually(within: 90) { ((try? await store.cases(status: .completed).count) ?? 0) == 1 }, "\(second.output.suffix(3000))")
        #expect(site.starts("CRASH-001", "interpreter") == 1)
        let names = site.cluster.jobNamesCompleted().filter { $0.hasPrefix("mqi.") }
        #expect(names.count == 2 && Set(names).count == 2, "jobs: \(names)")
        let jobs = try await store.schedulerJobs(caseId: "CRASH-001")
        #expect(jobs.contains { $0.jobId == jobId }, "the restart did not adopt job \(jobId): \(jobs)")
        #expect(second.output.contains("found by its name"), "\(second.output.suffix(2000))")
    }

    @Test(.timeLimit(.minutes(4)))
    func scancelFromOutsideCancelFromTheCLIAndTimeoutSayWhatHappened() async throws {
        let site = try await offPool { try Site(seconds: 0.2, timeoutSec: 15) }
        defer { site.cluster.stop(); site.temp.remove() }
        try site.addCase("OUTSIDE", seconds: 60)
        try site.addCase("OPERATOR", seconds: 60)
        let store = try site.store()
        let daemon = try site.start("daemon")
        defer { daemon.signal(SIGKILL) }
        // Both simulations run (Slurm's two GPUs); a third case would queue.
        #expect(await eventually(within: 60) { site.starts("OUTSIDE", "simulation") == 1 && site.starts("OPERATOR", "simulation") == 1 })
        try site.addCase("SLOW", seconds: 60)
        let queued = await eventually(within: 30) {
            ((try? await store.caseSummary("SLOW"))??.detail ?? "").contains("queued in Slurm")
        }
        let slowNow = try await store.caseSummary("SLOW")
        #expect(queued, "SLOW never showed as queued in Slurm: \(String(describing: slowNow))")
        let outside = try #require(try await store.schedulerJobs(caseId: "OUTSIDE").last)
        let (jobId, environment) = (outside.jobId, site.cluster.environment)
        let scancel = try await offPool { try runProcess("/usr/bin/env", ["scancel", jobId], environment: environment) }
        #expect(scancel.status == 0, "\(scancel.output)")
        let cancel = try await site.cli(["cases", "cancel", "OPERATOR"])
        #expect(cancel.status == 0, "\(cancel.output)")
        #expect(await eventually(within: 30) {
            let outside = (try? await store.caseSummary("OUTSIDE"))??.status
            let operated = (try? await store.caseSummary("OPERATOR"))??.status
            return outside == .failed && operated == .cancelled
        })
        let failed = try #require(try await store.caseSummary("OUTSIDE"))
        #expect(failed.error?.contains("cancelled in Slurm") == true, "\(failed.error ?? "")")
        let operatorJob = try #require(try await store.schedulerJobs(caseId: "OPERATOR").last)
        let jobGone = await eventually(within: 30) { await !site.squeue().contains { $0.id == operatorJob.jobId && Self.active.contains($0.state) } }
        let queueNow = await site.squeue()
        #expect(jobGone, "the cancelled case's job is still in squeue: \(queueNow)")
        // SLOW runs over its 15 s timeout.
        #expect(await eventually(within: 60) { ((try? await store.caseSummary("SLOW"))??.status) == .failed })
        let slow = try #require(try await store.caseSummary("SLOW"))
        #expect(slow.error?.contains("TIMEOUT") == true, "\(slow.error ?? "")")
        let left = await site.squeue().filter { Self.active.contains($0.state) }
        #expect(left.isEmpty, "jobs left in Slurm: \(left)")
    }

    @Test(.timeLimit(.minutes(4)))
    func onePollAsksSlurmOnceForTwentyJobs() async throws {
        let site = try await offPool { try Site(seconds: 8, pollSec: 1, gpus: 0) }
        defer { site.cluster.stop(); site.temp.remove() }
        // A squeue that counts its runs.
        let realSqueue = try #require(["/usr/bin/squeue", "/usr/local/bin/squeue"].first { FileManager.default.isExecutableFile(atPath: $0) })
        let counter = site.temp.file("squeue-runs")
        try """
            #!/bin/sh
            echo "$(date +%s%N)" >> \(ShellQuote.quote(counter))
            exec \(realSqueue) "$@"
            """.write(toFile: site.shims + "/squeue", atomically: true, encoding: .utf8)
        chmod(site.shims + "/squeue", 0o755)
        let names = (1...20).map { String(format: "POLL-%03d", $0) }
        for name in names { try site.addCase(name) }
        let daemon = try site.start("daemon")
        defer { daemon.signal(SIGKILL) }
        let twenty = await eventually(within: 60) { await site.squeue().filter { Self.active.contains($0.state) }.count >= 20 }
        let queued = await site.squeue()
        #expect(twenty, "20 jobs never were in flight: \(queued)")
        let before = ((try? String(contentsOfFile: counter, encoding: .utf8)) ?? "").split(separator: "\n").count
        let window = 5.0
        try await Task.sleep(for: .seconds(window))
        let inFlight = await site.squeue().filter { Self.active.contains($0.state) }.count
        let runs = ((try? String(contentsOfFile: counter, encoding: .utf8)) ?? "").split(separator: "\n").count - before
        print("squeue ran \(runs) time(s) in \(window) s with \(inFlight) job(s) in flight, poll_interval_sec 1")
        #expect(inFlight >= 15)
        #expect(runs <= Int(window) + 2, "\(runs) squeue runs in \(window) s for \(inFlight) jobs: not one per poll")
        #expect(runs >= 2, "squeue did not run while jobs were in flight")
    }
}
