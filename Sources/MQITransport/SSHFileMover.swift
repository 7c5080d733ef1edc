import Foundation
import MQICore

/// Moves cases to the HPC and results back with rsync through the shared SSH master.
///
/// Upload: rsync (`--partial`, so an interrupted copy resumes) into
/// `{upload_dir}/.mqi-partial/{case_id}/` (the local mover's staging scheme: the staging name
/// stays the case id, so a 255-byte id still fits NAME_MAX), then the remote `sha256sum`
/// checks the manifest computed here, and only then is the directory renamed to
/// `{upload_dir}/{case_id}/`. Download: the remote computes the manifest, rsync copies into
/// `{results_dir}/.mqi-partial/{case_id}/`, the manifest is written there as
/// `.mqi-manifest.sha256` and checked locally, then the directory is renamed into place.
/// A checksum mismatch names the file, drops the staging copy and is a transient failure
/// (the retry sends everything again). Uploads are idempotent: an upload (a redelivery, or a
/// retry after the rename whose answer was lost) that finds the final copy holding every file
/// of its manifest succeeds without sending anything. A download of an empty or missing
/// results directory fails with "no result files in <dir> on <host>".
public struct SSHFileMover: FileMover {
    public let connection: SSHConnection
    public var uploadDir: String
    public var downloadDir: String
    public var rsyncTimeoutSec: Double
    /// Runs between the copy and the check, with the staging path (remote for uploads, local for
    /// downloads). For tests that corrupt a byte in flight.
    public var beforeVerify: (@Sendable (String) async throws -> Void)?

    public init(connection: SSHConnection, uploadDir: String, downloadDir: String, rsyncTimeoutSec: Double = 3600,
                beforeVerify: (@Sendable (String) async throws -> Void)? = nil) {
        self.connection = connection
        self.uploadDir = uploadDir
        self.downloadDir = downloadDir
        self.rsyncTimeoutSec = rsyncTimeoutSec
        self.beforeVerify = beforeVerify
    }

    static let stagingName = ".mqi-partial"

    /// Lists every regular file below `.` as `sha256sum` lines, sorted, paths relative (`./a/b`).
    static let manifestScript = #"find . -type f ! -path ./.mqi-manifest.sha256 -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum --"#

    public func upload(caseId: String, from localCase: String) async throws -> TransferReport {
        try CaseInspection.check(localCase)
        let report = try LocalFileMover.measure(localCase)
        let manifest = try await Self.localManifest(of: localCase)
        let staging = Self.join(uploadDir, Self.stagingName)
        let partial = Self.join(staging, caseId)
        let final = Self.join(uploadDir, caseId)
        // A redelivered upload whose final copy already holds every file of the case with its
        // checksum is done: nothing is sent, and the copy (and what steps wrote there) stays.
        let runs = RunDirectories(uploadDir: uploadDir)
        // A nested case id (`G1/5506119/1.2…`): rsync creates only the last level of `partial`.
        let stagingParent = (partial as NSString).deletingLastPathComponent
        let prepare = try await connection.runScript(Self.prepareScript, arguments: [stagingParent, final, runs.caseRuns(caseId), runs.legacyCaseRuns(caseId)], stdin: Data(manifest.utf8), timeoutSec: 3600)
        if prepare.stdoutText.contains("MQI-DONE") { return report }
        if prepare.stdoutText.contains("MQI-NOASIDE") {
            throw TransportError("cannot move the run directories of a previous life of case \(caseId) aside in \(runs.root) on \(connection.destination): \(prepare.stderrText)",
                                 transient: false)
        }
        guard prepare.status == 0, prepare.stdoutText.contains("MQI-READY") else {
            throw TransportError("cannot create \(staging) on \(connection.destination) (exit \(prepare.status)): \(prepare.stdoutText)\(prepare.stderrText)",
                                 transient: prepare.status == 255)
        }
        try await rsync(from: Self.slash(localCase), to: connection.rsyncHost + Self.slash(partial), what: "upload of case \(caseId)")
        try await beforeVerify?(partial)
        let checked = try await connection.runScript(Self.verifyAndRenameScript, arguments: [partial, final], stdin: Data(manifest.utf8), timeoutSec: 3600)
        let text = checked.stdoutText
        if text.contains("MQI-OK") { return report }
        if text.contains("MQI-MISMATCH") {
            throw TransportError("upload of case \(caseId) failed verification on \(connection.destination) (SHA-256 mismatch; the staging copy was removed and the retry sends it again): "
                                 + Self.failedFiles(text), transient: true)
        }
        if text.contains("MQI-NOPARTIAL") {
            throw TransportError("upload of case \(caseId): the staging copy \(partial) on \(connection.destination) vanished before it was checked; the retry sends it again",
                                 transient: true)
        }
        throw TransportError("upload of case \(caseId): cannot verify or rename \(partial) on \(connection.destination) (exit \(checked.status)): \(text)\(checked.stderrText)",
                             transient: checked.status == 255)
    }

