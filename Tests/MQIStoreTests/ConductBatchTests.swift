import Foundation
import MQICore
@testable import MQIStore
import MQITestSupport
import Testing

/// Several events decided in one transaction (the Conductor's batches): the same decisions as one
/// by one, all or none committed, on both backends.
@Suite("Store: a batch of Conductor events in one transaction")
struct ConductBatchTests {
    @Test("a claimed batch holds step results before new cases and is decided in order, each event seeing the decisions before it",
          arguments: StoreBackendKind.allCases)
    func batchDecidesInOrder(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        let driver = Driver(store: store, conductor: conductor)
        try await store.reconcileGPUs(configured: [0])
        // case-1 is uploaded (its upload result queued); case-2 and case-3 are new.
        try await driver.registerAndStart("case-1", workflow: Fixtures.workflowName)
        try await driver.work(.fileTransfer, expecting: "case-1")
        fixture.clock.advance(by: 1)
        #expect(try await store.registerCase("case-2", workflow: Fixtures.workflowName))
        #expect(try await store.registerCase("case-3", workflow: Fixtures.workflowName))

        let batch = try await store.claim(.conductor, owner: "conductor", leaseSec: 30, limit: 2)
        // The upload result first (it was queued first too), then the oldest new case; case-3 stays queued.
        #expect(batch.map(\.kind) == [.caseUploadCompleted, .newCaseFound])
        #expect(batch.map(\.body.caseId) == ["case-1", "case-2"])
        #expect(batch.allSatisfy { $0.deliveries == 1 && $0.leaseOwner == "conductor" })
        let rest = try await store.claim(.conductor, owner: "conductor", leaseSec: 30, limit: 16)
        #expect(rest.map(\.body.caseId) == ["case-3"])

        let deliveries = try (batch + rest).map { message in
            Store.ConductorDelivery(event: try #require(ConductorEvent(message.kind, message.body)), caseId: message.body.caseId, message: message)
        }
        let applied = try await store.conduct(deliveries, conductor: conductor)
        #expect(applied.count == 3)
        // case-1 took the only GPU for its simulation; the new cases start their uploads.
        #expect(applied[0].map(\.decision.state.caseId) == ["case-1"])
        #expect(applied[0].first?.decision.state.gpuIds == [0])
        #expect(applied[1].first?.decision.commands.map(\.kind) == [.uploadCase])
        #expect(applied[2].first?.decision.commands.map(\.kind) == [.uploadCase])
        #expect(try await store.queueDepths() == [.conductor: 0, .remoteExecutor: 1, .fileTransfer: 2])
        #expect(try await store.caseSummary("case-1")?.workflowStep == "simulate")
        #expect(try await store.caseSummary("case-2")?.workflowStep == "upload")
        #expect(try await store.caseSummary("case-3")?.workflowStep == "upload")

        // Both uploads done, decided together: the first takes nothing (the GPU is case-1's) and
        // waits; the second waits behind it, in the order they were decided.
        try await driver.work(.fileTransfer, expecting: "case-2")
        try await driver.work(.fileTransfer, expecting: "case-3")
        let uploads = try await store.claim(.conductor, owner: "conductor", leaseSec: 30, limit: 16)
        #expect(uploads.map(\.body.caseId) == ["case-2", "case-3"])
        _ = try await store.conduct(try uploads.map { message in
            Store.ConductorDelivery(event: try #require(ConductorEvent(message.kind, message.body)), caseId: message.body.caseId, message: message)
        }, conductor: conductor)
        #expect(try await store.caseSummary("case-2")?.status == .pendingResource)
        #expect(try await store.caseSummary("case-3")?.status == .pendingResource)
        // case-1's simulation ends: its GPU goes to case-2, the first in line, in the same transaction.
        try await driver.work(.remoteExecutor, expecting: "case-1")
        let simulated = try await store.claim(.conductor, owner: "conductor", leaseSec: 30, limit: 16)
        let released = try await store.conduct(try simulated.map { message in
            Store.ConductorDelivery(event: try #require(ConductorEvent(message.kind, message.body)), caseId: message.body.caseId, message: message)
        }, conductor: conductor)
        #expect(released.first?.map(\.decision.state.caseId) == ["case-1", "case-2"])
        #expect(try await store.caseSummary("case-2")?.gpuIds == [0])
        #expect(try await store.caseSummary("case-3")?.status == .pendingResource)
        try await expectGPUInvariants(store)
    }

    @Test("if one decision of a batch cannot be persisted, none is: every message stays queued and every case unchanged",
          arguments: StoreBackendKind.allCases)
    func batchRollsBackAsAWhole(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        for id in ["case-1", "case-2", "case-3"] { #expect(try await store.registerCase(id, workflow: Fixtures.workflowName)) }
        let batch = try await store.claim(.conductor, owner: "conductor", leaseSec: 30, limit: 16)
        #expect(batch.count == 3)
        let before = try await store.cases()

        // The last event's history line cannot be written (the first two are decided by then).
        try await store.pool.write { db in
            switch backend {
            case .sqlite:
                try db.execute(sql: """
                    CREATE TRIGGER no_history BEFORE INSERT ON case_events WHEN NEW.case_id = 'case-3' AND NEW.event = 'new_case_found'
                    BEGIN SELECT RAISE(ABORT, 'disk full'); END
                    """)
            case .postgres:
                try db.execute(sql: """
                    CREATE FUNCTION no_history() RETURNS trigger AS $$
                    BEGIN IF NEW.case_id = 'case-3' AND NEW.event = 'new_case_found' THEN RAISE EXCEPTION 'disk full'; END IF; RETURN NEW; END
                    $$ LANGUAGE plpgsql
                    """)
                try db.execute(sql: "CREATE TRIGGER no_history BEFORE INSERT ON case_events FOR EACH ROW EXECUTE FUNCTION no_history()")
            }
        }
        let deliveries = try batch.map { message in
            Store.ConductorDelivery(event: try #require(ConductorEvent(message.kind, message.body)), caseId: message.body.caseId, message: message)
        }
        await #expect(throws: (any Error).self) { try await store.conduct(deliveries, conductor: conductor) }
        #expect(try await store.cases() == before)
        #expect(try await store.queueDepths() == [.conductor: 3, .remoteExecutor: 0, .fileTransfer: 0])
        #expect(try await store.history("case-1").map(\.event) == ["registered"])

        // Decided one by one (what the Conductor service falls back to), the first two go through
        // and only the third fails, its message still queued for redelivery.
        for delivery in deliveries {
            _ = try? await store.conduct(delivery.event, caseId: delivery.caseId, conductor: conductor, acknowledging: delivery.message)
        }
        #expect(try await store.caseSummary("case-1")?.status == .processing)
        #expect(try await store.caseSummary("case-2")?.status == .processing)
        #expect(try await store.caseSummary("case-3")?.status == .new)
        #expect(try await store.queueDepths() == [.conductor: 1, .remoteExecutor: 0, .fileTransfer: 2])
    }
}
