import Foundation
import MQICore
@testable import MQIStore
import MQITestSupport
import Testing

@Suite("Store: GPU reservations")
struct GPUReservationTests {
    /// upload → simulate (needs `gpus` GPUs) → download.
    static func workflow(_ name: String, gpus: Int) throws -> Workflow {
        Workflow(name: name, steps: [
            WorkflowStep(name: "upload", type: .upload, progress: 10, gpuCount: 0),
            WorkflowStep(name: "simulate", type: .execute, progress: 50, gpuCount: gpus,
                         command: try CommandTemplate("run --case {case_id} --gpu {gpu_ids}")),
            WorkflowStep(name: "download", type: .download, progress: 90, gpuCount: 0),
        ])
    }

    /// Runs every queue until nothing is left, checking the GPU invariants after each step.
    static func drain(_ driver: Driver, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        for _ in 0..<1000 {
            let depths = try await driver.store.queueDepths()
            if depths[.conductor, default: 0] > 0 {
                try await driver.conductNext(sourceLocation: sourceLocation)
            } else if let command = try await driver.store.claim(.fileTransfer, owner: "drain", leaseSec: 60) {
                try await driver.store.complete(command, publishing: Fixtures.success(for: command))
            } else if let command = try await driver.store.claim(.remoteExecutor, owner: "drain", leaseSec: 60) {
                try await driver.store.complete(command, publishing: Fixtures.success(for: command))
            } else {
                return
            }
            try await expectGPUInvariants(driver.store, sourceLocation: sourceLocation)
        }
        Issue.record("the queues never drained", sourceLocation: sourceLocation)
    }

    @Test("two GPUs, three cases: two run on distinct GPUs, the third waits and starts in the same transaction that frees a GPU", arguments: StoreBackendKind.allCases)
    func thirdCaseWaitsAndStartsWhenAGPUIsFreed(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let config = try Fixtures.config()
        let driver = Driver(store: store, conductor: Conductor(config: config))
        try await store.reconcileGPUs(configured: config.hpc.gpus)
        #expect(try await store.gpus().map(\.gpuId) == [0, 1])

        for id in ["a", "b", "c"] {
            try await driver.registerAndStart(id, workflow: "default_qa")
        }
        for id in ["a", "b", "c"] {
            try await driver.work(.fileTransfer, expecting: id)
            fixture.clock.advance(by: 1)
            try await driver.conductNext()
            try await expectGPUInvariants(store)
        }
        let a = try #require(try await store.caseSummary("a"))
        let b = try #require(try await store.caseSummary("b"))
        let c = try #require(try await store.caseSummary("c"))
        #expect(a.status == .processing)
        #expect(b.status == .processing)
        #expect(a.gpuIds.count == 1)
        #expect(b.gpuIds.count == 1)
        #expect(Set(a.gpuIds + b.gpuIds) == [0, 1])
        #expect(c.status == .pendingResource)
        #expect(c.workflowStep == "run_interpreter")
        #expect(c.gpuIds.isEmpty)
        #expect(try await store.queueDepths() == [.conductor: 0, .remoteExecutor: 2, .fileTransfer: 0])
        #expect(try await store.gpus().map(\.reservedBy) == ["a", "b"])

        // Both interpreters finish: each case keeps its GPU for MOQUI; c keeps waiting.
        for id in ["a", "b"] {
            try await driver.work(.remoteExecutor, expecting: id)
            let applied = try await driver.conductNext()
            #expect(applied.count == 1)
            #expect(try await store.caseSummary(id)?.workflowStep == "run_moqui_sim")
            try await expectGPUInvariants(store)
        }
        #expect(try await store.caseSummary("a")?.gpuIds == a.gpuIds)
        #expect(try await store.caseSummary("c")?.status == .pendingResource)

        // a's last GPU step finishes: its download needs no GPU, and c starts on a's GPU at once.
        try await driver.work(.remoteExecutor, expecting: "a")
        let applied = try await driver.conductNext()
        #expect(applied.map(\.decision.state.caseId) == ["a", "c"])
        let forA = try #require(applied.first)
        #expect(forA.decision.state.status == .processing)
        #expect(forA.decision.commands.map(\.kind) == [.downloadResults])
        #expect(forA.decision.release == a.gpuIds)
        let forC = try #require(applied.last)
        #expect(forC.event == .gpusFreed)
        #expect(forC.previousStatus == .pendingResource)
        #expect(forC.decision.state.status == .processing)
        #expect(forC.decision.state.gpuIds == a.gpuIds)
        #expect(forC.decision.reserve == a.gpuIds)
        let startC = try #require(forC.decision.commands.first)
        #expect(startC.kind == .executeCommand)
        #expect(startC.body.command == "python3 /opt/mqi/interpreter.py --case 'c' --gpu '\(a.gpuIds[0])'")

        #expect(try await store.caseSummary("a")?.gpuIds == [])
        #expect(try await store.caseSummary("a")?.workflowStep == "download_results")
        #expect(try await store.caseSummary("c")?.status == .processing)
        #expect(try await store.caseSummary("c")?.gpuIds == a.gpuIds)
        #expect(try await store.gpus().first { $0.gpuId == a.gpuIds[0] }?.reservedBy == "c")
        #expect(try await store.history("c").last?.event == "gpus_freed")
        try await expectGPUInvariants(store)

        try await Self.drain(driver)
        #expect(try await store.statusCounts()[.completed] == 3)
        #expect(try await store.gpus().allSatisfy { $0.status == .free && $0.reservedBy == nil })
    }

