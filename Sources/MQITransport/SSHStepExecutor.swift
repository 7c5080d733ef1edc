import Foundation
import Logging
import MQICore

/// Runs execute steps on the HPC in `{upload_dir}/{case_id}` under the run directory
/// `{upload_dir}/.mqi-runs/{case_id}/{step}.{attempt}/` (`RunDirectories`, as `LocalStepExecutor`
/// does locally; an attempt an older version started under `{case_id}/.mqi/` is adopted and
/// stopped there): `pid` (the process group, the command runs under
/// `setsid`, detached, so an SSH drop does not kill it), `output.log` and, when it ends,
/// `exit_code`, written by the same wrapper as the local executor's (`RunDirectories.stepWrapper`). The run directory is created with `mkdir`, so
/// an attempt is started at most once: a redelivered or restarted attempt finds the directory
/// and adopts it (running → wait; finished → read the exit code).
///
/// Every poll interval, one ssh call through the master answers for all the attempts running on
/// the host (`PollRounds`, `roundScript`): their states and the log bytes not yet fetched, which
/// are appended to each `StepRun.logPath`. A lost connection does not abandon the
/// step: polling continues (the connection backs off) for `unreachableGraceSec`, then the
/// attempt is given back as a transient error and adopted on the next delivery.
public struct SSHStepExecutor: StepExecutor {
    public let connection: SSHConnection
    public var uploadDir: String
    public var pollInterval: Double
    public var killGraceSec: Double
    public var unreachableGraceSec: Double
    public var logger: Logger
    /// The rounds that poll every running attempt on this host at once.
    let board: PollRounds<Watch, PollResult>

    public init(connection: SSHConnection, uploadDir: String, pollInterval: Double = 1, killGraceSec: Double = 3,
                unreachableGraceSec: Double = 300, logger: Logger) {
        self.connection = connection
        self.uploadDir = uploadDir
        self.pollInterval = pollInterval
        self.killGraceSec = killGraceSec
        self.unreachableGraceSec = unreachableGraceSec
        self.logger = logger
        board = PollRounds(interval: pollInterval) { runs in try await Self.round(runs, connection: connection) }
    }

    var layout: RunDirectories { RunDirectories(uploadDir: uploadDir) }

    public func caseDirectory(_ run: StepRun) -> String {
        layout.caseDirectory(run.caseId)
    }

    public func runDirectory(_ run: StepRun) -> String {
        layout.runDirectory(caseId: run.caseId, step: run.runName, attempt: run.attempt)
    }

    /// Where an older version kept the attempt's run directory; used when only it exists.
    func legacyRunDirectory(_ run: StepRun) -> String {
        layout.legacyRunDirectory(caseId: run.caseId, step: run.runName, attempt: run.attempt)
    }

    /// Bytes of log fetched per poll at most.
    static let chunk = 1 << 20

    /// A permanent `TransportError` (a host key mismatch, a refused login, a missing case) is
    /// thrown: retrying cannot help, and the attempt's processes were not seen to end.
    public func execute(_ run: StepRun, shouldCancel: @escaping @Sendable () async -> Bool) async throws -> StepOutcome {
        try await startOrAdopt(run)
        return try await supervise(run, shouldCancel: shouldCancel)
    }

    // MARK: - start

