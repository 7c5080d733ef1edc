import Foundation
import MQICore

/// The Slurm jobs of the cases' steps (`hpc.executor: slurm`): one row per step attempt (and
/// beam), its Slurm state, and what the case's `detail` says about it.
extension Store {
    /// Upserts the job of (case, step, beam, attempt), in one transaction with what follows from it.
    ///
    /// Sets `submittedAt` on the first record, `startedAt` when first RUNNING (or COMPLETING),
    /// `endedAt` when terminal (a value the caller sets is kept). Appends one history event per
    /// state change (`slurm_submitted`, `slurm_started`, `slurm_ended`, `slurm_state`; RUNNING →
    /// COMPLETING is not a change). When the job is the case's current attempt (the case is
    /// PROCESSING or PENDING_RESOURCE at this step and attempt, or for a beam: that beam's run of
    /// the step is RUNNING at this attempt) it sets the case's `detail`: "queued in Slurm:
    /// Resources", "running in Slurm job 12 on node1, GPU 1", or none once the job ended; a
    /// beam's detail starts with "beam N ".
    public func recordSchedulerJob(_ job: SchedulerJob) async throws {
        let now = now()
        try await pool.write { db in
            let beamKey = job.beam ?? -1
            let previous = try SQLRow.fetchOne(db, sql: """
                SELECT job_id, state FROM scheduler_jobs WHERE case_id = ? AND step = ? AND beam = ? AND attempt = ?
                """, arguments: [job.caseId, job.step, beamKey, job.attempt])
            let previousJob: String? = previous?["job_id"]
            let previousState: String? = previous?["state"]
            let terminal = SchedulerJob.isTerminal(job.state)
            let running = SchedulerJob.runningStates.contains(job.state)
            let newSubmission = previous == nil || previousJob != job.jobId
            try db.execute(sql: """
                INSERT INTO scheduler_jobs (case_id, step, beam, attempt, job_id, state, reason, gpus, node,
                                            submitted_at, started_at, ended_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(case_id, step, beam, attempt) DO UPDATE SET
                    submitted_at = CASE WHEN scheduler_jobs.job_id != excluded.job_id THEN excluded.submitted_at
                                        ELSE coalesce(scheduler_jobs.submitted_at, excluded.submitted_at) END,
                    started_at = CASE WHEN scheduler_jobs.job_id != excluded.job_id THEN excluded.started_at
                                      ELSE coalesce(scheduler_jobs.started_at, excluded.started_at) END,
                    ended_at = CASE WHEN excluded.ended_at IS NULL THEN NULL
                                    WHEN scheduler_jobs.job_id != excluded.job_id THEN excluded.ended_at
                                    ELSE coalesce(scheduler_jobs.ended_at, excluded.ended_at) END,
                    job_id = excluded.job_id, state = excluded.state, reason = excluded.reason,
                    gpus = coalesce(excluded.gpus, CASE WHEN scheduler_jobs.job_id = excluded.job_id THEN scheduler_jobs.gpus END),
                    node = coalesce(excluded.node, CASE WHEN scheduler_jobs.job_id = excluded.job_id THEN scheduler_jobs.node END),
                    updated_at = excluded.updated_at
                """, arguments: [
                    job.caseId, job.step, beamKey, job.attempt, job.jobId, job.state, job.reason, job.gpus, job.node,
                    job.submittedAt ?? now, running || terminal && job.startedAt != nil ? (job.startedAt ?? now) : nil,
                    terminal ? (job.endedAt ?? now) : nil, now,
                ])
            // What the row holds now (gpus and node may come from an earlier record).
            guard let stored = try SQLRow.fetchOne(db, sql: """
                SELECT * FROM scheduler_jobs WHERE case_id = ? AND step = ? AND beam = ? AND attempt = ?
                """, arguments: [job.caseId, job.step, beamKey, job.attempt]).map(Self.schedulerJob) else { return }
            guard let caseRow = try SQLRow.fetchOne(db, sql: "SELECT status, workflow_step, step_index, attempt FROM cases WHERE case_id = ?",
                                                 arguments: [job.caseId]) else { return }
            let caseStatus = CaseStatus(rawValue: caseRow["status"]) ?? .failed

            // History: one event per state change.
            var events: [(String, String)] = []
            if newSubmission { events.append(("slurm_submitted", "submitted to Slurm as job \(job.jobId)")) }
            let changed = newSubmission ? !SchedulerJob.queuedStates.contains(job.state)
                : previousState != job.state && !(previousState.map(SchedulerJob.runningStates.contains) == true && running)
            if changed { events.append(Self.stateEvent(stored)) }
            let prefix = job.beam.map { "beam \($0) " } ?? ""
            for (event, message) in events {
                try Self.history(db, caseId: job.caseId, at: now, event: event, status: caseStatus, step: job.step,
                                 attempt: job.attempt, message: prefix + message)
            }

            // The case's detail, only for its current attempt.
            guard caseStatus == .processing || caseStatus == .pendingResource,
                  (caseRow["workflow_step"] as String?) == job.step else { return }
            if let beam = job.beam {
                let current = try Bool.fetchOne(db, sql: """
                    SELECT EXISTS(SELECT 1 FROM beam_runs WHERE case_id = ? AND step_index IS NOT DISTINCT FROM ? AND beam = ? AND attempt = ? AND status = 'RUNNING')
                    """, arguments: [job.caseId, caseRow["step_index"] as Int?, beam, job.attempt]) ?? false
                guard current else { return }
                if terminal {
                    // Only this beam's detail goes; another beam's stays.
                    try db.execute(sql: """
                        UPDATE cases SET detail = NULL, updated_at = ? WHERE case_id = ? AND substr(detail, 1, length(?)) = ?
                        """, arguments: [now, job.caseId, prefix, prefix])
                    return
                }
            } else {
                guard (caseRow["attempt"] as Int) == job.attempt else { return }
            }
            let detail = terminal ? nil : prefix + Self.detail(stored)
            try db.execute(sql: "UPDATE cases SET detail = ?, updated_at = ? WHERE case_id = ? AND detail IS DISTINCT FROM ?",
                           arguments: [detail, now, job.caseId, detail])
        }
    }

