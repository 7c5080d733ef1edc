import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import MQICore
import MQIHTTP
import MQIStore
import MQITestSupport
import MQITransport
import Synchronization
import Testing
@testable import MQIServices

/// An HPC outage longer than the retries delays the work, fails nothing, and is visible while it
/// lasts: the real service graph against a real sshd that is killed (with its connections) and
/// started again.
@Suite(.serialized, .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync (scripts/test installs them)"))
struct OutageTests {
    static func get(_ port: Int, _ path: String) async -> (status: Int, body: String)? {
        guard let url = URL(string: "http://127.0.0.1:\(port)\(path)") else { return nil }
        guard let (data, response) = try? await URLSession.shared.data(from: url), let http = response as? HTTPURLResponse else { return nil }
        return (http.statusCode, String(decoding: data, as: UTF8.self))
    }

    @Test(.timeLimit(.minutes(4)))
    func anOutageLongerThanEveryRetryDelaysTheCasesAndFailsNone() async throws {
        let server = try SSHServer()
        defer { server.stop(); server.remove() }
        try await server.start()
        let (temp, siteConfig, ledger) = try SSHEndToEndTests.site(server, cases: 3)
        defer { temp.remove() }
        var config = siteConfig
        // Every retry together lasts about 2 s; each outage lasts 8 s.
        config.retry = RetryPolicy(maxAttempts: 2, initialDelaySec: 0.2, maxDelaySec: 1, multiplier: 2)
        config.metrics.port = 0
        // Failed connection attempts count against the budget too; the default (6 a minute)
        // would make the reconnection after each 8 s outage wait up to a minute.
        config.hpc.ssh?.maxNewConnectionsPerMin = 30
        let outage = 8.0
        let port = Mutex<Int?>(nil)
        let store = try Daemon.openStore(config)

        // Outage 1: the host is away from the start, while the cases are found and uploaded.
        server.killAll()
        let logs = CapturedLogs()
        var daemon = Daemon(config: config, logger: logs.logger(level: .info), exitWhenIdle: true,
                            onListening: { listening in port.withLock { $0 = listening } })
        let shutdown = OneShot()
        daemon.shutdown = shutdown
        let running = Task { [daemon] in try await daemon.run() }
        let down = Date()
        #expect(await eventually(within: 20) { (try? await store.hosts().first?.reachable) == false }, "the outage is not recorded: \(logs.all.suffix(20).map(\.message))")
        let http = try #require(await eventually(within: 60) { port.withLock { $0 } != nil } ? port.withLock { $0 } : nil)
        let ready = await Self.get(http, "/readyz")
        #expect(ready?.status == 503)
        #expect(ready?.body.contains("unreachable since") == true, "\(ready?.body ?? "no answer")")
        let metrics = await Self.get(http, "/metrics")?.body ?? ""
        #expect(metrics.contains("mqi_hpc_reachable{host=\"127.0.0.1\"} 0"), "\(metrics.split(separator: "\n").filter { $0.contains("reachable") })")
        let status = try MQIProcess(["status", "--config", config.sourcePath], output: temp.file("status.txt"))
        #expect(await status.wait(upTo: 20) == 0)
        #expect(status.output.contains("127.0.0.1 UNREACHABLE since"), "\(status.output)")
        try await Task.sleep(for: .seconds(max(0, outage - Date().timeIntervalSince(down))))
        try await server.restart()
        let back = Date()
        #expect(await eventually(within: 30) { (try? await store.hosts().first?.reachable) == true })
        print("outage 1 (uploads): work resumed \(String(format: "%.2f", Date().timeIntervalSince(back))) s after sshd was back")
        #expect(await Self.get(http, "/readyz")?.status == 200)

        // Outage 2: begins while a simulation runs, and spans its end, the downloads and the next starts.
        #expect(await eventually(within: 60) {
            (try? await store.cases().contains { $0.status == .processing && $0.workflowStep == "run_moqui_sim" }) == true
        })
        server.killAll()
        try await Task.sleep(for: .seconds(outage))
        try await server.restart()
        let back2 = Date()
        #expect(await eventually(within: 30) { (try? await store.hosts().first?.reachable) == true })
        print("outage 2 (simulation, download): work resumed \(String(format: "%.2f", Date().timeIntervalSince(back2))) s after sshd was back")

        let finished = await eventually(within: 120) { (try? await store.activity().isIdle) == true }
        if !finished { shutdown.fire() }
        try await running.value
        #expect(finished)
        try await SSHEndToEndTests.expectAllCompletedOnce(config, ledger: ledger, cases: 3)
        // Nothing was counted against the cases: every step ran as attempt 1, nothing dead-lettered.
        let history = try await store.cases()
        #expect(history.allSatisfy { $0.attempt == 1 }, "\(history.map { "\($0.caseId) attempt \($0.attempt)" })")
        #expect(try await store.deadLetters().isEmpty)
    }
}
