import Foundation
import Testing
@testable import MQICore

// MARK: - Fixture: the workflow from the issue's config, loaded through the real loader

enum ConductorFixture {
    static let base = "/srv/mqi"

    static let yaml = """
        scanner:
          local_logdata: ./data/local_logdata
          workflow: default_qa
        hpc:
          gpus: [0, 1]
        conductor:
          remote_paths: { upload_dir: ./hpc/upload, download_dir: ./hpc/download }
        workflows:
          default_qa:
            - { name: upload_case_files, type: upload,   progress: 10 }
            - { name: run_interpreter,   type: execute,  progress: 30 }
            - { name: run_moqui_sim,     type: execute,  progress: 70, timeout_sec: 3600 }
            - { name: download_results,  type: download, progress: 90 }
        remote_commands:
          run_interpreter: "python3 /opt/mqi/interpreter.py --case {case_id} --gpu {gpu_id}"
          run_moqui_sim:   "/opt/mqi/moquisim --case-dir {case_dir} --out {result_dir} --gpu {gpu_id}"
        """

    static func config() throws -> Config {
        try ConfigLoader.parse(yaml, file: "config.yaml", baseDirectory: base)
    }

    static func conductor() throws -> Conductor {
        Conductor(config: try config())
    }

    static func state(
        _ status: CaseStatus, step: Int?, attempt: Int, gpus: [Int] = [], progress: Int = 0, error: String? = nil
    ) -> CaseState {
        CaseState(caseId: "case-1", status: status, workflow: "default_qa", stepIndex: step, attempt: attempt,
                  gpuIds: gpus, progress: progress, error: error)
    }
}

// MARK: - Every (status, event) pair

/// The events of the table. "current"/"stale" are resolved against the case's step and attempt.
enum EventKind: String, Sendable, CaseIterable {
    case newCaseFound
    case succeededCurrent
    case succeededStale
    case failedCurrent
    case failedStale
    case gpusFreed
    case cancel
    case retry

    func event(for state: CaseState) -> ConductorEvent {
        let index = state.stepIndex ?? 0
        let attempt = max(state.attempt, 1)
        switch self {
        case .newCaseFound: return .newCaseFound
        case .succeededCurrent: return .stepSucceeded(stepIndex: index, attempt: attempt)
        case .succeededStale: return .stepSucceeded(stepIndex: index, attempt: attempt - 1)
        case .failedCurrent: return .stepFailed(stepIndex: index, attempt: attempt, reason: "exit 1")
        case .failedStale: return .stepFailed(stepIndex: index, attempt: attempt - 1, reason: "exit 1")
        case .gpusFreed: return .gpusFreed
        case .cancel: return .cancel(reason: "operator")
        case .retry: return .retry
        }
    }
}

struct TransitionRow: Sendable, CustomTestStringConvertible {
    var status: CaseStatus
    var event: EventKind
    var outcome: Decision.Outcome
    var newStatus: CaseStatus
    var commands: [MessageKind]
    /// (step index, attempt) after the decision; nil = not checked beyond "unchanged" for ignored rows.
    var position: (Int?, Int)?

    var testDescription: String { "\(status.rawValue) + \(event.rawValue)" }

    /// Representative case in each status. Cases that ran are at step 1 (run_interpreter), attempt 2,
    /// so that attempt 1 is a realistic stale attempt.
    static func state(_ status: CaseStatus) -> CaseState {
        switch status {
        case .new: ConductorFixture.state(.new, step: nil, attempt: 0)
        case .processing: ConductorFixture.state(.processing, step: 1, attempt: 2, gpus: [0], progress: 30)
        case .pendingResource: ConductorFixture.state(.pendingResource, step: 1, attempt: 2, progress: 30)
        case .completed: ConductorFixture.state(.completed, step: 3, attempt: 2, progress: 100)
        case .failed: ConductorFixture.state(.failed, step: 1, attempt: 2, progress: 30, error: "step failed")
        case .cancelled: ConductorFixture.state(.cancelled, step: 1, attempt: 2, progress: 30, error: "cancelled: x")
        }
    }
}

