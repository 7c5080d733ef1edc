/// Something that happened to a case, as the Conductor sees it.
public enum ConductorEvent: Sendable, Equatable {
    /// The scanner registered the case.
    case newCaseFound
    /// A worker finished step `stepIndex`, attempt `attempt` (of beam `beam` in a `for_each: beam` step).
    case stepSucceeded(stepIndex: Int, attempt: Int, beam: Int? = nil)
    /// A worker failed step `stepIndex`, attempt `attempt`; `retryable` when the failure matched
    /// the step's `retryable_patterns`. `ended`: the executor saw the attempt's processes end; when
    /// false (a dead-lettered command, a transport that gave up) the attempt may still run.
    case stepFailed(stepIndex: Int, attempt: Int, reason: String, retryable: Bool = false, ended: Bool = true, beam: Int? = nil)
    /// GPUs were released: a case waiting for them may start.
    case gpusFreed
    /// An operator cancelled the case.
    case cancel(reason: String)
    /// An operator asked to run a failed or cancelled case again from the step where it stopped.
    case retry

    /// The event a queue message stands for.
    public init?(_ kind: MessageKind, _ body: MessageBody) {
        switch kind {
        case .newCaseFound:
            self = .newCaseFound
        case .executionSucceeded, .caseUploadCompleted, .resultsDownloadCompleted:
            self = .stepSucceeded(stepIndex: body.stepIndex ?? -1, attempt: body.attempt ?? -1, beam: body.beam)
        case .executionFailed, .fileTransferFailed:
            self = .stepFailed(stepIndex: body.stepIndex ?? -1, attempt: body.attempt ?? -1, reason: body.reason ?? "no reason given",
                               retryable: body.retryable ?? false, ended: kind == .fileTransferFailed || body.ended == true, beam: body.beam)
        case .executeCommand, .uploadCase, .downloadResults, .stopAttempt, .attemptStopped:
            return nil
        }
    }

    /// A short name for the case history.
    public var name: String {
        switch self {
        case .newCaseFound: "new_case_found"
        case .stepSucceeded: "step_succeeded"
        case .stepFailed: "step_failed"
        case .gpusFreed: "gpus_freed"
        case .cancel: "cancel"
        case .retry: "retry"
        }
    }
}

/// What the GPU pool looks like to one decision.
public struct GPUAvailability: Sendable, Equatable {
    /// Free GPU ids, in the order they should be handed out.
    public var free: [Int]
    /// Another case is already waiting for GPUs ahead of this one (first come, first served).
    /// Only cases that can start once GPUs are released count (see `Conductor.othersWaiting`).
    public var othersWaiting: Bool
    /// How many configured GPUs are usable at all right now (not retired, health ok: free,
    /// reserved or draining); nil when unknown (every request is taken as servable).
    public var usable: Int?

    public init(free: [Int], othersWaiting: Bool = false, usable: Int? = nil) {
        self.free = free
        self.othersWaiting = othersWaiting
        self.usable = usable
    }
}

/// The Conductor's answer to one event: the case's new state, the commands to publish and the
/// GPUs to reserve and release. The caller persists all of it in one transaction.
public struct Decision: Sendable, Equatable {
    public enum Outcome: Sendable, Equatable {
        case applied
        /// Nothing changes (a stale or duplicate event, or an event that means nothing in this status).
        case ignored
    }

    public var outcome: Outcome
    public var state: CaseState
    public var commands: [OutgoingMessage]
    public var reserve: [Int]
    public var release: [Int]
    /// GPUs whose holder may still run: they are not handed out until the `stop_attempt` among
    /// `commands` confirms that the attempt's processes are gone.
    public var drain: [Int]
    /// The final beam runs of the `for_each: beam` step the case just left (kept on record).
    public var finishedBeams: [BeamRun] = []
    /// One line for the case's history and the log.
    public var note: String

    public init(outcome: Outcome, state: CaseState, commands: [OutgoingMessage] = [], reserve: [Int] = [], release: [Int] = [],
                drain: [Int] = [], note: String) {
        self.outcome = outcome
        self.state = state
        self.commands = commands
        self.reserve = reserve
        self.release = release
        self.drain = drain
        self.note = note
    }