    @Test("waiting cases start first come, first served (by when they began to wait)", arguments: StoreBackendKind.allCases)
    func waitingCasesStartInFIFOOrder(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        let driver = Driver(store: store, conductor: conductor)
        try await store.reconcileGPUs(configured: [7])

        // Registered in one order, they begin to wait in another.
        for id in ["runner", "w3", "w1", "w2"] {
            try await driver.registerAndStart(id, workflow: Fixtures.workflowName)
            fixture.clock.advance(by: 1)
        }
        // Uploads finish in queue order (runner, w3, w1, w2); reorder w3 behind w1 and w2.
        try await driver.work(.fileTransfer, expecting: "runner")
        try await driver.conductNext()
        #expect(try await store.caseSummary("runner")?.gpuIds == [7])
        let w3Upload = try #require(try await store.claim(.fileTransfer, owner: "slow", leaseSec: 600))
        #expect(w3Upload.body.caseId == "w3")
        for id in ["w1", "w2"] {
            fixture.clock.advance(by: 1)
            try await driver.work(.fileTransfer, expecting: id)
            try await driver.conductNext()
        }
        fixture.clock.advance(by: 1)
        try await store.complete(w3Upload, publishing: Fixtures.success(for: w3Upload))
        try await driver.conductNext()
        #expect(try await store.cases(status: .pendingResource).count == 3)

        var order: [String] = []
        var holder = "runner"
        for _ in 0..<3 {
            try await driver.work(.remoteExecutor, expecting: holder)
            let applied = try await driver.conductNext()
            #expect(applied.count == 2)
            let started = try #require(applied.last)
            #expect(started.event == .gpusFreed)
            #expect(started.decision.state.gpuIds == [7])
            order.append(started.decision.state.caseId)
            holder = started.decision.state.caseId
            try await expectGPUInvariants(store)
        }
        #expect(order == ["w1", "w2", "w3"])
        try await Self.drain(driver)
        #expect(try await store.statusCounts()[.completed] == 4)
        #expect(try await store.gpus() == [GPUResource(gpuId: 7, status: .free, reservedBy: nil, reservedAt: nil)])
    }

