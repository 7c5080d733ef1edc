/// `for_each: beam` steps: one run per delivered beam, each with its own attempt, GPU(s), log,
/// progress and outcome. The beams of a case run in parallel on whatever GPUs are free; a case's
/// waiting beams keep its place in the line, so a later case's beams do not overtake them.
extension Conductor {
    /// Starts step `stepIndex` (a `for_each: beam` step): a run per delivered beam, or, when the
    /// case comes back to this step (`mqi cases retry`), the beams that did not succeed, each as
    /// its next attempt.
    func startBeams(_ state: CaseState, stepIndex: Int, attempt: Int, gpus: GPUAvailability, note: String) -> Decision {
        let step = workflows[state.workflow]!.steps[stepIndex]
        var next = state
        let returning = state.stepIndex == stepIndex && !state.beams.isEmpty
        if returning {
            next.beams = state.beams.map { run in
                guard run.status != .succeeded else { return run }
                return BeamRun(beam: run.beam, attempt: run.attempt + 1, progress: step.progress)
            }
        } else {
            guard !state.beamNumbers.isEmpty else {
                var failed = state
                failed.status = .failed
                failed.gpuIds = []
                failed.failureClass = .permanent
                failed.error = "step \(step.name) runs once per delivered beam (for_each: beam), but the case lists no beam (DICOM_BEAM_NUMBER in PlanInfo.txt)"
                return Decision(outcome: .applied, state: failed, release: state.gpuIds, note: failed.error!)
            }
            next.beams = state.beamNumbers.sorted().map { BeamRun(beam: $0, progress: step.progress) }
        }
        next.stepIndex = stepIndex
        next.attempt = attempt
        next.progress = max(state.progress, step.progress)
        // GPUs held from an earlier step are handed to the beams (or released).
        next.gpuIds = []
        var decision = dispatchBeams(next, available: state.gpuIds + gpus.free.filter { !state.gpuIds.contains($0) },
                                     othersWaiting: gpus.othersWaiting, note: note)
        decision.reserve.removeAll { state.gpuIds.contains($0) }
        decision.release = state.gpuIds.filter { !decision.state.gpuIds.contains($0) }
        return decision
    }

    /// Starts waiting beams, in beam order, on `available` GPUs while they last (none while an
    /// earlier case waits). The case is PROCESSING while a beam runs, else PENDING_RESOURCE.
    func dispatchBeams(_ state: CaseState, available: [Int], othersWaiting: Bool, note: String, delaySec: Double? = nil) -> Decision {
        let workflow = workflows[state.workflow]!
        let index = state.stepIndex!
        let step = workflow.steps[index]
        var next = state
        var free = available.filter { !state.gpuIds.contains($0) }
        var commands: [OutgoingMessage] = []
        var reserved: [Int] = []
        let nextProgress = index + 1 < workflow.steps.count ? workflow.steps[index + 1].progress : 100
        for position in next.beams.indices where next.beams[position].status == .waiting {
            guard schedulerPlacesGPUs || (!othersWaiting && (free.count >= max(1, step.gpuMin) || step.gpuCount == 0)) else { break }
            var run = next.beams[position]
            run.gpuIds = schedulerPlacesGPUs ? [] : Array(free.prefix(step.gpuCount))
            free.removeFirst(run.gpuIds.count)
            reserved += run.gpuIds
            run.status = .running
            run.error = nil
            next.beams[position] = run
            var beamState = next
            beamState.gpuIds = run.gpuIds
            beamState.progress = run.progress
            var command = self.command(for: step, index: index, attempt: run.attempt, state: beamState, progressTo: nextProgress, beam: run.beam)
            command.delaySec = delaySec
            commands.append(command)
        }
        next.gpuIds = next.beams.filter { $0.status == .running }.flatMap(\.gpuIds)
        next.status = next.beams.contains { $0.status == .running } ? .processing : .pendingResource
        let started = commands.compactMap { command in command.body.beam.map { "beam \($0) on GPU \(command.body.gpuIds?.map(String.init).joined(separator: ",") ?? "-")" } }
        let waiting = next.beams.filter { $0.status == .waiting }.map { String($0.beam) }
        var parts = [note]
        if !started.isEmpty { parts.append("starting \(step.name) \(started.joined(separator: ", "))") }
        if !waiting.isEmpty { parts.append("beam(s) \(waiting.joined(separator: ",")) wait for GPUs") }
        return Decision(outcome: .applied, state: next, commands: commands, reserve: reserved, note: parts.joined(separator: "; "))
    }

