import Foundation

/// A SHA-256 manifest (`sha256sum` format) of a directory's files, kept in the directory as
/// `.mqi-manifest.sha256`. Results carry one, so complete results can be told from partial or
/// corrupted ones later (e.g. when the database is rebuilt).
public enum ResultManifest {
    public static let fileName = ".mqi-manifest.sha256"

    /// Writes the manifest of every regular file under `directory` (sorted, paths relative).
    public static func write(in directory: String) throws {
        let script = """
            cd "$1" && find . -type f ! -name \(fileName) ! -name \(fileName).tmp -print0 | LC_ALL=C sort -z \
            | xargs -0 -r sha256sum -- > \(fileName).tmp && mv \(fileName).tmp \(fileName)
            """
        let result = try run(script, directory)
        guard result.status == 0 else {
            throw TransportError("cannot write the SHA-256 manifest of \(directory): \(result.output.prefix(300))")
        }
    }

    /// Nil if `directory` has a manifest and every file in it is present with its checksum;
    /// otherwise what is wrong (naming the file).
    public static func verify(_ directory: String) -> String? {
        let manifest = (directory as NSString).appendingPathComponent(fileName)
        guard FileManager.default.fileExists(atPath: manifest) else { return "no manifest \(fileName) in \(directory)" }
        guard let result = try? run("cd \"$1\" && sha256sum --check --quiet --strict \(fileName) 2>&1", directory) else {
            return "cannot run sha256sum"
        }
        if result.status == 0 { return nil }
        return "checksum mismatch in \(directory): " + result.output.trimmingCharacters(in: .whitespacesAndNewlines).prefix(500)
    }

    /// True when `dir` holds complete, verified results.
    public static func verifyResults(at dir: String) -> Bool {
        verify(dir) == nil
    }

    static func run(_ script: String, _ directory: String) throws -> CommandResult {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script, "mqi-manifest", directory]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return CommandResult(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self))
    }
}