    @Test("a waiting case is not overtaken: a newcomer waits behind it even when a GPU is free", arguments: StoreBackendKind.allCases)
    func newcomerDoesNotOvertakeAWaitingCase(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = Conductor(workflows: ["single": try Self.workflow("single", gpus: 1), "double": try Self.workflow("double", gpus: 2)],
                                  uploadDir: "/up", downloadDir: "/down")
        let driver = Driver(store: store, conductor: conductor)
        try await store.reconcileGPUs(configured: [0, 1])

        try await driver.registerAndStart("holder", workflow: "single")
        try await driver.registerAndStart("big", workflow: "double")
        try await driver.registerAndStart("small", workflow: "single")
        for id in ["holder", "big", "small"] {
            try await driver.work(.fileTransfer, expecting: id)
            fixture.clock.advance(by: 1)
            try await driver.conductNext()
        }
        #expect(try await store.caseSummary("holder")?.gpuIds == [0])
        #expect(try await store.caseSummary("big")?.status == .pendingResource)
        // GPU 1 is free, but "big" waits ahead of "small".
        #expect(try await store.caseSummary("small")?.status == .pendingResource)
        #expect(try await store.gpus().first { $0.gpuId == 1 }?.status == .free)

        // holder moves on: "big" gets both GPUs; "small" still waits behind it.
        try await driver.work(.remoteExecutor, expecting: "holder")
        let applied = try await driver.conductNext()
        #expect(applied.map(\.decision.state.caseId) == ["holder", "big"])
        #expect(try await store.caseSummary("big")?.gpuIds == [0, 1])
        #expect(try await store.caseSummary("small")?.status == .pendingResource)
        #expect(try await store.gpus().map(\.reservedBy) == ["big", "big"])
        let bigCommand = try #require(try await store.claim(.remoteExecutor, owner: "x", leaseSec: 60))
        #expect(bigCommand.body.command == "run --case 'big' --gpu '0,1'")
        try await store.complete(bigCommand, publishing: Fixtures.success(for: bigCommand))
        let next = try await driver.conductNext()
        #expect(next.map(\.decision.state.caseId) == ["big", "small"])
        try await Self.drain(driver)
        #expect(try await store.statusCounts()[.completed] == 3)
        #expect(try await store.gpus().allSatisfy { $0.status == .free })
    }

    @Test("cancelling a running case frees its GPU for the next waiting case once its attempt is confirmed stopped", arguments: StoreBackendKind.allCases)
    func cancelFreesTheGPU(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        let driver = Driver(store: store, conductor: conductor)
        try await store.reconcileGPUs(configured: [0])
        for id in ["a", "b"] {
            try await driver.registerAndStart(id, workflow: Fixtures.workflowName)
        }
        for id in ["a", "b"] {
            try await driver.work(.fileTransfer, expecting: id)
            try await driver.conductNext()
        }
        #expect(try await store.caseSummary("b")?.status == .pendingResource)
        let applied = try await store.conduct(.cancel(reason: "operator"), caseId: "a", conductor: conductor)
        #expect(applied.map(\.decision.state.caseId) == ["a"])
        #expect(try await store.caseSummary("a")?.status == .cancelled)
        #expect(try await store.caseSummary("a")?.finishedAt == fixture.clock.now)
        // a's simulation may still run: GPU 0 drains, b keeps waiting.
        #expect(try await store.gpus().first?.status == .draining)
        #expect(try await store.caseSummary("b")?.status == .pendingResource)
        let stop = try #require(try await store.claim(.remoteExecutor, kinds: .only(.stopAttempt), owner: "stopper", leaseSec: 30))
        #expect(stop.body.caseId == "a")
        let (freed, started) = try await store.finishDrain(caseId: "a", stepIndex: stop.body.stepIndex, attempt: stop.body.attempt, conductor: conductor)
        #expect(freed == [0])
        #expect(started.map(\.decision.state.caseId) == ["b"])
        #expect(try await store.caseSummary("b")?.gpuIds == [0])
        try await expectGPUInvariants(store)
    }

