import Foundation
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
        try BlockingWork.spawnAndWait("/bin/sh", ["-c", script, "sh"] + arguments)
    }

    @Test(.timeLimit(.minutes(1)))
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

    @Test(.timeLimit(.minutes(1)))
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
}