private func applied(_ s: CaseStatus, _ e: EventKind, _ n: CaseStatus, _ c: [MessageKind], at position: (Int?, Int)) -> TransitionRow {
    TransitionRow(status: s, event: e, outcome: .applied, newStatus: n, commands: c, position: position)
}

private func ignored(_ s: CaseStatus, _ e: EventKind) -> TransitionRow {
    TransitionRow(status: s, event: e, outcome: .ignored, newStatus: s, commands: [], position: nil)
}

/// The expected behaviour, written out row by row.
let transitionTable: [TransitionRow] = [
    // NEW (no step yet)
    applied(.new, .newCaseFound, .processing, [.uploadCase], at: (0, 1)),
    ignored(.new, .succeededCurrent),
    ignored(.new, .succeededStale),
    ignored(.new, .failedCurrent),
    ignored(.new, .failedStale),
    ignored(.new, .gpusFreed),
    applied(.new, .cancel, .cancelled, [], at: (nil, 0)),
    ignored(.new, .retry),

    // PROCESSING step 1 (run_interpreter) attempt 2 on GPU 0
    ignored(.processing, .newCaseFound),
    applied(.processing, .succeededCurrent, .processing, [.executeCommand], at: (2, 1)),
    ignored(.processing, .succeededStale),
    applied(.processing, .failedCurrent, .failed, [], at: (1, 2)),
    ignored(.processing, .failedStale),
    ignored(.processing, .gpusFreed),
    applied(.processing, .cancel, .cancelled, [.stopAttempt], at: (1, 2)),
    ignored(.processing, .retry),

    // PENDING_RESOURCE waiting to start step 1 attempt 2
    ignored(.pendingResource, .newCaseFound),
    ignored(.pendingResource, .succeededCurrent),
    ignored(.pendingResource, .succeededStale),
    ignored(.pendingResource, .failedCurrent),
    ignored(.pendingResource, .failedStale),
    applied(.pendingResource, .gpusFreed, .processing, [.executeCommand], at: (1, 2)),
    applied(.pendingResource, .cancel, .cancelled, [], at: (1, 2)),
    ignored(.pendingResource, .retry),

    // COMPLETED: nothing moves it
    ignored(.completed, .newCaseFound),
    ignored(.completed, .succeededCurrent),
    ignored(.completed, .succeededStale),
    ignored(.completed, .failedCurrent),
    ignored(.completed, .failedStale),
    ignored(.completed, .gpusFreed),
    ignored(.completed, .cancel),
    ignored(.completed, .retry),

    // FAILED: only retry, which re-runs the failed step with the next attempt
    ignored(.failed, .newCaseFound),
    ignored(.failed, .succeededCurrent),
    ignored(.failed, .succeededStale),
    ignored(.failed, .failedCurrent),
    ignored(.failed, .failedStale),
    ignored(.failed, .gpusFreed),
    ignored(.failed, .cancel),
    applied(.failed, .retry, .processing, [.executeCommand], at: (1, 3)),

    // CANCELLED: only retry
    ignored(.cancelled, .newCaseFound),
    ignored(.cancelled, .succeededCurrent),
    ignored(.cancelled, .succeededStale),
    ignored(.cancelled, .failedCurrent),
    ignored(.cancelled, .failedStale),
    ignored(.cancelled, .gpusFreed),
    ignored(.cancelled, .cancel),
    applied(.cancelled, .retry, .processing, [.executeCommand], at: (1, 3)),
]

@Suite("Conductor transition table")
struct ConductorTransitionTableTests {
    @Test("the table lists every (status, event) pair exactly once")
    func tableIsComplete() {
        let pairs = transitionTable.map { "\($0.status.rawValue)/\($0.event.rawValue)" }
        let all = CaseStatus.allCases.flatMap { s in EventKind.allCases.map { "\(s.rawValue)/\($0.rawValue)" } }
        #expect(pairs.count == 48)
        #expect(Set(pairs).count == pairs.count, "a pair is listed twice")
        #expect(Set(pairs) == Set(all))
    }

