import Foundation
import MQICore
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// The JSON API against its own OpenAPI document, on a real daemon: schemathesis (from PyPI,
/// `scripts/schemathesis`) generates requests from the document served at /api/openapi.json (ids,
/// filters, tokens, Unicode, huge and negative numbers, wrong methods) and checks every response:
/// no 5xx, a documented status, content type and body schema, auth enforced where declared,
/// schema-violating requests refused. The daemon runs `mqi run` on a demo site with COMPLETED and
/// FAILED cases, a case id in Unicode with a space and `#`, a dead letter, and a tokens file, so
/// the ids exist and retry, cancel and replay are reached.
@Suite(.serialized)
struct SchemathesisTests {
    static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardizedFileURL.path
    static let token = "schemathesis-\(UUID().uuidString)"
    /// A case id a clinic could have: levels, Unicode, a space and `#` (percent-encoded in paths).
    static let unicodeCase = "G9/Ünïcødé 患者 #7/1.2.840.99"
    static let deadLetterCase = "G9/DEAD-LETTER/1.2.840.98"

    /// A demo site (rooms layout, per-beam simulation) whose second case's simulation fails, with
    /// an API token, and in its database a dead letter and a case that is not on disk (it fails at
    /// upload). Returns the site and its directory.
    static func site() async throws -> (temp: TemporaryDirectory, configPath: String) {
        let temp = try TemporaryDirectory("mqi-schemathesis")
        let site = try DemoSite.create(at: temp.file("site"), cases: 4, perBeam: true)
        var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        let marker = "run_moqui_sim:   \""
        #expect(text.contains(marker), "the demo config's run_moqui_sim line changed; update this test")
        // The simulator stand-in fails for the case directory of this name (case 2's study).
        text = text.replacingOccurrences(of: marker, with: marker + "MQI_DEMO_FAIL_CASE=1.2.840.113619.2.55.3.2 ")
        try Data("schemathesis \(token)\n".utf8).write(to: URL(fileURLWithPath: temp.file("api-tokens")))
        text += "\nhttp: { tokens_file: \(temp.file("api-tokens")) }\n"
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: site.configPath)

        // One delivery allowed: the claimed message fails once and is a dead letter.
        let store = try Store.open(path: config.state.database, maxDeliveries: 1)
        #expect(try await store.registerCase(deadLetterCase, workflow: "default_qa"))
        let claimed = try #require(try await store.claim(.conductor, owner: "schemathesis-test", leaseSec: 30))
        #expect(claimed.body.caseId == deadLetterCase)
        #expect(try await store.fail(claimed, error: "seeded by SchemathesisTests", retryAfter: 0))
        #expect(try await store.deadLetterCount() == 1)
        #expect(try await store.registerCase(unicodeCase, workflow: "default_qa"))
        return (temp, site.configPath)
    }

    static func curl(_ url: String) async throws -> (status: Int32?, output: String) {
        try await ObservabilityEndToEndTests.run("/usr/bin/curl", ["-sS", "--max-time", "10", url])
    }

    @Test(.timeLimit(.minutes(6)))
    func theAPIAnswersAsItsOpenAPIDocumentSays() async throws {
        let site = try await Self.site()
        defer { site.temp.remove() }
        let daemon = try MQIProcess(["run", "--config", site.configPath, "--log-format", "text"], output: site.temp.file("daemon.log"))
        defer {
            if daemon.isRunning {
                daemon.signal(SIGKILL)
                daemon.waitUntilExit()
            }
        }
        var port: Int?
        _ = await eventually(within: 30) {
            port = daemon.output.firstMatch(of: #/on http://127\.0\.0\.1:(\d+)/#).flatMap { Int($0.1) }
            return port != nil || !daemon.isRunning
        }
        let bound = try #require(port, "the daemon never said where it listens:\n\(daemon.output.suffix(3000))")
        let base = "http://127.0.0.1:\(bound)"

        // Every case but the dead letter's finishes: 3 COMPLETED, 2 FAILED (the injected
        // simulation fault, and the case that is not on disk).
        var counts: [String: Int] = [:]
        let settled = await eventually(within: 90) {
            guard let summary = try? await Self.curl("\(base)/api/summary"), summary.status == 0,
                  let object = try? JSONSerialization.jsonObject(with: Data(summary.output.utf8)) as? [String: Any],
                  let values = object["counts"] as? [String: Int] else { return false }
            counts = values
            return values["COMPLETED"] == 3 && values["FAILED"] == 2 && values["NEW"] == 1
                && values["PROCESSING"] == 0 && values["PENDING_RESOURCE"] == 0
        }
        #expect(settled, "the site's cases did not settle (COMPLETED 3, FAILED 2, NEW 1): \(counts)\n\(daemon.output.suffix(3000))")

        let script = (Self.repositoryRoot as NSString).appendingPathComponent("scripts/schemathesis")
        let started = Date()
        let run = try await ObservabilityEndToEndTests.run(script, [base, Self.token], timeout: 300)
        let seconds = Date().timeIntervalSince(started)
        let summary = Self.summary(run.output)
        #expect(run.status == 0, "schemathesis \(run.status.map { "exited with status \($0)" } ?? "timed out") after \(Int(seconds)) s against \(base):\n\(summary)")
        #expect(run.output.contains("Test cases:"), "schemathesis printed no summary:\n\(summary)")
        // With the token and the site's case ids, retry, cancel or replay went through at least once.
        let changes = daemon.output.split(separator: "\n").filter { $0.contains("through the API by schemathesis") }
        #expect(!changes.isEmpty, "no retry, cancel or replay went through: the token or the case ids never reached them")
        print("schemathesis against the daemon: \(Int(seconds)) s; retries, cancels and replays applied: \(changes.count)\n\(changes.prefix(10).joined(separator: "\n"))\n\(run.output.components(separatedBy: "=== SUMMARY ===").last ?? "")")

        #expect(daemon.isRunning, "the daemon died under schemathesis:\n\(daemon.output.suffix(3000))")
        daemon.signal(SIGTERM)
        let status = await daemon.wait(upTo: 30)
        #expect(status == 0, "the daemon's exit after schemathesis: \(String(describing: status))\n\(daemon.output.suffix(2000))")
    }

    /// What to show when the run failed: its failures and summary (the end of its output), or all
    /// of a short output (pip's or the script's own message).
    static func summary(_ output: String) -> String {
        let start = output.range(of: "=== FAILURES ===")?.lowerBound ?? output.range(of: "=== SUMMARY ===")?.lowerBound
        let text = start.map { String(output[$0...]) } ?? output
        return text.count > 20_000 ? "...\n" + String(text.suffix(20_000)) : text
    }
}
