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
}