    /// Turns the release of the GPUs a stopped attempt held into draining, and publishes its stop.
    mutating func stopping(_ stop: AttemptStop?) {
        guard let stop else { return }
        commands.insert(stop.command, at: 0)
        drain += stop.gpuIds
        release.removeAll { stop.gpuIds.contains($0) }
    }
}

/// An attempt the Conductor leaves while its processes may still run: a `stop_attempt` for it,
/// and the GPUs it held, which drain until the stop is confirmed.
struct AttemptStop: Sendable, Equatable {
    var command: OutgoingMessage
    var gpuIds: [Int]
}

/// The workflow state machine: pure, with no I/O. `decide` maps (case, event, GPUs) to a Decision.
public struct Conductor: Sendable {
    public var workflows: [String: Workflow]
    public var uploadDir: String
    public var downloadDir: String
    /// Backoff before a retryable step failure runs again (its ceiling, without jitter).
    public var retry: RetryPolicy
    /// `hpc.executor: slurm`: Slurm places execute steps on GPUs, so no GPU id is reserved here;
    /// a step's command sees the device ordinals of its job (0..N-1).
    public var schedulerPlacesGPUs = false
    /// `conductor.results_dir`: where `type: local` steps run (`{results_dir}` = its `<case_id>`).
    public var resultsDir = ""

    public init(workflows: [String: Workflow], uploadDir: String, downloadDir: String, retry: RetryPolicy = RetryPolicy()) {
        self.workflows = workflows
        self.uploadDir = uploadDir
        self.downloadDir = downloadDir
        self.retry = retry
    }

    public init(config: Config) {
        self.init(workflows: config.workflows, uploadDir: config.conductor.uploadDir, downloadDir: config.conductor.downloadDir,
                  retry: config.retry)
        schedulerPlacesGPUs = config.hpc.executor == .slurm
        resultsDir = config.conductor.resultsDir
    }

