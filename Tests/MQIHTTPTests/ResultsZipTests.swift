import Foundation
import Hummingbird
import HummingbirdTesting
import MQICore
@testable import MQIHTTP
import MQIMetrics
import MQIStore
import MQITestSupport
import MQITransport
import Testing
@testable import MQIServices

/// `GET /api/cases/{id}/results.zip`: a finished case's results as one archive, written while it
/// is sent, its SHA-256 manifest inside; read back by Python's zipfile and checked by sha256sum.
@Suite struct ResultsZipTests {
    @Test func aCompletedCasesResultsArriveAsAZipThatPythonReadsAndSha256sumVerifies() async throws {
        let fixture = try APITests.Fixture()
        defer { fixture.remove() }
        let caseId = "G1/5506119/1.2.840.113619.2.55.3.7"
        try await fixture.store.registerCompletedCase(caseId, workflow: "default_qa", note: "test")
        try await fixture.store.registerCase("RUNNING-1", workflow: "default_qa")
        try await fixture.store.registerCompletedCase("NO-RESULTS", workflow: "default_qa", note: "test")
        let results = (fixture.config.conductor.resultsDir as NSString).appendingPathComponent(caseId)
        try FileManager.default.createDirectory(atPath: results + "/beam 2", withIntermediateDirectories: true)
        var dose = Data(count: 3_000_000)
        dose.withUnsafeMutableBytes { bytes in for index in 0..<bytes.count { bytes[index] = UInt8(truncatingIfNeeded: index &* 2_654_435_761 >> 13) } }
        try dose.write(to: URL(fileURLWithPath: results + "/RD_dose.dcm"))
        try Data("beam 2 log, ünïcode\n".utf8).write(to: URL(fileURLWithPath: results + "/beam 2/log.txt"))
        try Data().write(to: URL(fileURLWithPath: results + "/empty.txt"))
        try ResultManifest.write(in: results)
        let temp = try TemporaryDirectory("mqi-zip")
        defer { temp.remove() }

        let app = Application(router: HTTPServer.router(store: fixture.store, metrics: MQIMetrics(), readiness: { [:] }, api: fixture.context))
        let (status, headers, body) = try await app.test(.live) { client in
            try await client.execute(uri: "/api/cases/\(APITests.segment(caseId))/results.zip", method: .get) { response in
                (response.status, response.headers, Data(buffer: response.body))
            }
        }
        #expect(status == .ok)
        #expect(headers[.contentType] == "application/zip")
        #expect(headers[.contentDisposition]?.contains("G1_5506119_1.2.840.113619.2.55.3.7-results.zip") == true)
        let archive = temp.file("results.zip")
        try body.write(to: URL(fileURLWithPath: archive))
        let check = try runProcess("/usr/bin/python3", ["-c", """
            import zipfile, sys
            z = zipfile.ZipFile(sys.argv[1])
            bad = z.testzip()
            assert bad is None, bad
            print("\\n".join(sorted(z.namelist())))
            z.extractall(sys.argv[2])
            """, archive, temp.file("out")])
        #expect(check.status == 0, "\(check.output)")
        let root = "G1_5506119_1.2.840.113619.2.55.3.7"
        #expect(check.output.split(separator: "\n").map(String.init) == ["\(root)/.mqi-manifest.sha256", "\(root)/RD_dose.dcm", "\(root)/beam 2/log.txt", "\(root)/empty.txt"])
        #expect(try Data(contentsOf: URL(fileURLWithPath: temp.file("out/\(root)/RD_dose.dcm"))) == dose)
        let verified = try runProcess("/bin/sh", ["-c", "cd \"$1\" && sha256sum --check --strict .mqi-manifest.sha256", "sh", temp.file("out/\(root)")])
        #expect(verified.status == 0, "\(verified.output)")

        try await fixture.test { client in
            #expect(try await APITests.request(client, "/api/cases/RUNNING-1/results.zip").status == .conflict)
            #expect(try await APITests.request(client, "/api/cases/NO-SUCH/results.zip").status == .notFound)
            let missing = try await APITests.request(client, "/api/cases/NO-RESULTS/results.zip")
            #expect(missing.status == .notFound && missing.body.contains("no verified results"))
            // The case page offers the download once COMPLETED.
            let page = try await APITests.request(client, "/cases/\(APITests.segment(caseId))")
            #expect(page.body.contains("/results.zip\" download"))
            #expect(try await APITests.request(client, "/cases/RUNNING-1").body.contains(#"id="results-download" hidden"#))
        }
    }

    @Test func crc32MatchesTheStandardCheckValue() {
        var crc = CRC32()
        crc.update(Data("123456789".utf8))
        #expect(crc.value == 0xCBF4_3926)
    }
}
