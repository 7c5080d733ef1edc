import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A private single-node Slurm cluster for tests (`scripts/slurm-cluster`): munged, slurmctld and
/// slurmd as root in a temp dir, on two free ports, the node `localhost` (127.0.0.1) with 4 CPUs
/// and two fake GPUs (`--gres=gpu:1` jobs see `CUDA_VISIBLE_DEVICES=0` or `1`) in the default
/// partition `gpu`. Client commands (`sbatch`, `squeue`, `scontrol`, `scancel`) need
/// `environment` (`SLURM_CONF`); plain users can submit too (the directory, slurm.conf and
/// munge's socket are readable by all). `stop()` ends the daemons and the jobs' processes;
/// `deinit` also removes the directory.
public final class SlurmCluster: Sendable {
    public let temp: TemporaryDirectory
    public var directory: String { temp.path }
    public var confPath: String { temp.file("slurm.conf") }
    /// `jobcomp/filetxt`: one line per finished job (see `completedJobs()`).
    public var jobcompPath: String { temp.file("jobcomp.txt") }
    /// The daemons' logs (`slurmctld.log`, `slurmd.log`, `munged.log`) are in here.
    public var logDirectory: String { temp.file("log") }
    /// What every Slurm client command needs: `SLURM_CONF`.
    public var environment: [String: String] { ["SLURM_CONF": confPath] }
    private let stopped = Mutex(false)

    static let tools = ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch",
                        "/usr/bin/squeue", "/usr/bin/scontrol", "/usr/bin/scancel", "/usr/bin/sinfo"]

    /// slurmctld, slurmd, munged and the client commands are installed (Debian packages
    /// slurmctld, slurmd, slurm-client, munge), and the tests run as root (the daemons need it).
    public static var isAvailable: Bool {
        getuid() == 0 && tools.allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
            && FileManager.default.isExecutableFile(atPath: script)
    }

    /// `scripts/slurm-cluster` in this repository.
    public static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../scripts/slurm-cluster").standardizedFileURL.path
    }

    /// Starts the cluster and waits (up to 30 s; ≈ 1.5 s here) until the node is idle.
    public init() throws {
        temp = try TemporaryDirectory("mqi-slurm")
        // A plain user submits jobs too: it reads slurm.conf and connects to munge's socket.
        chmod(temp.path, 0o755)
        let started: (status: Int32, output: String)
        do {
            started = try runProcess("/bin/bash", [Self.script, "start", temp.path])
        } catch {
            temp.remove()
            throw error
        }
        guard started.status == 0 else {
            _ = try? runProcess("/bin/bash", [Self.script, "stop", temp.path])
            temp.remove()
            throw TestSupportError("scripts/slurm-cluster start failed (\(started.status)): \(started.output)")
        }
    }

    /// Cancels the jobs and ends the daemons and what the jobs left running (idempotent).
    public func stop() {
        let first = stopped.withLock { done in
            defer { done = true }
            return !done
        }
        guard first else { return }
        _ = try? runProcess("/bin/bash", [Self.script, "stop", temp.path])
    }

    deinit {
        stop()
        temp.remove()
    }

    /// Runs a Slurm client command (`sbatch`, `squeue`, ...) against this cluster, as root.
    public func run(_ tool: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let path = tool.hasPrefix("/") ? tool : "/usr/bin/\(tool)"
        return try runProcess(path, arguments, environment: environment)
    }

    /// The last lines of the daemons' logs (for a failing test's message).
    public func logTail(lines: Int = 30) -> String {
        ["slurmctld.log", "slurmd.log", "munged.log"].map { name in
            let text = (try? String(contentsOfFile: (logDirectory as NSString).appendingPathComponent(name), encoding: .utf8)) ?? ""
            return "---- \(name)\n" + text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
        }.joined(separator: "\n")
    }

    /// A finished job as `jobcomp/filetxt` wrote it.
    public struct CompletedJob: Sendable, Equatable {
        public var id: Int
        public var name: String
        public var user: String
        /// `COMPLETED`, `FAILED`, `CANCELLED`, `TIMEOUT`, `NODE_FAIL`, ...
        public var state: String
        /// `ExitCode=status:signal` as jobcomp wrote it (`3:0`; jobcomp writes `0:0` for
        /// cancelled and timed-out jobs, where `scontrol show job` says `0:15`).
        public var exitCode: String
    }

    /// The jobs in jobcomp.txt, in the order they finished. A line reads
    /// `JobId=2 UserId=u(1001) GroupId=u(1001) Name=a/b:c.d JobState=COMPLETED Partition=gpu ...
    /// ExitCode=0:0 `; the name is kept verbatim (it may hold spaces, so it is cut out between
    /// ` Name=` and ` JobState=`).
    public func completedJobs() -> [CompletedJob] {
        guard let text = try? String(contentsOfFile: jobcompPath, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { Self.parseJobcomp(String($0)) }
    }

    /// The names of the finished jobs, in the order they finished.
    public func jobNamesCompleted() -> [String] {
        completedJobs().map(\.name)
    }

    static func parseJobcomp(_ line: String) -> CompletedJob? {
        guard line.hasPrefix("JobId="),
              let nameStart = line.range(of: " Name="),
              let stateStart = line.range(of: " JobState=", range: nameStart.upperBound..<line.endIndex)
        else { return nil }
        func field(_ key: String, in text: Substring) -> String? {
            guard let start = text.range(of: key + "=") else { return nil }
            return String(text[start.upperBound...].prefix { $0 != " " })
        }
        let head = line[..<nameStart.lowerBound]
        let tail = line[stateStart.lowerBound...]
        guard let id = field("JobId", in: head).flatMap({ Int($0) }) else { return nil }
        let user = field("UserId", in: head).map { $0.prefix { $0 != "(" } }.map(String.init) ?? ""
        return CompletedJob(id: id, name: String(line[nameStart.upperBound..<stateStart.lowerBound]), user: user,
                            state: field("JobState", in: tail) ?? "", exitCode: field(" ExitCode", in: tail) ?? "")
    }
}
