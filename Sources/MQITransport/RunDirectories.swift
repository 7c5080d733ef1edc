import Foundation

/// Where execute attempts keep their bookkeeping on the compute side (both executors, both
/// file movers): `{upload_dir}/.mqi-runs/{case_id}/{step}.{attempt}/`, outside the case
/// directory `{upload_dir}/{case_id}/`, so that removing or replacing a case directory (a
/// cleanup, a re-upload) never removes what says whether an attempt may still run.
///
/// Versions before this layout kept them in `{upload_dir}/{case_id}/.mqi/{step}.{attempt}/`
/// (`legacyRunDirectory`); an attempt found only there is adopted and stopped there, so an
/// upgrade never starts a running simulation a second time.
public struct RunDirectories: Sendable, Equatable {
    public static let rootName = ".mqi-runs"
    public var uploadDir: String

    public init(uploadDir: String) {
        self.uploadDir = uploadDir
    }

    /// `{upload_dir}/.mqi-runs`
    public var root: String { Self.join(uploadDir, Self.rootName) }

    /// `{upload_dir}/{case_id}`
    public func caseDirectory(_ caseId: String) -> String { Self.join(uploadDir, caseId) }

    /// `{upload_dir}/.mqi-runs/{case_id}`: every run directory of the case's current life.
    public func caseRuns(_ caseId: String) -> String { Self.join(root, caseId) }

    /// `{upload_dir}/.mqi-runs/{case_id}/{step}.{attempt}`
    public func runDirectory(caseId: String, step: String, attempt: Int) -> String {
        Self.join(caseRuns(caseId), "\(step).\(attempt)")
    }

    /// `{upload_dir}/{case_id}/.mqi/{step}.{attempt}`, where older versions kept it.
    public func legacyRunDirectory(caseId: String, step: String, attempt: Int) -> String {
        Self.join(Self.join(caseDirectory(caseId), ".mqi"), "\(step).\(attempt)")
    }

    /// `{upload_dir}/{case_id}/.mqi`
    public func legacyCaseRuns(_ caseId: String) -> String { Self.join(caseDirectory(caseId), ".mqi") }

    /// The suffix a previous life's run directories get when an upload moves them aside:
    /// `.superseded-<UTC time>` (`20250102T030405Z`).
    public static func supersededSuffix(at date: Date = Date()) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return ".superseded-" + formatter.string(from: date)
    }

    /// Appends path components one by one (a case id may hold `/`).
    static func join(_ directory: String, _ name: String) -> String {
        (directory as NSString).appendingPathComponent(name)
    }

    /// Moves the case's run directories of a previous life aside (never deletes them), local:
    /// `.mqi-runs/{case_id}` to `.mqi-runs/{case_id}.superseded-<UTC time>` and an older
    /// version's `{case_id}/.mqi` to `….superseded-<UTC time>.legacy`. Returns what moved where.
    /// Blocking. Only an upload calls this: it starts a case's life, so no execute of this
    /// life can have run yet.
    public func supersedeLocally(caseId: String, at date: Date = Date()) throws -> [(from: String, to: String)] {
        let files = FileManager.default
        var moved: [(from: String, to: String)] = []
        let base = caseRuns(caseId) + Self.supersededSuffix(at: date)
        func free(_ wanted: String) -> String {
            var candidate = wanted, n = 0
            while files.fileExists(atPath: candidate) {
                n += 1
                candidate = "\(wanted)-\(n)"
            }
            return candidate
        }
        for (source, target) in [(caseRuns(caseId), base), (legacyCaseRuns(caseId), base + ".legacy")] {
            var isDirectory: ObjCBool = false
            guard files.fileExists(atPath: source, isDirectory: &isDirectory), isDirectory.boolValue else { continue }
            let destination = free(target)
            do {
                try files.createDirectory(atPath: (destination as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                try files.moveItem(atPath: source, toPath: destination)
            } catch {
                throw TransportError("cannot move the run directories \(source) of a previous life of case \(caseId) aside to \(destination): \(error.localizedDescription)")
            }
            moved.append((source, destination))
        }
        return moved
    }

    /// The same for the remote side, as a shell function: `mqi_supersede RUNS LEGACY` with
    /// `RUNS` = `caseRuns`, `LEGACY` = `legacyCaseRuns`; false when a move fails. The UTC time
    /// is taken there.
    static let supersedeFunction = #"""
        mqi_aside() {
          [ -d "$1" ] || return 0
          n=0; c=$2; while [ -e "$c" ]; do n=$((n + 1)); c=$2-$n; done
          mkdir -p -- "${c%/*}" && mv -- "$1" "$c"
        }
        mqi_supersede() {
          t=$(date -u +%Y%m%dT%H%M%SZ)
          mqi_aside "$1" "$1.superseded-$t" && mqi_aside "$2" "$1.superseded-$t.legacy"
        }

        """#

    /// The wrapper every direct executor (local and ssh) runs around a step's command, in a new
    /// session: it records the attempt's identity, process group and exit code in the run directory.
    /// `$1` run directory, `$2` log file, `$3` command. `$$` is the session (= process group) leader.
    /// Each file is written by one `echo` (one write of a few bytes, newline last) with no `mv`
    /// process: readers take a file only once it ends with its newline, so a file caught empty or
    /// half-written reads as not there yet, exactly like the missing file before a rename.
    ///
    /// `identity` (boot id, the leader's start time in clock ticks) is written before `pid`, so a
    /// pid is never taken for this attempt's after a reboot or once the pid is reused. The
    /// `stopped` check comes after `pid`: a stop writes `stopped` first and reads `pid` second,
    /// so either the stop sees the pid and kills the group, or the wrapper sees `stopped` and
    /// does not run the command. Only shell built-ins: no extra process per step.
    static let stepWrapper = recordIdentity + #"""
        echo $$ > "$1/pid" || exit 127
        if [ -e "$1/stopped" ]; then echo 143 > "$1/exit_code"; exit 143; fi
        /bin/sh -c "$3" > "$2" 2>&1 < /dev/null
        code=$?
        echo $code > "$1/exit_code"
        exit $code
        """#

    /// The start of the wrapper: `$1` is the run directory; writes `identity`
    /// as "<boot id> <start time of $$ in clock ticks>" with shell built-ins only.
    static let recordIdentity = #"""
        d=$1 b= s=
        read -r b 2>/dev/null < /proc/sys/kernel/random/boot_id
        read -r s 2>/dev/null < /proc/$$/stat
        mqi_identity() { shift 19; echo "$b $1" > "$d/identity"; }
        [ -n "$s" ] && mqi_identity ${s##*) }

        """#
}
