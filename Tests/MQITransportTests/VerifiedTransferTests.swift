import Foundation
import Logging
import MQICore
import MQITestSupport
import Testing
@testable import MQITransport

/// The SHA-256 manifests hashed in this process, and the verified transfers built on them: a
/// byte flipped in the source, in transit or on the receiving disk fails the transfer.
struct VerifiedTransferTests {
    /// A tree with the names that trip a manifest up: spaces, a backslash, a newline, a carriage
    /// return, hidden files, `a-c` beside `a/b` (byte order is not per-directory order), an empty
    /// file, a symlink and a FIFO (not listed), and an old manifest at the top (not listed).
    static func writeAwkwardTree(_ root: String) throws {
        let files = FileManager.default
        try files.createDirectory(atPath: root + "/a/b", withIntermediateDirectories: true)
        try files.createDirectory(atPath: root + "/beam 1/.hidden", withIntermediateDirectories: true)
        func write(_ name: String, _ bytes: Data) throws { try bytes.write(to: URL(fileURLWithPath: root + "/" + name)) }
        try write("a-c", Data("dash".utf8))
        try write("a/b/z", Data(repeating: 7, count: 3 << 20))
        try write("a/b.txt", Data())
        try write("beam 1/01 layer.ptn", Data("layer".utf8))
        try write("beam 1/.hidden/x", Data("hidden".utf8))
        try write("back\\slash", Data("b".utf8))
        try write("new\nline", Data("n".utf8))
        try write("carriage\rreturn", Data("r".utf8))
        try write("Zeta", Data("upper".utf8))
        try write(ResultManifest.fileName, Data("stale".utf8))
        try files.createSymbolicLink(atPath: root + "/link", withDestinationPath: "a-c")
        #expect(mkfifo(root + "/fifo", 0o644) == 0)
    }

    static func sh(_ script: String, _ arguments: String...) throws -> (status: Int32, output: String) {
        try runProcess("/bin/sh", ["-c", script, "sh"] + arguments)
    }

    @Test(.timeLimit(.minutes(3)))
    func theManifestIsWhatSha256sumWritesAndReads() throws {
        let temp = try TemporaryDirectory("mqi-manifest")
        defer { temp.remove() }
        let root = temp.file("tree")
        try Self.writeAwkwardTree(root)
        let ours = try ResultManifest.listing(of: root)
        let theirs = try Self.sh(#"cd "$1" && find . -type f ! -path ./.mqi-manifest.sha256 -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum --"#, root)
        #expect(theirs.status == 0)
        #expect(ours == theirs.output)
        #expect(ours.split(separator: "\n").count == 9, "the name with a newline is escaped onto one line")

        // sha256sum reads ours, and we read what it writes (its own listing, `*` binary marks too).
        try ResultManifest.write(ours, in: root)
        #expect(try Self.sh(#"cd "$1" && sha256sum --check --quiet --strict .mqi-manifest.sha256"#, root).status == 0)
        #expect(ResultManifest.verify(root) == nil)
        #expect(ResultManifest.mismatches(theirs.output.replacingOccurrences(of: "  ./", with: " *./"), in: root) == nil)
    }

    @Test(.timeLimit(.minutes(3)))
    func aFlippedByteAMissingFileOrABrokenManifestFailsTheCheck() throws {
        let temp = try TemporaryDirectory("mqi-manifest")
        defer { temp.remove() }
        let root = temp.file("tree")
        try Self.writeAwkwardTree(root)
        try ResultManifest.write(in: root)
        #expect(ResultManifest.verifyResults(at: root))

        // One byte in the middle of a 3 MB file (past the first read chunk).
        let handle = try #require(FileHandle(forUpdatingAtPath: root + "/a/b/z"))
        try handle.seek(toOffset: 2 << 20)
        try handle.write(contentsOf: Data([8]))
        try handle.close()
        let flipped = try #require(ResultManifest.verify(root))
        #expect(flipped.contains("./a/b/z: FAILED"), "\(flipped)")
        #expect(!flipped.contains("a-c"))
        // The same check by sha256sum agrees.
        #expect(try Self.sh(#"cd "$1" && sha256sum --check --quiet --strict .mqi-manifest.sha256"#, root).status != 0)

        try Data(repeating: 7, count: 1).write(to: URL(fileURLWithPath: root + "/a/b/z"))
        try FileManager.default.removeItem(atPath: root + "/new\nline")
        let missing = try #require(ResultManifest.verify(root))
        #expect(missing.contains("./new\nline: FAILED open or read"), "\(missing)")
        #expect(missing.contains("./a/b/z: FAILED"), "a short file: \(missing)")

        // Files the manifest does not name do not matter; an empty or garbled manifest fails.
        try ResultManifest.write(in: root)
        try Data("extra".utf8).write(to: URL(fileURLWithPath: root + "/written-later"))
        #expect(ResultManifest.verify(root) == nil)
        try ResultManifest.write("", in: root)
        #expect(ResultManifest.verify(root) != nil)
        try ResultManifest.write("not a checksum line\n", in: root)
        #expect(ResultManifest.verify(root)?.contains("improperly formatted") == true)
        try FileManager.default.removeItem(atPath: root + "/" + ResultManifest.fileName)
        #expect(ResultManifest.verify(root)?.contains("no manifest") == true)
    }

    /// Flips the byte at `offset` of `path` and puts its mtime back: only its ctime tells.
    static func flipByte(_ path: String, at offset: UInt64 = 100) throws {
        var info = stat()
        #expect(lstat(path, &info) == 0)
        let handle = try #require(FileHandle(forUpdatingAtPath: path))
        try handle.seek(toOffset: offset)
        let old = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: Data([~old]))
        try handle.close()
        var times = [info.st_atim, info.st_mtim]
        #expect(utimensat(AT_FDCWD, path, &times, 0) == 0)
    }