    @Test("cancelling the case at the head of the wait lets the next one use a free GPU", arguments: StoreBackendKind.allCases)
    func cancellingTheHeadOfTheWaitDispatchesTheNext(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = Conductor(workflows: ["single": try Self.workflow("single", gpus: 1), "double": try Self.workflow("double", gpus: 2)],
                                  uploadDir: "/up", downloadDir: "/down")
        let driver = Driver(store: store, conductor: conductor)
        try await store.reconcileGPUs(configured: [0, 1])
        try await driver.registerAndStart("holder", workflow: "single")
        try await driver.registerAndStart("big", workflow: "double")
        try await driver.registerAndStart("small", workflow: "single")
        for id in ["holder", "big", "small"] {
            try await driver.work(.fileTransfer, expecting: id)
            fixture.clock.advance(by: 1)
            try await driver.conductNext()
        }
        #expect(try await store.caseSummary("small")?.status == .pendingResource)

        _ = try await store.conduct(.cancel(reason: "operator"), caseId: "big", conductor: conductor)
        #expect(try await store.caseSummary("big")?.status == .cancelled)
        let small = try #require(try await store.caseSummary("small"))
        // The head of the wait left it: the case behind starts in the same transaction.
        #expect(small.status == .processing)
        #expect(small.gpuIds == [1])
        try await expectGPUInvariants(store)
    }

    @Test("dispatchPending starts waiting cases on GPUs added to the config at start-up", arguments: StoreBackendKind.allCases)
    func dispatchPendingAfterAddingAGPU(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        let driver = Driver(store: store, conductor: conductor)
        try await store.reconcileGPUs(configured: [0])
        for id in ["a", "b", "c"] {
            try await driver.registerAndStart(id, workflow: Fixtures.workflowName)
        }
        for id in ["a", "b", "c"] {
            try await driver.work(.fileTransfer, expecting: id)
            try await driver.conductNext()
        }
        #expect(try await store.cases(status: .pendingResource).count == 2)
        #expect(try await store.dispatchPending(conductor: conductor).isEmpty)

        try await store.reconcileGPUs(configured: [0, 1])
        let started = try await store.dispatchPending(conductor: conductor)
        #expect(started.map(\.decision.state.caseId) == ["b"])
        #expect(try await store.caseSummary("b")?.gpuIds == [1])
        #expect(try await store.caseSummary("c")?.status == .pendingResource)
        #expect(try await store.queueDepths()[.remoteExecutor] == 2)
        try await expectGPUInvariants(store)
    }

