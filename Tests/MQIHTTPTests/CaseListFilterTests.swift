import Foundation
import Hummingbird
import HummingbirdTesting
import MQICore
@testable import MQIHTTP
import MQIMetrics
import MQIStore
import MQITestSupport
import Synchronization
import Testing
@testable import MQIServices

/// The case list's received-between filter (`received_from`, `received_to`) in the API and the
/// dashboard, kept in the page's links.
@Suite struct CaseListFilterTests {
    static func iso(_ text: String) -> Date {
        let formatter = ISO8601DateFormatter()
        return formatter.date(from: text)!
    }

    @Test func receivedBetweenFiltersTheListAndStaysInTheLinks() async throws {
        let fixture = try APITests.Fixture()
        defer { fixture.remove() }
        let clock = Mutex(Self.iso("2026-11-30T10:00:00Z"))
        let store = try Store(path: fixture.config.state.database, now: { clock.withLock { $0 } })
        for (id, at) in [("OLD", "2026-11-30T10:00:00Z"), ("MID", "2026-12-01T10:00:00Z"), ("NEW", "2026-12-02T10:00:00Z")] {
            clock.withLock { $0 = Self.iso(at) }
            try await store.registerCase(id, workflow: "default_qa")
        }
        try await fixture.test { client in
            func ids(_ query: String) async throws -> [String] {
                try APITests.ids(await APITests.request(client, "/api/cases?\(query)"))
            }
            #expect(try await ids("received_from=2026-12-01T00:00:00Z") == ["NEW", "MID"])
            #expect(try await ids("received_to=2026-12-01T10:00:00Z") == ["OLD"], "received_to is exclusive")
            #expect(try await ids("received_from=2026-12-01T10:00:00Z&received_to=2026-12-01T10:00:00.001Z") == ["MID"], "received_from is inclusive")
            #expect(try await ids("received_from=2026-12-01T11:00:00%2B01:00&received_to=2026-12-02T00:00:00Z") == ["MID"], "an offset is honoured")
            // A date alone is that whole day in the server's time zone.
            let day = Calendar.current.dateComponents(in: .current, from: Self.iso("2026-12-01T10:00:00Z"))
            let local = String(format: "%04d-%02d-%02d", day.year!, day.month!, day.day!)
            #expect(try await ids("received_from=\(local)&received_to=\(local)") == ["MID"])
            #expect(try await ids("status=NEW&received_from=2026-12-02T00:00:00Z") == ["NEW"])
            for bad in ["received_from=yesterday", "received_to=2026-13-01", "received_from=2026-12-02T00:00:00Z&received_to=2026-12-01T00:00:00Z"] {
                let reply = try await APITests.request(client, "/api/cases?\(bad)")
                #expect(reply.status == .badRequest, "\(bad): \(reply.status)")
                #expect(reply.body.contains("received_"), "\(bad): \(reply.body)")
            }
            // The dashboard keeps the filter in its form and its links.
            let page = try await APITests.request(client, "/cases?received_from=2026-12-01T00:00:00Z&q=I")
            #expect(page.status == .ok)
            #expect(page.body.contains(#"name="received_from" value="2026-12-01T00:00:00Z""#))
            #expect(page.body.contains(#"data-received-from="2026-12-01T00:00:00Z""#))
            #expect(page.body.contains("MID") && !page.body.contains(">OLD<") && !page.body.contains(">NEW<"))
            let past = try await APITests.request(client, "/cases?received_to=2026-12-01")
            #expect(past.body.contains(#"data-first-page="false""#), "a list that ends in the past takes no live rows")
        }
    }

    @Test func listURLsCarryEveryFilter() throws {
        var components = URLComponents(string: "/cases?status=FAILED&q=G1%2F55&received_from=2026-12-01&received_to=2026-12-02T08:00:00Z")!
        components.queryItems = components.queryItems
        let request = Request(head: HTTPRequest(method: .get, scheme: "http", authority: "localhost", path: components.string!), body: .init(buffer: .init()))
        let filter = try CaseListFilter(request)
        let url = Dashboard.listURL(filter, cursor: "abc")
        #expect(url.contains("status=FAILED"))
        #expect(url.contains("q=G1%2F55"))
        #expect(url.contains("received_from=2026-12-01"))
        #expect(url.contains("received_to=2026-12-02T08%3A00%3A00Z") || url.contains("received_to=2026-12-02T08:00:00Z"))
        #expect(url.contains("cursor=abc"))
    }
}
