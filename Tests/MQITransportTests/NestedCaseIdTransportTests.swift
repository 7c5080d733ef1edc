import Foundation
import MQICore
import MQITestSupport
import Testing
@testable import MQITransport

/// Case ids with `/` (`scanner.case_depth: 3`): uploads and downloads nest
/// (`{upload_dir}/G1/5506119/1.2…`), staging copies too, parents created, both transports.
struct NestedCaseIdTransportTests {
    static let id = "G1/5506119/1.2.840.113619.2.55.3.1"

    static func writeCase(at local: String) throws {
        try FileManager.default.createDirectory(atPath: local + "/2025042401501400", withIntermediateDirectories: true)
        try Data("DICOM_BEAM_NUMBER,1\n".utf8).write(to: URL(fileURLWithPath: local + "/2025042401501400/PlanInfo.txt"))
        try Data("plan".utf8).write(to: URL(fileURLWithPath: local + "/RP.1.dcm"))
    }

    static func check(_ mover: some FileMover, local: String, upload: String, download: String, results: String) async throws {
        let report = try await mover.upload(caseId: id, from: local)
        #expect(report.files == 2)
        #expect(FileManager.default.contentsEqual(atPath: local, andPath: upload + "/" + id))
        #expect(!FileManager.default.fileExists(atPath: upload + "/.mqi-partial/" + id))
        // A redelivered upload finds the nested copy.
        #expect(try await mover.upload(caseId: id, from: local) == report)
        // A second study of the same patient lands beside it.
        let other = "G1/5506119/1.2.840.113619.2.55.3.2"
        _ = try await mover.upload(caseId: other, from: local)
        #expect(FileManager.default.fileExists(atPath: upload + "/" + id + "/RP.1.dcm"))
        #expect(FileManager.default.fileExists(atPath: upload + "/" + other + "/RP.1.dcm"))

        try FileManager.default.createDirectory(atPath: download + "/" + id, withIntermediateDirectories: true)
        try Data("dose".utf8).write(to: URL(fileURLWithPath: download + "/" + id + "/RTDOSE.dcm"))
        let back = try await mover.download(caseId: id, into: results)
        #expect(back == TransferReport(files: 1, bytes: 4))
        #expect(ResultManifest.verify(results + "/" + id) == nil)
        #expect(!FileManager.default.fileExists(atPath: results + "/.mqi-partial/" + id))
        // Downloaded again (a redelivery): replaced in place.
        #expect(try await mover.download(caseId: id, into: results) == back)
    }

    @Test func localTransportNestsUploadsAndResults() async throws {
        let temp = try TemporaryDirectory("mqi-nested")
        defer { temp.remove() }
        let local = temp.file("logdata/" + Self.id)
        try Self.writeCase(at: local)
        let mover = LocalFileMover(uploadDir: temp.file("hpc/upload"), downloadDir: temp.file("hpc/download"))
        try await Self.check(mover, local: local, upload: temp.file("hpc/upload"), download: temp.file("hpc/download"), results: temp.file("results"))
    }

    @Test(.timeLimit(.minutes(3)), .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync"))
    func sshTransportNestsUploadsAndResults() async throws {
        let setup = try await SSHTransportTests.Setup()
        let local = setup.temp.file("logdata/" + Self.id)
        try Self.writeCase(at: local)
        let upload = setup.temp.file("remote/upload"), download = setup.temp.file("remote/download")
        let mover = SSHFileMover(connection: setup.connection, uploadDir: upload, downloadDir: download)
        do {
            try await Self.check(mover, local: local, upload: upload, download: download, results: setup.temp.file("results"))
        } catch {
            Issue.record("\(error)")
        }
        await setup.finish()
    }
}
