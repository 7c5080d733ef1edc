import Foundation
import MQICore
@testable import MQIStore
import MQITestSupport
import Testing

/// The record of Slurm jobs (`hpc.executor: slurm`): one row per step attempt (and beam), one
/// history event per state change, and the case's `detail` while the job is the current attempt.
struct SchedulerJobTests {
    /// A store with case-1 at step `simulate` (index 1), attempt 1, PROCESSING on GPU 0.
    static func caseAtSimulate(_ backend: StoreBackendKind) async throws -> (StoreFixture, Driver) {
        let fixture = try StoreFixture(backend: backend)
        let driver = Driver(store: fixture.store, conductor: try Fixtures.conductor())
        try await fixture.store.reconcileGPUs(configured: [0])
        try await driver.registerAndStart("case-1", workflow: Fixtures.workflowName)
        try await driver.work(.fileTransfer, expecting: "case-1")
        try await driver.conductNext()
        let summary = try #require(try await fixture.store.caseSummary("case-1"))
        #expect(summary.workflowStep == "simulate" && summary.attempt == 1 && summary.status == .processing)
        #expect(summary.detail == nil)
        return (fixture, driver)
    }

    static func slurmEvents(_ store: Store, _ caseId: String = "case-1") async throws -> [CaseHistoryEntry] {
        try await store.history(caseId).filter { $0.event.hasPrefix("slurm_") }
    }

