import Foundation
import MQICore
@testable import MQIServices
@testable import MQIStore
import MQITestSupport
import Synchronization
import Testing

/// `--exit-when-idle`: the watcher looks when the Conductor's queue drains (its doorbell), and
/// never ends the daemon while anything is pending. Its fallback poll is set to an hour here, so
/// every look below is one the doorbell caused.
@Suite(.serialized)
struct IdleWatcherTests {
    @Test(.timeLimit(.minutes(3)))
    func itEndsTheDaemonOnlyOnceNothingIsPendingAndLooksWhenTheConductorDrains() async throws {
        let temp = try TemporaryDirectory("mqi-idle")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 0)
        let config = try ConfigLoader.load(path: site.configPath)
        try FileManager.default.createDirectory(atPath: (config.state.database as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: config.scanner.localLogdata, withIntermediateDirectories: true)
        let store = try Daemon.openStore(config)
        let logs = CapturedLogs()
        let scanner = CaseScanner(config: config.scanner, store: store, logger: logs.logger())
        let drained = Doorbell()
        let otherWork = Flag(true)
        let watcher = IdleWatcher(store: store, scanner: scanner, logger: logs.logger(), drained: drained,
                                  otherWork: { otherWork.value }, interval: 3600)
        let ended = Flag(false)
        let task = Task {
            try await watcher.run()
            ended.value = true
        }
        defer { task.cancel() }
        /// Rings the doorbell and gives the watcher time to look: true if it ended the daemon.
        func drainAndLook() async throws -> Bool {
            drained.ring()
            for _ in 0..<20 where !ended.value { try await Task.sleep(for: .milliseconds(25)) }
            return ended.value
        }

        // A case being processed.
        #expect(try await store.registerCase("CASE-A", workflow: config.scanner.workflow))
        #expect(try await !drainAndLook())
        // The case is finished but its new_case_found message is still queued.
        try await store.pool.write { db in try db.execute(sql: "UPDATE cases SET status = 'COMPLETED'") }
        #expect(try await !drainAndLook())
        // A message that is due only later (a retry after a backoff).
        try await store.pool.write { db in try db.execute(sql: "UPDATE messages SET available_at = ?", arguments: [Date().addingTimeInterval(3600)]) }
        #expect(try await !drainAndLook())
        // No message, but other work (the HPC cleanup of completed cases) is pending.
        try await store.pool.write { db in try db.execute(sql: "DELETE FROM messages") }
        #expect(try await !drainAndLook())
        otherWork.value = false
        // A new case in local_logdata: the watcher's own scan registers it, so not idle yet.
        try DemoSite.writeCase(named: "CASE-B", in: config.scanner.localLogdata, beams: 1, marker: "_CASE_READY")
        #expect(await eventually(within: 30) {
            drained.ring()
            try? await Task.sleep(for: .milliseconds(50))
            return (try? await store.caseExists("CASE-B")) == true
        })
        #expect(!ended.value)
        #expect(try await !drainAndLook())
        // Everything done: the next drain of the Conductor's queue ends the daemon, at once.
        try await store.pool.write { db in
            try db.execute(sql: "UPDATE cases SET status = 'COMPLETED'")
            try db.execute(sql: "DELETE FROM messages")
        }
        #expect(try await drainAndLook())
        #expect(logs.messages(at: .info).contains { $0.contains("nothing left to do") })
    }
}

/// A Bool shared with a closure.
private final class Flag: Sendable {
    private let state: Mutex<Bool>
    init(_ value: Bool) { state = Mutex(value) }
    var value: Bool {
        get { state.withLock { $0 } }
        set { state.withLock { $0 = newValue } }
    }
}
