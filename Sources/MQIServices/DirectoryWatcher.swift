import Foundation
import MQIStore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// inotify on a directory and its immediate subdirectories: each change rings `changed`.
/// A background thread reads the inotify descriptor; stopping closes it.
final class DirectoryWatcher: Sendable {
    private let fd: Int32
    private let root: String
    private let watches = Mutex<[Int32: String]>([:])
    private let stopped = Atomic<Bool>(false)
    let changed: Doorbell

    init?(root: String, changed: Doorbell) {
        #if os(Linux)
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { return nil }
        self.fd = fd
        self.root = root
        self.changed = changed
        guard add(root) else {
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

    /// Watches `directory` (the root or one case directory).
    @discardableResult
    func add(_ directory: String) -> Bool {
        #if os(Linux)
        let wd = inotify_add_watch(fd, directory, Self.mask | UInt32(IN_ONLYDIR))
        guard wd >= 0 else { return false }
        watches.withLock { $0[wd] = directory }
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
            var sawNewDirectory: [String] = []
            while offset + MemoryLayout<inotify_event>.size <= count {
                let (wd, mask, length) = buffer.withUnsafeBytes { raw -> (Int32, UInt32, Int) in
                    let event = raw.loadUnaligned(fromByteOffset: offset, as: inotify_event.self)
                    return (event.wd, event.mask, Int(event.len))
                }
                let nameStart = offset + MemoryLayout<inotify_event>.size
                if mask & UInt32(IN_ISDIR) != 0, mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0, length > 0,
                   let parent = watches.withLock({ $0[wd] }), parent == root {
                    let bytes = buffer[nameStart..<(nameStart + length)].prefix { $0 != 0 }
                    sawNewDirectory.append((root as NSString).appendingPathComponent(String(decoding: bytes, as: UTF8.self)))
                }
                offset = nameStart + length
            }
            for directory in sawNewDirectory { add(directory) }
            changed.ring()
        }
        close(fd)
        #endif
    }
}