    @Test("decide", arguments: transitionTable)
    func transition(_ row: TransitionRow) throws {
        let conductor = try ConductorFixture.conductor()
        let before = TransitionRow.state(row.status)
        let decision = conductor.decide(before, row.event.event(for: before), gpus: GPUAvailability(free: [1]))

        #expect(decision.outcome == row.outcome, "\(decision.note)")
        #expect(decision.state.status == row.newStatus)
        #expect(decision.commands.map(\.kind) == row.commands)
        #expect(!decision.note.isEmpty)

        switch row.outcome {
        case .ignored:
            #expect(decision.state == before, "an ignored event must not change the case")
            #expect(decision.reserve.isEmpty)
            #expect(decision.release.isEmpty)
        case .applied:
            if let position = row.position {
                #expect(decision.state.stepIndex == position.0)
                #expect(decision.state.attempt == position.1)
            }
            // Every command carries the case's new step and attempt.
            for command in decision.commands {
                #expect(command.body.caseId == "case-1")
                #expect(command.body.stepIndex == decision.state.stepIndex)
                #expect(command.body.attempt == decision.state.attempt)
            }
            // GPU bookkeeping is consistent: final states hold nothing and return what was held.
            if decision.state.status.isFinal {
                #expect(decision.state.gpuIds.isEmpty)
                // ... or drain it, when the attempt that held it may still run.
                #expect((decision.release + decision.drain).sorted() == before.gpuIds)
                #expect(decision.reserve.isEmpty)
            }
        }
    }
}

// MARK: - GPUs, progress, retries, command bodies

@Suite("Conductor decisions")
struct ConductorTests {
    let conductor: Conductor
    init() throws { conductor = try ConductorFixture.conductor() }

    @Test("the workflow comes from the config")
    func workflowFromConfig() throws {
        let workflow = try #require(conductor.workflows["default_qa"])
        #expect(workflow.steps.map(\.name) == ["upload_case_files", "run_interpreter", "run_moqui_sim", "download_results"])
        #expect(workflow.steps.map(\.type) == [.upload, .execute, .execute, .download])
        #expect(workflow.steps.map(\.progress) == [10, 30, 70, 90])
        #expect(workflow.steps.map(\.gpuCount) == [0, 1, 1, 0])
        #expect(workflow.steps.map(\.timeoutSec) == [nil, nil, 3600, nil])
        #expect(conductor.uploadDir == "/srv/mqi/hpc/upload")
        #expect(conductor.downloadDir == "/srv/mqi/hpc/download")
    }