    func startScript(_ run: StepRun, replaceUnstarted: Bool) -> String {
        let runDir = ShellQuote.quote(runDirectory(run))
        let legacyDir = ShellQuote.quote(legacyRunDirectory(run))
        let caseDir = ShellQuote.quote(caseDirectory(run))
        var inputs = ""
        for file in run.inputFiles {
            let path = ShellQuote.quote(file.path)
            let directory = ShellQuote.quote((file.path as NSString).deletingLastPathComponent)
            inputs += "mkdir -p -- \(directory) && printf '%s' \(ShellQuote.quote(file.content)) > \(path).mqi-tmp && mv -- \(path).mqi-tmp \(path) || { rm -rf -- \(runDir); echo \"MQI-INPUTFAIL \(file.path)\"; exit 0; }\n"
        }
        let environment = run.environment.sorted { $0.key < $1.key }.map { ShellQuote.quote("\($0.key)=\($0.value)") }.joined(separator: " ")
        var replace = ""
        if replaceUnstarted {
            for dir in [runDir, legacyDir] {
                replace += "[ ! -d \(dir) ] || [ -f \(dir)/pid ] || [ -f \(dir)/exit_code ] || [ -f \(dir)/stopped ] || rm -rf -- \(dir)\n"
            }
        }
        let runs = ShellQuote.quote(layout.caseRuns(run.caseId))
        return """
            [ -d \(caseDir) ] || { echo MQI-NOCASE; exit 0; }
            \(replace)[ -d \(runDir) ] || [ ! -d \(legacyDir) ] || { echo MQI-EXISTS; exit 0; }
            mkdir -p -- \(runs) || exit 5
            if ! mkdir -- \(runDir) 2>/dev/null; then echo MQI-EXISTS; exit 0; fi
            \(inputs)cd \(caseDir) || exit 5
            setsid -f env \(environment) /bin/sh -c \(ShellQuote.quote(RunDirectories.stepWrapper)) mqi-step \(runDir) \(runDir)/output.log \(ShellQuote.quote(run.command)) < /dev/null > /dev/null 2>&1 || { rm -rf -- \(runDir); echo MQI-SPAWNFAIL; exit 0; }
            echo MQI-STARTED
            """
    }

    /// Starts the attempt unless its run directory exists. Idempotent: a retry after a lost
    /// connection finds the directory and adopts.
    func startOrAdopt(_ run: StepRun) async throws {
        let files = FileManager.default
        try files.createDirectory(atPath: (run.logPath as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        var replace = false
        for _ in 0..<2 {
            let output = try await connection.runScript(startScript(run, replaceUnstarted: replace), timeoutSec: 60)
            let text = output.stdoutText
            if text.contains("MQI-STARTED") {
                // A fresh attempt: a fresh local log.
                _ = files.createFile(atPath: run.logPath, contents: nil)
                logger.debug("started \(run.step) attempt \(run.attempt) on \(connection.destination)", metadata: ["case_id": "\(run.caseId)"])
                return
            }
            if text.contains("MQI-EXISTS") {
                // Adopt. A directory without pid or exit code after a moment was never started
                // (the start was cut off): start it after all, once.
                let state = try await poll(run, offset: Int.max)
                if state.state != "nopid" || replace {
                    logger.info("adopting \(run.step) attempt \(run.attempt) on \(connection.destination) (\(state.state)); it is not started again",
                                metadata: ["case_id": "\(run.caseId)"])
                    if !files.fileExists(atPath: run.logPath) { _ = files.createFile(atPath: run.logPath, contents: nil) }
                    return
                }
                try await Task.sleep(for: .seconds(2))
                if try await poll(run, offset: Int.max).state != "nopid" { return }
                replace = true
                continue
            }
            if text.contains("MQI-NOCASE") {
                throw TransportError("the case directory \(caseDirectory(run)) does not exist on \(connection.destination) (was the case uploaded?)")
            }
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("MQI-INPUTFAIL") }) {
                throw TransportError("cannot write input file \(line.dropFirst("MQI-INPUTFAIL ".count)) on \(connection.destination)")
            }
            throw TransportError("cannot start step \(run.step) of case \(run.caseId) on \(connection.destination) (exit \(output.status)): \(text)\(output.stderrText)",
                                 transient: output.status == 255)
        }
    }

    // MARK: - poll

    struct PollResult: Sendable {
        /// running, exited, dead (no exit code, process group gone), stopped (by a stop, nothing
        /// left running), nopid, missing
        var state: String
        var exitCode: Int32?
        var elapsed: Double?
        var logSize: Int
        var chunk: Data
        /// The log offset `chunk` starts at.
        var logFrom: Int = 0
    }