    @Test(.timeLimit(.minutes(3)))
    func filesHashedOnArrivalAreReadAgainWhenTouchedAfterwards() throws {
        let temp = try TemporaryDirectory("mqi-arrivals")
        defer { temp.remove() }
        let root = temp.file("staging/CASE-1")
        try Self.writeAwkwardTree(root)
        try FileManager.default.removeItem(atPath: root + "/" + ResultManifest.fileName)
        let entries = try ResultManifest.listing(of: root).split(separator: "\n").map { line in let entry = try #require(ResultManifest.parse(line)); return (name: entry.name, digest: entry.digest) }
        // Older than any probe written from now on (a coarse clock tick is at most 10 ms).
        Thread.sleep(forTimeInterval: 0.05)
        func check() -> ResultManifest.ArrivalCheck {
            ResultManifest.ArrivalCheck(entries: entries, directory: root, probeDirectory: temp.file("staging"))
        }
        // Every file is in place: one round hashes them all and returns.
        let untouched = check()
        untouched.hashArrivals(pause: 0.001)
        #expect(untouched.finish().problems == nil)
        #expect(untouched.finish().bytes == 3 << 20 + 23)
        #expect(!FileManager.default.fileExists(atPath: untouched.probePath), "the probe is removed")

        // After the early hashes: a byte flipped (mtime put back), a file replaced by a rename
        // (same size and mtime), a file removed. Each is read again and caught.
        let touched = check()
        touched.hashArrivals(pause: 0.001)
        try Self.flipByte(root + "/a/b/z", at: 2 << 20)
        var info = stat()
        #expect(lstat(root + "/a-c", &info) == 0)
        try Data("DASH".utf8).write(to: URL(fileURLWithPath: temp.file("replacement")))
        var times = [info.st_atim, info.st_mtim]
        #expect(utimensat(AT_FDCWD, temp.file("replacement"), &times, 0) == 0)
        #expect(rename(temp.file("replacement"), root + "/a-c") == 0)
        try FileManager.default.removeItem(atPath: root + "/Zeta")
        let problems = try #require(touched.finish().problems)
        #expect(problems.contains("./a/b/z: FAILED"), "\(problems)")
        #expect(problems.contains("./a-c: FAILED"), "\(problems)")
        #expect(problems.contains("./Zeta: FAILED open or read"), "\(problems)")
        #expect(problems.split(separator: "\n").count == 3, "\(problems)")
    }

    // MARK: - over ssh

    /// A private sshd whose sessions find `rsync` in `wrapperDir` first: a wrapper that runs the
    /// real rsync and then, once, flips a byte of what the receiving side wrote.
    struct Remote {
        let temp: TemporaryDirectory
        let server: SSHServer
        let connection: SSHConnection
        var mover: SSHFileMover { SSHFileMover(connection: connection, uploadDir: temp.file("remote/upload"), downloadDir: temp.file("remote/download")) }
        /// While this file exists, the next rsync flips a byte of the file it names (and removes it).
        var flipOrder: String { temp.file("flip-order") }

        init() async throws {
            temp = try TemporaryDirectory("mqi-verified")
            let wrapperDir = temp.file("bin")
            try FileManager.default.createDirectory(atPath: wrapperDir, withIntermediateDirectories: true)
            try """
                #!/bin/sh
                /usr/bin/rsync "$@"
                status=$?
                if [ -f \(temp.file("flip-order")) ]; then
                  victim=$(cat \(temp.file("flip-order"))); rm -f \(temp.file("flip-order"))
                  touch -r "$victim" \(temp.file("mtime"))
                  printf 'X' | dd of="$victim" bs=1 seek=100 conv=notrunc 2>/dev/null
                  touch -r \(temp.file("mtime")) "$victim"
                fi
                exit $status
                """.write(toFile: wrapperDir + "/rsync", atomically: true, encoding: .utf8)
            chmod(wrapperDir + "/rsync", 0o755)
            chmod(temp.path, 0o755)
            server = try SSHServer(extraConfig: "SetEnv PATH=\(wrapperDir):/usr/local/bin:/usr/bin:/bin")
            try await server.start()
            connection = try SSHConnection(config: server.sshConfig(), retry: RetryPolicy(maxAttempts: 3, initialDelaySec: 0.2, maxDelaySec: 1),
                                           logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }, reconnectPatienceSec: 5)
        }

        func writeCase(_ dir: String, files: Int) throws {
            try FileManager.default.createDirectory(atPath: dir + "/beam 1", withIntermediateDirectories: true)
            for index in 0..<files {
                try Data((0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) }).write(to: URL(fileURLWithPath: "\(dir)/beam 1/\(index).ptn"))
            }
            try Data("plan".utf8).write(to: URL(fileURLWithPath: dir + "/RP.1.dcm"))
        }

