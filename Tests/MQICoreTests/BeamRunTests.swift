import Testing
@testable import MQICore

/// `for_each: beam`: one GPU run per delivered beam, decided by the pure Conductor.
struct BeamRunTests {
    static func conductor(retries: Int = 0) throws -> Conductor {
        let yaml = """
            scanner: { local_logdata: ./data, workflow: w }
            hpc: { gpus: [0, 1, 2, 3] }
            conductor: { remote_paths: { upload_dir: /hpc/up, download_dir: /hpc/down } }
            workflows:
              w:
                - { name: upload, type: upload, progress: 10 }
                - { name: interpret, type: execute, gpu: false, progress: 20 }
                - { name: sim, type: execute, for_each: beam, gpus: 1, progress: 30, max_step_retries: \(retries) }
                - { name: download, type: download, progress: 90 }
            remote_commands:
              interpret: "interpret {case_id}"
              sim: "moqui --beam {beam_number} --gpu {gpu_id}"
            """
        return Conductor(config: try ConfigLoader.parse(yaml, file: "config.yaml", baseDirectory: "/srv"))
    }

    /// The case right after its interpreter step finished.
    static func interpreted(beams: [Int] = [1, 2, 3, 4]) -> CaseState {
        CaseState(caseId: "c", status: .processing, workflow: "w", stepIndex: 1, attempt: 1, progress: 20, beamNumbers: beams)
    }

    @Test func everyBeamStartsOnItsOwnGPUWhenEnoughAreFree() throws {
        let conductor = try Self.conductor()
        let decision = conductor.decide(Self.interpreted(), .stepSucceeded(stepIndex: 1, attempt: 1), gpus: .init(free: [0, 1, 2, 3]))
        #expect(decision.state.status == .processing)
        #expect(decision.state.beams.map(\.status) == [.running, .running, .running, .running])
        #expect(decision.state.beams.map(\.gpuIds) == [[0], [1], [2], [3]])
        #expect(decision.reserve == [0, 1, 2, 3])
        let commands = decision.commands
        #expect(commands.map(\.body.beam) == [1, 2, 3, 4])
        #expect(commands.allSatisfy { $0.kind == .executeCommand && $0.body.attempt == 1 && $0.body.stepIndex == 2 })
        #expect(commands[2].body.command == "moqui --beam '3' --gpu '2'")
    }

    @Test func beamsBeyondTheFreeGPUsWaitAndStartAsGPUsFreeUp() throws {
        let conductor = try Self.conductor()
        let started = conductor.decide(Self.interpreted(), .stepSucceeded(stepIndex: 1, attempt: 1), gpus: .init(free: [0, 1]))
        #expect(started.state.status == .processing)
        #expect(started.state.beams.map(\.status) == [.running, .running, .waiting, .waiting])
        // Beam 1 finishes: its GPU goes to beam 3 at once.
        let next = conductor.decide(started.state, .stepSucceeded(stepIndex: 2, attempt: 1, beam: 1), gpus: .init(free: []))
        #expect(next.state.beams.map(\.status) == [.succeeded, .running, .running, .waiting])
        #expect(next.state.beams[2].gpuIds == [0])
        #expect(next.reserve.isEmpty && next.release.isEmpty, "the GPU stays with the case")
        #expect(next.commands.map(\.body.beam) == [3])
        #expect(next.state.progress > 30, "progress is the mean of the beams")
    }

    @Test func anEarlierWaitingCaseKeepsItsPlace() throws {
        let conductor = try Self.conductor()
        let decision = conductor.decide(Self.interpreted(), .stepSucceeded(stepIndex: 1, attempt: 1),
                                        gpus: .init(free: [0, 1], othersWaiting: true))
        #expect(decision.state.status == .pendingResource)
        #expect(decision.commands.isEmpty)
        #expect(decision.state.beams.allSatisfy { $0.status == .waiting })
        let freed = conductor.decide(decision.state, .gpusFreed, gpus: .init(free: [3]))
        #expect(freed.state.status == .processing)
        #expect(freed.state.beams.map(\.status) == [.running, .waiting, .waiting, .waiting])
    }

    @Test func theCaseMovesOnOnlyWhenEveryBeamSucceeded() throws {
        let conductor = try Self.conductor()
        var state = conductor.decide(Self.interpreted(beams: [1, 2]), .stepSucceeded(stepIndex: 1, attempt: 1), gpus: .init(free: [0, 1])).state
        state = conductor.decide(state, .stepSucceeded(stepIndex: 2, attempt: 1, beam: 2), gpus: .init(free: [])).state
        #expect(state.stepIndex == 2 && state.gpuIds == [0])
        let last = conductor.decide(state, .stepSucceeded(stepIndex: 2, attempt: 1, beam: 1), gpus: .init(free: [1]))
        #expect(last.state.stepIndex == 3, "download")
        #expect(last.commands.map(\.kind) == [.downloadResults])
        #expect(last.release == [0])
        #expect(last.finishedBeams.map(\.status) == [.succeeded, .succeeded])
        #expect(last.state.beams.isEmpty)
    }

