import Foundation
import Logging
import MQICore

/// What the communicator last learnt about an attempt's Slurm job (for the store: the case's
/// detail, its history, the GPUs Slurm gave it).
public struct SlurmJobReport: Sendable, Equatable {
    public var jobId: String
    /// Slurm's state: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    public var state: String
    /// Why it is pending (`Resources`), or how it ended.
    public var reason: String?
    /// The physical GPU indices Slurm gave the job (`1`, `0,1`).
    public var gpus: String?
    public var node: String?

    public init(jobId: String, state: String, reason: String? = nil, gpus: String? = nil, node: String? = nil) {
        self.jobId = jobId
        self.state = state
        self.reason = reason
        self.gpus = gpus
        self.node = node
    }
}

/// Runs execute steps as Slurm batch jobs (`hpc.executor: slurm`), with `sbatch`, `squeue`,
/// `scancel` and `scontrol` run through the transport's `CommandRunner` (on this machine, or on
/// the HPC's login node over ssh). Slurm places the jobs; no GPU id is reserved here.
///
/// The run directory is the one the direct executors use (`RunDirectories`): it is created
/// with `mkdir` before `sbatch`, so an attempt is submitted at most once, and the job id is
/// written into it (`jobid`) by the same remote script that ran `sbatch`. The job's script
/// (`job.sh`) records the GPUs it was given (`gpus`), when it started (`started`) and its
/// command's exit code (`exit_code`); `--output` is the run directory's `output.log`. A
/// restart (or a redelivery) finds the directory and adopts the job; a directory without
/// `jobid` (the submitter died between `sbatch` and the record) is matched to its job by the
/// job's name before anything is submitted again.
///
/// All running attempts share one `SlurmJobBoard`: one `squeue` (and the log bytes of every
/// watched job) per poll interval, whatever their number.
public struct SlurmStepExecutor: StepExecutor {
    public let runner: any CommandRunner
    public var uploadDir: String
    public var config: SlurmConfig
    /// Names this communicator in job names (`mqi.<instance>.…`).
    public var instance: String
    public var unreachableGraceSec: Double
    public var logger: Logger
    let board: PollRounds<SlurmJobBoard.Watch, SlurmJobSnapshot>
    let onReport: @Sendable (StepRun, SlurmJobReport) async -> Void

    public init(runner: any CommandRunner, uploadDir: String, config: SlurmConfig, instance: String, unreachableGraceSec: Double = 300,
                logger: Logger, onReport: @escaping @Sendable (StepRun, SlurmJobReport) async -> Void = { _, _ in }) {
        self.runner = runner
        self.uploadDir = uploadDir
        self.config = config
        self.instance = Self.sanitize(instance, limit: 40)
        self.unreachableGraceSec = unreachableGraceSec
        self.logger = logger
        self.onReport = onReport
        board = SlurmJobBoard.make(runner: runner, pollInterval: config.pollIntervalSec)
    }

    var layout: RunDirectories { RunDirectories(uploadDir: uploadDir) }

    func runDirectory(_ run: StepRun) -> String {
        layout.runDirectory(caseId: run.caseId, step: run.runName, attempt: run.attempt)
    }

    /// `mqi.<instance>.<case>.<step>[.<beam>].<attempt>.<hash>`: readable, and unique for the
    /// exact (case, step, beam, attempt) through the hash (the case id is made safe for Slurm).
    public func jobName(_ run: StepRun) -> String {
        let identity = "\(run.caseId)\u{0}\(run.runName)\u{0}\(run.attempt)"
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in identity.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return "mqi.\(instance).\(Self.sanitize(run.caseId, limit: 80)).\(Self.sanitize(run.runName, limit: 40)).\(run.attempt).\(hex.prefix(8))"
    }

    static func sanitize(_ text: String, limit: Int) -> String {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        let cleaned = String(text.map { allowed.contains($0) ? $0 : "_" }.prefix(limit))
        return cleaned.isEmpty ? "_" : cleaned
    }

    // MARK: - run