    func beamSucceeded(_ state: CaseState, stepIndex: Int, attempt: Int, beam: Int, gpus: GPUAvailability) -> Decision {
        guard let position = currentBeam(state, stepIndex, attempt, beam) else { return stale(state, .stepSucceeded(stepIndex: stepIndex, attempt: attempt, beam: beam)) }
        let workflow = workflows[state.workflow]!
        let step = workflow.steps[stepIndex]
        let nextProgress = stepIndex + 1 < workflow.steps.count ? workflow.steps[stepIndex + 1].progress : 100
        var next = state
        let freed = next.beams[position].gpuIds
        next.beams[position].status = .succeeded
        next.beams[position].progress = nextProgress
        next.beams[position].gpuIds = []
        next.gpuIds = next.beams.filter { $0.status == .running }.flatMap(\.gpuIds)
        next.progress = max(state.progress, meanProgress(next.beams))
        let note = "\(step.name) beam \(beam) (attempt \(attempt)) succeeded"
        if next.beams.allSatisfy({ $0.status == .succeeded }) {
            // Every beam is done: the step is, and the case moves on.
            var moving = next
            moving.beams = []
            var decision = stepIndex + 1 >= workflow.steps.count
                ? complete(moving, releasing: freed, note: note)
                : start(moving, stepIndex: stepIndex + 1, attempt: 1, gpus: GPUAvailability(free: freed + gpus.free, othersWaiting: gpus.othersWaiting),
                        note: "\(note); every beam of \(step.name) succeeded")
            // The finished beams stay on record for their step.
            decision.finishedBeams = next.beams
            decision.release = Array(Set(decision.release + freed.filter { !decision.state.gpuIds.contains($0) })).sorted()
            decision.reserve.removeAll { freed.contains($0) }
            return decision
        }
        var decision = dispatchBeams(next, available: freed + gpus.free, othersWaiting: gpus.othersWaiting, note: note)
        decision.release = freed.filter { !decision.state.gpuIds.contains($0) }
        decision.reserve.removeAll { freed.contains($0) }
        return decision
    }

    func beamFailed(_ state: CaseState, stepIndex: Int, attempt: Int, beam: Int, reason: String, retryable: Bool, ended: Bool,
                    gpus: GPUAvailability) -> Decision {
        let event = ConductorEvent.stepFailed(stepIndex: stepIndex, attempt: attempt, reason: reason, retryable: retryable, ended: ended, beam: beam)
        guard let position = currentBeam(state, stepIndex, attempt, beam) else { return stale(state, event) }
        let step = workflows[state.workflow]!.steps[stepIndex]
        let run = state.beams[position]
        let retriesLeft = step.maxStepRetries - (attempt - 1)
        let stop = ended ? nil : attemptStop(state, beam: run)
        var next = state
        if retryable, retriesLeft > 0 {
            let delay = retry.ceiling(attempt: attempt)
            let note = "\(step.name) beam \(beam) (attempt \(attempt)) failed with a retryable error: \(reason); retrying that beam in \(Int(delay.rounded())) s"
            next.beams[position] = BeamRun(beam: beam, attempt: attempt + 1, progress: step.progress)
            if stop == nil {
                // Its processes are gone: the next attempt keeps the beam's GPU(s).
                next.beams[position].status = .waiting
                next.gpuIds = next.beams.filter { $0.status == .running }.flatMap(\.gpuIds)
                var decision = dispatchBeams(next, available: run.gpuIds, othersWaiting: false, note: note, delaySec: delay)
                decision.release = run.gpuIds.filter { !decision.state.gpuIds.contains($0) }
                decision.reserve.removeAll { run.gpuIds.contains($0) }
                return decision
            }
            next.gpuIds = next.beams.filter { $0.status == .running }.flatMap(\.gpuIds)
            var decision = dispatchBeams(next, available: gpus.free, othersWaiting: gpus.othersWaiting, note: note, delaySec: delay)
            decision.stopping(stop)
            return decision
        }
        // The case fails: this beam's run, and every other beam's that may run, is stopped.
        let exhausted = retryable ? "retryable, gave up after \(attempt) attempt(s)" : "permanent"
        var failed = state
        failed.status = .failed
        failed.gpuIds = []
        failed.failureClass = retryable ? .retryable : .permanent
        failed.error = "step \(step.name) beam \(beam) (attempt \(attempt)) failed (\(exhausted)): \(reason)"
        var decision = Decision(outcome: .applied, state: failed, release: state.gpuIds, note: failed.error!)
        decision.stopping(stop)
        decision.state.beams = state.beams.map { other in
            var other = other
            if other.beam == beam {
                other.status = .failed
                other.error = reason
                other.gpuIds = []
            } else if other.status == .running || other.status == .waiting {
                if other.status == .running { decision.stopping(attemptStop(state, beam: other)) }
                other.status = .cancelled
                other.error = "stopped: beam \(beam) failed"
                other.gpuIds = []
            }
            return other
        }
        return decision
    }

    /// The position of beam `beam`'s running run of step `stepIndex` with attempt `attempt`.
    func currentBeam(_ state: CaseState, _ stepIndex: Int, _ attempt: Int, _ beam: Int) -> Int? {
        guard state.stepIndex == stepIndex else { return nil }
        return state.beams.firstIndex { $0.beam == beam && $0.attempt == attempt && $0.status == .running }
    }

    /// The case progress the beams stand for: the mean of their progress.
    public func meanProgress(_ beams: [BeamRun]) -> Int {
        guard !beams.isEmpty else { return 0 }
        return beams.map(\.progress).reduce(0, +) / beams.count
    }

    func complete(_ state: CaseState, releasing freed: [Int], note: String) -> Decision {
        var done = state
        done.status = .completed
        done.progress = 100
        done.gpuIds = []
        done.error = nil
        return Decision(outcome: .applied, state: done, release: state.gpuIds + freed, note: "\(note); case completed")
    }
}