    /// The Slurm jobs of a case, in the order they were submitted.
    public func schedulerJobs(caseId: String) async throws -> [SchedulerJob] {
        try await pool.read { db in
            try SQLRow.fetchAll(db, sql: "SELECT * FROM scheduler_jobs WHERE case_id = ? ORDER BY submitted_at, rowid",
                             arguments: [caseId]).map(Self.schedulerJob)
        }
    }

    static func schedulerJob(_ row: SQLRow) -> SchedulerJob {
        let beam: Int = row["beam"]
        var job = SchedulerJob(caseId: row["case_id"], step: row["step"], beam: beam < 0 ? nil : beam, attempt: row["attempt"],
                               jobId: row["job_id"], state: row["state"], reason: row["reason"], gpus: row["gpus"], node: row["node"])
        job.submittedAt = row["submitted_at"]
        job.startedAt = row["started_at"]
        job.endedAt = row["ended_at"]
        job.updatedAt = row["updated_at"]
        return job
    }

    /// The history line of a job's new state.
    static func stateEvent(_ job: SchedulerJob) -> (String, String) {
        if SchedulerJob.runningStates.contains(job.state) {
            return ("slurm_started", "Slurm job \(job.jobId) started" + placement(job, separator: ", "))
        }
        if SchedulerJob.isTerminal(job.state) {
            return ("slurm_ended", "Slurm job \(job.jobId) ended \(job.state)" + (meaningful(job.reason).map { " (\($0))" } ?? ""))
        }
        return ("slurm_state", "Slurm job \(job.jobId) is \(job.state)" + (meaningful(job.reason).map { ": \($0)" } ?? ""))
    }

