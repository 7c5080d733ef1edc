import Foundation
import MQICore
@testable import MQIStore
import Synchronization
import MQITestSupport
import Testing

/// The ids of every message claimed, from any task.
final class ClaimLog: Sendable {
    private let claimed = Mutex<[Int64]>([])

    var ids: [Int64] { claimed.withLock { $0 } }

    func append(_ id: Int64) {
        claimed.withLock { $0.append(id) }
    }
}

/// A flag one task sets and another polls.
final class Flag: Sendable {
    private let value = Mutex(false)

    var isSet: Bool { value.withLock { $0 } }

    func set() {
        value.withLock { $0 = true }
    }
}

@Suite("Store: concurrent writers")
struct ConcurrencyTests {
    static let tasks = 8
    static let casesPerTask = 50
    static let gpus = [0, 1, 2, 3]

    /// `tasks` concurrent tasks, spread over `stores`, each registering `casesPerTask` cases and
    /// doing the Conductor's and the file transfer worker's work as it goes.
    static func run(stores: [Store], fixture: StoreFixture) async throws {
        let conductor = try Fixtures.conductor()
        let claimed = ClaimLog()
        try await stores[0].reconcileGPUs(configured: gpus)

        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<tasks {
                let store = stores[task % stores.count]
                group.addTask {
                    for index in 0..<casesPerTask {
                        #expect(try await store.registerCase("t\(task)-c\(index)", workflow: Fixtures.workflowName))
                        if let message = try await store.claim(.conductor, owner: "conductor-\(task)", leaseSec: 600) {
                            claimed.append(message.id)
                            let event = try #require(ConductorEvent(message.kind, message.body))
                            _ = try await store.conduct(event, caseId: message.body.caseId, conductor: conductor, acknowledging: message)
                        }
                        if let upload = try await store.claim(.fileTransfer, owner: "transfer-\(task)", leaseSec: 600) {
                            claimed.append(upload.id)
                            try await store.complete(upload, publishing: Fixtures.success(for: upload))
                        }
                        // The readers (API, dashboard) run at the same time.
                        _ = try await store.queueDepths()
                    }
                }
            }
            try await group.waitForAll()
        }

        // Finish what is left, alternating between the stores.
        var turn = 0
        while true {
            let store = stores[turn % stores.count]
            turn += 1
            if let message = try await store.claim(.conductor, owner: "drain", leaseSec: 600) {
                claimed.append(message.id)
                _ = try await store.conduct(try #require(ConductorEvent(message.kind, message.body)), caseId: message.body.caseId,
                                        conductor: conductor, acknowledging: message)
            } else if let upload = try await store.claim(.fileTransfer, owner: "drain", leaseSec: 600) {
                claimed.append(upload.id)
                try await store.complete(upload, publishing: Fixtures.success(for: upload))
            } else {
                break
            }
        }

        let total = tasks * casesPerTask
        let ids = claimed.ids
        // new_case_found + upload_case + case_upload_completed per case, each delivered exactly once.
        #expect(ids.count == 3 * total)
        #expect(Set(ids).count == ids.count)

        let store = stores.last!
        #expect(try await store.caseIds().count == total)
        let counts = try await store.statusCounts()
        #expect(counts[.processing] == gpus.count)
        #expect(counts[.pendingResource] == total - gpus.count)
        #expect(try await store.queueDepths() == [.conductor: 0, .remoteExecutor: gpus.count, .fileTransfer: 0])
        #expect(try await store.gpus().allSatisfy { $0.status == .reserved })
        let running = try await store.cases(status: .processing)
        #expect(Set(running.flatMap(\.gpuIds)) == Set(gpus))
        #expect(try await store.deadLetters().isEmpty)
        try await expectGPUInvariants(store)
        for summary in try await store.cases(limit: 20) {
            #expect(try await store.history(summary.caseId).map(\.event) == ["registered", "new_case_found", "step_succeeded"])
        }
    }

    @Test("8 concurrent tasks on one Store: no 'database is locked', no message delivered twice, counts add up", arguments: StoreBackendKind.allCases)
    func concurrentTasksOnOneStore(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        try await Self.run(stores: [fixture.store], fixture: fixture)
    }

    @Test("a second Store on the same file (the CLI beside the daemon) writes concurrently without errors", arguments: StoreBackendKind.allCases)
    func twoStoresOnOneFile(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let second = try fixture.openAnother()
        try await Self.run(stores: [fixture.store, second], fixture: fixture)
    }

    @Test("a write while another Store holds the write lock waits for it instead of failing with 'database is locked'", arguments: StoreBackendKind.allCases)
    func writerWaitsForTheOtherStoresTransaction(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let cli = try fixture.openAnother()
        let locked = Flag()
        let holder = Task { () -> Date in
            try await cli.pool.write { db -> Date in
                try db.execute(sql: "INSERT INTO gpu_resources (gpu_id, status) VALUES (9, 'free')")
                locked.set()
                Thread.sleep(forTimeInterval: 0.5)
                return Date()
            }
        }
        while !locked.isSet { try await Task.sleep(for: .milliseconds(5)) }
        #expect(try await fixture.store.registerCase("case-1", workflow: Fixtures.workflowName))
        let registered = Date()
        // The write could only go through once the other Store's transaction ended (robust to a
        // loaded machine, unlike a minimum duration).
        let released = try await holder.value
        #expect(registered >= released)
        #expect(try await fixture.store.gpus().map(\.gpuId) == [9])
        #expect(try await cli.caseExists("case-1"))
    }

    @Test("a lease taken through one Store holds for another Store on the same file", arguments: StoreBackendKind.allCases)
    func leasesHoldAcrossStores(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let cli = try fixture.openAnother()
        #expect(try await cli.registerCase("case-1", workflow: Fixtures.workflowName))
        #expect(try await fixture.store.registerCase("case-1", workflow: Fixtures.workflowName) == false)
        let message = try #require(try await fixture.store.claim(.conductor, owner: "daemon", leaseSec: 30))
        #expect(message.body.caseId == "case-1")
        #expect(try await cli.claim(.conductor, owner: "cli", leaseSec: 30) == nil)
        fixture.clock.advance(by: 31)
        #expect(try await cli.claim(.conductor, owner: "cli", leaseSec: 30)?.deliveries == 2)
    }
}
