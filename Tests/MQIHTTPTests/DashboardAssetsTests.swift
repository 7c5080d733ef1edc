import Foundation
import Hummingbird
import HummingbirdTesting
import MQITestSupport
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

    @Test(.enabled(if: LintTools.node != nil, "node is not installed (Debian package `nodejs`); scripts/test installs it"))
    func theScriptParses() throws {
        let check = try LintTools.run(try #require(LintTools.node), ["--check", Self.resources.appendingPathComponent("dashboard.js").path])
        #expect(check.status == 0, "node --check dashboard.js:\n\(check.output)")
    }

    /// eslint's recommended rules, for a browser script (the page has no build step: what is
    /// in the file is what the browser runs).
    @Test(.enabled(if: LintTools.eslint != nil && LintTools.node != nil, "eslint is not installed (Debian package `eslint`); scripts/test installs it"))
    func theScriptPassesESLint() throws {
        let temp = try TemporaryDirectory("mqi-eslint")
        defer { temp.remove() }
        let config = #"{ "root": true, "extends": "eslint:recommended", "env": { "browser": true }, "parserOptions": { "ecmaVersion": 2017 } }"#
        try config.write(toFile: temp.file("eslintrc.json"), atomically: true, encoding: .utf8)
        // The JSON formatter: Debian's default (stylish) one needs node modules that not every
        // nodejs build finds (chalk under NodeSource's), while the rules run all the same.
        let lint = try LintTools.run(try #require(LintTools.eslint), [
            "--no-eslintrc", "--config", temp.file("eslintrc.json"), "--format", "json", Self.resources.appendingPathComponent("dashboard.js").path,
        ])
        #expect(lint.status == 0, "eslint dashboard.js:\n\(lint.output)")
        let results = try JSONSerialization.jsonObject(with: Data(lint.output.utf8)) as? [[String: Any]]
        let problems = (results ?? []).reduce(0) { $0 + (($1["errorCount"] as? Int) ?? 0) + (($1["warningCount"] as? Int) ?? 0) }
        #expect(results?.count == 1 && problems == 0, "eslint dashboard.js:\n\(lint.output)")
    }
}
