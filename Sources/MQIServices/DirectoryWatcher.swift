import Foundation
import MQIStore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// inotify on a directory and its subdirectories down to `depth` levels (the levels of
/// `scanner.case_depth`: room, patient, study): each change rings `changed`. A directory created
/// at a watched level above `depth` is watched at once. A background thread reads the inotify
/// descriptor; stopping closes it.
final class DirectoryWatcher: Sendable {
    private let fd: Int32
    private let root: String
    private let depth: Int
    /// Watch descriptor → (directory, its level below `root`; the root is 0).
    private let watches = Mutex<[Int32: (path: String, level: Int)]>([:])
    private let stopped = Atomic<Bool>(false)
    let changed: Doorbell

    init?(root: String, depth: Int = 1, changed: Doorbell) {
        #if os(Linux)
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { return nil }
        self.fd = fd
        self.root = root
        self.depth = depth
        self.changed = changed
        guard add(root, level: 0) else {
            close(fd)
            return nil
        }
        let thread = Thread { [self] in readLoop() }
        thread.name = "mqi-inotify"
        thread.start()
        #else
        return nil
        #endif
    }

    static let mask: UInt32 = UInt32(IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM | IN_ATTRIB)

    /// Watches `directory`, `level` levels below the root (1 ... `depth`); watching one already
    /// watched is harmless.
    @discardableResult
    func add(_ directory: String, level: Int) -> Bool {
        #if os(Linux)
        guard level <= depth else { return false }
        let wd = inotify_add_watch(fd, directory, Self.mask | UInt32(IN_ONLYDIR))
        guard wd >= 0 else { return false }
        watches.withLock { $0[wd] = (directory, level) }
        return true
        #else
        return false
        #endif
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
    }

    private func readLoop() {
        #if os(Linux)
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while !stopped.load(ordering: .relaxed) {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, 200)
            guard ready > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard count > 0 else { continue }
            var offset = 0
            var sawNewDirectory: [(path: String, level: Int)] = []
            while offset + MemoryLayout<inotify_event>.size <= count {
                let (wd, mask, length) = buffer.withUnsafeBytes { raw -> (Int32, UInt32, Int) in
                    let event = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                    return (event.wd, event.mask, Int(event.len))
                }
                let nameStart = offset + MemoryLayout<inotify_event>.size
                if mask & UInt32(IN_ISDIR) != 0, mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0, length > 0,
                   let parent = watches.withLock({ $0[wd] }), parent.level < depth {
                    let bytes = buffer[nameStart..<(nameStart + length)].prefix { $0 != 0 }
                    sawNewDirectory.append(((parent.path as NSString).appendingPathComponent(String(decoding: bytes, as: UTF8.self)), parent.level + 1))
                }
                offset = nameStart + length
            }
            for directory in sawNewDirectory { add(directory.path, level: directory.level) }
            changed.ring()
        }
        close(fd)
        #endif
    }
}
