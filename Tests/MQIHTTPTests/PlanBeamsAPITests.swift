import Foundation
import HummingbirdTesting
import MQICore
import MQIStore
import MQITestSupport
import Testing

/// The RT plan's treatment beams in the case JSON and on the dashboard's case page.
struct PlanBeamsAPITests {
    @Test func caseDetailAndCasePageShowThePlanBeams() async throws {
        let fixture = try APITests.Fixture()
        defer { fixture.remove() }
        #expect(try await fixture.store.registerCase("CASE-P", workflow: "default_qa", patientId: "P-1", beamNumbers: [1, 3],
                                                     planBeams: [RTPlan.Beam(number: 1, name: "G0 <left>"), RTPlan.Beam(number: 2, name: "G90"),
                                                                 RTPlan.Beam(number: 3, name: "")]))
        #expect(try await fixture.store.registerCase("CASE-NOPLAN", workflow: "default_qa"))
        try await fixture.test { client in
            let reply = try await APITests.request(client, "/api/cases/CASE-P")
            #expect(reply.status == .ok)
            let beams = try #require(try reply.json()["plan_beams"] as? [[String: Any]], "\(reply.body)")
            #expect(beams.map { $0["number"] as? Int } == [1, 2, 3])
            #expect(beams.map { $0["name"] as? String } == ["G0 <left>", "G90", ""])
            #expect(beams.map { $0["delivered"] as? Bool } == [true, false, true])
            let none = try await APITests.request(client, "/api/cases/CASE-NOPLAN")
            #expect((try none.json()["plan_beams"] as? [Any])?.isEmpty == true, "\(none.body)")

            let page = try await APITests.request(client, "/cases/CASE-P")
            #expect(page.status == .ok)
            #expect(page.body.contains("id=\"plan-beams\""), "\(page.body)")
            #expect(page.body.contains("2 of 3 treatment beams delivered"))
            #expect(page.body.contains("G0 &lt;left&gt;"), "names are escaped")
            #expect(page.body.contains("<tr data-beam-number=\"2\" data-delivered=\"false\">"))
            #expect(page.body.contains("not delivered") && page.body.contains(">delivered<"))
            let plain = try await APITests.request(client, "/cases/CASE-NOPLAN")
            #expect(!plain.body.contains("id=\"plan-beams\""), "no panel without a plan")
        }
    }
}
