import Testing
@testable import MQICore

/// Leaving an execute attempt whose processes may still run stops it durably, and its GPUs drain
/// instead of being handed out at once.
struct AttemptStopTests {
    /// Case at run_interpreter (step 1) attempt 2 on GPU 0.
    static let running = ConductorFixture.state(.processing, step: 1, attempt: 2, gpus: [0], progress: 30)

    static func stop(_ decision: Decision) -> OutgoingMessage? {
        decision.commands.first { $0.kind == .stopAttempt }
    }

    @Test func cancelOfARunningExecuteStepStopsItAndDrainsItsGPU() throws {
        let conductor = try ConductorFixture.conductor()
        let decision = conductor.decide(Self.running, .cancel(reason: "operator"), gpus: .init(free: [1]))
        #expect(decision.state.status == .cancelled)
        #expect(decision.release.isEmpty)
        #expect(decision.drain == [0])
        let stop = try #require(Self.stop(decision))
        #expect(stop.queue == .remoteExecutor)
        #expect(stop.body.caseId == "case-1" && stop.body.stepIndex == 1 && stop.body.attempt == 2)
        #expect(stop.body.step == "run_interpreter" && stop.body.gpuIds == [0])
    }

    @Test func cancelAtAnUploadStopsNothing() throws {
        let conductor = try ConductorFixture.conductor()
        let atUpload = ConductorFixture.state(.processing, step: 0, attempt: 1)
        let decision = conductor.decide(atUpload, .cancel(reason: "operator"), gpus: .init(free: [0]))
        #expect(Self.stop(decision) == nil)
        #expect(decision.drain.isEmpty)
    }

    @Test func aFailureThatSaysNothingAboutTheProcessesStopsTheAttempt() throws {
        let conductor = try ConductorFixture.conductor()
        let decision = conductor.decide(Self.running, .stepFailed(stepIndex: 1, attempt: 2, reason: "dead letter", ended: false),
                                        gpus: .init(free: []))
        #expect(decision.state.status == .failed)
        #expect(decision.drain == [0] && decision.release.isEmpty)
        #expect(Self.stop(decision)?.body.attempt == 2)
    }

    @Test func aFailureTheExecutorSawEndReleasesAtOnce() throws {
        let conductor = try ConductorFixture.conductor()
        let decision = conductor.decide(Self.running, .stepFailed(stepIndex: 1, attempt: 2, reason: "exit status 1"), gpus: .init(free: []))
        #expect(decision.state.status == .failed)
        #expect(decision.release == [0] && decision.drain.isEmpty)
        #expect(Self.stop(decision) == nil)
    }

    @Test func aRetryAfterAnUnconfirmedFailureDoesNotReuseTheDrainingGPU() throws {
        var config = try ConductorFixture.config()
        config.workflows["default_qa"]!.steps[1].maxStepRetries = 2
        let conductor = Conductor(config: config)
        let waiting = conductor.decide(Self.running, .stepFailed(stepIndex: 1, attempt: 2, reason: "lost", retryable: true, ended: false),
                                       gpus: .init(free: []))
        #expect(waiting.state.status == .pendingResource)
        #expect(waiting.state.attempt == 3)
        #expect(waiting.drain == [0])
        #expect(waiting.commands.map(\.kind) == [.stopAttempt])
        let elsewhere = conductor.decide(Self.running, .stepFailed(stepIndex: 1, attempt: 2, reason: "lost", retryable: true, ended: false),
                                         gpus: .init(free: [1]))
        #expect(elsewhere.state.status == .processing && elsewhere.state.gpuIds == [1])
        #expect(elsewhere.reserve == [1] && elsewhere.drain == [0])
        #expect(elsewhere.commands.map(\.kind) == [.stopAttempt, .executeCommand])
    }
}