    @Test("a whole run: GPU reserved once, kept across execute steps, released before download; progress follows steps")
    func happyPath() throws {
        var state = ConductorFixture.state(.new, step: nil, attempt: 0)

        // new case → upload, no GPU
        var d = conductor.decide(state, .newCaseFound, gpus: .init(free: [0, 1]))
        #expect(d.outcome == .applied)
        #expect(d.state.status == .processing)
        #expect(d.state.stepIndex == 0 && d.state.attempt == 1)
        #expect(d.state.progress == 10)
        #expect(d.state.gpuIds.isEmpty)
        #expect(d.reserve.isEmpty && d.release.isEmpty)
        let upload = try #require(d.commands.first)
        #expect(d.commands.count == 1)
        #expect(upload.kind == .uploadCase)
        #expect(upload.queue == .fileTransfer)
        #expect(upload.body == MessageBody(caseId: "case-1", stepIndex: 0, attempt: 1, step: "upload_case_files", gpuIds: []))
        state = d.state

        // upload done → first execute step reserves the first free GPU
        d = conductor.decide(state, .stepSucceeded(stepIndex: 0, attempt: 1), gpus: .init(free: [1, 0]))
        #expect(d.state.status == .processing)
        #expect(d.state.stepIndex == 1 && d.state.attempt == 1)
        #expect(d.state.progress == 30)
        #expect(d.state.gpuIds == [1])
        #expect(d.reserve == [1])
        #expect(d.release.isEmpty)
        #expect(d.commands.map(\.kind) == [.executeCommand])
        #expect(d.commands.first?.queue == .remoteExecutor)
        #expect(d.commands.first?.body.gpuIds == [1])
        state = d.state

        // interpreter done → simulation keeps the same GPU, even with no free GPU and others waiting
        d = conductor.decide(state, .stepSucceeded(stepIndex: 1, attempt: 1), gpus: .init(free: [], othersWaiting: true))
        #expect(d.state.status == .processing)
        #expect(d.state.stepIndex == 2 && d.state.attempt == 1)
        #expect(d.state.progress == 70)
        #expect(d.state.gpuIds == [1])
        #expect(d.reserve.isEmpty)
        #expect(d.release.isEmpty)
        let sim = try #require(d.commands.first)
        #expect(sim.kind == .executeCommand)
        #expect(sim.body.gpuIds == [1])
        #expect(sim.body.timeoutSec == 3600)
        #expect(sim.body.command == "/opt/mqi/moquisim --case-dir '/srv/mqi/hpc/upload/case-1' --out '/srv/mqi/hpc/download/case-1' --gpu '1'")
        state = d.state

        // simulation done → download needs no GPU: it is released
        d = conductor.decide(state, .stepSucceeded(stepIndex: 2, attempt: 1), gpus: .init(free: [0]))
        #expect(d.state.status == .processing)
        #expect(d.state.stepIndex == 3)
        #expect(d.state.progress == 90)
        #expect(d.state.gpuIds.isEmpty)
        #expect(d.release == [1])
        #expect(d.reserve.isEmpty)
        #expect(d.commands.map(\.kind) == [.downloadResults])
        #expect(d.commands.first?.body.step == "download_results")
        state = d.state

        // download done → COMPLETED at 100, nothing more to publish
        d = conductor.decide(state, .stepSucceeded(stepIndex: 3, attempt: 1), gpus: .init(free: [0, 1]))
        #expect(d.outcome == .applied)
        #expect(d.state.status == .completed)
        #expect(d.state.progress == 100)
        #expect(d.state.error == nil)
        #expect(d.commands.isEmpty)
        #expect(d.reserve.isEmpty && d.release.isEmpty)
    }

    @Test("execute_command carries the rendered, shell-quoted command, gpu_ids, step index and attempt")
    func executeCommandBody() throws {
        let state = ConductorFixture.state(.processing, step: 0, attempt: 1)
        let d = conductor.decide(state, .stepSucceeded(stepIndex: 0, attempt: 1), gpus: .init(free: [0]))
        let command = try #require(d.commands.first)
        #expect(command.kind == .executeCommand)
        var expected = MessageBody(
            caseId: "case-1", stepIndex: 1, attempt: 1, step: "run_interpreter", gpuIds: [0],
            command: "python3 /opt/mqi/interpreter.py --case 'case-1' --gpu '0'", timeoutSec: nil)
        // The step's progress span: from its own progress to the next step's.
        expected.progressFrom = 30
        expected.progressTo = 70
        #expect(command.body == expected)
    }

    @Test("a hostile case id reaches the command as one quoted word")
    func hostileCaseIdIsQuoted() throws {
        let state = CaseState(caseId: "x'; rm -rf ~; '", status: .processing, workflow: "default_qa", stepIndex: 0, attempt: 1)
        let d = conductor.decide(state, .stepSucceeded(stepIndex: 0, attempt: 1), gpus: .init(free: [1]))
        let command = try #require(d.commands.first?.body.command)
        #expect(command == #"python3 /opt/mqi/interpreter.py --case 'x'\''; rm -rf ~; '\''' --gpu '1'"#)
    }

