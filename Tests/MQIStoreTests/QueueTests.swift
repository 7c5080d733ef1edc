import Foundation
import MQICore
@testable import MQIStore
import MQITestSupport
import Testing

@Suite("Store: durable queues, leases and dead letters")
struct QueueTests {
    static func executeCommand(_ caseId: String) -> OutgoingMessage {
        OutgoingMessage(kind: .executeCommand, body: MessageBody(
            caseId: caseId, stepIndex: 1, attempt: 1, step: "simulate", gpuIds: [0], command: "run --case '\(caseId)' --gpu '0'"))
    }

    @Test("registerCase inserts the case as NEW and publishes exactly one new_case_found; a second registration does nothing", arguments: StoreBackendKind.allCases)
    func registerCaseIsTransactionalAndIdempotent(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store

        #expect(try await store.registerCase("case-1", workflow: "qa"))
        let summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.status == .new)
        #expect(summary.workflow == "qa")
        #expect(summary.workflowStep == nil)
        #expect(summary.gpuIds.isEmpty)
        #expect(summary.createdAt == fixture.clock.now)
        #expect(try await store.queueDepths() == [.conductor: 1, .remoteExecutor: 0, .fileTransfer: 0])

        // A duplicate file-system event, or the scanner's re-scan after a restart.
        fixture.clock.advance(by: 5)
        #expect(try await store.registerCase("case-1", workflow: "qa") == false)
        #expect(try await store.registerCase("case-1", workflow: "other") == false)
        #expect(try await store.queueDepths()[.conductor] == 1)
        #expect(try await store.caseSummary("case-1") == summary)
        #expect(try await store.history("case-1").map(\.event) == ["registered"])