        func finish() async {
            await connection.closeMaster()
            server.remove()
            temp.remove()
        }
    }

    @Test(.timeLimit(.minutes(3)), .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync"))
    func anUploadWhoseRemoteCopyIsFlippedAfterRsyncWroteItFailsAndTheRetryIsWhole() async throws {
        let remote = try await Remote()
        let local = remote.temp.file("local/CASE-1")
        try remote.writeCase(local, files: 40)
        let upload = remote.temp.file("remote/upload")
        // The remote rsync flips a byte of a file it wrote (mtime put back), after it wrote it.
        try (upload + "/.mqi-partial/CASE-1/beam 1/17.ptn").write(toFile: remote.flipOrder, atomically: true, encoding: .utf8)
        let error = await #expect(throws: TransportError.self) { try await remote.mover.upload(caseId: "CASE-1", from: local) }
        #expect(error?.message.contains("beam 1/17.ptn: FAILED") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("16.ptn") == false)
        #expect(error?.isTransient == true)
        #expect(!FileManager.default.fileExists(atPath: remote.flipOrder), "the wrapper ran")
        #expect(!FileManager.default.fileExists(atPath: upload + "/CASE-1"), "never renamed into place")
        #expect(!FileManager.default.fileExists(atPath: upload + "/.mqi-partial/CASE-1"), "the staging copy is dropped")

        let report = try await remote.mover.upload(caseId: "CASE-1", from: local)
        #expect(report == TransferReport(files: 41, bytes: 40 * 50_000 + 4))
        #expect(FileManager.default.contentsEqual(atPath: local, andPath: upload + "/CASE-1"))
        await remote.finish()
    }

    @Test(.timeLimit(.minutes(3)), .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync"))
    func aDownloadWhoseLocalCopyIsFlippedAfterItArrivedFailsAndTheRetryIsWhole() async throws {
        let remote = try await Remote()
        let results = remote.temp.file("remote/download/CASE-1")
        try remote.writeCase(results, files: 200)
        let local = remote.temp.file("local/results")
        // The first file, long in place (hashed on arrival) when the copy ends, is flipped then
        // with its mtime put back.
        let flipping = SSHFileMover(connection: remote.connection, uploadDir: remote.temp.file("remote/upload"), downloadDir: remote.temp.file("remote/download")) { staging in
            try VerifiedTransferTests.flipByte(staging + "/RP.1.dcm", at: 1)
        }
        let error = await #expect(throws: TransportError.self) { try await flipping.download(caseId: "CASE-1", into: local) }
        #expect(error?.message.contains("./RP.1.dcm: FAILED") == true, "\(error?.message ?? "")")
        #expect(error?.isTransient == true)
        #expect(!FileManager.default.fileExists(atPath: local + "/CASE-1"), "never renamed into place")
        #expect(!FileManager.default.fileExists(atPath: local + "/.mqi-partial/CASE-1"), "the staging copy is dropped")
        #expect((try FileManager.default.contentsOfDirectory(atPath: local + "/.mqi-partial")).isEmpty, "no probe left behind")

        let report = try await remote.mover.download(caseId: "CASE-1", into: local)
        #expect(report == TransferReport(files: 201, bytes: 200 * 50_000 + 4))
        #expect(FileManager.default.contentsEqual(atPath: results, andPath: local + "/CASE-1") == false, "the copy holds the manifest too")
        #expect(ResultManifest.verify(local + "/CASE-1") == nil)
        try FileManager.default.removeItem(atPath: local + "/CASE-1/" + ResultManifest.fileName)
        #expect(FileManager.default.contentsEqual(atPath: results, andPath: local + "/CASE-1"))
        await remote.finish()
    }
}