    public func decide(_ state: CaseState, _ event: ConductorEvent, gpus: GPUAvailability) -> Decision {
        switch (state.status, event) {
        case (.new, .newCaseFound):
            return start(state, stepIndex: 0, attempt: 1, gpus: gpus, note: "case registered")

        case (.processing, .stepSucceeded(let index, let attempt, let beam?)):
            return beamSucceeded(state, stepIndex: index, attempt: attempt, beam: beam, gpus: gpus)

        case (.processing, .stepFailed(let index, let attempt, let reason, let retryable, let ended, let beam?)):
            return beamFailed(state, stepIndex: index, attempt: attempt, beam: beam, reason: reason, retryable: retryable, ended: ended, gpus: gpus)

        case (.processing, .gpusFreed) where state.beams.contains(where: { $0.status == .waiting }),
             (.pendingResource, .gpusFreed) where state.beams.contains(where: { $0.status == .waiting }):
            let decision = dispatchBeams(state, available: gpus.free, othersWaiting: false, note: "GPU available")
            return decision.reserve.isEmpty ? ignored(state, event, "still waiting for GPUs") : decision

        case (.processing, .stepSucceeded(let index, let attempt, nil)):
            guard isCurrent(state, index, attempt) else { return stale(state, event) }
            let next = index + 1
            guard let workflow = workflows[state.workflow] else { return missingWorkflow(state) }
            if next >= workflow.steps.count {
                var done = state
                done.status = .completed
                done.progress = 100
                done.gpuIds = []
                done.error = nil
                return Decision(outcome: .applied, state: done, release: state.gpuIds,
                                note: "step \(stepName(state, index)) succeeded; case completed")
            }
            return start(state, stepIndex: next, attempt: 1, gpus: gpus, note: "step \(stepName(state, index)) succeeded")

        case (.processing, .stepFailed(let index, let attempt, let reason, let retryable, let ended, nil)):
            guard isCurrent(state, index, attempt) else { return stale(state, event) }
            let step = workflows[state.workflow].flatMap { $0.steps.indices.contains(index) ? $0.steps[index] : nil }
            let retriesLeft = (step?.maxStepRetries ?? 0) - (attempt - 1)
            let stop = ended ? nil : attemptStop(state)
            if retryable, retriesLeft > 0 {
                let delay = retry.ceiling(attempt: attempt)
                // GPUs of an attempt that may still run drain; the next attempt takes other ones (or waits).
                var from = state
                if let stop { from.gpuIds.removeAll { stop.gpuIds.contains($0) } }
                var decision = start(from, stepIndex: index, attempt: attempt + 1, gpus: gpus,
                                     note: "step \(stepName(state, index)) (attempt \(attempt)) failed with a retryable error: \(reason); retrying in \(Int(delay.rounded())) s")
                decision.commands = decision.commands.map { var command = $0; command.delaySec = delay; return command }
                decision.stopping(stop)
                return decision
            }
            var failed = state
            failed.status = .failed
            failed.gpuIds = []
            failed.failureClass = retryable ? .retryable : .permanent
            let exhausted = retryable ? "retryable, gave up after \(attempt) attempt(s)" : "permanent"
            failed.error = "step \(stepName(state, index)) (attempt \(attempt)) failed (\(exhausted)): \(reason)"
            var decision = Decision(outcome: .applied, state: failed, release: state.gpuIds, note: failed.error!)
            decision.stopping(stop)
            return decision

        case (.pendingResource, .gpusFreed):
            guard let index = state.stepIndex else { return ignored(state, event, "no step is waiting") }
            let decision = start(state, stepIndex: index, attempt: state.attempt, gpus: gpus, note: "GPU available")
            return decision.state.status == .pendingResource
                ? ignored(state, event, "still waiting for GPUs") : decision

        case (.new, .cancel(let reason)), (.processing, .cancel(let reason)), (.pendingResource, .cancel(let reason)):
            var cancelled = state
            cancelled.status = .cancelled
            cancelled.gpuIds = []
            cancelled.error = "cancelled: \(reason)"
            var decision = Decision(outcome: .applied, state: cancelled, release: state.gpuIds, note: cancelled.error!)
            if !state.beams.isEmpty {
                // Every beam run that may be running is stopped; those waiting never start.
                decision.state.beams = state.beams.map { run in
                    var run = run
                    if run.status == .running || run.status == .waiting {
                        if run.status == .running { decision.stopping(attemptStop(state, beam: run)) }
                        run.status = .cancelled
                        run.gpuIds = []
                        run.error = cancelled.error
                    }
                    return run
                }
            } else if state.status == .processing {
                // An execute attempt may be running (or about to start): stop it, durably.
                decision.stopping(attemptStop(state))
            }
            return decision

        case (.failed, .retry), (.cancelled, .retry):
            var retried = state
            retried.error = nil
            retried.failureClass = nil
            guard let index = state.stepIndex else {
                return start(retried, stepIndex: 0, attempt: 1, gpus: gpus, note: "retry requested")
            }
            return start(retried, stepIndex: index, attempt: state.attempt + 1, gpus: gpus, note: "retry requested")

        case (_, .stepSucceeded), (_, .stepFailed):
            return stale(state, event)
        case (_, .newCaseFound):
            return ignored(state, event, "duplicate new_case_found; case is already \(state.status.rawValue)")
        case (_, .gpusFreed):
            return ignored(state, event, "not waiting for GPUs")
        case (_, .cancel):
            return ignored(state, event, "cannot cancel a \(state.status.rawValue) case")
        case (_, .retry):
            return ignored(state, event, "only FAILED or CANCELLED cases can be retried; case is \(state.status.rawValue)")
        }
    }

    /// The fewest GPUs the case's current step can start with (0 when it needs none or has no step).
    public func gpuMinimum(_ state: CaseState) -> Int {
        guard let index = state.stepIndex, let steps = workflows[state.workflow]?.steps, steps.indices.contains(index) else { return 0 }
        return steps[index].gpuCount == 0 ? 0 : steps[index].gpuMin
    }

    /// Whether a case waiting for GPUs could start once others release theirs: its step needs no
    /// more GPUs than are usable at all now. One that cannot waits for hardware, not for its turn.
    public func canBeServed(_ state: CaseState, usable: Int?) -> Bool {
        guard let usable else { return true }
        return gpuMinimum(state) <= usable
    }