        let message = try #require(try await store.claim(.conductor, owner: "conductor", leaseSec: 30))
        #expect(message.kind == .newCaseFound)
        #expect(message.queue == .conductor)
        #expect(message.body == MessageBody(caseId: "case-1"))
        #expect(message.deliveries == 1)
        #expect(try await store.claim(.conductor, owner: "conductor", leaseSec: 30) == nil)
        #expect(try await store.caseIds() == ["case-1"])
    }

    @Test("registering rings the conductor_queue doorbell", arguments: StoreBackendKind.allCases)
    func registerRingsTheBell(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let doorbell = fixture.store.bell.doorbell(for: .conductor)
        let other = fixture.store.bell.doorbell(for: .remoteExecutor)
        try await fixture.store.registerCase("case-1", workflow: "qa")
        let clock = ContinuousClock()
        let started = clock.now
        await doorbell.wait(upTo: 30)
        #expect(clock.now - started < .seconds(10))
        // Another queue's doorbell was not rung: it waits for its timeout.
        let otherStarted = clock.now
        await other.wait(upTo: 0.2)
        #expect(clock.now - otherStarted >= .milliseconds(150))
    }

    @Test("a claimed message is invisible to other owners until its lease expires, then redelivered", arguments: StoreBackendKind.allCases)
    func leaseExpiryRedelivers(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.publish([Self.executeCommand("case-1")])

        let first = try #require(try await store.claim(.remoteExecutor, owner: "worker-a", leaseSec: 30))
        #expect(first.deliveries == 1)
        #expect(first.leaseOwner == "worker-a")
        #expect(first.kind == .executeCommand)
        #expect(first.body == Self.executeCommand("case-1").body)

        #expect(try await store.claim(.remoteExecutor, owner: "worker-b", leaseSec: 30) == nil)
        fixture.clock.advance(by: 29)
        #expect(try await store.claim(.remoteExecutor, owner: "worker-b", leaseSec: 30) == nil)
        // Other queues are unaffected.
        #expect(try await store.claim(.fileTransfer, owner: "worker-b", leaseSec: 30) == nil)

        fixture.clock.advance(by: 1.5)
        let second = try #require(try await store.claim(.remoteExecutor, owner: "worker-b", leaseSec: 30))
        #expect(second.id == first.id)
        #expect(second.deliveries == 2)
        #expect(second.leaseOwner == "worker-b")
        #expect(try await store.claim(.remoteExecutor, owner: "worker-c", leaseSec: 30) == nil)
        // The old owner lost the lease and cannot renew it.
        #expect(try await store.renew(first, leaseSec: 30) == false)
        #expect(try await store.renew(second, leaseSec: 30))
    }

    @Test("renew extends the lease; a wrong owner cannot renew", arguments: StoreBackendKind.allCases)
    func renewExtendsTheLease(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.publish([Self.executeCommand("case-1")])

        let claimed = try #require(try await store.claim(.remoteExecutor, owner: "worker-a", leaseSec: 30))
        fixture.clock.advance(by: 20)
        #expect(try await store.renew(claimed, leaseSec: 30)) // now expires at t+50

        var impostor = claimed
        impostor.leaseOwner = "worker-z"
        #expect(try await store.renew(impostor, leaseSec: 3600) == false)

        fixture.clock.advance(by: 15) // t+35: past the first lease, inside the renewed one
        #expect(try await store.claim(.remoteExecutor, owner: "worker-b", leaseSec: 30) == nil)
        fixture.clock.advance(by: 10) // t+45
        #expect(try await store.claim(.remoteExecutor, owner: "worker-b", leaseSec: 30) == nil)
        fixture.clock.advance(by: 6) // t+51: the renewed lease (the impostor's did not count) expired
        let taken = try #require(try await store.claim(.remoteExecutor, owner: "worker-b", leaseSec: 30))
        #expect(taken.id == claimed.id)
        #expect(taken.deliveries == 2)
    }

    @Test("complete deletes the message and publishes the result in one go", arguments: StoreBackendKind.allCases)
    func completePublishesTheResult(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let resultBell = store.bell.doorbell(for: .conductor)
        try await store.publish([Self.executeCommand("case-1")])
        let claimed = try #require(try await store.claim(.remoteExecutor, owner: "worker-a", leaseSec: 30))

        try await store.complete(claimed, publishing: claimed.body.result(.executionSucceeded))
        #expect(try await store.queueDepths() == [.conductor: 1, .remoteExecutor: 0, .fileTransfer: 0])
        // Acknowledged: not redelivered even after the lease would have expired.
        fixture.clock.advance(by: 3600)
        #expect(try await store.claim(.remoteExecutor, owner: "worker-b", leaseSec: 30) == nil)

        let started = ContinuousClock.now
        await resultBell.wait(upTo: 30)
        #expect(ContinuousClock.now - started < .seconds(10))

        let result = try #require(try await store.claim(.conductor, owner: "conductor", leaseSec: 30))
        #expect(result.kind == .executionSucceeded)
        #expect(result.body.caseId == "case-1")
        #expect(result.body.stepIndex == 1)
        #expect(result.body.attempt == 1)
        #expect(result.body.step == "simulate")

        // complete without a result only acknowledges.
        try await store.complete(result, publishing: nil)
        #expect(try await store.activity() == ActivitySnapshot(activeCases: 0, queuedMessages: 0))
    }

    @Test("claim hands out the oldest available message first; fail with a delay hides it until then", arguments: StoreBackendKind.allCases)
    func orderingAndRetryDelay(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.publish([Self.executeCommand("a")])
        fixture.clock.advance(by: 1)
        try await store.publish([Self.executeCommand("b"), Self.executeCommand("c")])

        let a = try #require(try await store.claim(.remoteExecutor, owner: "w", leaseSec: 30))
        #expect(a.body.caseId == "a")
        #expect(try await store.fail(a, error: "ssh: connection refused", retryAfter: 10) == false)

        let b = try #require(try await store.claim(.remoteExecutor, owner: "w", leaseSec: 30))
        let c = try #require(try await store.claim(.remoteExecutor, owner: "w", leaseSec: 30))
        #expect([b.body.caseId, c.body.caseId] == ["b", "c"])
        // "a" waits for its retry delay.
        #expect(try await store.claim(.remoteExecutor, owner: "w", leaseSec: 30) == nil)
        fixture.clock.advance(by: 10)
        let again = try #require(try await store.claim(.remoteExecutor, owner: "w", leaseSec: 30))
        #expect(again.body.caseId == "a")
        #expect(again.deliveries == 2)
    }

    @Test("failing an execute_command on its last delivery dead-letters it and fails the step in the same transaction", arguments: StoreBackendKind.allCases)
    func failDeadLettersAfterMaxDeliveries(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend, maxDeliveries: 3)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.publish([Self.executeCommand("case-1")])

        for delivery in 1...2 {
            let message = try #require(try await store.claim(.remoteExecutor, owner: "w", leaseSec: 30))
            #expect(message.deliveries == delivery)
            #expect(try await store.fail(message, error: "exit status 1 (try \(delivery))", retryAfter: 0) == false)
            #expect(try await store.deadLetters().isEmpty)
            #expect(try await store.queueDepths()[.conductor] == 0)
        }
        let last = try #require(try await store.claim(.remoteExecutor, owner: "w", leaseSec: 30))
        #expect(last.deliveries == 3)
        #expect(try await store.fail(last, error: "FATAL ERROR: out of GPU memory", retryAfter: 0))

        #expect(try await store.queueDepths()[.remoteExecutor] == 0)
        let dead = try #require(try await store.deadLetters().first)
        #expect(try await store.deadLetters().count == 1)
        #expect(dead.kind == .executeCommand)
        #expect(dead.queue == .remoteExecutor)
        #expect(dead.caseId == "case-1")
        #expect(dead.deliveries == 3)
        #expect(dead.error.contains("FATAL ERROR: out of GPU memory"))
        #expect(dead.deadAt == fixture.clock.now)

        // The step fails, so the case does not wait forever.
        let event = try #require(try await store.claim(.conductor, owner: "conductor", leaseSec: 30))
        #expect(event.kind == .executionFailed)
        #expect(event.body.caseId == "case-1")
        #expect(event.body.stepIndex == 1)
        #expect(event.body.attempt == 1)
        #expect(event.body.reason?.contains("FATAL ERROR: out of GPU memory") == true)
        #expect(try await store.claim(.conductor, owner: "conductor", leaseSec: 30) == nil)
    }

    @Test("a message whose lease expires maxDeliveries times is dead-lettered on the next claim", arguments: StoreBackendKind.allCases)
    func leaseExpiryDeadLetters(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend, maxDeliveries: 3)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.publish([Self.executeCommand("case-1")])

        for delivery in 1...3 {
            let message = try #require(try await store.claim(.remoteExecutor, owner: "worker-\(delivery)", leaseSec: 30))
            #expect(message.deliveries == delivery)
            fixture.clock.advance(by: 31) // the worker died
        }
        #expect(try await store.claim(.remoteExecutor, owner: "worker-4", leaseSec: 30) == nil)
        let dead = try #require(try await store.deadLetters().first)
        #expect(dead.kind == .executeCommand)
        #expect(dead.deliveries == 3)
        #expect(dead.error.contains("lease expired"))

        let event = try #require(try await store.claim(.conductor, owner: "conductor", leaseSec: 30))
        #expect(event.kind == .executionFailed)
        #expect(event.body.caseId == "case-1")
        #expect(event.body.stepIndex == 1)
        #expect(event.body.attempt == 1)

        // Replay: back on its queue with a fresh delivery count.
        try await store.replayDeadLetter(dead.id)
        #expect(try await store.deadLetters().isEmpty)
        let replayed = try #require(try await store.claim(.remoteExecutor, owner: "worker-5", leaseSec: 30))
        #expect(replayed.kind == .executeCommand)
        #expect(replayed.body == Self.executeCommand("case-1").body)
        #expect(replayed.deliveries == 1)

        await #expect(throws: StoreError.self) { try await store.replayDeadLetter(dead.id) }
    }

    @Test("dead-lettered transfers publish file_transfer_failed; dead-lettered events publish nothing", arguments: StoreBackendKind.allCases)
    func deadLetterResultPerKind(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend, maxDeliveries: 1)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.publish([
            OutgoingMessage(kind: .uploadCase, body: MessageBody(caseId: "up", stepIndex: 0, attempt: 2, step: "upload")),
            OutgoingMessage(kind: .downloadResults, body: MessageBody(caseId: "down", stepIndex: 2, attempt: 1, step: "download")),
        ])
        for _ in 0..<2 {
            let message = try #require(try await store.claim(.fileTransfer, owner: "w", leaseSec: 30))
            #expect(try await store.fail(message, error: "rsync: connection unexpectedly closed", retryAfter: 0))
        }
        var events: [ClaimedMessage] = []
        while let event = try await store.claim(.conductor, owner: "c", leaseSec: 30) { events.append(event) }
        #expect(events.map(\.kind) == [.fileTransferFailed, .fileTransferFailed])
        #expect(Set(events.map(\.body.caseId)) == ["up", "down"])
        #expect(events.first { $0.body.caseId == "up" }?.body.attempt == 2)

        // An event that keeps failing is set aside without publishing anything.
        let event = events[0]
        #expect(try await store.fail(event, error: "conductor crashed", retryAfter: 0))
        #expect(try await store.queueDepths() == [.conductor: 1, .remoteExecutor: 0, .fileTransfer: 0])
        #expect(try await store.deadLetters().count == 3)
        #expect(try await store.deadLetters().first?.kind == .fileTransferFailed)
    }

    @Test("reclaimLeases makes leased messages claimable at once; a crash counts, a graceful release does not", arguments: StoreBackendKind.allCases)
    func reclaimLeases(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend, maxDeliveries: 3)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.publish([Self.executeCommand("a"), Self.executeCommand("b"),
                                 OutgoingMessage(kind: .uploadCase, body: MessageBody(caseId: "c", stepIndex: 0, attempt: 1)),
                                 OutgoingMessage(kind: .uploadCase, body: MessageBody(caseId: "d", stepIndex: 0, attempt: 1))])
        // Workers' leases carry their communicator's name (`<instance>/...`).
        let a = try #require(try await store.claim(.remoteExecutor, owner: "\(store.instance)/old-daemon", leaseSec: 3600))
        let upload = try #require(try await store.claim(.fileTransfer, owner: "\(store.instance)/old-daemon", leaseSec: 3600))
        #expect(a.body.caseId == "a")
        #expect(upload.body.caseId == "c")
        // Another communicator's lease on a shared (PostgreSQL) state is its live work: only its
        // expiry frees it. On SQLite every lease at start belongs to a daemon that died.
        let d = try #require(try await store.claim(.fileTransfer, owner: "elsewhere/worker", leaseSec: 3600))

        // The daemon dies and restarts: what it held is free again at once.
        #expect(try await store.reclaimLeases() == (backend == .postgres ? 2 : 3))
        if backend == .postgres {
            #expect(try await store.queuedMessages().first { $0.id == d.id }?.leaseOwner == "elsewhere/worker")
        }
        let again = try #require(try await store.claim(.remoteExecutor, owner: "\(store.instance)/new-daemon", leaseSec: 30))
        #expect(again.id == a.id)
        #expect(again.deliveries == 2, "the delivery the crash interrupted counts")
        // A graceful shutdown gives it back uncounted, any number of times.
        try store.release(again)
        for _ in 0..<5 {
            let current = try #require(try await store.claim(.remoteExecutor, owner: "\(store.instance)/new-daemon", leaseSec: 30))
            #expect(current.id == a.id && current.deliveries == 2)
            try store.release(current)
        }
        // A message whose handling keeps crashing the daemon goes to the dead letters after
        // maxDeliveries restarts instead of crash-looping.
        for deliveries in [2, 3] {
            #expect(try await store.claim(.remoteExecutor, owner: "\(store.instance)/new-daemon", leaseSec: 30)?.deliveries == deliveries)
            #expect(try await store.reclaimLeases() == 1)
        }
        let b = try #require(try await store.claim(.remoteExecutor, owner: "\(store.instance)/new-daemon", leaseSec: 30))
        #expect(b.body.caseId == "b", "a went to the dead letters at its fourth delivery")
        let dead = try await store.deadLetters()
        #expect(dead.map(\.caseId) == ["a"])
        #expect(dead.first?.error.contains("gave up after 3 deliveries") == true)
        // Its failure event was published for the Conductor.
        let failure = try #require(try await store.claim(.conductor, owner: "conductor", leaseSec: 30))
        #expect(failure.kind == .executionFailed && failure.body.caseId == "a")
        let uploadAgain = try #require(try await store.claim(.fileTransfer, owner: "\(store.instance)/new-daemon", leaseSec: 30))
        #expect(uploadAgain.id == upload.id && uploadAgain.deliveries == 2)
    }

    @Test("a worker that lost its lease cannot fail the message out from under the worker that took it over", arguments: StoreBackendKind.allCases)
    func failAfterLostLeaseKeepsTheNewOwnersLease(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend, maxDeliveries: 5)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.publish([Self.executeCommand("case-1")])
        let stale = try #require(try await store.claim(.remoteExecutor, owner: "worker-a", leaseSec: 30))
        fixture.clock.advance(by: 31) // worker-a hung past its lease
        let current = try #require(try await store.claim(.remoteExecutor, owner: "worker-b", leaseSec: 30))
        #expect(current.deliveries == 2)

        // worker-a wakes up and reports a failure for its (lost) delivery.
        _ = try await store.fail(stale, error: "timed out", retryAfter: 0)

        // worker-b still holds the lease: nobody else may start the same GPU job.
        let stillLeased = try await store.renew(current, leaseSec: 30)
        let takenOver = try await store.claim(.remoteExecutor, owner: "worker-c", leaseSec: 30)
        #expect(stillLeased)
        #expect(takenOver == nil)
    }
}
