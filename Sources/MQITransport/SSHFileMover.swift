import Foundation
import MQICore

/// Moves cases to the HPC and results back with rsync through the shared SSH master, each
/// file's SHA-256 checked on the receiving side after the copy.
///
/// Upload: the case is hashed here (in process, `ResultManifest`) while the remote side is
/// prepared and rsync (`--partial`, so an interrupted copy resumes) copies it into
/// `{upload_dir}/.mqi-partial/{case_id}/` (the local mover's staging scheme: the staging name
/// stays the case id, so a 255-byte id still fits NAME_MAX); then the remote re-reads every file
/// of the manifest from its disk (`openssl dgst`, or `sha256sum` where openssl is missing, on
/// every core) and only when all match renames the directory to `{upload_dir}/{case_id}/`.
/// Download: the remote hashes the results while rsync copies them into
/// `{results_dir}/.mqi-partial/{case_id}/`; here each file is hashed from disk once it is in
/// place, during the copy (`ResultManifest.ArrivalCheck`), and after the copy only what was
/// not hashed yet or was touched since is read again; then the manifest is written there as
/// `.mqi-manifest.sha256` and the directory is renamed into place. Either way a byte that differs anywhere (changed in the
/// source after it was hashed, in transit, or on the receiving disk before the check) is a
/// mismatch that names the file, drops the staging copy and is a transient failure (the retry
/// sends everything again). Uploads are idempotent: an upload (a redelivery, or a retry after
/// the rename whose answer was lost) that finds the final copy holding every file of its
/// manifest succeeds without sending anything. A download of an empty or missing results
/// directory fails with "no result files in <dir> on <host>".
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

    public func upload(caseId: String, from localCase: String) async throws -> TransferReport {
        try CaseInspection.check(localCase)
        // Measured and hashed on threads of their own while the remote side is prepared and the copy runs.
        async let measured = BlockingWork.run("mqi-measure") { _ in try LocalFileMover.measure(localCase) }
        async let hashed = BlockingWork.run("mqi-manifest") { cancellation in try ResultManifest.listing(of: localCase, cancellation: cancellation) }
        let staging = Self.join(uploadDir, Self.stagingName)
        let partial = Self.join(staging, caseId)
        let final = Self.join(uploadDir, caseId)
        // A redelivered upload whose final copy already holds every file of the case with its
        // checksum is done: nothing is sent, and the copy (and what steps wrote there) stays.
        let runs = RunDirectories(uploadDir: uploadDir)
        // A nested case id (`G1/5506119/1.2…`): rsync creates only the last level of `partial`.
        let stagingParent = (partial as NSString).deletingLastPathComponent
        let arguments = [stagingParent, final, runs.caseRuns(caseId), runs.legacyCaseRuns(caseId)]
        var prepare = try await connection.runScript(Self.prepareScript, arguments: arguments + ["0"], timeoutSec: 3600)
        if prepare.stdoutText.contains("MQI-EXISTS") {
            // Only now is the manifest needed before the copy: is the final copy this case?
            let manifest = try await hashed
            prepare = try await connection.runScript(Self.prepareScript, arguments: arguments + ["1"], stdin: Data(manifest.utf8), timeoutSec: 3600)
        }
        if prepare.stdoutText.contains("MQI-DONE") { return try await measured }
        if prepare.stdoutText.contains("MQI-NOASIDE") {
            throw TransportError("cannot move the run directories of a previous life of case \(caseId) aside in \(runs.root) on \(connection.destination): \(prepare.stderrText)",
                                 transient: false)
        }
        guard prepare.status == 0, prepare.stdoutText.contains("MQI-READY") else {
            throw TransportError("cannot create \(staging) on \(connection.destination) (exit \(prepare.status)): \(prepare.stdoutText)\(prepare.stderrText)",
                                 transient: prepare.status == 255)
        }
        try await rsync(from: Self.slash(localCase), to: connection.rsyncHost + Self.slash(partial), what: "upload of case \(caseId)")
        let manifest = try await hashed
        try await beforeVerify?(partial)
        let checked = try await connection.runScript(Self.verifyAndRenameScript, arguments: [partial, final], stdin: Data(manifest.utf8), timeoutSec: 3600)
        let text = checked.stdoutText
        if text.contains("MQI-OK") { return try await measured }
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

    /// Shell functions for the remote side's checks. `mqi_hash LIST OUT` writes `sha256sum` lines
    /// (`<hex>  ./a/b`, unsorted) of the files named in LIST (NUL-separated `./` paths, relative to
    /// the current directory) to OUT: with `openssl dgst` (several times faster than coreutils'
    /// sha256sum where the CPU has SHA instructions) when it is there and no name holds a
    /// backslash, newline or carriage return (which sha256sum escapes and openssl may not), in
    /// one batch per core (one process each: openssl takes milliseconds to start), each batch
    /// writing a file of its own (lines from parallel writers to one pipe can interleave). A
    /// file that cannot be read has no line.
    /// `mqi_want` reads the manifest from stdin into `$T/want` (sorted) and its names into
    /// `$T/names`; `mqi_check DIR` prints `./a/b: FAILED` for each manifest file that DIR lacks
    /// or holds with other content (files the manifest does not name do not matter) and fails
    /// then. `$T` is a temporary directory of the caller's.
    static let hashFunctions = #"""
        mqi_hash() {
          h='sha256sum --'
          if [ "$(tr -dc '\\\n\r' < "$1" | wc -c)" -eq 0 ] && printf '' | openssl dgst -sha256 -r >/dev/null 2>&1; then h='openssl dgst -sha256 -r'; fi
          p=$(nproc 2>/dev/null || echo 2)
          n=$(tr -dc '\000' < "$1" | wc -c)
          MQI_H=$h MQI_O=$2 xargs -0 -r -P "$p" -n $(( (n + p - 1) / p + 1 )) sh -c '$MQI_H "$@" > "$MQI_O.$$"' mqi-hash < "$1"
          for f in "$2".*; do [ -f "$f" ] && cat "$f"; done | sed 's/^\([0-9a-f]\{64\}\) \*/\1  /' > "$2"
        }
        mqi_want() {
          LC_ALL=C sort > "$T/want"
          cut -c67- "$T/want" | tr '\n' '\000' > "$T/names"
        }
        mqi_check() {
          if grep -q '^\\' "$T/want"; then
            (cd "$1" && sha256sum --check --quiet --strict "$T/want" 2>&1)
            return
          fi
          rm -f "$T/have" "$T/have".*
          (cd "$1" && mqi_hash "$T/names" "$T/have") || return 2
          LC_ALL=C sort "$T/have" | LC_ALL=C comm -23 "$T/want" - > "$T/bad"
          [ -s "$T/bad" ] || return 0
          cut -c67- "$T/bad" | sed 's/$/: FAILED/'
          return 1
        }

        """#

    /// `$1` staging dir (the parent of the staging copy), `$2` final dir, `$3` the case's run
    /// directories, `$4` where an older version kept them, `$5` 1 when the manifest is on stdin.
    /// An upload starts a case's life (no execute of it can have run yet): run directories of a
    /// previous life (before its database was rebuilt, say) are moved aside first (MQI-NOASIDE
    /// when that fails), so that its attempts are not adopted as this one's. Then, when the final
    /// copy exists, MQI-EXISTS without a manifest, MQI-DONE when it matches the manifest; else
    /// MQI-READY once the staging dir exists.
    static let prepareScript = RunDirectories.supersedeFunction + hashFunctions + #"""
        mqi_supersede "$3" "$4" || { echo MQI-NOASIDE; exit 0; }
        if [ -d "$2" ]; then
          [ "$5" = 1 ] || { echo MQI-EXISTS; exit 0; }
          T=$(mktemp -d "${TMPDIR:-/tmp}/mqi-check.XXXXXX") || exit 5
          mqi_want
          if mqi_check "$2" >/dev/null 2>&1; then rm -rf -- "$T"; echo MQI-DONE; exit 0; fi
          rm -rf -- "$T"
        fi
        mkdir -p -- "$1" && echo MQI-READY
        """#

    /// `$1` staging copy, `$2` final dir, the manifest on stdin. Checks the staging copy and
    /// renames it into place only when every file matches. Idempotent: run again after the
    /// rename (the answer was lost with the connection), it finds no staging copy and a final
    /// copy that matches, and answers MQI-OK again.
    static let verifyAndRenameScript = hashFunctions + #"""
        T=$(mktemp -d "${TMPDIR:-/tmp}/mqi-check.XXXXXX") || exit 5
        trap 'rm -rf -- "$T"' EXIT
        mqi_want
        if [ ! -d "$1" ]; then
            if [ -d "$2" ] && mqi_check "$2" >/dev/null 2>&1; then echo MQI-OK; else echo MQI-NOPARTIAL; fi
            exit 0
        fi
        if out=$(mqi_check "$1"); then
            rm -rf -- "$2" && mkdir -p -- "${2%/*}" && mv -- "$1" "$2" || exit 4
            echo MQI-OK
        else
            printf '%s\n' "$out"
            rm -rf -- "$1"
            echo MQI-MISMATCH
        fi
        """#

    /// `$1` results dir: MQI-NODIR when it does not exist, else the `sha256sum` lines of every
    /// regular file in it but a manifest (unsorted), then MQI-END.
    static let listingScript = hashFunctions + #"""
        cd "$1" 2>/dev/null || { echo MQI-NODIR; exit 0; }
        T=$(mktemp -d "${TMPDIR:-/tmp}/mqi-list.XXXXXX") || exit 5
        trap 'rm -rf -- "$T"' EXIT
        find . -type f ! -path ./.mqi-manifest.sha256 -print0 > "$T/names" || exit 6
        mqi_hash "$T/names" "$T/have"
        cat "$T/have" && echo MQI-END
        """#

    public func download(caseId: String, into resultsDir: String) async throws -> TransferReport {
        let remote = Self.join(downloadDir, caseId)
        let files = FileManager.default
        let staging = Self.join(resultsDir, Self.stagingName)
        let partial = Self.join(staging, caseId)
        let final = Self.join(resultsDir, caseId)
        let stagingParent = (partial as NSString).deletingLastPathComponent
        try files.createDirectory(atPath: stagingParent, withIntermediateDirectories: true)
        // The remote hashes the results while rsync copies them: both read the same files, and
        // any difference between what was hashed and what arrived fails the check below.
        async let listed = connection.runScript(Self.listingScript, arguments: [remote], timeoutSec: 3600)
        @Sendable func copy() async -> Result<Void, any Error> {
            do {
                try await rsync(from: connection.rsyncHost + Self.slash(remote), to: Self.slash(partial), what: "download of the results of case \(caseId)",
                                extra: ["--exclude=/\(ResultManifest.fileName)"])
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        async let copied = copy()
        let listing = try await listed
        let text = listing.stdoutText
        if text.hasPrefix("MQI-NODIR") {
            _ = await copied
            try? files.removeItem(atPath: partial)
            throw TransportError("no result files in \(remote) on \(connection.destination) (the directory does not exist)")
        }
        guard listing.status == 0, text.hasSuffix("MQI-END\n") else {
            throw TransportError("cannot compute the SHA-256 manifest of \(remote) on \(connection.destination): \(listing.stderrText)", transient: true)
        }
        let entries = try Self.sortedEntries(String(text.dropLast("MQI-END\n".count)), of: remote)
        if entries.isEmpty {
            _ = await copied
            try? files.removeItem(atPath: partial)
            throw TransportError("no result files in \(remote) on \(connection.destination)")
        }
        // Files already in place are checked while the rest arrive.
        let check = ResultManifest.ArrivalCheck(entries: entries, directory: partial, probeDirectory: stagingParent)
        async let early: Void? = try? BlockingWork.run("mqi-arrivals") { cancellation in check.hashArrivals(cancellation: cancellation) }
        let copyResult = await copied
        check.stop()
        _ = await early
        try copyResult.get()
        try await beforeVerify?(partial)
        let outcome = try await BlockingWork.run("mqi-download-check") { _ in check.finish() }
        if let problems = outcome.problems {
            try? files.removeItem(atPath: partial)
            throw TransportError("download of the results of case \(caseId) failed verification (the staging copy was removed and the retry fetches it again): "
                                 + "checksum mismatch in \(partial): \(problems.prefix(500))", transient: true)
        }
        do {
            try ResultManifest.write(entries.map { ResultManifest.line(digest: $0.digest, name: $0.name) }.joined(), in: partial)
            if files.fileExists(atPath: final) { try files.removeItem(atPath: final) }
            try files.createDirectory(atPath: (final as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try files.moveItem(atPath: partial, toPath: final)
        } catch let error as TransportError {
            throw error
        } catch {
            throw TransportError("cannot move the results of case \(caseId) into \(final): \(error.localizedDescription)")
        }
        return TransferReport(files: entries.count, bytes: outcome.bytes)
    }

    /// The remote's listing as manifest entries (`./a/b` names): every line checked, sorted by
    /// name in byte order.
    static func sortedEntries(_ listing: String, of remote: String) throws -> [(name: String, digest: String)] {
        var entries: [(name: String, digest: String)] = []
        for line in listing.split(separator: "\n") {
            guard let entry = ResultManifest.parse(line) else {
                throw TransportError("cannot read the SHA-256 listing of \(remote): \(line.prefix(200))", transient: true)
            }
            entries.append((name: entry.name, digest: entry.digest))
        }
        entries.sort { $0.name.utf8.lexicographicallyPrecedes($1.name.utf8) }
        return entries
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