    @Test("reconcileGPUs frees reservations no live case holds, restores lost ones, adds and retires configured ids", arguments: StoreBackendKind.allCases)
    func reconcileGPUs(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        let driver = Driver(store: store, conductor: conductor)

        #expect(try await store.reconcileGPUs(configured: [0, 1, 2]) == [])
        #expect(try await store.gpus() == [0, 1, 2].map { GPUResource(gpuId: $0, status: .free, reservedBy: nil, reservedAt: nil) })
        for id in ["a", "b"] {
            try await driver.registerAndStart(id, workflow: Fixtures.workflowName)
        }
        for id in ["a", "b"] {
            try await driver.work(.fileTransfer, expecting: id)
            try await driver.conductNext()
        }
        #expect(try await store.caseSummary("a")?.gpuIds == [0])
        #expect(try await store.caseSummary("b")?.gpuIds == [1])
        // Reconciling a consistent state changes nothing.
        let consistent = try await store.gpus()
        #expect(try await store.reconcileGPUs(configured: [0, 1, 2]) == [])
        #expect(try await store.gpus() == consistent)

        // A crash left GPU 0 reserved by a case that has since COMPLETED.
        try await store.pool.write { db in
            try db.execute(sql: "UPDATE cases SET status = 'COMPLETED', gpu_ids = '' WHERE case_id = 'a'")
        }
        let commandOfA = try #require(try await store.claim(.remoteExecutor, owner: "x", leaseSec: 60))
        #expect(commandOfA.body.caseId == "a")
        try await store.complete(commandOfA, publishing: nil)
        #expect(try await store.reconcileGPUs(configured: [0, 1, 2]) == [0])
        #expect(try await store.gpus().first { $0.gpuId == 0 } == GPUResource(gpuId: 0, status: .free, reservedBy: nil, reservedAt: nil))
        #expect(try await store.gpus().first { $0.gpuId == 1 }?.reservedBy == "b")

        // The reservation of GPU 1 was lost (an edited database) while b still runs on it.
        try await store.pool.write { db in
            try db.execute(sql: "UPDATE gpu_resources SET status = 'free', reserved_by = NULL, reserved_at = NULL WHERE gpu_id = 1")
        }
        #expect(try await store.reconcileGPUs(configured: [0, 1, 2]) == [])
        let one = try #require(try await store.gpus().first { $0.gpuId == 1 })
        #expect(one.status == .reserved)
        #expect(one.reservedBy == "b")
        try await expectGPUInvariants(store)

        // The config changes: 0 and 2 are removed, 3 is added.
        #expect(try await store.reconcileGPUs(configured: [1, 3]) == [])
        #expect(try await store.gpus().map(\.gpuId) == [0, 1, 2, 3])
        #expect(try await store.gpus().map(\.status) == [.retired, .reserved, .retired, .free])
        // Retired GPUs are never handed out: c gets 3, d waits although 0 and 2 are idle.
        for id in ["c", "d"] {
            try await driver.registerAndStart(id, workflow: Fixtures.workflowName)
        }
        for id in ["c", "d"] {
            try await driver.work(.fileTransfer, expecting: id)
            try await driver.conductNext()
        }
        #expect(try await store.caseSummary("c")?.gpuIds == [3])
        #expect(try await store.caseSummary("d")?.status == .pendingResource)

        // GPU 3 is retired while c runs on it: c keeps it, and when c is done it stays retired.
        #expect(try await store.reconcileGPUs(configured: [1]) == [])
        let three = try #require(try await store.gpus().first { $0.gpuId == 3 })
        #expect(three.status == .retired)
        #expect(three.reservedBy == "c")
        try await driver.work(.remoteExecutor, expecting: "b")
        let afterB = try await driver.conductNext()
        #expect(afterB.map(\.decision.state.caseId) == ["b", "d"])
        #expect(try await store.caseSummary("d")?.gpuIds == [1])
        try await driver.work(.remoteExecutor, expecting: "c")
        try await driver.conductNext()
        #expect(try await store.gpus().first { $0.gpuId == 3 } == GPUResource(gpuId: 3, status: .retired, reservedBy: nil, reservedAt: nil))
        try await expectGPUInvariants(store)

        // Configured again: retired ids come back free.
        try await GPUReservationTests.drain(driver)
        #expect(try await store.reconcileGPUs(configured: [0, 1, 2, 3]) == [])
        #expect(try await store.gpus().map(\.status) == [.free, .free, .free, .free])
    }

    @Test("a GPU reserved by a case that failed is freed by the failure itself, and reconcile finds nothing to repair", arguments: StoreBackendKind.allCases)
    func failureReleasesTheGPU(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        let driver = Driver(store: store, conductor: conductor)
        try await store.reconcileGPUs(configured: [0])
        try await driver.registerAndStart("a", workflow: Fixtures.workflowName)
        try await driver.work(.fileTransfer, expecting: "a")
        try await driver.conductNext()
        #expect(try await store.gpus().first?.reservedBy == "a")
        let command = try #require(try await store.claim(.remoteExecutor, owner: "x", leaseSec: 60))
        try await store.complete(command, publishing: command.body.result(.executionFailed, reason: "ERROR: no beams", ended: true))
        try await driver.conductNext()
        #expect(try await store.caseSummary("a")?.status == .failed)
        #expect(try await store.gpus().first?.status == .free)
        #expect(try await store.reconcileGPUs(configured: [0]) == [])
    }
}
