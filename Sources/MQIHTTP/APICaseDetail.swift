import Foundation
import MQITransport
import MQICore
import MQIStore

/// One attempt of one step (or a wait for a GPU before it), derived from the case's history.
struct StepAttempt: Sendable, Equatable, Encodable {
    var step: String
    var attempt: Int
    /// `running` or `waiting_for_gpu`.
    var phase: String
    var startedAt: Date
    var endedAt: Date?
    var durationSec: Double
    /// `running`, `waiting`, `succeeded`, `failed`, `cancelled`, `retried` or `ended`.
    var outcome: String
    var message: String

    enum CodingKeys: String, CodingKey {
        case step, attempt, phase, startedAt = "started_at", endedAt = "ended_at", durationSec = "duration_sec", outcome, message
    }
}

/// The end of a step log, as the case page shows it.
struct LogExcerpt: Sendable, Encodable {
    var step: String
    var attempt: Int
    var exists: Bool
    var lines: [String]
    /// The path of the whole log in the API.
    var url: String
}

/// `GET /api/cases/{id}`.
struct CaseDetail: Sendable, Encodable {
    var `case`: CaseSummary
    /// The RT plan's treatment beams with whether each was delivered (`case_layout: moqui`).
    var planBeams: [CasePlanBeam]
    var steps: [WorkflowStepInfo]
    var timeline: [StepAttempt]
    var history: [CaseHistoryEntry]
    var log: LogExcerpt?
    var logs: [LogExcerpt]
    /// The case's Slurm jobs (`hpc.executor: slurm`), oldest first; empty under the direct executor.
    var jobs: [SchedulerJob]
    /// The case's delivery folders grouped into fractions, with their follow-up jobs.
    var fractions: [FractionRecord]

    enum CodingKeys: String, CodingKey {
        case `case`, planBeams = "plan_beams", steps, timeline, history, log, logs, jobs, fractions
    }
}

struct WorkflowStepInfo: Sendable, Encodable {
    var name: String
    var type: String
    var progress: Int
}

enum CaseTimeline {
    /// Start, end and duration of each step attempt. A history row holds the state *after* an event,
    /// so a row that moves the case to another step or attempt (or out of PROCESSING) ends the one
    /// before it, with the outcome named by its event.
    static func attempts(_ history: [CaseHistoryEntry], now: Date) -> [StepAttempt] {
        var result: [StepAttempt] = []
        var current: StepAttempt?

        func close(at time: Date, event: String, nextStatus: CaseStatus, sameStepNext: Bool) {
            guard var open = current else { return }
            open.endedAt = time
            open.durationSec = max(0, time.timeIntervalSince(open.startedAt))
            if open.phase == "waiting_for_gpu" {
                open.outcome = nextStatus == .processing ? "gpu_assigned" : outcomeName(event)
            } else {
                open.outcome = outcomeName(event)
                if open.outcome == "failed", sameStepNext { open.outcome = "retried" }
            }
            result.append(open)
            current = nil
        }

        // Slurm's job states are about a job, not the case: they open or close no attempt.
        for entry in history where entry.event != "ignored" && !entry.event.hasPrefix("slurm_") {
            let phase: String? = switch entry.status {
            case .processing: "running"
            case .pendingResource: "waiting_for_gpu"
            default: nil
            }
            if let phase, let step = entry.step {
                let attempt = entry.attempt ?? 0
                if let open = current, open.step == step, open.attempt == attempt, open.phase == phase { continue }
                close(at: entry.at, event: entry.event, nextStatus: entry.status, sameStepNext: current?.step == step)
                current = StepAttempt(step: step, attempt: attempt, phase: phase, startedAt: entry.at, endedAt: nil, durationSec: 0,
                                      outcome: phase == "running" ? "running" : "waiting", message: entry.message)
            } else {
                close(at: entry.at, event: entry.event, nextStatus: entry.status, sameStepNext: false)
            }
        }
        if var open = current {
            open.durationSec = max(0, now.timeIntervalSince(open.startedAt))
            result.append(open)
        }
        return result
    }

    static func outcomeName(_ event: String) -> String {
        switch event {
        case "step_succeeded": "succeeded"
        case "step_failed": "failed"
        case "cancel": "cancelled"
        default: "ended"
        }
    }
}

/// Step logs at `state.logs_dir/<case_id>/<step>.<attempt>.log`.
struct StepLogs: Sendable {
    var logsDir: String

    /// The log's path, or a 400 for names that could leave the case's directory. A case id may
    /// hold `/` between levels (`scanner.case_depth`); each level is checked like a name.
    func path(caseId: String, step: String, attempt: Int) throws -> String {
        let levels = caseId.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        for (what, name) in levels.map({ ("case id", $0) }) + [("step", step)] {
            guard !name.isEmpty, name != ".", name != "..", !name.contains("/"), !name.contains("\0"), name.utf8.count <= 255 else {
                throw APIError.badRequest("\(what) \(String(reflecting: what == "step" ? step : caseId)) cannot name a log file")
            }
        }
        guard attempt >= 0 else { throw APIError.badRequest("attempt must be 0 or more") }
        return [logsDir, caseId, "\(step).\(attempt).log"].reduce("") { ($0 as NSString).appendingPathComponent($1) }
    }