    public func execute(_ run: StepRun, shouldCancel: @escaping @Sendable () async -> Bool) async throws -> StepOutcome {
        let files = FileManager.default
        try files.createDirectory(atPath: (run.logPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        switch try await submitOrAdopt(run) {
        case .job(let jobId, let fresh):
            if fresh || !files.fileExists(atPath: run.logPath) { _ = files.createFile(atPath: run.logPath, contents: nil) }
            return try await supervise(run, jobId: jobId, shouldCancel: shouldCancel)
        case .ended(let outcome):
            if !files.fileExists(atPath: run.logPath) { _ = files.createFile(atPath: run.logPath, contents: nil) }
            return outcome
        }
    }

    enum Start {
        /// The attempt's job (`fresh`: submitted just now).
        case job(String, fresh: Bool)
        /// The attempt ran (or was stopped) and Slurm no longer knows its job.
        case ended(StepOutcome)
    }

    /// `$1` run dir, `$2` job name, `$3` case dir: what an existing run directory holds.
    static let adoptScript = #"""
        d=$1
        if [ -s "$d/jobid" ]; then echo "MQI-JOB $(cat "$d/jobid")"; exit 0; fi
        ids=$(squeue -h --states=all --name="$2" -o %i 2>&1) || { printf 'MQI-UNREACHABLE %s\n' "$ids"; exit 0; }
        id=$(printf '%s\n' "$ids" | head -n 1)
        if [ -n "$id" ]; then echo "$id" > "$d/jobid.tmp" && mv "$d/jobid.tmp" "$d/jobid"; echo "MQI-FOUND $id"; exit 0; fi
        if [ -f "$d/exit_code" ]; then echo "MQI-RAN $(cat "$d/exit_code")"; exit 0; fi
        if [ -f "$d/started" ]; then echo "MQI-RAN -"; exit 0; fi
        if [ -f "$d/stopped" ]; then echo MQI-STOPPED; exit 0; fi
        echo MQI-NONE
        """#

    func submitOrAdopt(_ run: StepRun) async throws -> Start {
        var replace = false
        for _ in 0..<3 {
            let output = try await capture(startScript(run, replaceUnsubmitted: replace), [], timeoutSec: 120)
            let lines = output.output.split(separator: "\n").map(String.init)
            if let line = lines.first(where: { $0.hasPrefix("MQI-SUBMITTED ") }) {
                let jobId = String(line.dropFirst("MQI-SUBMITTED ".count))
                logger.info("submitted \(run.runName) attempt \(run.attempt) to Slurm as job \(jobId)", metadata: ["case_id": "\(run.caseId)"])
                await onReport(run, SlurmJobReport(jobId: jobId, state: "PENDING"))
                return .job(jobId, fresh: true)
            }
            if lines.contains("MQI-NOCASE") {
                throw TransportError("the case directory \(layout.caseDirectory(run.caseId)) does not exist (was the case uploaded?)")
            }
            if let line = lines.first(where: { $0.hasPrefix("MQI-INPUTFAIL") }) {
                throw TransportError("cannot write input file \(line.dropFirst("MQI-INPUTFAIL ".count))")
            }
            if let index = lines.firstIndex(where: { $0.hasPrefix("MQI-SUBMITFAIL") }) {
                let message = lines[index...].joined(separator: "\n").dropFirst("MQI-SUBMITFAIL".count).trimmingCharacters(in: .whitespaces)
                throw TransportError("sbatch refused \(run.runName) attempt \(run.attempt) of case \(run.caseId): \(message)",
                                     transient: Self.isTransientSlurmError(message))
            }
            guard lines.contains("MQI-EXISTS") else {
                throw TransportError("cannot submit \(run.runName) of case \(run.caseId) (exit \(output.status)): \(output.output)",
                                     transient: output.status == 255)
            }
            // The run directory exists: adopt what it holds.
            for look in 0..<2 {
                let answer = try await capture(Self.adoptScript, [runDirectory(run), jobName(run), layout.caseDirectory(run.caseId)], timeoutSec: 60)
                let words = answer.output.split(separator: "\n").last.map { $0.split(separator: " ").map(String.init) } ?? []
                switch words.first {
                case "MQI-JOB", "MQI-FOUND":
                    guard words.count > 1 else { break }
                    logger.info("adopting Slurm job \(words[1]) of \(run.runName) attempt \(run.attempt)\(words[0] == "MQI-FOUND" ? " (found by its name: the submitter stopped before recording it)" : ""); it is not submitted again",
                                metadata: ["case_id": "\(run.caseId)"])
                    return .job(words[1], fresh: false)
                case "MQI-RAN":
                    if let code = words.count > 1 ? Int32(words[1]) : nil { return .ended(StepOutcome.exited(code, run)) }
                    return .ended(.failed(reason: "the Slurm job of \(run.runName) attempt \(run.attempt) started but left no exit code, and Slurm no longer knows it"))
                case "MQI-STOPPED":
                    return .ended(.cancelled)
                case "MQI-UNREACHABLE":
                    throw TransportError("cannot ask Slurm about \(run.runName) attempt \(run.attempt): \(answer.output)", transient: true)
                default:
                    // Neither a job id nor a job of that name: the submitter stopped before
                    // sbatch. Look once more a moment later, then submit.
                    if look == 0 { try await Task.sleep(for: .seconds(2)) }
                    continue
                }
            }
            replace = true
        }
        throw TransportError("cannot submit \(run.runName) attempt \(run.attempt) of case \(run.caseId): its run directory \(runDirectory(run)) keeps appearing without a job",
                             transient: true)
    }

    static func isTransientSlurmError(_ message: String) -> Bool {
        let lower = message.lowercased()
        return ["unable to contact slurm controller", "socket timed out", "try again", "temporarily unavailable", "connection refused",
                "communication connection failure", "slurm_persist_conn", "zero bytes were transmitted"].contains { lower.contains($0) }
    }

    /// The job's batch script: records its GPUs and start, honours a stop that came first, runs
    /// the command and records its exit code.
    func jobScript(_ run: StepRun) -> String {
        let exports = run.environment.sorted { $0.key < $1.key }.map { "export \($0.key)=\(ShellQuote.quote($0.value))" }.joined(separator: "\n")
        return """
            #!/bin/sh
            d=\(ShellQuote.quote(runDirectory(run)))
            \(exports)
            printf '%s\\n' "${SLURM_JOB_GPUS:-${CUDA_VISIBLE_DEVICES:-}}" > "$d/gpus"
            date +%s > "$d/started"
            if [ -e "$d/stopped" ]; then echo 143 > "$d/exit_code"; exit 143; fi
            /bin/sh -c \(ShellQuote.quote(run.command)) < /dev/null
            code=$?
            echo $code > "$d/exit_code.tmp" && mv "$d/exit_code.tmp" "$d/exit_code"
            exit $code

            """
    }

    /// `sbatch`'s arguments for the attempt, without the script.
    func sbatchArguments(_ run: StepRun) -> [String] {
        let runDir = runDirectory(run)
        var arguments = ["--parsable", "--no-requeue", "--job-name=\(jobName(run))", "--output=\(runDir)/output.log",
                         "--chdir=\(layout.caseDirectory(run.caseId))"]
        if let count = run.gpuCount, count > 0 { arguments.append("--gres=gpu:\(count)") }
        if let timeout = run.timeoutSec {
            // Slurm's limit is in minutes: a backstop; the communicator cancels at timeout_sec.
            arguments.append("--time=\(max(1, Int((timeout / 60).rounded(.up))))")
        }
        if let partition = config.partition { arguments.append("--partition=\(partition)") }
        if let account = config.account { arguments.append("--account=\(account)") }
        if let qos = config.qos { arguments.append("--qos=\(qos)") }
        return arguments + config.extraArgs
    }

    func startScript(_ run: StepRun, replaceUnsubmitted: Bool) -> String {
        let runDir = ShellQuote.quote(runDirectory(run))
        let caseDir = ShellQuote.quote(layout.caseDirectory(run.caseId))
        var inputs = ""
        for file in run.inputFiles {
            let path = ShellQuote.quote(file.path)
            let directory = ShellQuote.quote((file.path as NSString).deletingLastPathComponent)
            inputs += "mkdir -p -- \(directory) && printf '%s' \(ShellQuote.quote(file.content)) > \(path).mqi-tmp && mv -- \(path).mqi-tmp \(path) || { rm -rf -- \(runDir); echo \"MQI-INPUTFAIL \(file.path)\"; exit 0; }\n"
        }
        let replace = replaceUnsubmitted
            ? "[ ! -d \(runDir) ] || [ -s \(runDir)/jobid ] || [ -f \(runDir)/started ] || [ -f \(runDir)/exit_code ] || [ -f \(runDir)/stopped ] || rm -rf -- \(runDir)\n"
            : ""
        let sbatch = (["sbatch"] + sbatchArguments(run)).map(ShellQuote.quote).joined(separator: " ")
        return """
            [ -d \(caseDir) ] || { echo MQI-NOCASE; exit 0; }
            \(replace)mkdir -p -- \(ShellQuote.quote(layout.caseRuns(run.caseId))) || exit 5
            if ! mkdir -- \(runDir) 2>/dev/null; then echo MQI-EXISTS; exit 0; fi
            \(inputs)printf '%s' \(ShellQuote.quote(jobScript(run))) > \(runDir)/job.sh || { rm -rf -- \(runDir); echo "MQI-SUBMITFAIL cannot write the job script"; exit 0; }
            out=$(\(sbatch) \(runDir)/job.sh 2> \(runDir)/sbatch.err) || { echo "MQI-SUBMITFAIL $(cat \(runDir)/sbatch.err)"; exit 0; }
            id=$(printf '%s\\n' "$out" | tail -n 1); id=${id%%;*}
            echo "$id" > \(runDir)/jobid.tmp && mv \(runDir)/jobid.tmp \(runDir)/jobid
            echo "MQI-SUBMITTED $id"
            """
    }

    // MARK: - supervise

    func supervise(_ run: StepRun, jobId: String, shouldCancel: @escaping @Sendable () async -> Bool) async throws -> StepOutcome {
        var offset = Self.localSize(run.logPath)
        var generation = 0
        var unreachableSince: Date?
        var lastReport: SlurmJobReport?
        let runDir = runDirectory(run)
        defer { Task { [board] in await board.unwatch(jobId) } }
        while true {
            let answer = try await board.next(jobId, SlurmJobBoard.Watch(runDir: runDir, offset: offset), after: generation)
            generation = answer.generation
            guard let snapshot = answer.answer else {
                // squeue did not answer (the controller or the host is away): the job runs on.
                let since = unreachableSince ?? Date()
                unreachableSince = since
                if Date().timeIntervalSince(since) > unreachableGraceSec {
                    throw TransportError("cannot ask Slurm about job \(jobId) for \(Int(unreachableGraceSec)) s", transient: true)
                }
                continue
            }
            unreachableSince = nil
            offset += append(snapshot, at: offset, to: run.logPath)
            var state = snapshot.state
            var reason = snapshot.reason
            var exitCode = snapshot.exitCode
            if state == nil {
                // No longer in squeue (aged out, or never seen): one scontrol for its end.
                let ended = try await showJob(jobId)
                state = ended?.state ?? (exitCode != nil ? "COMPLETED" : "UNKNOWN")
                reason = ended?.reason
                if exitCode == nil { exitCode = ended?.exitCode }
            }
            let report = SlurmJobReport(jobId: jobId, state: state!, reason: reason, gpus: snapshot.gpus, node: snapshot.node)
            if report != lastReport {
                lastReport = report
                await onReport(run, report)
            }
            if let outcome = try await ended(run, jobId: jobId, state: state!, reason: reason, exitCode: exitCode, snapshot: snapshot) {
                return outcome
            }
            let decided = await run.stopDecision(elapsed: snapshot.elapsed, shouldCancel: shouldCancel) { timeout in
                "TIMEOUT: ran over timeout_sec (\(LocalStepExecutor.format(timeout)) s); Slurm job \(jobId) was cancelled"
            }
            if let decided {
                try await stop(run)
                if let last = try? await SlurmJobBoard.round([jobId: SlurmJobBoard.Watch(runDir: runDir, offset: offset)], runner: runner)?[jobId] {
                    offset += append(last, at: offset, to: run.logPath)
                }
                await onReport(run, SlurmJobReport(jobId: jobId, state: "CANCELLED", reason: decided == .cancelled ? "cancelled by the communicator" : "timeout_sec",
                                                   gpus: snapshot.gpus, node: snapshot.node))
                return decided
            }
        }
    }

    static let activeStates: Set<String> = ["PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
                                            "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"]

    /// The outcome of a job in `state`, or nil while it is queued or running.
    func ended(_ run: StepRun, jobId: String, state: String, reason: String?, exitCode: Int32?, snapshot: SlurmJobSnapshot) async throws -> StepOutcome? {
        if Self.activeStates.contains(state) { return nil }
        let job = "Slurm job \(jobId)"
        let why = reason.map { $0.isEmpty || $0 == "None" ? "" : " (\($0))" } ?? ""
        switch state {
        case "COMPLETED":
            return StepOutcome.exited(exitCode ?? 0, run)
        case "CANCELLED":
            if FileManager.default.fileExists(atPath: run.logPath), snapshot.stopped { return .cancelled }
            return .failed(reason: "cancelled in Slurm: \(job) ended CANCELLED\(why) without the communicator asking (scancel by someone else?)")
        case "NODE_FAIL", "PREEMPTED", "BOOT_FAIL":
            return .interrupted(reason: "\(job) ended \(state)\(why)\(exitCode.map { ", exit status \($0)" } ?? ""): the node or the scheduler stopped it, not its command")
        case "TIMEOUT":
            return .failed(reason: "\(job) ended TIMEOUT: over its Slurm time limit\(why)")
        case "UNKNOWN":
            return .failed(reason: "\(job) is no longer known to Slurm and left no exit code")
        default:
            // FAILED, OUT_OF_MEMORY, DEADLINE, ...
            return StepOutcome.exited(exitCode ?? -1, run, cause: "\(job) ended \(state)\(why)")
        }
    }

    /// `scontrol show job ID`: its state, reason and exit code, or nil when Slurm no longer knows it.
    func showJob(_ jobId: String) async throws -> (state: String, reason: String?, exitCode: Int32?)? {
        let result = try await capture(#"scontrol show job "$1" 2>&1"#, [jobId], timeoutSec: 60)
        let fields = Self.keyValues(result.output)
        guard result.status == 0, let state = fields["JobState"] else {
            if result.output.contains("Invalid job id") { return nil }
            throw TransportError("scontrol show job \(jobId) failed (exit \(result.status)): \(result.output)", transient: true)
        }
        let code = fields["ExitCode"].flatMap { Int32($0.split(separator: ":").first ?? "") }
        return (state, fields["Reason"], code)
    }

    static func keyValues(_ text: String) -> [String: String] {
        var fields: [String: String] = [:]
        for word in text.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
            guard let equals = word.firstIndex(of: "=") else { continue }
            let key = String(word[..<equals])
            if fields[key] == nil { fields[key] = String(word[word.index(after: equals)...]) }
        }
        return fields
    }

    // MARK: - stop

    /// `$1` run dir, `$2` job name, `$3` case dir: marks the attempt stopped, cancels its job and
    /// waits until Slurm says it ended.
    static let stopScript = #"""
        d=$1
        [ -d "$d" ] || [ -d "$3" ] || { echo MQI-GONE; exit 0; }
        mkdir -p "$d" && : > "$d/stopped" || { echo MQI-CANNOT; exit 0; }
        id=$(cat "$d/jobid" 2>/dev/null)
        if [ -z "$id" ]; then
          ids=$(squeue -h --states=all --name="$2" -o %i 2>&1) || { printf 'MQI-UNREACHABLE %s\n' "$ids"; exit 0; }
          id=$(printf '%s\n' "$ids" | head -n 1)
        fi
        [ -n "$id" ] || { echo MQI-GONE; exit 0; }
        i=0
        while [ $i -lt 150 ]; do
          st=$(squeue -h --states=all -j "$id" -o %T 2>&1); rc=$?
          if [ $rc -ne 0 ]; then
            case $st in *"Invalid job id"*) echo "MQI-GONE $id"; exit 0 ;; esac
            printf 'MQI-UNREACHABLE %s\n' "$st"; exit 0
          fi
          case $st in
            ""|COMPLETED|FAILED|CANCELLED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE) echo "MQI-GONE $id $st"; exit 0 ;;
          esac
          [ $((i % 25)) -eq 0 ] && scancel "$id" 2>/dev/null
          sleep 0.2; i=$((i + 1))
        done
        echo "MQI-ALIVE $id $st"
        """#

    public func stop(_ run: StepRun) async throws {
        let result = try await capture(Self.stopScript, [runDirectory(run), jobName(run), layout.caseDirectory(run.caseId)], timeoutSec: 90)
        let text = result.output
        let what = "\(run.runName) attempt \(run.attempt) of case \(run.caseId)"
        if text.contains("MQI-GONE") {
            logger.debug("\(what): its Slurm job is ended (\(text.trimmingCharacters(in: .whitespacesAndNewlines)))", metadata: ["case_id": "\(run.caseId)"])
            return
        }
        if text.contains("MQI-ALIVE") { throw TransportError("the Slurm job of \(what) is still there 30 s after scancel: \(text)", transient: true) }
        if text.contains("MQI-UNREACHABLE") { throw TransportError("cannot reach Slurm to stop \(what): \(text)", transient: true) }
        if text.contains("MQI-CANNOT") { throw TransportError("cannot mark \(what) stopped (\(runDirectory(run)) not writable)") }
        throw TransportError("cannot stop \(what) (exit \(result.status)): \(text)", transient: result.status == 255)
    }

    // MARK: - helpers

    /// Runs `script` with `/bin/sh` and `arguments` as `$1…` through the transport.
    func capture(_ script: String, _ arguments: [String], timeoutSec: Double) async throws -> CommandResult {
        try await runner.capture((["/bin/sh", "-c", script, "mqi-slurm"] + arguments).map(ShellQuote.quote).joined(separator: " "), timeoutSec: timeoutSec)
    }

    /// Appends the part of the snapshot's log bytes past `offset`; returns how many.
    func append(_ snapshot: SlurmJobSnapshot, at offset: Int, to path: String) -> Int {
        guard snapshot.logFrom <= offset, snapshot.logFrom + snapshot.chunk.count > offset else { return 0 }
        let data = snapshot.chunk.dropFirst(offset - snapshot.logFrom)
        guard !data.isEmpty else { return 0 }
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let handle = FileHandle(forWritingAtPath: path) else { return 0 }
        defer { try? handle.close() }
        do {
            try handle.seekToEnd()
            try handle.write(contentsOf: Data(data))
            return data.count
        } catch {
            return 0
        }
    }

    static func localSize(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
    }
}

/// One poll's view of a job.
struct SlurmJobSnapshot: Sendable {
    /// Slurm's state; nil when `squeue` did not list the job.
    var state: String?
    var reason: String?
    var node: String?
    var exitCode: Int32?
    var gpus: String?
    /// Seconds since the job's script started (nil before).
    var elapsed: Double?
    var stopped: Bool
    /// Log bytes from `logFrom`.
    var logFrom: Int
    var chunk: Data
}

/// Polls Slurm for every watched job at once (`PollRounds`): each round is one remote call that
/// runs one `squeue` for this account and reads each watched job's run directory (exit code,
/// GPUs, start, the log bytes not yet fetched).
enum SlurmJobBoard {
    struct Watch: Sendable {
        var runDir: String
        var offset: Int
    }

    /// Log bytes per job per round at most.
    static let chunk = 1 << 20

    static func make(runner: any CommandRunner, pollInterval: Double) -> PollRounds<Watch, SlurmJobSnapshot> {
        PollRounds(interval: pollInterval) { jobs in try await round(jobs, runner: runner) }
    }

    /// `$@`: triples of job id, run dir, log offset.
    static let roundScript = #"""
        exec 2>/dev/null
        echo "MQI-NOW $(date +%s)"
        echo MQI-SQUEUE
        squeue -h --states=all -u "$(id -un)" -o '%i|%T|%r|%N'
        echo "MQI-SQUEUE-END $?"
        while [ $# -ge 3 ]; do
          d=$2; o=$3
          code=$(cat "$d/exit_code" 2>/dev/null) || code=-
          gpus=$(cat "$d/gpus" 2>/dev/null) || gpus=
          [ -n "$gpus" ] || gpus=-
          started=$(cat "$d/started" 2>/dev/null) || started=-
          stopped=0; [ -e "$d/stopped" ] && stopped=1
          size=$(($(wc -c < "$d/output.log" 2>/dev/null || echo 0)))
          echo "MQI-JOB $1 $code $gpus $started $stopped $o $size"
          if [ "$o" -lt "$size" ]; then tail -c +"$(($o + 1))" "$d/output.log" | head -c MAXBYTES | base64 -w 0; fi
          echo
          shift 3
        done
        echo MQI-END
        """#

    static func round(_ jobs: [String: Watch], runner: any CommandRunner) async throws -> [String: SlurmJobSnapshot]? {
        var arguments: [String] = []
        for (id, watch) in jobs.sorted(by: { $0.key < $1.key }) { arguments += [id, watch.runDir, String(watch.offset)] }
        let script = Self.roundScript.replacingOccurrences(of: "MAXBYTES", with: String(Self.chunk))
        let command = (["/bin/sh", "-c", script, "mqi-slurm"] + arguments).map(ShellQuote.quote).joined(separator: " ")
        let result = try await runner.capture(command, timeoutSec: 60)
        return Self.parse(result.output, jobs: jobs)
    }

    /// nil when squeue failed (the controller is away): nothing can be said about any job.
    static func parse(_ output: String, jobs: [String: Watch]) -> [String: SlurmJobSnapshot]? {
        let lines = output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard let end = lines.firstIndex(where: { $0.hasPrefix("MQI-SQUEUE-END") }), lines[end] == "MQI-SQUEUE-END 0",
              let start = lines.firstIndex(of: "MQI-SQUEUE"), start < end else { return nil }
        let now = lines.first { $0.hasPrefix("MQI-NOW ") }.flatMap { Double($0.dropFirst("MQI-NOW ".count)) }
        var queue: [String: (state: String, reason: String, node: String)] = [:]
        for line in lines[(start + 1)..<end] {
            let parts = line.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            guard parts.count >= 4 else { continue }
            queue[parts[0].trimmingCharacters(in: .whitespaces)] = (parts[1], parts[2], parts[3])
        }
        var snapshots: [String: SlurmJobSnapshot] = [:]
        var index = end + 1
        while index < lines.count {
            let words = lines[index].split(separator: " ").map(String.init)
            index += 1
            guard words.count >= 8, words[0] == "MQI-JOB", jobs[words[1]] != nil else { continue }
            let chunk = index < lines.count ? Data(base64Encoded: lines[index]) ?? Data() : Data()
            index += 1
            let id = words[1]
            let listed = queue[id]
            let started = Double(words[4])
            snapshots[id] = SlurmJobSnapshot(
                state: listed?.state, reason: listed.map(\.reason).flatMap { $0.isEmpty || $0 == "None" || $0 == "(null)" ? nil : $0 },
                node: listed.map(\.node).flatMap { $0.isEmpty || $0 == "(null)" ? nil : $0 },
                exitCode: Int32(words[2]), gpus: words[3] == "-" ? nil : words[3],
                elapsed: started.flatMap { s in now.map { $0 - s } }, stopped: words[5] == "1",
                logFrom: Int(words[6]) ?? 0, chunk: chunk)
        }
        return snapshots
    }
}

extension StepOutcome {
    /// Whether the attempt was ended by the infrastructure rather than its command.
    public var isInterrupted: Bool {
        if case .interrupted = self { return true }
        return false
    }
}