    /// Whether any of `waiting` (cases waiting for GPUs, other than the one deciding) holds up
    /// the line: cases that cannot be served by the usable GPUs do not (they would block everyone
    /// behind them until the hardware is back).
    public func othersWaiting(_ waiting: [CaseState], usable: Int?) -> Bool {
        waiting.contains { canBeServed($0, usable: usable) }
    }

    /// Starts (or waits for GPUs for) step `stepIndex` attempt `attempt`.
    func start(_ state: CaseState, stepIndex: Int, attempt: Int, gpus: GPUAvailability, note: String) -> Decision {
        guard let workflow = workflows[state.workflow] else { return missingWorkflow(state) }
        guard workflow.steps.indices.contains(stepIndex) else {
            var failed = state
            failed.status = .failed
            failed.gpuIds = []
            failed.error = "workflow '\(state.workflow)' has no step #\(stepIndex) (\(workflow.steps.count) step(s)); was the config changed?"
            return Decision(outcome: .applied, state: failed, release: state.gpuIds, note: failed.error!)
        }
        let step = workflow.steps[stepIndex]
        if step.forEachBeam { return startBeams(state, stepIndex: stepIndex, attempt: attempt, gpus: gpus, note: note) }
        var next = state
        next.stepIndex = stepIndex
        next.attempt = attempt
        next.status = .processing
        next.progress = max(state.progress, step.progress)
        next.beams = []
        var reserve: [Int] = []
        var release: [Int] = []

        if step.gpuCount == 0 || schedulerPlacesGPUs {
            release = state.gpuIds
            next.gpuIds = []
        } else if state.gpuIds.count >= step.gpuMin {
            // Keep what the case holds (up to the step's maximum).
            next.gpuIds = Array(state.gpuIds.prefix(step.gpuCount))
            release = state.gpuIds.filter { !next.gpuIds.contains($0) }
        } else {
            // Held GPUs count towards the request: the case takes what it has plus free ones,
            // at least gpuMin and at most gpuCount, or waits in line holding none.
            let available = state.gpuIds + gpus.free.filter { !state.gpuIds.contains($0) }
            guard !gpus.othersWaiting, available.count >= step.gpuMin else {
                next.status = .pendingResource
                next.gpuIds = []
                let wanted = step.gpuMin == step.gpuCount ? "\(step.gpuCount)" : "\(step.gpuMin)–\(step.gpuCount)"
                let why = gpus.usable.map { $0 < step.gpuMin ? " but only \($0) configured GPU(s) are healthy" : "" } ?? ""
                return Decision(outcome: .applied, state: next, release: state.gpuIds,
                                note: "\(note); step \(step.name) waits for \(wanted) GPU(s)\(why)")
            }
            next.gpuIds = Array(available.prefix(step.gpuCount))
            reserve = next.gpuIds.filter { !state.gpuIds.contains($0) }
            release = state.gpuIds.filter { !next.gpuIds.contains($0) }
        }

        let nextProgress = stepIndex + 1 < workflow.steps.count ? workflow.steps[stepIndex + 1].progress : 100
        let command = self.command(for: step, index: stepIndex, attempt: attempt, state: next, progressTo: max(next.progress, nextProgress))
        let gpuNote = next.gpuIds.isEmpty ? "" : " on GPU \(next.gpuIds.map(String.init).joined(separator: ","))"
        return Decision(outcome: .applied, state: next, commands: [command], reserve: reserve, release: release,
                        note: "\(note); starting \(step.name) (attempt \(attempt))\(gpuNote)")
    }

    func command(for step: WorkflowStep, index: Int, attempt: Int, state: CaseState, progressTo: Int, beam: Int? = nil) -> OutgoingMessage {
        var body = MessageBody(caseId: state.caseId, stepIndex: index, attempt: attempt, step: step.name, gpuIds: state.gpuIds)
        body.beam = beam
        switch step.type {
        case .upload:
            return OutgoingMessage(kind: .uploadCase, body: body)
        case .download:
            return OutgoingMessage(kind: .downloadResults, body: body)
        case .execute, .local:
            var rendering = state
            if step.type == .local { body.local = true }
            if schedulerPlacesGPUs, step.gpuCount > 0 {
                // Slurm picks the GPUs: the command addresses them as its job sees them.
                body.gpuCount = step.gpuCount
                rendering.gpuIds = Array(0..<step.gpuCount)
            }
            var values = placeholderValues(rendering)
            values["beam_number"] = beam.map(String.init) ?? ""
            body.command = step.command?.render(values)
            body.timeoutSec = step.timeoutSec
            body.rules = step.rules
            body.progressFrom = state.progress
            body.progressTo = progressTo
            if !step.inputFiles.isEmpty {
                body.inputFiles = step.inputFiles.map {
                    RenderedFile(path: $0.path.render(values, quoted: false), content: $0.content.render(values, quoted: false))
                }
            }
            return OutgoingMessage(kind: .executeCommand, body: body)
        }
    }