    @Test("the GPU is released when the case completes, fails or is cancelled")
    func releaseOnFinalStates() throws {
        // A workflow whose last step is an execute step, so the case still holds its GPU at the end.
        let sim = WorkflowStep(name: "sim", type: .execute, progress: 50, gpuCount: 1,
                               command: try CommandTemplate("sim --gpu {gpu_id}"))
        let conductor = Conductor(workflows: ["w": Workflow(name: "w", steps: [sim])], uploadDir: "/u", downloadDir: "/d")
        let running = CaseState(caseId: "c", status: .processing, workflow: "w", stepIndex: 0, attempt: 1, gpuIds: [3], progress: 50)

        let completed = conductor.decide(running, .stepSucceeded(stepIndex: 0, attempt: 1), gpus: .init(free: []))
        #expect(completed.state.status == .completed)
        #expect(completed.state.gpuIds.isEmpty)
        #expect(completed.release == [3])
        #expect(completed.state.progress == 100)

        let failed = conductor.decide(running, .stepFailed(stepIndex: 0, attempt: 1, reason: "Segmentation fault"), gpus: .init(free: []))
        #expect(failed.state.status == .failed)
        #expect(failed.state.gpuIds.isEmpty)
        #expect(failed.release == [3])
        let error = try #require(failed.state.error)
        #expect(error.contains("sim"))
        #expect(error.contains("Segmentation fault"))

        let cancelled = conductor.decide(running, .cancel(reason: "operator request"), gpus: .init(free: []))
        #expect(cancelled.state.status == .cancelled)
        #expect(cancelled.state.gpuIds.isEmpty)
        // The simulation may still run: its GPU drains until the stop is confirmed.
        #expect(cancelled.release.isEmpty && cancelled.drain == [3])
        #expect(cancelled.commands.map(\.kind) == [.stopAttempt])
        #expect(cancelled.state.error?.contains("operator request") == true)
    }

    @Test("no free GPU → PENDING_RESOURCE; gpusFreed with a free GPU starts the step")
    func pendingResource() throws {
        let uploaded = ConductorFixture.state(.processing, step: 0, attempt: 1, progress: 10)
        let wait = conductor.decide(uploaded, .stepSucceeded(stepIndex: 0, attempt: 1), gpus: .init(free: []))
        #expect(wait.outcome == .applied)
        #expect(wait.state.status == .pendingResource)
        #expect(wait.state.stepIndex == 1 && wait.state.attempt == 1)
        #expect(wait.state.gpuIds.isEmpty)
        #expect(wait.commands.isEmpty, "nothing may run before a GPU is reserved")
        #expect(wait.reserve.isEmpty)

        // Still nothing free: the event is ignored and nothing changes.
        let stillWaiting = conductor.decide(wait.state, .gpusFreed, gpus: .init(free: []))
        #expect(stillWaiting.outcome == .ignored)
        #expect(stillWaiting.state == wait.state)

        let go = conductor.decide(wait.state, .gpusFreed, gpus: .init(free: [1]))
        #expect(go.outcome == .applied)
        #expect(go.state.status == .processing)
        #expect(go.state.stepIndex == 1 && go.state.attempt == 1)
        #expect(go.state.gpuIds == [1])
        #expect(go.reserve == [1])
        #expect(go.state.progress == 30)
        let command = try #require(go.commands.first)
        #expect(go.commands.count == 1)
        #expect(command.body.command == "python3 /opt/mqi/interpreter.py --case 'case-1' --gpu '1'")
        #expect(command.body.attempt == 1)
    }

    @Test("othersWaiting makes a new request wait even when a GPU is free (first come, first served)")
    func fifo() {
        let uploaded = ConductorFixture.state(.processing, step: 0, attempt: 1, progress: 10)
        let d = conductor.decide(uploaded, .stepSucceeded(stepIndex: 0, attempt: 1), gpus: .init(free: [0], othersWaiting: true))
        #expect(d.state.status == .pendingResource)
        #expect(d.commands.isEmpty)
        #expect(d.reserve.isEmpty)

        let pending = ConductorFixture.state(.pendingResource, step: 1, attempt: 1, progress: 30)
        let behind = conductor.decide(pending, .gpusFreed, gpus: .init(free: [0], othersWaiting: true))
        #expect(behind.outcome == .ignored)
        #expect(behind.state == pending)

        let first = conductor.decide(pending, .gpusFreed, gpus: .init(free: [0], othersWaiting: false))
        #expect(first.state.status == .processing)
        #expect(first.reserve == [0])
    }

