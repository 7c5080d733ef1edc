import Foundation
import MQICore
import MQIStore

extension Reports {
    /// `mqi cases show`: one case with its plan beams, beam runs and history; JSON with `json`.
    /// Nil when there is no such case.
    /// `fractionWindowMin`: `scanner.fraction_window_min`, which groups the deliveries.
    public static func caseDetail(_ caseId: String, store: Store, json: Bool, fractionWindowMin: Double = 60) async throws -> String? {
        guard let summary = try await store.caseSummary(caseId) else { return nil }
        let history = try await store.history(caseId)
        let planBeams = try await store.planBeams(caseId)
        let jobs = try await store.schedulerJobs(caseId: caseId)
        let fractions = try await store.fractions(caseId: caseId, windowMin: fractionWindowMin)
        if json {
            struct Detail: Encodable {
                var `case`: CaseSummary
                var planBeams: [CasePlanBeam]
                var history: [CaseHistoryEntry]
                var jobs: [SchedulerJob]
                var fractions: [FractionRecord]
                enum CodingKeys: String, CodingKey { case `case`, planBeams = "plan_beams", history, jobs, fractions }
            }
            return try jsonText(Detail(case: summary, planBeams: planBeams, history: history, jobs: jobs, fractions: fractions))
        }
        var lines: [String] = []
        lines.append("case:     \(summary.caseId)")
        lines.append("status:   \(summary.status.rawValue)")
        if let detail = summary.detail { lines.append("detail:   \(detail)") }
        lines.append("workflow: \(summary.workflow)  step: \(summary.workflowStep ?? "-")  attempt: \(summary.attempt)  progress: \(summary.progress)%")
        lines.append("gpus:     \(summary.gpuIds.isEmpty ? "-" : summary.gpuIds.map(String.init).joined(separator: ","))")
        if summary.patientId != nil || !summary.beamNumbers.isEmpty {
            lines.append("patient:  \(summary.patientId ?? "-")  beams: \(summary.beamNumbers.map(String.init).joined(separator: ","))")
        }
        if !planBeams.isEmpty {
            lines.append("plan beams:")
            for beam in planBeams {
                lines.append("  beam \(beam.number)  \(beam.name.isEmpty ? "-" : beam.name)  \(beam.delivered ? "delivered" : "not delivered")")
            }
        }
        if !summary.beams.isEmpty {
            lines.append("beam runs:")
            for run in summary.beams {
                let gpus = run.gpuIds.isEmpty ? "" : "  GPU \(run.gpuIds.map(String.init).joined(separator: ","))"
                let times = [run.startedAt.map { "started \(isoDate($0))" }, run.finishedAt.map { "finished \(isoDate($0))" }].compactMap { $0 }
                lines.append("  beam \(run.beam)  \(run.status.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0))  attempt \(run.attempt)  \(run.progress)%\(gpus)"
                             + (times.isEmpty ? "" : "  " + times.joined(separator: ", ")) + (run.error.map { "  error: \($0)" } ?? ""))
            }
        }
        if !fractions.isEmpty {
            lines.append("fractions:")
            for fraction in fractions {
                lines.append("  fraction \(fraction.number)  \(fraction.complete ? "complete" : "incomplete")" + (fraction.anomaly.map { "  ANOMALY: \($0)" } ?? ""))
                for delivery in fraction.deliveries {
                    let job = delivery.jobId.map { "  follow-up \($0) \(delivery.jobStatus?.rawValue ?? "-")" }
                        ?? (delivery.followup ? "  follow-up (not started)" : "")
                    lines.append("    \(delivery.folder)  \(isoDate(delivery.start))  beam \(delivery.beam.map(String.init) ?? "-")\(job)")
                }
            }
        }
        if !jobs.isEmpty {
            lines.append("Slurm jobs:")
            let rows = jobs.map { job -> [String] in
                [job.jobId, job.step + (job.beam.map { "/beam \($0)" } ?? ""), String(job.attempt), job.state,
                 job.reason ?? "-", job.node ?? "-", job.gpus ?? "-"]
            }
            lines += columns(["JOB", "STEP", "ATTEMPT", "STATE", "REASON", "NODE", "GPUS"], rows).split(separator: "\n").map { "  " + $0 }
        }
        if let error = summary.error { lines.append("error:    \(summary.failureClass.map { "[\($0.rawValue)] " } ?? "")\(error)") }
        lines.append("history:")
        for entry in history {
            let step = entry.step.map { " \($0)" + (entry.attempt.map { "#\($0)" } ?? "") } ?? ""
            lines.append("  \(isoDate(entry.at))  \(entry.status.rawValue.padding(toLength: 16, withPad: " ", startingAt: 0)) \(entry.event)\(step): \(entry.message)")
        }
        return lines.joined(separator: "\n")
    }
}
