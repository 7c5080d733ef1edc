import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

/// The dashboard's static files are the source of truth: what the binary serves is exactly the
/// text of `Sources/MQIHTTP/Resources/…` (embedded at build time, no bundle needed at run time).
@Suite struct DashboardAssetsTests {
    static let resources = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Sources/MQIHTTP/Resources")

    @Test(arguments: [
        ("/assets/dashboard.css", "dashboard.css", "text/css; charset=utf-8"),
        ("/assets/dashboard.js", "dashboard.js", "text/javascript; charset=utf-8"),
        ("/favicon.ico", "favicon.svg", "image/svg+xml"),
    ])
    func servedAssetIsTheFile(uri: String, file: String, contentType: String) async throws {
        let expected = try String(contentsOf: Self.resources.appendingPathComponent(file), encoding: .utf8)
        let fixture = try APITests.Fixture(token: false)
        defer { fixture.remove() }
        let reply = try await fixture.test { client in try await APITests.request(client, uri) }
        #expect(reply.status == .ok)
        #expect(reply.headers[.contentType] == contentType)
        #expect(reply.body == expected)
    }
}
