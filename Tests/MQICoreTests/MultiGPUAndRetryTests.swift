import Testing
@testable import MQICore

struct MultiGPUAndRetryTests {
    static func conductor(min: Int, max: Int, retries: Int = 0) -> Conductor {
        let steps = [
            WorkflowStep(name: "upload", type: .upload, progress: 10, gpuCount: 0),
            WorkflowStep(name: "sim", type: .execute, progress: 50, gpuCount: max, gpuMin: min,
                         command: try! CommandTemplate("sim --gpus {gpu_ids} --count {gpu_count}"), maxStepRetries: retries),
            WorkflowStep(name: "download", type: .download, progress: 90, gpuCount: 0),
        ]
        return Conductor(workflows: ["w": Workflow(name: "w", steps: steps)], uploadDir: "/u", downloadDir: "/d",
                         retry: RetryPolicy(maxAttempts: 3, initialDelaySec: 2, maxDelaySec: 60, multiplier: 2))
    }

    static func atUpload(_ id: String = "c") -> CaseState {
        CaseState(caseId: id, status: .processing, workflow: "w", stepIndex: 0, attempt: 1, progress: 10)
    }

    @Test func allOrNothingWaitsUntilEnoughGPUsAreFree() {
        let conductor = Self.conductor(min: 2, max: 2)
        let waiting = conductor.decide(Self.atUpload(), .stepSucceeded(stepIndex: 0, attempt: 1), gpus: GPUAvailability(free: [3]))
        #expect(waiting.state.status == .pendingResource)
        #expect(waiting.reserve.isEmpty && waiting.commands.isEmpty)
        let started = conductor.decide(waiting.state, .gpusFreed, gpus: GPUAvailability(free: [1, 3]))
        #expect(started.state.status == .processing)
        #expect(started.state.gpuIds == [1, 3] && started.reserve == [1, 3])
        #expect(started.commands.first?.body.command == "sim --gpus '1,3' --count '2'")
    }

    @Test(arguments: [([0], [0]), ([0, 1], [0, 1]), ([0, 1, 2, 3], [0, 1, 2]), ([], nil)] as [([Int], [Int]?)])
    func minMaxTakesWhatIsFreeUpToMax(free: [Int], expected: [Int]?) {
        let conductor = Self.conductor(min: 1, max: 3)
        let decision = conductor.decide(Self.atUpload(), .stepSucceeded(stepIndex: 0, attempt: 1), gpus: GPUAvailability(free: free))
        if let expected {
            #expect(decision.state.status == .processing)
            #expect(decision.state.gpuIds == expected)
        } else {
            #expect(decision.state.status == .pendingResource)
        }
    }

    @Test func retryableFailureRunsANewAttemptAfterBackoffUpToTheLimit() throws {
        let conductor = Self.conductor(min: 1, max: 1, retries: 2)
        var state = CaseState(caseId: "c", status: .processing, workflow: "w", stepIndex: 1, attempt: 1, gpuIds: [0], progress: 50)
        for attempt in 1...2 {
            let decision = conductor.decide(state, .stepFailed(stepIndex: 1, attempt: attempt, reason: "No free GPU remains", retryable: true),
                                            gpus: GPUAvailability(free: []))
            #expect(decision.state.status == .processing)
            #expect(decision.state.attempt == attempt + 1)
            #expect(decision.state.gpuIds == [0], "keeps its GPU across the retry")
            let command = try #require(decision.commands.first)
            #expect(command.kind == .executeCommand && command.body.attempt == attempt + 1)
            #expect(command.delaySec == conductor.retry.ceiling(attempt: attempt))
            state = decision.state
        }
        let last = conductor.decide(state, .stepFailed(stepIndex: 1, attempt: 3, reason: "No free GPU remains", retryable: true),
                                    gpus: GPUAvailability(free: []))
        #expect(last.state.status == .failed)
        #expect(last.state.failureClass == .retryable)
        #expect(last.state.error?.contains("gave up after 3 attempt(s)") == true)
        #expect(last.release == [0])
    }

    @Test func permanentFailureIsNotRetried() {
        let conductor = Self.conductor(min: 1, max: 1, retries: 5)
        let state = CaseState(caseId: "c", status: .processing, workflow: "w", stepIndex: 1, attempt: 1, gpuIds: [0], progress: 50)
        let decision = conductor.decide(state, .stepFailed(stepIndex: 1, attempt: 1, reason: "FATAL ERROR: bad plan"), gpus: GPUAvailability(free: [1]))
        #expect(decision.state.status == .failed)
        #expect(decision.state.failureClass == .permanent)
        #expect(decision.state.error?.contains("(permanent)") == true)
    }

    @Test func executeCommandCarriesRulesProgressSpanAndRenderedInputFiles() throws {
        var conductor = Self.conductor(min: 1, max: 1)
        conductor.workflows["w"]?.steps[1].rules = OutputRules(progressPattern: "(?<done>\\d+)/(?<total>\\d+)")
        conductor.workflows["w"]?.steps[1].inputFiles = [InputFileTemplate(
            path: try CommandTemplate("{case_dir}/moqui_tps.in"),
            content: try CommandTemplate("GPUID {gpu_id}\nBeamNumbers {beam_numbers}\nPatient {patient_id}\n"), source: "t")]
        var state = Self.atUpload("it's")
        state.patientId = "P 1"
        state.beamNumbers = [1, 3]
        let decision = conductor.decide(state, .stepSucceeded(stepIndex: 0, attempt: 1), gpus: GPUAvailability(free: [2]))
        let body = try #require(decision.commands.first?.body)
        #expect(body.progressFrom == 50 && body.progressTo == 90)
        #expect(body.rules?.progressPattern == "(?<done>\\d+)/(?<total>\\d+)")
        #expect(body.inputFiles == [RenderedFile(path: "/u/it's/moqui_tps.in", content: "GPUID 2\nBeamNumbers 1,3\nPatient P 1\n")])
    }
}
