import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Copies a directory tree's content, permission bits (rwx; set-id and sticky bits are dropped,
/// and a directory stays rwx for its owner, so the daemon can still write a manifest into its
/// copy and remove it on a retry) and modification times, and never its ownership: the copy belongs to whoever runs the
/// daemon. Foundation's `FileManager.copyItem` chowns each copy to the source's owner on Linux,
/// which a non-root service account may not do ("You don't have permission") when the case
/// files were written by another user. Symlinks are copied as symlinks; other special files
/// (FIFOs, sockets, devices) are refused. Blocking: run it on a thread of its own.
enum TreeCopy {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static let chunkSize = 1 << 20

    /// Copies `source` (a directory) to `destination`, which must not exist.
    static func copy(_ source: String, to destination: String, cancellation: BlockingWork.Cancellation? = nil) throws {
        var buffer = [UInt8](repeating: 0, count: chunkSize)
        try copyEntry(source, to: destination, buffer: &buffer, cancellation: cancellation)
    }

    private static func copyEntry(_ source: String, to destination: String, buffer: inout [UInt8],
                                  cancellation: BlockingWork.Cancellation?) throws {
        try cancellation?.check()
        var info = stat()
        guard lstat(source, &info) == 0 else { throw failure("cannot read", source) }
        let mode = mode_t(info.st_mode & 0o777)
        switch info.st_mode & S_IFMT {
        case S_IFDIR:
            // Writable by us while it fills; its own bits and time are set once it is complete.
            guard mkdir(destination, 0o700) == 0 else { throw failure("cannot create", destination) }
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: source) else {
                throw Failure(description: "cannot list \(source): \(String(cString: strerror(errno)))")
            }
            for name in names {
                try copyEntry(source + "/" + name, to: destination + "/" + name, buffer: &buffer, cancellation: cancellation)
            }
            guard chmod(destination, mode | 0o700) == 0 else { throw failure("cannot set the mode of", destination) }
            try setTimes(destination, info, flags: 0)
        case S_IFREG:
            try copyFile(source, to: destination, mode: mode, info: info, buffer: &buffer, cancellation: cancellation)
        case S_IFLNK:
            var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let length = readlink(source, &target, target.count - 1)
            guard length >= 0 else { throw failure("cannot read the symlink", source) }
            target[length] = 0
            guard symlink(target, destination) == 0 else { throw failure("cannot create the symlink", destination) }
            try setTimes(destination, info, flags: AT_SYMLINK_NOFOLLOW)
        default:
            throw Failure(description: "\(source) is not a regular file, directory or symlink (a FIFO, socket or device); it is not copied")
        }
    }

    private static func copyFile(_ source: String, to destination: String, mode: mode_t, info: stat, buffer: inout [UInt8],
                                 cancellation: BlockingWork.Cancellation?) throws {
        let input = open(source, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard input >= 0 else { throw failure("cannot open", source) }
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard output >= 0 else { throw failure("cannot create", destination) }
        var closed = false
        defer { if !closed { close(output) } }
        while true {
            try cancellation?.check()
            let count = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if count == 0 { break }
            if count < 0 {
                if errno == EINTR { continue }
                throw failure("cannot read", source)
            }
            var written = 0
            while written < count {
                let step = buffer.withUnsafeBytes { write(output, $0.baseAddress! + written, count - written) }
                if step < 0 {
                    if errno == EINTR { continue }
                    throw failure("cannot write", destination)
                }
                written += step
            }
        }
        guard fchmod(output, mode) == 0 else { throw failure("cannot set the mode of", destination) }
        var times = [info.st_atim, info.st_mtim]
        guard futimens(output, &times) == 0 else { throw failure("cannot set the times of", destination) }
        closed = true
        guard close(output) == 0 else { throw failure("cannot write", destination) }
    }

    private static func setTimes(_ path: String, _ info: stat, flags: Int32) throws {
        var times = [info.st_atim, info.st_mtim]
        guard utimensat(AT_FDCWD, path, &times, flags) == 0 else { throw failure("cannot set the times of", path) }
    }

    private static func failure(_ what: String, _ path: String) -> Failure {
        Failure(description: "\(what) \(path): \(String(cString: strerror(errno)))")
    }
}
