import Foundation
import HummingbirdTesting
import MQICore
import MQIServices
import MQIStore
import MQITestSupport
import Testing

/// The Slurm jobs of a case and its detail ("queued in Slurm: Resources") in the case JSON, the
/// case list, the dashboard pages and `mqi cases show`.
struct SchedulerJobAPITests {
    @Test func caseDetailCarriesJobsAndDetail() async throws {
        let fixture = try APITests.Fixture()
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = Conductor(config: fixture.config)
        #expect(try await store.registerCase("CASE-S", workflow: "default_qa"))
        #expect(try await store.registerCase("CASE-D", workflow: "default_qa"))
        _ = try await store.conduct(.newCaseFound, caseId: "CASE-S", conductor: conductor)
        let step = try #require(try await store.caseSummary("CASE-S")?.workflowStep)
        try await store.recordSchedulerJob(SchedulerJob(caseId: "CASE-S", step: step, attempt: 1, jobId: "77", state: "PENDING",
                                                        reason: "Resources <b>"))

        try await fixture.test { client in
            let reply = try await APITests.request(client, "/api/cases/CASE-S")
            #expect(reply.status == .ok)
            let body = try reply.json()
            let summary = try #require(body["case"] as? [String: Any])
            #expect(summary["detail"] as? String == "queued in Slurm: Resources <b>")
            let jobs = try #require(body["jobs"] as? [[String: Any]], "\(reply.body)")
            #expect(jobs.count == 1)
            #expect(jobs.first?["job_id"] as? String == "77")
            #expect(jobs.first?["state"] as? String == "PENDING")
            #expect(jobs.first?["step"] as? String == step)
            #expect(jobs.first?["attempt"] as? Int == 1)
            #expect(jobs.first?["beam"] is NSNull)
            #expect(jobs.first?["submitted_at"] as? String != nil)
            // Job states are no step attempts: the timeline has the one running step.
            let timeline = try #require(body["timeline"] as? [[String: Any]])
            #expect(timeline.map { $0["step"] as? String } == [step])

            // Under the direct executor: no jobs, no detail, but the keys are there.
            let plain = try await APITests.request(client, "/api/cases/CASE-D").json()
            #expect((plain["jobs"] as? [Any])?.isEmpty == true)
            #expect((plain["case"] as? [String: Any])?["detail"] is NSNull)

            // The case list carries the detail too (the dashboard's live rows read it).
            let list = try await APITests.request(client, "/api/cases").json()
            let cases = try #require(list["cases"] as? [[String: Any]])
            #expect(cases.first { $0["case_id"] as? String == "CASE-S" }?["detail"] as? String == "queued in Slurm: Resources <b>")

            let page = try await APITests.request(client, "/cases/CASE-S")
            #expect(page.status == .ok)
            #expect(page.body.contains("<p class=\"case-detail\" id=\"case-detail\">queued in Slurm: Resources &lt;b&gt;</p>"), "\(page.body)")
            #expect(page.body.contains("<section class=\"panel\" id=\"slurm-jobs-panel\">"))
            #expect(page.body.contains("<tr data-job-id=\"77\" data-job-state=\"PENDING\">"))
            #expect(!page.body.contains("Resources <b>"), "text is escaped")
            let other = try await APITests.request(client, "/cases/CASE-D")
            #expect(other.body.contains("id=\"slurm-jobs-panel\" hidden"), "no jobs: the panel is hidden")
            #expect(other.body.contains("id=\"case-detail\" hidden"))

            let overview = try await APITests.request(client, "/")
            #expect(overview.body.contains("<div class=\"row-detail\" data-field=\"detail\" title=\"queued in Slurm: Resources &lt;b&gt;\">"), "\(overview.body)")
        }

        let text = try #require(try await Reports.caseDetail("CASE-S", store: store, json: false))
        #expect(text.contains("detail:   queued in Slurm: Resources <b>"), "\(text)")
        #expect(text.contains("Slurm jobs:"))
        #expect(text.contains("  JOB  STEP"), "\(text)")
        #expect(text.split(separator: "\n").contains { $0.hasPrefix("  77 ") && $0.contains("PENDING") && $0.contains("Resources <b>") }, "\(text)")
        let json = try #require(try await Reports.caseDetail("CASE-S", store: store, json: true))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect((object["jobs"] as? [[String: Any]])?.first?["job_id"] as? String == "77")
        let plainText = try #require(try await Reports.caseDetail("CASE-D", store: store, json: false))
        #expect(!plainText.contains("Slurm jobs") && !plainText.contains("detail:"))
    }
}