    /// The case's detail while the job is not finished.
    static func detail(_ job: SchedulerJob) -> String {
        switch job.state {
        case "PENDING", "REQUEUED":
            return "queued in Slurm" + (meaningful(job.reason).map { ": \($0)" } ?? "")
        case "RUNNING", "COMPLETING":
            return "running in Slurm job \(job.jobId)" + placement(job, separator: ", ")
        default:
            return "Slurm job \(job.jobId) \(job.state)" + placement(job, separator: ", ") + (meaningful(job.reason).map { ": \($0)" } ?? "")
        }
    }

    /// " on node1, GPU 0,1", leaving out what is not known.
    static func placement(_ job: SchedulerJob, separator: String) -> String {
        let node = meaningful(job.node).map { " on \($0)" } ?? ""
        guard let gpus = meaningful(job.gpus) else { return node }
        return node + (node.isEmpty ? " on GPU " : separator + "GPU ") + gpus
    }

    /// Nil for Slurm's "no value" words.
    static func meaningful(_ text: String?) -> String? {
        guard let text = text?.trimmingCharacters(in: .whitespaces), !text.isEmpty, text != "None", text != "(null)", text != "N/A" else { return nil }
        return text
    }
}

/// One Slurm job of a case's step attempt (or of one beam's run of a `for_each: beam` step).
public struct SchedulerJob: Sendable, Equatable, Codable {
    public var caseId: String
    /// The step's name.
    public var step: String
    /// The beam of a `for_each: beam` step's run; nil for a whole-case step.
    public var beam: Int?
    public var attempt: Int
    /// Slurm's job id.
    public var jobId: String
    /// Slurm's state: PENDING, RUNNING, COMPLETING, COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, ...
    public var state: String
    /// Slurm's pending reason (Resources, Priority, ...) or how the job ended.
    public var reason: String?
    /// The physical GPU indices Slurm gave the job: "1" or "0,1".
    public var gpus: String?
    public var node: String?
    public var submittedAt: Date?
    public var startedAt: Date?
    public var endedAt: Date?
    public var updatedAt: Date

    public init(caseId: String, step: String, beam: Int? = nil, attempt: Int, jobId: String, state: String, reason: String? = nil,
                gpus: String? = nil, node: String? = nil) {
        self.caseId = caseId
        self.step = step
        self.beam = beam
        self.attempt = attempt
        self.jobId = jobId
        self.state = state
        self.reason = reason
        self.gpus = gpus
        self.node = node
        self.updatedAt = Date()
    }

    /// States in which the job has not started yet.
    public static let queuedStates: Set<String> = ["PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED"]
    /// States in which the job runs.
    public static let runningStates: Set<String> = ["RUNNING", "COMPLETING"]

    /// Whether Slurm is done with the job: any state other than PENDING, CONFIGURING, RUNNING,
    /// COMPLETING, SUSPENDED, REQUEUED, RESIZING.
    public static func isTerminal(_ state: String) -> Bool {
        !queuedStates.contains(state) && !runningStates.contains(state)
    }

    public var isTerminal: Bool { Self.isTerminal(state) }

    enum CodingKeys: String, CodingKey {
        case caseId = "case_id", step, beam, attempt, jobId = "job_id", state, reason, gpus, node
        case submittedAt = "submitted_at", startedAt = "started_at", endedAt = "ended_at", updatedAt = "updated_at"
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(caseId, forKey: .caseId)
        try container.encode(step, forKey: .step)
        try container.encode(beam, forKey: .beam)
        try container.encode(attempt, forKey: .attempt)
        try container.encode(jobId, forKey: .jobId)
        try container.encode(state, forKey: .state)
        try container.encode(reason, forKey: .reason)
        try container.encode(gpus, forKey: .gpus)
        try container.encode(node, forKey: .node)
        try container.encode(submittedAt, forKey: .submittedAt)
        try container.encode(startedAt, forKey: .startedAt)
        try container.encode(endedAt, forKey: .endedAt)
        try container.encode(updatedAt, forKey: .updatedAt)
    }
}
