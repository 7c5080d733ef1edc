import Foundation
import MQICore

/// The beam runs of `for_each: beam` steps.
extension Store {
    static func loadBeams(_ db: any SQLConnection, caseId: String, stepIndex: Int?) throws -> [BeamRun] {
        guard let stepIndex else { return [] }
        return try SQLRow.fetchAll(db, sql: "SELECT * FROM beam_runs WHERE case_id = ? AND step_index = ? ORDER BY beam",
                                arguments: [caseId, stepIndex]).map(beamRun)
    }

    static func beamRun(_ row: SQLRow) -> BeamRun {
        BeamRun(beam: row["beam"], status: BeamRun.Status(rawValue: row["status"]) ?? .failed, attempt: row["attempt"],
                gpuIds: decodeGPUs(row["gpu_ids"]), progress: row["progress"], error: row["error"],
                startedAt: row["started_at"], finishedAt: row["finished_at"])
    }

    /// Writes the runs of step `stepIndex` as decided; a run that starts (a new attempt) gets
    /// `started_at`, one that ends `finished_at`.
    static func saveBeams(_ db: any SQLConnection, caseId: String, stepIndex: Int, beams: [BeamRun], now: Date) throws {
        for run in beams {
            let final = run.status == .succeeded || run.status == .failed || run.status == .cancelled
            try db.execute(sql: """
                INSERT INTO beam_runs (case_id, step_index, beam, status, attempt, gpu_ids, progress, error, started_at, finished_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN ? = 'RUNNING' THEN ? END, CASE WHEN ? = 1 THEN ? END)
                ON CONFLICT(case_id, step_index, beam) DO UPDATE SET
                    started_at = CASE WHEN excluded.status = 'RUNNING' AND (beam_runs.status != 'RUNNING' OR beam_runs.attempt != excluded.attempt)
                                      THEN ? WHEN excluded.status = 'WAITING' THEN NULL ELSE beam_runs.started_at END,
                    finished_at = CASE WHEN ? = 1 THEN coalesce(CASE WHEN beam_runs.status = excluded.status THEN beam_runs.finished_at END, ?) ELSE NULL END,
                    status = excluded.status, attempt = excluded.attempt, gpu_ids = excluded.gpu_ids,
                    progress = CASE WHEN beam_runs.attempt = excluded.attempt AND beam_runs.progress > excluded.progress
                                    THEN beam_runs.progress ELSE excluded.progress END,
                    error = excluded.error
                """, arguments: [caseId, stepIndex, run.beam, run.status.rawValue, run.attempt, encodeGPUs(run.gpuIds), run.progress, run.error,
                                 run.status.rawValue, now, final, now,
                                 now, final, now])
        }
    }

    /// Whether beam `beam`'s run of step `stepIndex` with attempt `attempt` is the one running now.
    public func beamRunIsCurrent(caseId: String, stepIndex: Int?, beam: Int, attempt: Int) async throws -> Bool {
        try await pool.read { db in
            try Bool.fetchOne(db, sql: """
                SELECT EXISTS(SELECT 1 FROM beam_runs r JOIN cases c ON c.case_id = r.case_id
                    WHERE r.case_id = ? AND r.step_index = ? AND r.beam = ? AND r.attempt = ? AND r.status = 'RUNNING'
                      AND c.step_index = r.step_index AND c.status IN ('PROCESSING', 'PENDING_RESOURCE'))
                """, arguments: [caseId, stepIndex, beam, attempt]) ?? false
        }
    }

    /// Raises a running beam's progress (never lowers it) and the case's to the mean of its beams.
    public func updateBeamProgress(_ caseId: String, stepIndex: Int, beam: Int, attempt: Int, progress: Int) async throws {
        let now = now()
        try await pool.write { db in
            try db.execute(sql: """
                UPDATE beam_runs SET progress = ?
                WHERE case_id = ? AND step_index = ? AND beam = ? AND attempt = ? AND status = 'RUNNING' AND progress < ?
                """, arguments: [progress, caseId, stepIndex, beam, attempt, progress])
            guard db.changesCount == 1,
                  let mean = try Int.fetchOne(db, sql: "SELECT avg(progress) FROM beam_runs WHERE case_id = ? AND step_index = ?",
                                              arguments: [caseId, stepIndex]) else { return }
            try db.execute(sql: """
                UPDATE cases SET progress = ?, updated_at = ?
                WHERE case_id = ? AND step_index = ? AND status IN ('PROCESSING', 'PENDING_RESOURCE') AND progress < ?
                """, arguments: [mean, now, caseId, stepIndex, mean])
        }
    }

    /// `summaries` with the beam runs of each case's latest `for_each: beam` step attached (one
    /// query per 500 cases).
    static func withBeams(_ db: any SQLConnection, _ summaries: [CaseSummary]) throws -> [CaseSummary] {
        guard !summaries.isEmpty else { return summaries }
        var runs: [String: (step: Int, runs: [BeamRun])] = [:]
        var start = 0
        while start < summaries.count {
            let ids = summaries[start..<min(start + 500, summaries.count)].map(\.caseId)
            let marks = Array(repeating: "?", count: ids.count).joined(separator: ",")
            for row in try SQLRow.fetchAll(db, sql: "SELECT * FROM beam_runs WHERE case_id IN (\(marks)) ORDER BY case_id, step_index, beam",
                                        arguments: SQLArguments(ids)) {
                let caseId: String = row["case_id"], step: Int = row["step_index"]
                if let known = runs[caseId], known.step > step { continue }
                if runs[caseId]?.step != step { runs[caseId] = (step, []) }
                runs[caseId]!.runs.append(beamRun(row))
            }
            start += 500
        }
        guard !runs.isEmpty else { return summaries }
        return summaries.map { summary in
            var summary = summary
            summary.beams = runs[summary.caseId]?.runs ?? []
            return summary
        }
    }

    /// Every beam run of a case, by step (for `cases show`, the API and the dashboard).
    public func beamRuns(_ caseId: String) async throws -> [StepBeamRuns] {
        try await pool.read { db in
            var byStep: [Int: [BeamRun]] = [:]
            for row in try SQLRow.fetchAll(db, sql: "SELECT * FROM beam_runs WHERE case_id = ? ORDER BY step_index, beam", arguments: [caseId]) {
                byStep[row["step_index"], default: []].append(Self.beamRun(row))
            }
            return byStep.keys.sorted().map { StepBeamRuns(stepIndex: $0, runs: byStep[$0]!) }
        }
    }
}

/// The beam runs of one `for_each: beam` step of a case.
public struct StepBeamRuns: Sendable, Equatable, Codable {
    public var stepIndex: Int
    public var runs: [BeamRun]

    enum CodingKeys: String, CodingKey {
        case stepIndex = "step_index", runs
    }
}
