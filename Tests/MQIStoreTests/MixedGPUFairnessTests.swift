import Foundation
import MQICore
import MQITestSupport
import Testing
@testable import MQIStore

/// First come, first served with mixed GPU requests on 4 GPUs: a case waiting for 2 GPUs is not
/// starved by later cases that need 1.
struct MixedGPUFairnessTests {
    static func conductor() throws -> Conductor {
        func workflow(_ name: String, gpus: Int) throws -> Workflow {
            Workflow(name: name, steps: [
                WorkflowStep(name: "upload", type: .upload, progress: 10, gpuCount: 0),
                WorkflowStep(name: "sim", type: .execute, progress: 50, gpuCount: gpus, command: try CommandTemplate("sim {gpu_ids}")),
                WorkflowStep(name: "download", type: .download, progress: 90, gpuCount: 0),
            ])
        }
        return Conductor(workflows: ["small": try workflow("small", gpus: 1), "big": try workflow("big", gpus: 2)],
                         uploadDir: "/u", downloadDir: "/d")
    }

    @Test(arguments: StoreBackendKind.allCases) func aBigCaseWaitingFirstIsServedBeforeLaterSmallOnes(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Self.conductor()
        try await store.reconcileGPUs(configured: [0, 1, 2, 3])
        func arrive(_ id: String, _ workflow: String) async throws {
            #expect(try await store.registerCase(id, workflow: workflow))
            _ = try await store.conduct(.newCaseFound, caseId: id, conductor: conductor)
            _ = try await store.conduct(.stepSucceeded(stepIndex: 0, attempt: 1), caseId: id, conductor: conductor)
        }
        func finishSim(_ id: String) async throws -> [AppliedDecision] {
            try await store.conduct(.stepSucceeded(stepIndex: 1, attempt: 1), caseId: id, conductor: conductor)
        }
        func status(_ id: String) async throws -> (CaseStatus?, [Int]) {
            let summary = try await store.caseSummary(id)
            return (summary?.status, summary?.gpuIds ?? [])
        }
        try await arrive("A", "small")   // GPU 0
        try await arrive("B", "big")     // GPUs 1, 2
        try await arrive("C", "small")   // GPU 3
        try await arrive("D", "big")     // waits
        try await arrive("E", "small")   // waits behind D
        #expect(try await status("D").0 == .pendingResource)
        #expect(try await status("E").0 == .pendingResource)

        // One GPU frees up: D needs two, and E must not jump the line.
        _ = try await finishSim("A")
        #expect(try await status("D").0 == .pendingResource)
        #expect(try await status("E").0 == .pendingResource, "a later small case overtook the waiting big one")

        // A second GPU frees up: D starts on both, E still waits.
        let applied = try await finishSim("C")
        #expect(applied.contains { $0.decision.state.caseId == "D" && $0.decision.state.status == .processing })
        #expect(try await status("D") == (.processing, [0, 3]))
        #expect(try await status("E").0 == .pendingResource)

        // B finishes: E gets one of its GPUs.
        _ = try await finishSim("B")
        #expect(try await status("E") == (.processing, [1]))
        let reserved = try await store.gpus().filter { $0.status == .reserved }.map { "\($0.gpuId):\($0.reservedBy ?? "")" }
        #expect(reserved.sorted() == ["0:D", "1:E", "3:D"])
    }
}