    static func url(caseId: String, step: String, attempt: Int) -> String {
        "/api/cases/\(pathEscaped(caseId))/logs/\(pathEscaped(step))/\(attempt)"
    }

    static func pathEscaped(_ text: String) -> String {
        var allowed = CharacterSet.alphanumerics.intersection(CharacterSet(charactersIn: Unicode.Scalar(0)..<Unicode.Scalar(128)))
        allowed.insert(charactersIn: "-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }

    /// The case's logs (`<step>.<attempt>.log`, `<step>.<beam>.<attempt>.log` for a beam's run),
    /// the most recently written first; at most `limit`.
    func available(caseId: String, limit: Int = 200) -> [(step: String, attempt: Int)] {
        guard let directory = try? path(caseId: caseId, step: "x", attempt: 0) else { return [] }
        let folder = (directory as NSString).deletingLastPathComponent
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        var found: [(step: String, attempt: Int, modified: Date)] = []
        for name in names where name.hasSuffix(".log") {
            let stem = name.dropLast(4)
            guard let dot = stem.lastIndex(of: "."), let attempt = Int(stem[stem.index(after: dot)...]), dot > stem.startIndex else { continue }
            let step = String(stem[..<dot])
            guard let file = try? self.path(caseId: caseId, step: step, attempt: attempt),
                  let attributes = try? FileManager.default.attributesOfItem(atPath: file), attributes[.type] as? FileAttributeType == .typeRegular else { continue }
            found.append((step, attempt, attributes[.modificationDate] as? Date ?? .distantPast))
        }
        found.sort { ($0.modified, $0.step, $0.attempt) > ($1.modified, $1.step, $1.attempt) }
        return found.prefix(limit).map { ($0.step, $0.attempt) }
    }

    func excerpt(caseId: String, step: String, attempt: Int, lines: Int) -> LogExcerpt {
        let path = (try? self.path(caseId: caseId, step: step, attempt: attempt))
        let tail = path.flatMap { LogTail.lines(of: $0, count: lines) }
        return LogExcerpt(step: step, attempt: attempt, exists: tail != nil, lines: tail ?? [],
                          url: Self.url(caseId: caseId, step: step, attempt: attempt))
    }
}

extension APIContext {
    func caseDetail(_ caseId: String, logLines: Int = 200) async throws -> CaseDetail? {
        guard let summary = try await store.caseSummary(caseId) else { return nil }
        let history = try await store.history(caseId)
        let timeline = CaseTimeline.attempts(history, now: Date())
        let logs = StepLogs(logsDir: config.state.logsDir)
        // Every log of the case (each step attempt, each beam run's attempt), newest first; the
        // tail of the current (or last) one.
        let available = logs.available(caseId: caseId).map { log in
            LogExcerpt(step: log.step, attempt: log.attempt, exists: true, lines: [], url: StepLogs.url(caseId: caseId, step: log.step, attempt: log.attempt))
        }
        var tail: LogExcerpt?
        // A `for_each: beam` step's runs: the one that failed the case, else a running one.
        let beamRun = summary.beams.first { $0.status == .failed } ?? summary.beams.first { $0.status == .running }
        let beamLog = beamRun.flatMap { run in summary.workflowStep.map { "\($0).\(run.beam)" } }.flatMap { step in
            available.first { $0.step == step && $0.attempt == beamRun?.attempt }
        }
        if let current = summary.workflowStep, let path = try? logs.path(caseId: caseId, step: current, attempt: summary.attempt),
           FileManager.default.fileExists(atPath: path) {
            tail = logs.excerpt(caseId: caseId, step: current, attempt: summary.attempt, lines: logLines)
        } else if let beamLog {
            tail = logs.excerpt(caseId: caseId, step: beamLog.step, attempt: beamLog.attempt, lines: logLines)
        } else if let last = available.first {
            tail = logs.excerpt(caseId: caseId, step: last.step, attempt: last.attempt, lines: logLines)
        }
        let steps = (config.workflows[summary.workflow]?.steps ?? []).map {
            WorkflowStepInfo(name: $0.name, type: $0.type.rawValue, progress: $0.progress)
        }
        let planBeams = try await store.planBeams(caseId)
        let jobs = try await store.schedulerJobs(caseId: caseId)
        let fractions = try await store.fractions(caseId: caseId, windowMin: config.scanner.fractionWindowMin)
        return CaseDetail(case: summary, planBeams: planBeams, steps: steps, timeline: timeline, history: history, log: tail, logs: available,
                          jobs: jobs, fractions: fractions)
    }
}
