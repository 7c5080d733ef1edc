import Foundation
import HummingbirdTesting
import MQICore
import MQIStore
import MQITestSupport
import Testing

/// The case page's Fractions panel: a header row per fraction (complete or not, its anomaly)
/// and a row per delivery folder with its follow-up job linked to that job's case page.
struct FractionsPageTests {
    @Test func casePageShowsFractionsAndFollowupJobs() async throws {
        let fixture = try APITests.Fixture()
        defer { fixture.remove() }
        let store = fixture.store
        #expect(try await store.registerCase("CASE-F", workflow: "default_qa"))
        #expect(try await store.registerCase("CASE-E", workflow: "default_qa"))
        let start = Date(timeIntervalSince1970: 1_745_000_000)
        try await store.recordDeliveries(caseId: "CASE-F", [Delivery(folder: "d1", start: start, beam: 1)], followup: false)
        // Beam 1 again within the fraction window: the fraction's anomaly.
        try await store.recordDeliveries(caseId: "CASE-F", [
            Delivery(folder: "d2", start: start.addingTimeInterval(120), beam: 1),
            Delivery(folder: "d3 <i>", start: start.addingTimeInterval(86_400), beam: 2),
        ], followup: true)
        let jobId = try #require(try await store.registerFollowup(caseId: "CASE-F", folder: "d2", workflow: "default_qa"))
        #expect(jobId == "CASE-F#d2")

        try await fixture.test { client in
            let page = try await APITests.request(client, "/cases/CASE-F")
            #expect(page.status == .ok)
            let body = page.body
            #expect(body.contains("<section class=\"panel\" id=\"fractions-panel\">"), "\(body)")
            #expect(body.contains("<tr class=\"fraction-head\" data-fraction=\"1\" data-complete=\"true\"><th colspan=\"4\">Fraction 1"))
            #expect(body.contains("data-fraction=\"2\""))
            #expect(body.contains("<span class=\"fraction-anomaly\">beam 1 delivered 2 times (the plan has each beam once)</span>"), "\(body)")
            #expect(body.contains("<a href=\"/cases/CASE-F%23d2\">CASE-F#d2</a> <span class=\"badge status-NEW\""), "\(body)")
            #expect(body.contains("<tr data-folder=\"d1\">"))
            #expect(body.contains("case&#39;s own"), "a delivery the case came with")
            #expect(body.contains("<tr data-folder=\"d3 &lt;i&gt;\"><td>d3 &lt;i&gt;</td>"), "text is escaped")
            #expect(body.contains("<span class=\"muted\">—</span>"), "a follow-up without a job yet")
            #expect(!body.contains("d3 <i>"))

            let empty = try await APITests.request(client, "/cases/CASE-E")
            #expect(empty.body.contains("id=\"fractions-panel\" hidden"), "no deliveries: the panel is hidden")
        }
    }
}
