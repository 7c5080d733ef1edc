import Crypto
import Dispatch
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A SHA-256 manifest (`sha256sum` format) of a directory's files, kept in the directory as
/// `.mqi-manifest.sha256`. Results carry one, so complete results can be told from partial or
/// corrupted ones later (e.g. when the database is rebuilt).
///
/// Hashed in this process (swift-crypto), files spread over every core; the text is what
/// `sha256sum` writes and reads (`LC_ALL=C` order, `./` paths, names with `\` or a newline
/// escaped), so the remote `sha256sum --check` reads manifests made here and the other way round.
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
    /// paths relative: `./a/b`), like `find . -type f | LC_ALL=C sort | xargs sha256sum`. Blocking.
    static func listing(of directory: String, cancellation: BlockingWork.Cancellation? = nil) throws -> String {
        let names = try regularFiles(in: directory)
        let digests = try digests(of: names.map { directory + "/" + String(decoding: $0, as: UTF8.self) }, cancellation: cancellation)
        var text = ""
        for (name, digest) in zip(names, digests) {
            text += line(digest: digest, name: String(decoding: name, as: UTF8.self))
        }
        return text
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
        guard let data = FileManager.default.contents(atPath: manifest) else { return "cannot read \(manifest)" }
        guard let problems = mismatches(String(decoding: data, as: UTF8.self), in: directory) else { return nil }
        return "checksum mismatch in \(directory): " + problems.prefix(500)
    }

    /// Nil when every line of `manifest` (`sha256sum` text) names a file under `directory` with
    /// that checksum (files it does not name do not matter); otherwise the failures, one a line,
    /// as `sha256sum --check` words them (`./a/b: FAILED`). A manifest without a line, or with a
    /// line that is not a checksum line, fails (`--strict`). Blocking.
    static func mismatches(_ manifest: String, in directory: String) -> String? {
        var entries: [(digest: String, name: String)] = []
        for line in manifest.split(separator: "\n", omittingEmptySubsequences: true) {
            guard let entry = parse(line) else { return "improperly formatted checksum line: \(line.prefix(200))" }
            entries.append(entry)
        }
        if entries.isEmpty { return "no properly formatted checksum lines found" }
        let paths = entries.map { $0.name.hasPrefix("/") ? $0.name : directory + "/" + $0.name }
        let found: [Result<String, Failure>]
        do {
            found = try digests(of: paths, failuresAsResults: true)
        } catch {
            return "cannot hash the files of \(directory): \(error)"
        }
        var failed: [String] = []
        for (entry, result) in zip(entries, found) {
            switch result {
            case .success(let digest) where digest == entry.digest: continue
            case .success: failed.append("\(entry.name): FAILED")
            case .failure(let failure): failed.append("\(entry.name): FAILED open or read (\(failure.reason))")
            }
        }
        return failed.isEmpty ? nil : failed.joined(separator: "\n")
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

    // MARK: - The sha256sum format

    /// One `sha256sum` line: `<hex>  ./a/b`; a name holding `\`, a newline or a carriage return
    /// is escaped and the line starts with `\` (GNU coreutils 9).
    static func line(digest: String, name: String) -> String {
        guard name.unicodeScalars.contains(where: { $0 == "\\" || $0 == "\n" || $0 == "\r" }) else { return "\(digest)  \(name)\n" }
        var escaped = ""
        for character in name.unicodeScalars {
            switch character {
            case "\\": escaped += "\\\\"
            case "\n": escaped += "\\n"
            case "\r": escaped += "\\r"
            default: escaped.unicodeScalars.append(character)
            }
        }
        return "\\\(digest)  \(escaped)\n"
    }

    /// The checksum (lower-case hex) and name of one `sha256sum` line; nil when it is not one.
    static func parse(_ line: Substring) -> (digest: String, name: String)? {
        var rest = line
        let escaped = rest.first == "\\"
        if escaped { rest = rest.dropFirst() }
        let hex = rest.prefix(64)
        guard hex.count == 64, hex.allSatisfy(\.isHexDigit) else { return nil }
        rest = rest.dropFirst(64)
        guard rest.count >= 3, rest.first == " ", [" ", "*"].contains(rest.dropFirst().first) else { return nil }
        let raw = rest.dropFirst(2)
        guard escaped else { return (hex.lowercased(), String(raw)) }
        var name = ""
        var iterator = raw.unicodeScalars.makeIterator()
        while let scalar = iterator.next() {
            guard scalar == "\\" else { name.unicodeScalars.append(scalar); continue }
            switch iterator.next() {
            case "\\": name += "\\"
            case "n": name += "\n"
            case "r": name += "\r"
            default: return nil
            }
        }
        return (hex.lowercased(), name)
    }

    // MARK: - Listing and hashing

    struct Failure: Error, CustomStringConvertible {
        var reason: String
        var description: String { reason }
    }

    /// The relative names (`./a/b`, bytes) of every regular file below `directory`, symlinks not
    /// followed, the manifest (and its temporary file) at the top left out, in byte order.
    static func regularFiles(in directory: String) throws -> [[UInt8]] {
        var found: [[UInt8]] = []
        try walk(directory, relative: Array("./".utf8), into: &found, top: true)
        found.sort { $0.lexicographicallyPrecedes($1) }
        return found
    }

    private static func walk(_ path: String, relative: [UInt8], into found: inout [[UInt8]], top: Bool) throws {
        guard let stream = opendir(path) else {
            throw TransportError("cannot list \(path): \(String(cString: strerror(errno)))")
        }
        defer { closedir(stream) }
        var directories: [[UInt8]] = []
        while true {
            errno = 0
            guard let entry = readdir(stream) else {
                if errno != 0 { throw TransportError("cannot list \(path): \(String(cString: strerror(errno)))") }
                break
            }
            let name: [UInt8] = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                Array(raw.prefix(while: { $0 != 0 }))
            }
            if name == [0x2E] || name == [0x2E, 0x2E] { continue }
            if top, name == Array(fileName.utf8) || name == Array((fileName + ".tmp").utf8) { continue }
            var kind = entry.pointee.d_type
            if kind == UInt8(DT_UNKNOWN) {
                var info = stat()
                let full = path + "/" + String(decoding: name, as: UTF8.self)
                guard lstat(full, &info) == 0 else { continue }
                switch info.st_mode & S_IFMT {
                case S_IFREG: kind = UInt8(DT_REG)
                case S_IFDIR: kind = UInt8(DT_DIR)
                default: continue
                }
            }
            if kind == UInt8(DT_REG) {
                found.append(relative + name)
            } else if kind == UInt8(DT_DIR) {
                directories.append(name)
            }
        }
        for name in directories {
            try walk(path + "/" + String(decoding: name, as: UTF8.self), relative: relative + name + [0x2F], into: &found, top: false)
        }
    }

    /// The SHA-256 (lower-case hex) of each file, hashed on every core. Throws the first failure.
    static func digests(of paths: [String], cancellation: BlockingWork.Cancellation? = nil) throws -> [String] {
        try digests(of: paths, failuresAsResults: false, cancellation: cancellation).map { try $0.get() }
    }

    private static func digests(of paths: [String], failuresAsResults: Bool, cancellation: BlockingWork.Cancellation? = nil) throws -> [Result<String, Failure>] {
        let results = Mutex([Result<String, Failure>?](repeating: nil, count: paths.count))
        let next = Atomic<Int>(0)
        let workers = min(max(ProcessInfo.processInfo.activeProcessorCount, 1), max(paths.count, 1))
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let index = next.add(1, ordering: .relaxed).oldValue
                guard index < paths.count, cancellation?.isCancelled != true else { return }
                let result = Result { try sha256(ofFile: paths[index], buffer: &buffer) }.mapError { $0 as? Failure ?? Failure(reason: "\($0)") }
                results.withLock { $0[index] = result }
                if case .failure = result, !failuresAsResults {
                    next.store(paths.count, ordering: .relaxed)
                    return
                }
            }
        }
        try cancellation?.check()
        let collected = results.withLock { $0 }
        if !failuresAsResults {
            for (path, result) in zip(paths, collected) {
                if case .failure(let failure)? = result { throw TransportError("cannot hash \(path): \(failure.reason)") }
            }
        }
        return collected.map { $0 ?? .failure(Failure(reason: "not hashed")) }
    }

    /// The SHA-256 of one file (lower-case hex), read with `buffer`.
    static func sha256(ofFile path: String, buffer: inout [UInt8]) throws -> String {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw Failure(reason: String(cString: strerror(errno))) }
        defer { close(descriptor) }
        var hasher = SHA256()
        while true {
            let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
            if count == 0 { break }
            if count < 0 {
                if errno == EINTR { continue }
                throw Failure(reason: String(cString: strerror(errno)))
            }
            buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
        }
        return hex(hasher.finalize())
    }

    static func hex(_ digest: SHA256.Digest) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(64)
        for byte in digest {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0xF)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