    /// The values of every placeholder for a case holding `gpuIds`.
    public func placeholderValues(caseId: String, gpuIds: [Int]) -> [String: String] {
        placeholderValues(CaseState(caseId: caseId, workflow: "", gpuIds: gpuIds))
    }

    /// The values of every placeholder for a case in `state`.
    public func placeholderValues(_ state: CaseState) -> [String: String] {
        let caseId = state.caseId, gpuIds = state.gpuIds
        return [
            "case_id": caseId,
            "gpu_id": gpuIds.first.map(String.init) ?? "",
            "gpu_ids": gpuIds.map(String.init).joined(separator: ","),
            "gpu_count": String(gpuIds.count),
            "patient_id": state.patientId ?? "",
            "beam_numbers": state.beamNumbers.map(String.init).joined(separator: ","),
            "upload_dir": uploadDir,
            "download_dir": downloadDir,
            "case_dir": uploadDir + "/" + caseId,
            "result_dir": downloadDir + "/" + caseId,
            "results_dir": resultsDir + "/" + caseId,
            // A follow-up job (`<case_id>#<delivery folder>`): its delivery folder.
            "delivery": caseId.lastIndex(of: "#").map { String(caseId[caseId.index(after: $0)...]) } ?? "",
        ]
    }

    /// The stop of the case's current attempt, if it is an execute step (whose processes run
    /// detached and may outlive the daemon's interest in them).
    func attemptStop(_ state: CaseState, beam: BeamRun? = nil) -> AttemptStop? {
        guard let index = state.stepIndex, let steps = workflows[state.workflow]?.steps, steps.indices.contains(index),
              steps[index].type.runsCommand else { return nil }
        let gpuIds = beam?.gpuIds ?? state.gpuIds
        var body = MessageBody(caseId: state.caseId, stepIndex: index, attempt: beam?.attempt ?? state.attempt, step: steps[index].name, gpuIds: gpuIds)
        body.beam = beam?.beam
        if steps[index].type == .local { body.local = true }
        return AttemptStop(command: OutgoingMessage(kind: .stopAttempt, body: body), gpuIds: gpuIds)
    }

    func isCurrent(_ state: CaseState, _ index: Int, _ attempt: Int) -> Bool {
        state.stepIndex == index && state.attempt == attempt
    }

    func stepName(_ state: CaseState, _ index: Int) -> String {
        guard let steps = workflows[state.workflow]?.steps, steps.indices.contains(index) else { return "#\(index)" }
        return steps[index].name
    }

    func stale(_ state: CaseState, _ event: ConductorEvent) -> Decision {
        let current = state.stepIndex.map { "step \($0) attempt \(state.attempt)" } ?? "no step"
        var described = event.name
        switch event {
        case .stepSucceeded(let index, let attempt, let beam), .stepFailed(let index, let attempt, _, _, _, let beam):
            described += " for step \(index)\(beam.map { " beam \($0)" } ?? "") attempt \(attempt)"
        default: break
        }
        return ignored(state, event, "stale event \(described); case is \(state.status.rawValue) at \(current)")
    }

    func ignored(_ state: CaseState, _ event: ConductorEvent, _ why: String) -> Decision {
        Decision(outcome: .ignored, state: state, note: "ignored \(event.name): \(why)")
    }

    func missingWorkflow(_ state: CaseState) -> Decision {
        var failed = state
        failed.status = .failed
        failed.gpuIds = []
        failed.error = "workflow '\(state.workflow)' is not in the config"
        return Decision(outcome: .applied, state: failed, release: state.gpuIds, note: failed.error!)
    }
}
