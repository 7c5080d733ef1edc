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

    static func digests(of paths: [String], failuresAsResults: Bool, cancellation: BlockingWork.Cancellation? = nil) throws -> [Result<String, Failure>] {
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

extension ResultManifest {
    /// Checks files against a manifest while they arrive (a download): files already in place
    /// are hashed during the copy, so the check after it reads only what changed since.
    ///
    /// A file hashed early counts only if nothing touched it afterwards: its device, inode,
    /// size, mtime and ctime are the same at the final check as when it was read, and its
    /// ctime is older than a probe file written (same file system, same clock) before the read.
    /// Any later write or rename gives it a ctime at least the probe's, so a byte flipped after
    /// the early read, even with its mtime put back, is read again and caught. Everything else is
    /// hashed at the end. Blocking methods: run them on threads of their own.
    final class ArrivalCheck: Sendable {
        struct Entry: Sendable {
            /// `./a/b`, as in the manifest.
            var name: String
            var path: String
            var digest: String
        }

        struct Stamp: Equatable {
            var device: UInt64, inode: UInt64, size: Int64
            var mtime: timespec, ctime: timespec

            init(_ info: stat) {
                device = UInt64(info.st_dev)
                inode = UInt64(info.st_ino)
                size = Int64(info.st_size)
                mtime = info.st_mtim
                ctime = info.st_ctim
            }

            static func == (a: Stamp, b: Stamp) -> Bool {
                a.device == b.device && a.inode == b.inode && a.size == b.size
                    && a.mtime.tv_sec == b.mtime.tv_sec && a.mtime.tv_nsec == b.mtime.tv_nsec
                    && a.ctime.tv_sec == b.ctime.tv_sec && a.ctime.tv_nsec == b.ctime.tv_nsec
            }
        }

        struct Seen {
            var stamp: Stamp
            var digest: String
        }

        let entries: [Entry]
        let probePath: String
        private let seen: Mutex<[Int: Seen]>
        private let stopped = Atomic<Bool>(false)

        /// `entries`: the manifest's files (`./a/b` names) under `directory`. `probeDirectory`: a
        /// directory on the same file system for the probe (not inside `directory`).
        init(entries: [(name: String, digest: String)], directory: String, probeDirectory: String) {
            self.entries = entries.map { Entry(name: $0.name, path: directory + "/" + $0.name, digest: $0.digest) }
            probePath = probeDirectory + "/.mqi-probe-\(getpid())-\(UInt32.random(in: 0 ... .max))"
            seen = Mutex([:])
        }

        /// Hashes the files that are in place, round after round, until `stop()` (or all are done).
        func hashArrivals(cancellation: BlockingWork.Cancellation? = nil, pause: Double = 0.02) {
            defer { unlink(probePath) }
            var pending = Array(entries.indices)
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while !pending.isEmpty, !stopped.load(ordering: .relaxed), cancellation?.isCancelled != true {
                guard let probe = touchProbe() else { return }
                // Files arrive roughly in the manifest's order: a round ends after a run of
                // files not there yet, rather than trying every one of them each time.
                var misses = 0
                pending.removeAll { index in
                    guard misses < 16, !stopped.load(ordering: .relaxed) else { return false }
                    guard let found = hashIfSettled(entries[index].path, olderThan: probe, buffer: &buffer) else {
                        misses += 1
                        return false
                    }
                    misses = 0
                    seen.withLock { $0[index] = found }
                    return true
                }
                if !pending.isEmpty { Thread.sleep(forTimeInterval: pause) }
            }
        }

        func stop() {
            stopped.store(true, ordering: .relaxed)
        }

        /// After the copy: nil when every file of the manifest is there with its checksum, else
        /// the failures (`./a/b: FAILED`); and the bytes of the files. Hashes what was not
        /// hashed early or changed since, on every core.
        func finish() -> (problems: String?, bytes: Int64) {
            let early = seen.withLock { $0 }
            var stamps: [Stamp?] = []
            var again: [Int] = []
            for (index, entry) in entries.enumerated() {
                var info = stat()
                let stamp = lstat(entry.path, &info) == 0 ? Stamp(info) : nil
                stamps.append(stamp)
                if stamp == nil || early[index]?.stamp != stamp { again.append(index) }
            }
            let hashed = (try? ResultManifest.digests(of: again.map { entries[$0].path }, failuresAsResults: true)) ?? []
            var now: [Int: Result<String, Failure>] = [:]
            for (index, result) in zip(again, hashed) { now[index] = result }
            var failed: [String] = []
            var bytes: Int64 = 0
            for (index, entry) in entries.enumerated() {
                bytes += stamps[index]?.size ?? 0
                switch now[index] ?? early[index].map({ .success($0.digest) }) ?? .failure(Failure(reason: "not hashed")) {
                case .success(let digest) where digest == entry.digest: continue
                case .success: failed.append("\(entry.name): FAILED")
                case .failure(let failure): failed.append("\(entry.name): FAILED open or read (\(failure.reason))")
                }
            }
            return (failed.isEmpty ? nil : failed.joined(separator: "\n"), bytes)
        }

        /// Writes a byte into the probe; its ctime, or nil when it cannot be written.
        private func touchProbe() -> timespec? {
            let descriptor = open(probePath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard descriptor >= 0 else { return nil }
            defer { close(descriptor) }
            var byte: UInt8 = 0x2E
            var info = stat()
            guard Glibc.write(descriptor, &byte, 1) == 1, fstat(descriptor, &info) == 0 else { return nil }
            return info.st_ctim
        }

        /// The file's stamp and SHA-256 when it is a regular file last changed before `probe` and
        /// unchanged while it was read; nil otherwise (not there yet, still settling, changed).
        private func hashIfSettled(_ path: String, olderThan probe: timespec, buffer: inout [UInt8]) -> Seen? {
            let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard descriptor >= 0 else { return nil }
            defer { close(descriptor) }
            var before = stat()
            guard fstat(descriptor, &before) == 0, before.st_mode & S_IFMT == S_IFREG,
                  (before.st_ctim.tv_sec, before.st_ctim.tv_nsec) < (probe.tv_sec, probe.tv_nsec) else { return nil }
            var hasher = SHA256()
            while true {
                let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                if count == 0 { break }
                if count < 0 {
                    if errno == EINTR { continue }
                    return nil
                }
                buffer.withUnsafeBytes { hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: $0[0..<count])) }
            }
            var after = stat()
            guard fstat(descriptor, &after) == 0, Stamp(after) == Stamp(before) else { return nil }
            return Seen(stamp: Stamp(before), digest: ResultManifest.hex(hasher.finalize()))
        }
    }
}
