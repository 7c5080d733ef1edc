import Foundation
import MQICore
@testable import MQIStore
import MQITestSupport
import Testing

@Suite("Store: conduct persists the Conductor's decisions transactionally")
struct ConductStoreTests {
    @Test("conduct(newCaseFound) acknowledges the message, starts the first step and publishes upload_case in one transaction", arguments: StoreBackendKind.allCases)
    func newCaseFoundStartsTheFirstStep(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        try await store.reconcileGPUs(configured: [0])
        try await store.registerCase("case-1", workflow: Fixtures.workflowName)
        let message = try #require(try await store.claim(.conductor, owner: "conductor", leaseSec: 30))
        fixture.clock.advance(by: 2)

        let applied = try await store.conduct(.newCaseFound, caseId: "case-1", conductor: conductor, acknowledging: message)
        #expect(applied.count == 1)
        let only = try #require(applied.first)
        #expect(only.event == .newCaseFound)
        #expect(only.previousStatus == .new)
        #expect(only.decision.outcome == .applied)
        #expect(only.decision.state.status == .processing)
        #expect(only.decision.commands.map(\.kind) == [.uploadCase])

        #expect(try await store.queueDepths() == [.conductor: 0, .remoteExecutor: 0, .fileTransfer: 1])
        let summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.status == .processing)
        #expect(summary.workflowStep == "upload")
        #expect(summary.attempt == 1)
        #expect(summary.progress == 10)
        #expect(summary.gpuIds.isEmpty)
        #expect(summary.startedAt == fixture.clock.now)
        #expect(summary.updatedAt == fixture.clock.now)
        #expect(summary.finishedAt == nil)
        #expect(try await store.caseState("case-1")?.stepIndex == 0)

        let upload = try #require(try await store.claim(.fileTransfer, owner: "transfer", leaseSec: 30))
        #expect(upload.kind == .uploadCase)
        #expect(upload.body.caseId == "case-1")
        #expect(upload.body.stepIndex == 0)
        #expect(upload.body.attempt == 1)
        #expect(upload.body.step == "upload")

        // The new_case_found message is gone for good, not just leased.
        fixture.clock.advance(by: 3600)
        #expect(try await store.claim(.conductor, owner: "conductor", leaseSec: 30) == nil)