    /// `$1` staging dir (the parent of the staging copy), `$2` final dir, `$3` the case's run directories, `$4` where an older
    /// version kept them, the manifest on stdin. An upload starts a case's life (no execute of it
    /// can have run yet): run directories of a previous life (before its database was rebuilt,
    /// say) are moved aside first (MQI-NOASIDE when that fails), so that its attempts are not
    /// adopted as this one's. Then MQI-DONE when the final copy already matches the manifest,
    /// else MQI-READY once the staging dir exists.
    static let prepareScript = RunDirectories.supersedeFunction + #"""
        mqi_supersede "$3" "$4" || { echo MQI-NOASIDE; exit 0; }
        if [ -d "$2" ] && (cd "$2" && sha256sum --check --quiet --strict - >/dev/null 2>&1); then echo MQI-DONE; exit 0; fi
        mkdir -p -- "$1" && echo MQI-READY
        """#

    /// `$1` staging copy, `$2` final dir, the manifest on stdin. Checks the staging copy and
    /// renames it into place only when every file matches. Idempotent: run again after the
    /// rename (the answer was lost with the connection), it finds no staging copy and a final
    /// copy that matches, and answers MQI-OK again.
    static let verifyAndRenameScript = #"""
        if [ ! -d "$1" ]; then
            if [ -d "$2" ] && (cd "$2" && sha256sum --check --quiet --strict - >/dev/null 2>&1); then echo MQI-OK; else echo MQI-NOPARTIAL; fi
            exit 0
        fi
        cd "$1" || exit 3
        if out=$(sha256sum --check --quiet --strict - 2>&1); then
            rm -rf -- "$2" && mkdir -p -- "${2%/*}" && mv -- "$1" "$2" || exit 4
            echo MQI-OK
        else
            printf '%s\n' "$out"
            cd / && rm -rf -- "$1"
            echo MQI-MISMATCH
        fi
        """#

    public func download(caseId: String, into resultsDir: String) async throws -> TransferReport {
        let remote = Self.join(downloadDir, caseId)
        let listed = try await connection.runScript(#"cd "$1" 2>/dev/null || { echo MQI-NODIR; exit 0; }; "# + Self.manifestScript + " && echo MQI-END",
                                                    arguments: [remote], timeoutSec: 3600)
        let listing = listed.stdoutText
        if listing.hasPrefix("MQI-NODIR") {
            throw TransportError("no result files in \(remote) on \(connection.destination) (the directory does not exist)")
        }
        guard listed.status == 0, listing.hasSuffix("MQI-END\n") else {
            throw TransportError("cannot compute the SHA-256 manifest of \(remote) on \(connection.destination): \(listed.stderrText)", transient: true)
        }
        if listing == "MQI-END\n" {
            throw TransportError("no result files in \(remote) on \(connection.destination)")
        }
        let manifest = String(listing.dropLast("MQI-END\n".count))
        let files = FileManager.default
        let staging = Self.join(resultsDir, Self.stagingName)
        let partial = Self.join(staging, caseId)
        let final = Self.join(resultsDir, caseId)
        try files.createDirectory(atPath: (partial as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try await rsync(from: connection.rsyncHost + Self.slash(remote), to: Self.slash(partial), what: "download of the results of case \(caseId)",
                        extra: ["--exclude=/\(ResultManifest.fileName)"])
        try await beforeVerify?(partial)
        do {
            try Data(manifest.utf8).write(to: URL(fileURLWithPath: Self.join(partial, ResultManifest.fileName)), options: .atomic)
        } catch {
            throw TransportError("cannot write the manifest into \(partial): \(error.localizedDescription)")
        }
        if let problem = await ResultManifest.check(partial) {
            try? files.removeItem(atPath: partial)
            throw TransportError("download of the results of case \(caseId) failed verification (the staging copy was removed and the retry fetches it again): \(problem)",
                                 transient: true)
        }
        let report = try LocalFileMover.measure(partial)
        do {
            if files.fileExists(atPath: final) { try files.removeItem(atPath: final) }
            try files.createDirectory(atPath: (final as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try files.moveItem(atPath: partial, toPath: final)
        } catch {
            throw TransportError("cannot move the results of case \(caseId) into \(final): \(error.localizedDescription)")
        }
        // The manifest itself is not a result file.
        return TransferReport(files: report.files - 1, bytes: report.bytes - Int64(manifest.utf8.count))
    }

    /// rsync over the master. Exit 255 or a lost master is a connection failure (transient);
    /// other rsync failures are transient too (a vanished file, a full pipe) up to the retry limit.
    func rsync(from source: String, to destination: String, what: String, extra: [String] = []) async throws {
        var tries = 0
        while true {
            tries += 1
            try await connection.ensureMaster()
            // Content, modes and times; never owner or group (`-a` would make a root receiver chown
            // to the sender's uid, and a non-root one cannot).
            let arguments = ["-rlpt", "--protect-args", "--partial", "--delete", "-e", connection.rsyncShell] + extra + [source, destination]
            let output = try await SSHProcess.run("/usr/bin/env", ["rsync"] + arguments, timeoutSec: rsyncTimeoutSec)
            if output.status == 0, !output.timedOut { return }
            let reason = output.timedOut ? "timed out after \(Int(rsyncTimeoutSec)) s" : "rsync exit \(output.status): \(output.stderrText.prefix(500))"
            if await connection.connectionLost(reason), tries < 2 { continue }
            throw TransportError("\(what) to/from \(connection.destination) was interrupted (\(reason)); it resumes on retry", transient: true)
        }
    }

    /// The manifest of a local directory, computed here (the sending side of an upload).
    static func localManifest(of directory: String) async throws -> String {
        let output = try await SSHProcess.run("/bin/sh", ["-c", "cd \"$1\" && " + manifestScript, "mqi-manifest", directory], timeoutSec: 3600)
        guard output.status == 0 else {
            throw TransportError("cannot compute the SHA-256 manifest of \(directory): \(output.stderrText)")
        }
        return output.stdoutText
    }

    /// The names in `sha256sum --check` output that failed.
    static func failedFiles(_ output: String) -> String {
        let failed = output.split(separator: "\n").filter { $0.contains("FAILED") || $0.contains("No such file") }
        return failed.isEmpty ? output.replacingOccurrences(of: "MQI-MISMATCH", with: "").trimmingCharacters(in: .whitespacesAndNewlines)
                              : failed.joined(separator: "; ")
    }

    static func join(_ directory: String, _ name: String) -> String {
        (directory as NSString).appendingPathComponent(name)
    }

    static func slash(_ path: String) -> String {
        path.hasSuffix("/") ? path : path + "/"
    }
}
