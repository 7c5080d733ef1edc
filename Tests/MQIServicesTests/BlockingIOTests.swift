import Foundation
import MQICore
import MQIStore
import MQITestSupport
import MQITransport
import Synchronization
import Testing
@testable import MQIServices
#if canImport(Glibc)
import Glibc
#endif

/// Copying and hashing large results never stall the daemon: they run on threads of their own,
/// so the cooperative pool (one thread per core: two here) keeps serving `/healthz` and renewing
/// leases while two downloads of 200 MB each run at once.
@Suite(.serialized)
struct BlockingIOTests {
    static let resultBytes = 200 << 20

    /// `GET /healthz` answered in how long, and whether a download was in progress meanwhile.
    struct Probe: Sendable {
        var seconds: Double
        var ok: Bool
        var duringDownload: Bool
    }

    /// Polls `/healthz` on a thread of its own (blocking sockets, so the probe itself never
    /// waits on any pool) until `stop` is set.
    final class HealthProbe: Sendable {
        let probes = Mutex<[Probe]>([])
        let stopped = Atomic<Bool>(false)
        let done = OneShot()

        init(port: Int, downloading: @escaping @Sendable () -> Bool) {
            let thread = Thread { [self] in
                while !stopped.load(ordering: .relaxed) {
                    let before = downloading()
                    let started = DispatchTime.now().uptimeNanoseconds
                    let ok = Self.get(port: port, path: "/healthz")
                    let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
                    let after = downloading()
                    probes.withLock { $0.append(Probe(seconds: seconds, ok: ok, duringDownload: before || after)) }
                    usleep(20_000)
                }
                done.fire()
            }
            thread.start()
        }

        func stop() async -> [Probe] {
            stopped.store(true, ordering: .relaxed)
            await done.wait()
            return probes.withLock { $0 }
        }