    /// `$1` run dir, `$2` bytes of the log already fetched, `$3` most bytes to send, `$4` where
    /// an older version kept the run dir (used when only it exists).
    static let pollScript = Self.liveness + Self.stateFunction + #"""
        [ -d "$d" ] || [ ! -d "$4" ] || d=$4
        mqi_state
        now=$(date +%s); started=$(cat "$d/started" 2>/dev/null || stat -c %Y "$d" 2>/dev/null || echo "$now")
        size=$(wc -c < "$d/output.log" 2>/dev/null || echo 0)
        echo "MQI $((now - started)) $size $st"
        if [ "$2" -lt "$size" ]; then tail -c +"$(($2 + 1))" "$d/output.log" | head -c "$3"; fi
        """#

    /// `mqi_state`: the state of the attempt in run dir `$d`, in `st` (see `PollResult.state`).
    static let stateFunction = #"""
        mqi_state() {
          if [ -s "$d/exit_code" ]; then st="exited $(cat "$d/exit_code")"
          elif [ ! -d "$d" ]; then st=missing
          elif [ ! -s "$d/pid" ]; then if [ -f "$d/stopped" ]; then st=stopped; else st=nopid; fi
          elif alive "$(cat "$d/pid")"; then st=running
          elif [ -s "$d/exit_code" ]; then st="exited $(cat "$d/exit_code")"
          elif [ -f "$d/stopped" ]; then st=stopped
          else st=dead
          fi
        }