    @Test("retry of a FAILED case re-runs the failed step with attempt + 1; the old attempt's results are stale")
    func retryFailed() throws {
        let running = ConductorFixture.state(.processing, step: 2, attempt: 1, gpus: [0], progress: 70)
        let failed = conductor.decide(running, .stepFailed(stepIndex: 2, attempt: 1, reason: "FATAL ERROR"), gpus: .init(free: []))
        #expect(failed.state.status == .failed)
        #expect(failed.release == [0])

        let retried = conductor.decide(failed.state, .retry, gpus: .init(free: [1]))
        #expect(retried.outcome == .applied)
        #expect(retried.state.status == .processing)
        #expect(retried.state.stepIndex == 2)
        #expect(retried.state.attempt == 2)
        #expect(retried.state.error == nil)
        #expect(retried.state.gpuIds == [1])
        #expect(retried.reserve == [1])
        let command = try #require(retried.commands.first)
        #expect(command.kind == .executeCommand)
        #expect(command.body.step == "run_moqui_sim")
        #expect(command.body.stepIndex == 2)
        #expect(command.body.attempt == 2)

        // A late result of attempt 1 must not advance the case.
        let late = conductor.decide(retried.state, .stepSucceeded(stepIndex: 2, attempt: 1), gpus: .init(free: []))
        #expect(late.outcome == .ignored)
        #expect(late.state == retried.state)

        let done = conductor.decide(retried.state, .stepSucceeded(stepIndex: 2, attempt: 2), gpus: .init(free: []))
        #expect(done.outcome == .applied)
        #expect(done.state.stepIndex == 3)
        #expect(done.release == [1])
    }

    @Test("retry of a failed upload re-sends upload_case, attempt + 1, no GPU")
    func retryFailedUpload() throws {
        let failed = ConductorFixture.state(.failed, step: 0, attempt: 1, progress: 10, error: "rsync failed")
        let d = conductor.decide(failed, .retry, gpus: .init(free: [0]))
        #expect(d.state.status == .processing)
        #expect(d.commands.map(\.kind) == [.uploadCase])
        #expect(d.commands.first?.body.attempt == 2)
        #expect(d.reserve.isEmpty)
        #expect(d.state.gpuIds.isEmpty)
    }

    @Test("retry with no free GPU waits, keeping the new attempt number for when a GPU comes")
    func retryWaitsForGPU() throws {
        let failed = ConductorFixture.state(.failed, step: 1, attempt: 1, progress: 30, error: "boom")
        let wait = conductor.decide(failed, .retry, gpus: .init(free: []))
        #expect(wait.state.status == .pendingResource)
        #expect(wait.state.attempt == 2)
        #expect(wait.commands.isEmpty)
        let go = conductor.decide(wait.state, .gpusFreed, gpus: .init(free: [0]))
        #expect(go.state.status == .processing)
        #expect(go.commands.first?.body.attempt == 2)
    }

    @Test("retry of a case cancelled before it started begins at step 0, attempt 1")
    func retryCancelledNew() {
        let new = ConductorFixture.state(.new, step: nil, attempt: 0)
        let cancelled = conductor.decide(new, .cancel(reason: "x"), gpus: .init(free: []))
        #expect(cancelled.state.status == .cancelled)
        let retried = conductor.decide(cancelled.state, .retry, gpus: .init(free: []))
        #expect(retried.state.status == .processing)
        #expect(retried.state.stepIndex == 0 && retried.state.attempt == 1)
        #expect(retried.commands.map(\.kind) == [.uploadCase])
    }