        /// One HTTP/1.1 request over a fresh connection; true for a 200 (10 s receive timeout).
        static func get(port: Int, path: String) -> Bool {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            guard connected else { return false }
            let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
            guard send(fd, request, request.count, 0) == request.count else { return false }
            var response = [UInt8](), chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = recv(fd, &chunk, chunk.count, 0)
                if count > 0 { response.append(contentsOf: chunk[0..<count]) } else { break }
            }
            return String(decoding: response.prefix(16), as: UTF8.self).hasPrefix("HTTP/1.1 200")
        }
    }

    /// A site whose execute step hard-links one 200 MB file of random bytes into each case's
    /// results, so each download copies and hashes 200 MB. With `gate`, the step first waits for
    /// that file, so the downloads start only when the test is ready to watch them. Returns the config path.
    static func site(_ temp: TemporaryDirectory, cases: Int, gate: String? = nil) throws -> String {
        let big = temp.file("dose.bin")
        let started = Date()
        // Random bytes (hashing cannot take shortcuts), written once: a 1 MiB random block repeated.
        var block = [UInt8](repeating: 0, count: 1 << 20)
        var generator = SystemRandomNumberGenerator()
        for index in block.indices { block[index] = generator.next() }
        _ = FileManager.default.createFile(atPath: big, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: big))
        for round in 0..<(resultBytes >> 20) {
            block[0] = UInt8(truncatingIfNeeded: round)
            try handle.write(contentsOf: block)
        }
        try handle.close()
        print("BlockingIOTests: wrote \(resultBytes >> 20) MB in \(String(format: "%.2f", Date().timeIntervalSince(started))) s")
        for index in 1...cases {
            let caseDir = temp.file("site/data/CASE-\(index)")
            try FileManager.default.createDirectory(atPath: caseDir, withIntermediateDirectories: true)
            try "plan \(index)\n".write(toFile: caseDir + "/plan.txt", atomically: true, encoding: .utf8)
            _ = FileManager.default.createFile(atPath: caseDir + "/_CASE_READY", contents: nil)
        }
        let config = temp.file("site/config.yaml")
        try SampleConfigs.localSite(simCommand: "\(gate.map { "while [ ! -e \($0) ]; do sleep 0.05; done; " } ?? "")mkdir -p {result_dir} && ln \(big) {result_dir}/dose.bin",
                                    scanner: "quiet_period_sec: 0, rescan_interval_sec: 30", gpus: [0, 1], retryAttempts: 3)
            .write(toFile: config, atomically: true, encoding: .utf8)
        return config
    }

    @Test(.timeLimit(.minutes(4)))
    func twoLargeDownloadsLeaveHealthzPromptAndKeepTheirLeases() async throws {
        let temp = try TemporaryDirectory("mqi-blocking")
        defer { temp.remove() }
        // The downloads wait for the probe: on a loaded machine the daemon could otherwise be done
        // with them before the test has even read its port from the log.
        let gate = temp.file("downloads-may-start")
        let configPath = try Self.site(temp, cases: 2, gate: gate)
        let log = temp.file("daemon.log")
        let started = Date()
        let pid = try ServiceAccount.spawn([try mqiExecutable(), "run", "--config", configPath, "--exit-when-idle", "--log-format", "text"], output: log)
        var port: Int?
        _ = await eventually(within: 30) {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if let range = text.range(of: "/readyz on http://127.0.0.1:") {
                port = Int(text[range.upperBound...].prefix { $0.isNumber })
            }
            return port != nil
        }
        let staging = temp.file("site/var/results/.mqi-partial")
        let probe = try HealthProbe(port: #require(port, "no port in the log: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")) {
            !((try? FileManager.default.contentsOfDirectory(atPath: staging)) ?? []).isEmpty
        }
        _ = await eventually(within: 30) { probe.probes.withLock { $0.count } >= 3 }
        _ = FileManager.default.createFile(atPath: gate, contents: nil)
        let status = await ServiceAccount.wait(pid, upTo: 90)
        let probes = await probe.stop()
        let elapsed = Date().timeIntervalSince(started)
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(status == 0, "mqi run: exit \(status.map(String.init) ?? "none (killed)"): \(output.suffix(3000))")

        let during = probes.filter(\.duringDownload)
        let worst = probes.map(\.seconds).max() ?? 0
        let worstDuring = during.map(\.seconds).max() ?? 0
        let sorted = during.map(\.seconds).sorted()
        let median = sorted.isEmpty ? 0 : sorted[sorted.count / 2]
        print("BlockingIOTests: 2 × \(Self.resultBytes >> 20) MB downloads; daemon ran \(String(format: "%.1f", elapsed)) s; "
              + "\(probes.count) /healthz probes, \(during.count) during downloads: median \(String(format: "%.3f", median)) s, "
              + "max \(String(format: "%.3f", worstDuring)) s (max overall \(String(format: "%.3f", worst)) s)")
        #expect(during.count >= 5, "too few probes during the downloads to tell: \(during.count)")
        // The probes after the daemon's exit (its port closed) are not failures.
        let failures = probes.reversed().drop { !$0.ok }.filter { !$0.ok }.count
        #expect(failures == 0, "\(failures) /healthz request(s) failed while the daemon ran")
        #expect(worst < 1, "/healthz took \(worst) s")
        #expect(!output.contains("lost the lease"), "\(output.split(separator: "\n").filter { $0.contains("lost the lease") })")

        let config = try ConfigLoader.load(path: configPath)
        let store = try Daemon.openStore(config)
        let all = try await store.cases()
        #expect(all.count == 2 && all.allSatisfy { $0.status == .completed }, "\(all.map { "\($0.caseId): \($0.status.rawValue) \($0.error ?? "")" })")
        for summary in all {
            let dose = (config.conductor.resultsDir as NSString).appendingPathComponent(summary.caseId + "/dose.bin")
            let size = (try? FileManager.default.attributesOfItem(atPath: dose)[.size] as? NSNumber)?.intValue
            #expect(size == Self.resultBytes)
        }
        #expect(try await store.deadLetters().isEmpty)
    }
}