    @Test func aDuplicateOrStaleBeamResultIsIgnored() throws {
        let conductor = try Self.conductor()
        let state = conductor.decide(Self.interpreted(beams: [1, 2]), .stepSucceeded(stepIndex: 1, attempt: 1), gpus: .init(free: [0, 1])).state
        #expect(conductor.decide(state, .stepSucceeded(stepIndex: 2, attempt: 2, beam: 1), gpus: .init(free: [])).outcome == .ignored)
        #expect(conductor.decide(state, .stepSucceeded(stepIndex: 2, attempt: 1, beam: 7), gpus: .init(free: [])).outcome == .ignored)
        let once = conductor.decide(state, .stepSucceeded(stepIndex: 2, attempt: 1, beam: 1), gpus: .init(free: [])).state
        #expect(conductor.decide(once, .stepSucceeded(stepIndex: 2, attempt: 1, beam: 1), gpus: .init(free: [])).outcome == .ignored)
    }

    @Test func aRetryableBeamFailureRetriesThatBeamAloneOnItsGPU() throws {
        let conductor = try Self.conductor(retries: 1)
        let state = conductor.decide(Self.interpreted(beams: [1, 2]), .stepSucceeded(stepIndex: 1, attempt: 1), gpus: .init(free: [0, 1])).state
        let retried = conductor.decide(state, .stepFailed(stepIndex: 2, attempt: 1, reason: "CUDA busy", retryable: true, beam: 2),
                                       gpus: .init(free: []))
        #expect(retried.state.status == .processing)
        #expect(retried.state.beams.map(\.attempt) == [1, 2])
        #expect(retried.state.beams.map(\.gpuIds) == [[0], [1]])
        #expect(retried.commands.map(\.body.beam) == [2])
        #expect(retried.commands.first?.delaySec != nil)
        #expect(retried.reserve.isEmpty && retried.release.isEmpty && retried.drain.isEmpty)
        // Its second failure is final: the case fails and beam 1's run is stopped; both GPUs drain or free.
        let failed = conductor.decide(retried.state, .stepFailed(stepIndex: 2, attempt: 2, reason: "CUDA busy", retryable: true, beam: 2),
                                      gpus: .init(free: []))
        #expect(failed.state.status == .failed)
        #expect(failed.state.error?.contains("beam 2") == true)
        #expect(failed.commands.map(\.kind) == [.stopAttempt])
        #expect(failed.commands.first?.body.beam == 1)
        #expect(failed.drain == [0] && failed.release == [1])
        #expect(failed.state.beams.map(\.status) == [.cancelled, .failed])
    }

    @Test func aRetryRunsOnlyTheBeamsThatDidNotSucceed() throws {
        let conductor = try Self.conductor()
        var state = conductor.decide(Self.interpreted(beams: [1, 2, 3]), .stepSucceeded(stepIndex: 1, attempt: 1), gpus: .init(free: [0, 1, 2])).state
        state = conductor.decide(state, .stepSucceeded(stepIndex: 2, attempt: 1, beam: 1), gpus: .init(free: [])).state
        state = conductor.decide(state, .stepFailed(stepIndex: 2, attempt: 1, reason: "FATAL ERROR", beam: 3), gpus: .init(free: [])).state
        #expect(state.status == .failed)
        #expect(state.beams.map(\.status) == [.succeeded, .cancelled, .failed])
        let retried = conductor.decide(state, .retry, gpus: .init(free: [0, 1, 2, 3]))
        #expect(retried.state.status == .processing)
        #expect(retried.state.beams.map(\.status) == [.succeeded, .running, .running])
        #expect(retried.state.beams.map(\.attempt) == [1, 2, 2])
        #expect(retried.commands.map(\.body.beam) == [2, 3])
    }

    @Test func cancelStopsEveryRunningBeam() throws {
        let conductor = try Self.conductor()
        let state = conductor.decide(Self.interpreted(beams: [1, 2, 3]), .stepSucceeded(stepIndex: 1, attempt: 1), gpus: .init(free: [0, 1])).state
        let cancelled = conductor.decide(state, .cancel(reason: "operator"), gpus: .init(free: []))
        #expect(cancelled.state.status == .cancelled)
        #expect(cancelled.commands.map(\.kind) == [.stopAttempt, .stopAttempt])
        #expect(Set(cancelled.commands.compactMap(\.body.beam)) == [1, 2])
        #expect(cancelled.drain.sorted() == [0, 1] && cancelled.release.isEmpty)
        #expect(cancelled.state.beams.allSatisfy { $0.status == .cancelled })
    }

    @Test func beamNumberIsOnlyForForEachSteps() {
        let yaml = """
            scanner: { local_logdata: ./data, workflow: w }
            hpc: { gpus: [0] }
            conductor: { remote_paths: { upload_dir: /hpc/up, download_dir: /hpc/down } }
            workflows:
              w:
                - { name: sim, type: execute }
            remote_commands:
              sim: "moqui --beam {beam_number}"
            """
        #expect(throws: ConfigErrors.self) { try ConfigLoader.parse(yaml, file: "config.yaml", baseDirectory: "/srv") }
    }
}
