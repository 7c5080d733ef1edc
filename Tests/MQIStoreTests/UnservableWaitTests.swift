import Foundation
import MQICore
import MQITestSupport
import Testing
@testable import MQIStore

/// A waiting case that the GPUs healthy now can never serve (it needs 2, one of the 2 is missing)
/// does not block later cases; a case that merely waits for GPUs held by others still does.
struct UnservableWaitTests {
    static func samples(_ ids: [Int]) -> [GPUSample] {
        ids.map { GPUSample(index: $0, name: "H200", memoryUsedMB: 0, memoryTotalMB: 140_000) }
    }

    struct Scene {
        let fixture: StoreFixture
        let conductor: Conductor
        var store: Store { fixture.store }

        func arrive(_ id: String, _ workflow: String) async throws -> [AppliedDecision] {
            #expect(try await store.registerCase(id, workflow: workflow))
            _ = try await store.conduct(.newCaseFound, caseId: id, conductor: conductor)
            return try await store.conduct(.stepSucceeded(stepIndex: 0, attempt: 1), caseId: id, conductor: conductor)
        }
        func finishSim(_ id: String) async throws -> [AppliedDecision] {
            try await store.conduct(.stepSucceeded(stepIndex: 1, attempt: 1), caseId: id, conductor: conductor)
        }
        func status(_ id: String) async throws -> (CaseStatus?, [Int]) {
            let summary = try await store.caseSummary(id)
            return (summary?.status, summary?.gpuIds ?? [])
        }
        func hardwareWarnings(_ id: String) async throws -> [String] {
            try await store.history(id).filter { $0.event == "waits_for_hardware" }.map(\.message)
        }
    }

    static func scene(_ backend: StoreBackendKind) async throws -> Scene {
        let scene = Scene(fixture: try StoreFixture(backend: backend), conductor: try MixedGPUFairnessTests.conductor())
        try await scene.store.reconcileGPUs(configured: [0, 1])
        try await scene.store.recordGPUTelemetry(samples([0, 1]), busyMemoryMB: 500)
        return scene
    }

    @Test(arguments: StoreBackendKind.allCases) func aCaseNeedingMoreGPUsThanAreHealthyDoesNotBlockLaterCases(_ backend: StoreBackendKind) async throws {
        let scene = try await Self.scene(backend)
        defer { scene.fixture.remove() }
        // GPU 1 vanishes from nvidia-smi: one usable GPU left.
        try await scene.store.recordGPUTelemetry(Self.samples([0]), busyMemoryMB: 500)

        _ = try await scene.arrive("A", "small")            // GPU 0
        #expect(try await scene.status("A") == (.processing, [0]))
        let applied = try await scene.arrive("B", "big")    // needs 2, only 1 healthy: waits for the hardware
        #expect(try await scene.status("B").0 == .pendingResource)
        let warning = try #require(applied.first { $0.warning })
        #expect(warning.decision.state.caseId == "B")
        #expect(warning.decision.note.contains("waits for 2 GPUs"))
        #expect(warning.decision.note.contains("only 1 of the 2 configured GPUs is healthy (GPU 1 missing)"))
        _ = try await scene.arrive("C", "small")            // waits for GPU 0 (held by A)
        #expect(try await scene.status("C").0 == .pendingResource)

        // A frees GPU 0: C starts although B arrived first, since B cannot start on one GPU anyway.
        let freed = try await scene.finishSim("A")
        #expect(freed.contains { $0.decision.state.caseId == "C" && $0.decision.state.status == .processing })
        #expect(try await scene.status("C") == (.processing, [0]))
        #expect(try await scene.status("B").0 == .pendingResource)

        // C done, GPU 0 free again: a new small case starts at once (the unservable B does not count as waiting ahead).
        _ = try await scene.finishSim("C")
        _ = try await scene.arrive("D", "small")
        #expect(try await scene.status("D") == (.processing, [0]))

        // One warning per case, however many times the line was looked at.
        #expect(try await scene.hardwareWarnings("B").count == 1)
        #expect(try await scene.hardwareWarnings("C").isEmpty)
        try await expectGPUInvariants(scene.store)
    }

    @Test(arguments: StoreBackendKind.allCases) func aCaseWaitingForGPUsHeldByOthersStillBlocksThoseBehindIt(_ backend: StoreBackendKind) async throws {
        let scene = try await Self.scene(backend)
        defer { scene.fixture.remove() }
        try await scene.store.recordGPUTelemetry(Self.samples([0]), busyMemoryMB: 500)
        _ = try await scene.arrive("A", "small")            // GPU 0
        _ = try await scene.arrive("B", "big")              // waits for the hardware
        // GPU 1 is back: B can be served now (GPU 0 is only held by A), so it holds up the line again.
        let recovered = try await scene.store.recordGPUTelemetry(Self.samples([0, 1]), busyMemoryMB: 500)
        #expect(recovered == [1])
        _ = try await scene.store.dispatchPending(conductor: scene.conductor)
        #expect(try await scene.status("B").0 == .pendingResource)
        _ = try await scene.arrive("C", "small")            // GPU 1 is free, but B waits ahead of it
        #expect(try await scene.status("C").0 == .pendingResource, "a later small case overtook a big one that can be served")
        // A finishes: B takes both GPUs, C still waits.
        _ = try await scene.finishSim("A")
        #expect(try await scene.status("B") == (.processing, [0, 1]))
        #expect(try await scene.status("C").0 == .pendingResource)
        try await expectGPUInvariants(scene.store)
    }

    @Test func theConductorDoesNotCountUnservableCasesAsWaitingAhead() throws {
        let conductor = try MixedGPUFairnessTests.conductor()
        let big = CaseState(caseId: "B", status: .pendingResource, workflow: "big", stepIndex: 1, attempt: 1)
        let small = CaseState(caseId: "S", status: .pendingResource, workflow: "small", stepIndex: 1, attempt: 1)
        #expect(!conductor.othersWaiting([big], usable: 1))
        #expect(conductor.othersWaiting([big], usable: 2))
        #expect(conductor.othersWaiting([big, small], usable: 1))
        #expect(conductor.othersWaiting([big], usable: nil))
        // A case the usable GPUs cannot serve says so when it starts waiting.
        var arriving = big
        arriving.status = .processing
        arriving.stepIndex = 0
        let decision = conductor.decide(arriving, .stepSucceeded(stepIndex: 0, attempt: 1), gpus: GPUAvailability(free: [0], usable: 1))
        #expect(decision.state.status == .pendingResource)
        #expect(decision.note.contains("only 1 configured GPU(s) are healthy"))
    }
}