        let history = try await store.history("case-1")
        #expect(history.map(\.event) == ["registered", "new_case_found"])
        let line = try #require(history.last)
        #expect(line.status == .processing)
        #expect(line.step == "upload")
        #expect(line.attempt == 1)
        #expect(line.message.contains("upload"))
        #expect(try await store.gpus().allSatisfy { $0.status == .free })
    }

    @Test("if persisting a decision fails, nothing of it is kept: the message stays, the case is unchanged, no command is published", arguments: StoreBackendKind.allCases)
    func conductRollsBackAsAWhole(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        try await store.registerCase("case-1", workflow: Fixtures.workflowName)
        let message = try #require(try await store.claim(.conductor, owner: "conductor", leaseSec: 30))
        let before = try await store.caseSummary("case-1")

        // The history line is the last write of a decision: make it fail.
        try await store.pool.write { db in
            switch backend {
            case .sqlite:
                try db.execute(sql: "CREATE TRIGGER no_history BEFORE INSERT ON case_events BEGIN SELECT RAISE(ABORT, 'disk full'); END")
            case .postgres:
                try db.execute(sql: "CREATE FUNCTION no_history() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql")
                try db.execute(sql: "CREATE TRIGGER no_history BEFORE INSERT ON case_events FOR EACH ROW EXECUTE FUNCTION no_history()")
            }
        }
        await #expect(throws: (any Error).self) {
            try await store.conduct(.newCaseFound, caseId: "case-1", conductor: conductor, acknowledging: message)
        }
        #expect(try await store.caseSummary("case-1") == before)
        #expect(try await store.queueDepths() == [.conductor: 1, .remoteExecutor: 0, .fileTransfer: 0])

        // The message was not acknowledged: it is redelivered when its lease expires.
        try await store.pool.write { db in try db.execute(sql: backend == .sqlite ? "DROP TRIGGER no_history" : "DROP TRIGGER no_history ON case_events") }
        fixture.clock.advance(by: 31)
        let driver = Driver(store: store, conductor: conductor)
        let applied = try await driver.conductNext()
        #expect(applied.map(\.decision.outcome) == [.applied])
        #expect(try await store.caseSummary("case-1")?.status == .processing)
        #expect(try await store.queueDepths() == [.conductor: 0, .remoteExecutor: 0, .fileTransfer: 1])
    }

    @Test("a case runs through the configured workflow to COMPLETED, keeping its GPU across consecutive GPU steps", arguments: StoreBackendKind.allCases)
    func fullWorkflowFromConfig(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let config = try Fixtures.config()
        let conductor = Conductor(config: config)
        let driver = Driver(store: store, conductor: conductor)
        try await store.reconcileGPUs(configured: config.hpc.gpus)

        try await driver.registerAndStart("case-1", workflow: "default_qa")
        try await driver.work(.fileTransfer, expecting: "case-1")
        try await driver.conductNext()
        var summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.workflowStep == "run_interpreter")
        #expect(summary.gpuIds == [0])
        #expect(summary.progress == 30)

        let interpreter = try await driver.work(.remoteExecutor, expecting: "case-1")
        #expect(interpreter.kind == .executeCommand)
        #expect(interpreter.body.gpuIds == [0])
        #expect(interpreter.body.command == "python3 /opt/mqi/interpreter.py --case 'case-1' --gpu '0'")
        try await driver.conductNext()
        summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.workflowStep == "run_moqui_sim")
        #expect(summary.gpuIds == [0])
        #expect(try await store.gpus().first { $0.gpuId == 0 }?.reservedBy == "case-1")

        let moqui = try await driver.work(.remoteExecutor, expecting: "case-1")
        #expect(moqui.body.stepIndex == 2)
        #expect(moqui.body.timeoutSec == 3600)
        #expect(moqui.body.command == "/opt/mqi/moquisim --case-dir '/srv/mqi/hpc/upload/case-1' --out '/srv/mqi/hpc/download/case-1' --gpu '0'")
        try await driver.conductNext()
        summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.workflowStep == "download_results")
        #expect(summary.gpuIds.isEmpty)
        #expect(try await store.gpus().allSatisfy { $0.status == .free && $0.reservedBy == nil })

        try await driver.work(.fileTransfer, expecting: "case-1")
        fixture.clock.advance(by: 1)
        try await driver.conductNext()
        summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.status == .completed)
        #expect(summary.progress == 100)
        #expect(summary.finishedAt == fixture.clock.now)
        #expect(summary.error == nil)
        #expect(try await store.history("case-1").map(\.event)
                == ["registered", "new_case_found", "step_succeeded", "step_succeeded", "step_succeeded", "step_succeeded"])
        #expect(try await store.activity().isIdle)
        #expect(try await store.statusCounts()[.completed] == 1)
        try await expectGPUInvariants(store)
    }

    @Test("stepSucceeded for an old attempt or a wrong step changes nothing, publishes nothing, and is recorded as ignored", arguments: StoreBackendKind.allCases)
    func staleStepEventsAreIgnored(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        try await store.reconcileGPUs(configured: [0])
        let driver = Driver(store: store, conductor: conductor)
        try await driver.registerAndStart("case-1", workflow: Fixtures.workflowName)
        let before = try #require(try await store.caseSummary("case-1"))
        let depths = try await store.queueDepths()
        fixture.clock.advance(by: 5)

        let staleEvents: [ConductorEvent] = [
            .stepSucceeded(stepIndex: 0, attempt: 2), // an attempt that does not exist yet
            .stepSucceeded(stepIndex: 0, attempt: 0), // an old attempt
            .stepSucceeded(stepIndex: 1, attempt: 1), // a step the case has not reached
            .stepFailed(stepIndex: 2, attempt: 1, reason: "late failure"),
        ]
        for (index, event) in staleEvents.enumerated() {
            let applied = try await store.conduct(event, caseId: "case-1", conductor: conductor)
            #expect(applied.map(\.decision.outcome) == [.ignored], "\(event)")
            #expect(applied.first?.decision.commands.isEmpty == true)
            #expect(try await store.caseSummary("case-1") == before, "\(event)")
            #expect(try await store.queueDepths() == depths, "\(event)")
            let history = try await store.history("case-1")
            #expect(history.count == 2 + index + 1)
            let line = try #require(history.last)
            #expect(line.event == "ignored")
            #expect(line.status == .processing)
            #expect(line.message.contains("stale"))
        }

        // A stale event that arrives through the queue is acknowledged, not redelivered forever.
        try await store.publish([OutgoingMessage(kind: .caseUploadCompleted,
                                                 body: MessageBody(caseId: "case-1", stepIndex: 0, attempt: 7, step: "upload"))])
        let applied = try await driver.conductNext()
        #expect(applied.map(\.decision.outcome) == [.ignored])
        #expect(try await store.queueDepths() == depths)
        #expect(try await store.caseSummary("case-1") == before)
    }

    @Test("a result of the previous attempt is ignored after a retry", arguments: StoreBackendKind.allCases)
    func oldAttemptAfterRetryIsIgnored(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        try await store.reconcileGPUs(configured: [0])
        let driver = Driver(store: store, conductor: conductor)
        try await driver.registerAndStart("case-1", workflow: Fixtures.workflowName)
        try await driver.work(.fileTransfer, expecting: "case-1")
        try await driver.conductNext() // simulate, attempt 1, GPU 0
        let firstAttempt = try #require(try await store.claim(.remoteExecutor, owner: "executor", leaseSec: 30))
        // The executor saw the attempt's processes end: the GPU is free at once.
        try await store.complete(firstAttempt, publishing: firstAttempt.body.result(.executionFailed, reason: "Segmentation fault", ended: true))
        try await driver.conductNext()
        var summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.status == .failed)
        #expect(summary.error?.contains("Segmentation fault") == true)
        #expect(summary.gpuIds.isEmpty)
        #expect(try await store.gpus().first?.status == .free)

        let retried = try await store.conduct(.retry, caseId: "case-1", conductor: conductor)
        #expect(retried.map(\.decision.outcome) == [.applied])
        summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.status == .processing)
        #expect(summary.attempt == 2)
        #expect(summary.workflowStep == "simulate")
        #expect(summary.gpuIds == [0])
        #expect(summary.error == nil)
        #expect(summary.finishedAt == nil)

        // The first attempt's (late, duplicate) success must not advance the retried case.
        let late = try await store.conduct(.stepSucceeded(stepIndex: 1, attempt: 1), caseId: "case-1", conductor: conductor)
        #expect(late.map(\.decision.outcome) == [.ignored])
        #expect(try await store.caseSummary("case-1") == summary)
        #expect(try await store.history("case-1").last?.event == "ignored")
        let second = try #require(try await store.claim(.remoteExecutor, owner: "executor", leaseSec: 30))
        #expect(second.body.attempt == 2)
        #expect(try await store.queueDepths() == [.conductor: 0, .remoteExecutor: 1, .fileTransfer: 0])
    }

    @Test("a duplicate new_case_found for a PROCESSING case is acknowledged and ignored", arguments: StoreBackendKind.allCases)
    func duplicateNewCaseFoundIsIgnored(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        let driver = Driver(store: store, conductor: conductor)
        try await driver.registerAndStart("case-1", workflow: Fixtures.workflowName)
        let before = try #require(try await store.caseSummary("case-1"))
        #expect(before.status == .processing)

        try await store.publish([OutgoingMessage(kind: .newCaseFound, body: MessageBody(caseId: "case-1"))])
        let applied = try await driver.conductNext()
        #expect(applied.map(\.decision.outcome) == [.ignored])
        #expect(try await store.caseSummary("case-1") == before)
        // Still exactly one upload for the case, and the duplicate is gone.
        #expect(try await store.queueDepths() == [.conductor: 0, .remoteExecutor: 0, .fileTransfer: 1])
        let line = try #require(try await store.history("case-1").last)
        #expect(line.event == "ignored")
        #expect(line.message.contains("duplicate"))
    }

    @Test("an event for an unknown case is acknowledged and applies nothing", arguments: StoreBackendKind.allCases)
    func eventForUnknownCase(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.publish([OutgoingMessage(kind: .executionSucceeded, body: MessageBody(caseId: "ghost", stepIndex: 1, attempt: 1))])
        let applied = try await Driver(store: store, conductor: try Fixtures.conductor()).conductNext()
        #expect(applied.isEmpty)
        #expect(try await store.activity().isIdle)
        #expect(try await store.caseExists("ghost") == false)
    }

    @Test("an execute_command that exhausts its deliveries fails the case and frees its GPU", arguments: StoreBackendKind.allCases)
    func deadLetteredCommandFailsTheCase(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend, maxDeliveries: 3)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        try await store.reconcileGPUs(configured: [0])
        let driver = Driver(store: store, conductor: conductor)
        try await driver.registerAndStart("case-1", workflow: Fixtures.workflowName)
        try await driver.work(.fileTransfer, expecting: "case-1")
        try await driver.conductNext()
        #expect(try await store.caseSummary("case-1")?.gpuIds == [0])

        for _ in 1...3 {
            let message = try #require(try await store.claim(.remoteExecutor, owner: "executor", leaseSec: 30))
            try await store.fail(message, error: "ssh: Could not resolve hostname hpc01", retryAfter: 0)
        }
        #expect(try await store.deadLetters().map(\.kind) == [.executeCommand])
        try await driver.conductNext()
        let summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.status == .failed)
        #expect(summary.workflowStep == "simulate")
        #expect(summary.error?.contains("Could not resolve hostname") == true)
        #expect(summary.gpuIds.isEmpty)
        // The dead letter says nothing about the attempt's processes: the GPU drains until a stop confirms them gone.
        let draining = try #require(try await store.gpus().first)
        #expect(draining.status == .draining && draining.drain?.caseId == "case-1" && draining.drain?.attempt == 1)
        #expect(try await store.dispatchPending(conductor: conductor).isEmpty)
        let stop = try #require(try await store.claim(.remoteExecutor, owner: "stopper", leaseSec: 30))
        #expect(stop.kind == .stopAttempt && stop.body.step == "simulate" && stop.body.gpuIds == [0])
        try await store.complete(stop, publishing: stop.body.result(.attemptStopped))
        let stopped = try #require(try await store.claim(.conductor, owner: "conductor", leaseSec: 30))
        #expect(stopped.kind == .attemptStopped)
        let (freed, _) = try await store.finishDrain(caseId: "case-1", stepIndex: stopped.body.stepIndex, attempt: stopped.body.attempt,
                                                     conductor: conductor, acknowledging: stopped)
        #expect(freed == [0])
        #expect(try await store.gpus() == [GPUResource(gpuId: 0, status: .free, reservedBy: nil, reservedAt: nil)])
        #expect(try await store.activity().isIdle)
    }
}
