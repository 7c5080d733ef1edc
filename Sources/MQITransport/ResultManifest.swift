import Foundation

/// A SHA-256 manifest (`sha256sum` format) of a directory's files, kept in the directory as
/// `.mqi-manifest.sha256`. Results carry one, so complete results can be told from partial or
/// corrupted ones later (e.g. when the database is rebuilt).
///
/// Hashing reads every byte (seconds for a large dose grid). The plain functions block their
/// thread: call them from a thread of your own (as `LocalFileMover` does); from async code use
/// `check(_:)`, which waits on a thread of its own and leaves the cooperative pool free.
public enum ResultManifest {
    public static let fileName = ".mqi-manifest.sha256"

    /// Writes the manifest of every regular file under `directory` (sorted, paths relative). Blocking.
    public static func write(in directory: String) throws {
        try write(try listing(of: directory), in: directory)
    }

    /// The `sha256sum` lines of every regular file under `directory` but a manifest (sorted,
    /// paths relative: `./a/b`). Blocking.
    static func listing(of directory: String) throws -> String {
        let script = #"cd "$1" && find . -type f ! -path ./\#(fileName) ! -path ./\#(fileName).tmp -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum --"#
        let result = try BlockingWork.spawnAndWait("/bin/sh", ["-c", script, "mqi-manifest", directory])
        guard result.status == 0 else {
            throw TransportError("cannot compute the SHA-256 manifest of \(directory): \(result.output.prefix(300))")
        }
        return result.output
    }

    /// Writes `manifest` (from `listing(of:)`) into `directory`, atomically.
    static func write(_ manifest: String, in directory: String) throws {
        let path = (directory as NSString).appendingPathComponent(fileName)
        do {
            try Data(manifest.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw TransportError("cannot write the SHA-256 manifest \(path): \(error.localizedDescription)")
        }
    }

    /// Nil if `directory` has a manifest and every file in it is present with its checksum;
    /// otherwise what is wrong (naming the file). Blocking.
    public static func verify(_ directory: String) -> String? {
        let manifest = (directory as NSString).appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: manifest) else { return "no manifest \(fileName) in \(directory)" }
        guard let result = try? BlockingWork.spawnAndWait("/bin/sh", ["-c", "cd \"$1\" && sha256sum --check --quiet --strict \(fileName) 2>&1", "mqi-manifest", directory]) else {
            return "cannot run sha256sum"
        }
        if result.status == 0 { return nil }
        return "checksum mismatch in \(directory): " + result.output.trimmingCharacters(in: .whitespacesAndNewlines).prefix(500)
    }

    /// `verify(_:)` on a thread of its own: for async callers.
    public static func check(_ directory: String) async -> String? {
        // Not `try?`: it would flatten verify's nil (all good) into the nil of a thrown error.
        do {
            return try await BlockingWork.run("mqi-manifest-check") { _ in verify(directory) }
        } catch {
            return "the check of \(directory) was cancelled"
        }
    }

    /// True when `dir` holds complete, verified results. Blocking.
    public static func verifyResults(at dir: String) -> Bool {
        verify(dir) == nil
    }
}
