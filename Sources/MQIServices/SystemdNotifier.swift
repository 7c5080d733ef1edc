import Foundation
import Logging
import ServiceLifecycle
#if canImport(Glibc)
import Glibc
#endif

/// Talks to systemd over `$NOTIFY_SOCKET` (Type=notify): `READY=1` once the daemon runs,
/// `WATCHDOG=1` every half `$WATCHDOG_USEC`, `STOPPING=1` on shutdown. Does nothing when the
/// variable is not set.
struct SystemdNotifier: Service {
    let socketPath: String?
    let watchdogInterval: Double?
    let logger: Logger

    init(environment: [String: String] = ProcessInfo.processInfo.environment, logger: Logger) {
        socketPath = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        watchdogInterval = environment["WATCHDOG_USEC"].flatMap(Double.init).map { $0 / 1_000_000 / 2 }
        self.logger = logger
    }

    func run() async throws {
        guard socketPath != nil else { return }
        send("READY=1\nSTATUS=processing cases")
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(watchdogInterval ?? 3600))
                if Task.isCancelled { break }
                if watchdogInterval != nil { send("WATCHDOG=1") }
            }
        }
        send("STOPPING=1")
    }

    /// Sends one datagram; an abstract socket is written `@name`.
    func send(_ message: String) {
        #if os(Linux)
        guard let socketPath else { return }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(socketPath.utf8)
        if pathBytes.first == UInt8(ascii: "@") { pathBytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard pathBytes.count < capacity else { return }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in pathBytes.enumerated() { raw[index] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count)
        let sent = message.withCString { text in
            withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, text, strlen(text), 0, $0, length) }
            }
        }
        if sent < 0 { logger.warning("cannot notify systemd at \(socketPath): \(String(cString: strerror(errno)))") }
        #endif
    }
}