        """#

    /// One round for every watched attempt on this host (`PollRounds`): `$@` are triples of run
    /// dir, bytes of its log already fetched, and where an older version kept the run dir. For
    /// each, in order: `MQI <elapsed> <log size> <state> [code]`, then the log bytes from the
    /// offset (at most `chunk`) in base64 on one line.
    static let roundScript = Self.liveness + Self.stateFunction + #"""
        now=$(date +%s)
        echo MQI-ROUND
        while [ $# -ge 3 ]; do
          d=$1; o=$2
          [ -d "$d" ] || [ ! -d "$3" ] || d=$3
          mqi_state
          started=$(cat "$d/started" 2>/dev/null || stat -c %Y "$d" 2>/dev/null || echo "$now")
          size=$(($(wc -c < "$d/output.log" 2>/dev/null || echo 0)))
          echo "MQI $((now - started)) $size $st"
          if [ "$o" -lt "$size" ]; then tail -c +"$((o + 1))" "$d/output.log" | head -c MAXBYTES | base64 -w 0; fi
          echo
          shift 3
        done
        echo MQI-END
        """#

    struct Watch: Sendable {
        var offset: Int
        var legacyRunDirectory: String
    }

    /// One ssh session for all watched attempts; nil when it failed or its answer is garbled.
    static func round(_ runs: [String: Watch], connection: SSHConnection) async throws -> [String: PollResult]? {
        let ordered = runs.sorted { $0.key < $1.key }
        var arguments: [String] = []
        for (runDir, watch) in ordered { arguments += [runDir, String(min(watch.offset, Int(Int32.max))), watch.legacyRunDirectory] }
        let output = try await connection.runScript(roundScript.replacingOccurrences(of: "MAXBYTES", with: String(chunk)), arguments: arguments, timeoutSec: 60)
        let lines = output.stdoutText.split(separator: "\n", omittingEmptySubsequences: false)
        guard let begin = lines.firstIndex(of: "MQI-ROUND"), lines.contains("MQI-END") else { return nil }
        var results: [String: PollResult] = [:]
        var index = begin + 1
        for (runDir, watch) in ordered {
            guard index + 1 < lines.count else { return nil }
            let header = lines[index].split(separator: " ")
            guard header.count >= 4, header[0] == "MQI" else { return nil }
            results[runDir] = PollResult(state: String(header[3]), exitCode: header.count > 4 ? Int32(header[4]) : nil, elapsed: Double(header[1]),
                                         logSize: Int(header[2]) ?? 0, chunk: Data(base64Encoded: String(lines[index + 1])) ?? Data(), logFrom: watch.offset)
            index += 2
        }
        return results
    }

    func poll(_ run: StepRun, offset: Int) async throws -> PollResult {
        let output = try await connection.runScript(Self.pollScript, arguments: [runDirectory(run), String(min(offset, Int(Int32.max))), String(Self.chunk), legacyRunDirectory(run)],
                                                    timeoutSec: 60)
        guard let newline = output.stdout.firstIndex(of: UInt8(ascii: "\n")) else {
            throw TransportError("unexpected answer polling \(run.step) attempt \(run.attempt) on \(connection.destination) (exit \(output.status)): \(output.stderrText)",
                                 transient: true)
        }
        let header = String(decoding: output.stdout[..<newline], as: UTF8.self).split(separator: " ")
        guard header.count >= 4, header[0] == "MQI" else {
            throw TransportError("unexpected answer polling \(run.step) attempt \(run.attempt): \(String(decoding: output.stdout.prefix(200), as: UTF8.self))",
                                 transient: true)
        }
        return PollResult(state: String(header[3]), exitCode: header.count > 4 ? Int32(header[4]) : nil, elapsed: Double(header[1]),
                          logSize: Int(header[2]) ?? 0, chunk: Data(output.stdout[output.stdout.index(after: newline)...]), logFrom: offset)
    }

    // MARK: - supervise

    func supervise(_ run: StepRun, shouldCancel: @escaping @Sendable () async -> Bool) async throws -> StepOutcome {
        var offset = Self.localSize(run.logPath)
        var unreachableSince: Date?
        var generation = 0
        let runDir = runDirectory(run)
        defer { Task { [board] in await board.unwatch(runDir) } }
        while true {
            let result: PollResult
            do {
                // One ssh session per round answers for every step running on this host.
                let answer = try await board.next(runDir, Watch(offset: offset, legacyRunDirectory: legacyRunDirectory(run)), after: generation)
                generation = answer.generation
                guard let polled = answer.answer else {
                    throw TransportError("cannot poll the steps on \(connection.destination) (the round's ssh session failed)", transient: true)
                }
                result = polled
                if unreachableSince != nil {
                    logger.info("reached \(connection.destination) again; still supervising \(run.step) attempt \(run.attempt)", metadata: ["case_id": "\(run.caseId)"])
                }
                unreachableSince = nil
            } catch let error as TransportError where error.isTransient {
                let since = unreachableSince ?? Date()
                unreachableSince = since
                if Date().timeIntervalSince(since) > unreachableGraceSec { throw error }
                logger.debug("cannot poll \(run.step) attempt \(run.attempt): \(error); the step keeps running remotely", metadata: ["case_id": "\(run.caseId)"])
                continue
            }
            offset += append(result, at: offset, to: run.logPath)
            switch result.state {
            case "exited":
                try await drain(run, offset: &offset, size: result.logSize)
                return StepOutcome.exited(result.exitCode ?? -1, run)
            case "dead":
                try await drain(run, offset: &offset, size: result.logSize)
                return .failed(reason: "the command's process group on \(connection.destination) ended without recording an exit code (killed by a signal?)")
            case "missing":
                return .failed(reason: "the run directory \(runDirectory(run)) disappeared on \(connection.destination)")
            case "stopped":
                try await drain(run, offset: &offset, size: result.logSize)
                return .cancelled
            default:
                break  // running, or nopid for the moment between start and the wrapper's first line
            }
            let decided = await run.stopDecision(elapsed: result.elapsed, shouldCancel: shouldCancel) { timeout in
                "timed out after \(LocalStepExecutor.format(timeout)) s (timeout_sec); the process group was killed"
            }
            if let decided {
                try await stop(run)
                _ = try? await drainAfterKill(run, offset: &offset)
                return decided
            }
            // The next round comes a poll interval after this one (PollRounds paces them).
        }
    }

    /// Fetches the rest of the log of a finished attempt.
    func drain(_ run: StepRun, offset: inout Int, size: Int) async throws {
        while offset < size {
            let more = try await poll(run, offset: offset)
            let added = append(more.chunk, to: run.logPath)
            if added == 0 { break }
            offset += added
        }
    }

    func drainAfterKill(_ run: StepRun, offset: inout Int) async throws {
        let result = try await poll(run, offset: offset)
        offset += append(result.chunk, to: run.logPath)
        try await drain(run, offset: &offset, size: result.logSize)
    }

    /// Shell functions shared by the remote scripts, with `d` = the run directory (`$1`):
    /// `ours PGID` is false when the recorded boot id or leader start time says the pid now
    /// belongs to another process (after a reboot, or reused); `alive PGID` is true while a
    /// non-zombie process of the group runs and the group is ours.
    static let liveness = #"""
        d=$1
        ours() {
          [ -f "$d/identity" ] || return 0
          read -r rb rs < "$d/identity"
          cb=; read -r cb 2>/dev/null < /proc/sys/kernel/random/boot_id
          [ -z "$cb" ] || [ -z "$rb" ] || [ "$cb" = "$rb" ] || return 1
          cs=; read -r cs 2>/dev/null < "/proc/$1/stat" || return 0
          mqi_start() { shift 19; [ "$1" = "$rs" ]; }
          mqi_start ${cs##*) }
        }
        alive() { ours "$1" && ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { f = 1 } END { exit !f }'; }

        """#

    /// `$1` run dir, `$2` grace seconds, `$3` case dir, `$4` where an older version kept the run
    /// dir (used when only it exists): marks the attempt stopped (so that a later start does not
    /// run it), SIGTERM to its group, SIGKILL after the grace, and says whether the group is
    /// gone. No run dir and no case dir: nothing of the attempt can run (MQI-GONE).
    static let stopScript = Self.liveness + #"""
        [ -d "$d" ] || [ ! -d "$4" ] || d=$4
        [ -d "$d" ] || [ -d "$3" ] || { echo MQI-GONE; exit 0; }
        mkdir -p "$d" && : > "$d/stopped" || { echo MQI-CANNOT; exit 0; }
        [ -s "$d/exit_code" ] && { echo MQI-GONE; exit 0; }
        pid=$(cat "$d/pid" 2>/dev/null) || { echo MQI-GONE; exit 0; }
        [ "$pid" -gt 1 ] 2>/dev/null || { echo MQI-GONE; exit 0; }
        ours "$pid" || { echo MQI-GONE; exit 0; }
        kill -s TERM -- "-$pid" 2>/dev/null
        i=0; while alive "$pid" && [ $i -lt $(($2 * 10)) ]; do sleep 0.1; i=$((i + 1)); done
        i=0; while alive "$pid" && [ $i -lt 100 ]; do kill -s KILL -- "-$pid" 2>/dev/null; sleep 0.1; i=$((i + 1)); done
        if alive "$pid"; then echo MQI-ALIVE; else echo MQI-GONE; fi
        """#

    public func stop(_ run: StepRun) async throws {
        let grace = max(0, Int(killGraceSec.rounded(.up)))
        let output = try await connection.runScript(Self.stopScript, arguments: [runDirectory(run), String(grace), caseDirectory(run), legacyRunDirectory(run)],
                                                    timeoutSec: Double(grace) + 30)
        let text = output.stdoutText
        if text.contains("MQI-GONE") { return }
        let what = "\(run.step) attempt \(run.attempt) of case \(run.caseId) on \(connection.destination)"
        if text.contains("MQI-ALIVE") {
            throw TransportError("the process group of \(what) is still alive after SIGKILL", transient: true)
        }
        if text.contains("MQI-CANNOT") {
            throw TransportError("cannot mark \(what) stopped (\(runDirectory(run)) not writable): \(output.stderrText)")
        }
        throw TransportError("cannot stop \(what) (exit \(output.status)): \(text)\(output.stderrText)", transient: output.status == 255)
    }

    /// Appends the part of a poll's log bytes past `offset`; returns how many.
    func append(_ result: PollResult, at offset: Int, to path: String) -> Int {
        guard result.logFrom <= offset, result.logFrom + result.chunk.count > offset else { return 0 }
        return append(Data(result.chunk.dropFirst(offset - result.logFrom)), to: path)
    }

    func append(_ data: Data, to path: String) -> Int {
        guard !data.isEmpty else { return 0 }
        if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
        guard let handle = FileHandle(forWritingAtPath: path) else { return 0 }
        defer { try? handle.close() }
        do {
            try handle.seekToEnd()
            try handle.write(contentsOf: data)
            return data.count
        } catch {
            return 0
        }
    }

    static func localSize(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
    }
}