    @Test("progress equals the running step's progress and 100 at COMPLETED", arguments: [0, 1, 2, 3])
    func progressPerStep(step: Int) {
        let previous = step == 0 ? nil : step - 1
        let progressBefore = [0, 10, 30, 70][step]
        let state = CaseState(caseId: "case-1", status: previous == nil ? .new : .processing, workflow: "default_qa",
                              stepIndex: previous, attempt: previous == nil ? 0 : 1,
                              gpuIds: (previous == 1 || previous == 2) ? [0] : [], progress: progressBefore)
        let event: ConductorEvent = previous.map { .stepSucceeded(stepIndex: $0, attempt: 1) } ?? .newCaseFound
        let d = conductor.decide(state, event, gpus: .init(free: [0, 1]))
        #expect(d.state.status == .processing)
        #expect(d.state.stepIndex == step)
        #expect(d.state.progress == [10, 30, 70, 90][step])
    }

    @Test("a case whose workflow is not in the config fails and releases its GPUs")
    func missingWorkflow() {
        let state = CaseState(caseId: "c", status: .processing, workflow: "gone", stepIndex: 1, attempt: 1, gpuIds: [0])
        let d = conductor.decide(state, .stepSucceeded(stepIndex: 1, attempt: 1), gpus: .init(free: []))
        #expect(d.state.status == .failed)
        #expect(d.release == [0])
        #expect(d.state.gpuIds.isEmpty)
        #expect(d.state.error?.contains("gone") == true)
    }

    @Test("queue messages map to Conductor events carrying step and attempt")
    func eventsFromMessages() {
        let body = MessageBody(caseId: "c", stepIndex: 2, attempt: 3, reason: "disk full")
        #expect(ConductorEvent(.newCaseFound, body) == .newCaseFound)
        for kind in [MessageKind.executionSucceeded, .caseUploadCompleted, .resultsDownloadCompleted] {
            #expect(ConductorEvent(kind, body) == .stepSucceeded(stepIndex: 2, attempt: 3))
        }
        // A transfer failure says its work ended; an execution failure only when the executor saw
        // the processes end (a dead letter says nothing about them).
        #expect(ConductorEvent(.fileTransferFailed, body) == .stepFailed(stepIndex: 2, attempt: 3, reason: "disk full"))
        #expect(ConductorEvent(.executionFailed, body) == .stepFailed(stepIndex: 2, attempt: 3, reason: "disk full", ended: false))
        var ended = body
        ended.ended = true
        #expect(ConductorEvent(.executionFailed, ended) == .stepFailed(stepIndex: 2, attempt: 3, reason: "disk full"))
        for kind in [MessageKind.executeCommand, .uploadCase, .downloadResults, .stopAttempt, .attemptStopped] {
            #expect(ConductorEvent(kind, body) == nil)
        }
        // A worker's result echoes the command's step and attempt.
        let result = MessageBody(caseId: "c", stepIndex: 1, attempt: 2, step: "s", gpuIds: [0], command: "x").result(.executionFailed, reason: "r")
        #expect(result.body == MessageBody(caseId: "c", stepIndex: 1, attempt: 2, step: "s", reason: "r"))
        #expect(result.queue == .conductor)
    }
}

@Suite("Conductor robustness")
struct ConductorRobustnessTests {
    // Bug: Conductor.start(_:stepIndex:...) indexes `workflow.steps[stepIndex]` without a bounds check.
    // A case persisted at step 3 whose workflow was shortened in config.yaml before a restart traps the
    // daemon on retry (or on gpusFreed for a PENDING_RESOURCE case) instead of failing that one case.
    @Test("a step index beyond the workflow fails the case instead of trapping")
    func stepIndexOutOfRange() {
        let step = WorkflowStep(name: "up", type: .upload, progress: 10, gpuCount: 0)
        let conductor = Conductor(workflows: ["w": Workflow(name: "w", steps: [step])], uploadDir: "/u", downloadDir: "/d")
        let failed = CaseState(caseId: "c", status: .failed, workflow: "w", stepIndex: 3, attempt: 1, gpuIds: [0])
        let decision = conductor.decide(failed, .retry, gpus: GPUAvailability(free: [0]))
        #expect(decision.outcome == .applied)
        #expect(decision.state.status == .failed)
        #expect(decision.state.error?.contains("has no step #3") == true)
        #expect(decision.release == [0] && decision.commands.isEmpty)
    }
}