    @Test("PENDING → RUNNING → COMPLETED: one history event per state change, the detail follows the job and is cleared when it ends", arguments: StoreBackendKind.allCases)
    func lifecycle(_ backend: StoreBackendKind) async throws {
        let (fixture, _) = try await Self.caseAtSimulate(backend)
        defer { fixture.remove() }
        let store = fixture.store, clock = fixture.clock
        let submitted = clock.now

        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 1, jobId: "12", state: "PENDING", reason: "None"))
        #expect(try await store.caseSummary("case-1")?.detail == "queued in Slurm")
        var events = try await Self.slurmEvents(store)
        #expect(events.map(\.message) == ["submitted to Slurm as job 12"])
        #expect(events.first?.step == "simulate" && events.first?.attempt == 1 && events.first?.status == .processing)

        // Only the reason changes: the detail says so (and the case counts as updated, for the
        // live dashboard), the history does not.
        clock.advance(by: 5)
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 1, jobId: "12", state: "PENDING", reason: "Resources"))
        var summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.detail == "queued in Slurm: Resources")
        #expect(summary.updatedAt == clock.now)
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 1, jobId: "12", state: "PENDING", reason: "Resources"))
        #expect(try await Self.slurmEvents(store).count == 1)

        clock.advance(by: 5)
        let started = clock.now
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 1, jobId: "12", state: "RUNNING",
                                                        gpus: "1", node: "localhost"))
        #expect(try await store.caseSummary("case-1")?.detail == "running in Slurm job 12 on localhost, GPU 1")
        events = try await Self.slurmEvents(store)
        #expect(events.map(\.message) == ["submitted to Slurm as job 12", "Slurm job 12 started on localhost, GPU 1"])
        #expect(events.map(\.event) == ["slurm_submitted", "slurm_started"])

        // COMPLETING is the tail of RUNNING: no event; what is not said again is kept.
        clock.advance(by: 5)
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 1, jobId: "12", state: "COMPLETING"))
        #expect(try await Self.slurmEvents(store).count == 2)
        #expect(try await store.caseSummary("case-1")?.detail == "running in Slurm job 12 on localhost, GPU 1")

        clock.advance(by: 5)
        let ended = clock.now
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 1, jobId: "12", state: "COMPLETED",
                                                        gpus: "1", node: "localhost"))
        clock.advance(by: 5)
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 1, jobId: "12", state: "COMPLETED",
                                                        gpus: "1", node: "localhost"))
        summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.detail == nil)
        events = try await Self.slurmEvents(store)
        #expect(events.map(\.message) == ["submitted to Slurm as job 12", "Slurm job 12 started on localhost, GPU 1", "Slurm job 12 ended COMPLETED"])

        let jobs = try await store.schedulerJobs(caseId: "case-1")
        #expect(jobs.count == 1)
        let job = try #require(jobs.first)
        #expect(job.jobId == "12" && job.state == "COMPLETED" && job.step == "simulate" && job.beam == nil && job.attempt == 1)
        #expect(job.gpus == "1" && job.node == "localhost")
        #expect(job.submittedAt == submitted)
        #expect(job.startedAt == started)
        #expect(job.endedAt == ended)
        #expect(job.updatedAt == clock.now)
        #expect(try await store.schedulerJobs(caseId: "case-2").isEmpty)
    }

    @Test("a job that ended badly says how, with Slurm's reason; the next attempt's job is a row of its own", arguments: StoreBackendKind.allCases)
    func timeoutAndNextAttempt(_ backend: StoreBackendKind) async throws {
        let (fixture, _) = try await Self.caseAtSimulate(backend)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 1, jobId: "13", state: "RUNNING", node: "n1"))
        #expect(try await store.caseSummary("case-1")?.detail == "running in Slurm job 13 on n1")
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 1, jobId: "13", state: "TIMEOUT",
                                                        reason: "TimeLimit"))
        #expect(try await store.caseSummary("case-1")?.detail == nil)
        // Seen first when already running: submitted and started.
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 2, jobId: "14", state: "RUNNING", gpus: "0,1"))
        #expect(try await Self.slurmEvents(store).map(\.message) == [
            "submitted to Slurm as job 13", "Slurm job 13 started on n1", "Slurm job 13 ended TIMEOUT (TimeLimit)",
            "submitted to Slurm as job 14", "Slurm job 14 started on GPU 0,1",
        ])
        #expect(try await store.schedulerJobs(caseId: "case-1").map(\.jobId) == ["13", "14"])
    }

    @Test("a job that is not the case's current attempt never touches its detail", arguments: StoreBackendKind.allCases)
    func nonCurrentAttemptLeavesTheDetail(_ backend: StoreBackendKind) async throws {
        let (fixture, _) = try await Self.caseAtSimulate(backend)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 1, jobId: "20", state: "PENDING", reason: "Priority"))
        #expect(try await store.caseSummary("case-1")?.detail == "queued in Slurm: Priority")
        // An older attempt, another step, a later attempt: history yes, detail no.
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 0, jobId: "19", state: "RUNNING", node: "n2"))
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 0, jobId: "19", state: "CANCELLED"))
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "download", attempt: 1, jobId: "21", state: "RUNNING", node: "n2"))
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 2, jobId: "22", state: "FAILED"))
        #expect(try await store.caseSummary("case-1")?.detail == "queued in Slurm: Priority")
        #expect(try await store.schedulerJobs(caseId: "case-1").count == 4)
        // An unknown case: nothing to attach the history to, but the job is kept.
        try await store.recordSchedulerJob(SchedulerJob(caseId: "ghost", step: "simulate", attempt: 1, jobId: "23", state: "PENDING"))
        #expect(try await store.history("ghost").isEmpty)
        #expect(try await store.schedulerJobs(caseId: "ghost").map(\.jobId) == ["23"])
    }

    @Test("the case's detail goes when the case moves to another step or finishes", arguments: StoreBackendKind.allCases)
    func conductClearsTheDetail(_ backend: StoreBackendKind) async throws {
        let (fixture, driver) = try await Self.caseAtSimulate(backend)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", attempt: 1, jobId: "30", state: "RUNNING", gpus: "1", node: "n1"))
        #expect(try await store.caseSummary("case-1")?.detail != nil)
        // A progress-like event that keeps the step and attempt keeps the detail.
        try await store.updateProgress("case-1", stepIndex: 1, attempt: 1, progress: 60)
        #expect(try await store.caseSummary("case-1")?.detail != nil)
        try await driver.work(.remoteExecutor, expecting: "case-1")
        try await driver.conductNext()
        var summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.workflowStep == "download")
        #expect(summary.detail == nil)

        // Terminal: cancelled while a detail is set (written directly: no job of this step).
        try await store.pool.write { db in try db.execute(sql: "UPDATE cases SET detail = 'queued in Slurm' WHERE case_id = 'case-1'") }
        _ = try await store.conduct(.cancel(reason: "operator"), caseId: "case-1", conductor: driver.conductor)
        summary = try #require(try await store.caseSummary("case-1"))
        #expect(summary.status == .cancelled)
        #expect(summary.detail == nil)
        // A late record of the finished job does not bring it back.
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "download", attempt: 1, jobId: "31", state: "RUNNING"))
        #expect(try await store.caseSummary("case-1")?.detail == nil)
    }

    @Test("beam jobs: a row per beam, the detail names the beam, and a beam that ends clears only its own detail", arguments: StoreBackendKind.allCases)
    func beamJobs(_ backend: StoreBackendKind) async throws {
        let (fixture, _) = try await Self.caseAtSimulate(backend)
        defer { fixture.remove() }
        let store = fixture.store
        // The beam runs a for_each: beam step would have (beam 3 still waits for a GPU).
        try await store.pool.write { db in
            for (beam, status) in [(1, "RUNNING"), (2, "RUNNING"), (3, "WAITING")] {
                try db.execute(sql: "INSERT INTO beam_runs (case_id, step_index, beam, status, attempt) VALUES ('case-1', 1, ?, ?, 1)",
                               arguments: [beam, status])
            }
        }
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", beam: 2, attempt: 1, jobId: "41", state: "PENDING", reason: "Resources"))
        #expect(try await store.caseSummary("case-1")?.detail == "beam 2 queued in Slurm: Resources")
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", beam: 1, attempt: 1, jobId: "40", state: "RUNNING", gpus: "0", node: "n1"))
        #expect(try await store.caseSummary("case-1")?.detail == "beam 1 running in Slurm job 40 on n1, GPU 0")
        // Beam 2 ends: beam 1's detail stays.
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", beam: 2, attempt: 1, jobId: "41", state: "COMPLETED"))
        #expect(try await store.caseSummary("case-1")?.detail == "beam 1 running in Slurm job 40 on n1, GPU 0")
        // Beam 3's run is not running (and attempt 2 of beam 1 is not its current one): no detail.
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", beam: 3, attempt: 1, jobId: "42", state: "PENDING", reason: "Priority"))
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", beam: 1, attempt: 2, jobId: "43", state: "PENDING", reason: "Priority"))
        #expect(try await store.caseSummary("case-1")?.detail == "beam 1 running in Slurm job 40 on n1, GPU 0")
        try await store.recordSchedulerJob(SchedulerJob(caseId: "case-1", step: "simulate", beam: 1, attempt: 1, jobId: "40", state: "COMPLETED"))
        #expect(try await store.caseSummary("case-1")?.detail == nil)

        let jobs = try await store.schedulerJobs(caseId: "case-1")
        #expect(jobs.map(\.jobId) == ["41", "40", "42", "43"])
        #expect(jobs.map(\.beam) == [2, 1, 3, 1])
        let events = try await Self.slurmEvents(store)
        #expect(events.map(\.message).contains("beam 2 submitted to Slurm as job 41"))
        #expect(events.map(\.message).contains("beam 1 Slurm job 40 ended COMPLETED"))
        #expect(events.count == 7, "\(events.map(\.message))")
    }

    @Test("JSON uses snake_case keys and writes every key, null when unknown")
    func json() throws {
        let job = SchedulerJob(caseId: "c", step: "s", attempt: 1, jobId: "7", state: "PENDING")
        let object = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(job)) as? [String: Any])
        #expect(Set(object.keys) == ["case_id", "step", "beam", "attempt", "job_id", "state", "reason", "gpus", "node",
                                     "submitted_at", "started_at", "ended_at", "updated_at"])
        #expect(object["beam"] is NSNull)
        let decoded = try JSONDecoder().decode(SchedulerJob.self, from: JSONEncoder().encode(job))
        #expect(decoded == job)
    }
}
