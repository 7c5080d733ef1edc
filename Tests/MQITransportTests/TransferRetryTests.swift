import Foundation
import Logging
import MQICore
import MQITestSupport
import Testing
@testable import MQITransport

/// Uploads are idempotent (a redelivery, or a retry after the rename already happened, finds
/// the final copy and succeeds), and a download of nothing says so. Both transports.
@Suite(.serialized)
struct TransferRetryTests {
    static let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    static func writeCase(_ directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory + "/beam 1", withIntermediateDirectories: true)
        for index in 0..<5 { try Data(repeating: UInt8(index), count: 1000 + index).write(to: URL(fileURLWithPath: "\(directory)/beam 1/\(index).ptn")) }
        try Data("plan".utf8).write(to: URL(fileURLWithPath: directory + "/RP.1.dcm"))
    }

    // MARK: - local

    @Test(.timeLimit(.minutes(1)))
    func aRedeliveredLocalUploadFindsTheFinalCopyAndLeavesIt() async throws {
        let temp = try TemporaryDirectory("mqi-retry")
        defer { temp.remove() }
        let local = temp.file("local/CASE-1")
        try Self.writeCase(local)
        let mover = LocalFileMover(uploadDir: temp.file("hpc/upload"), downloadDir: temp.file("hpc/download"))
        let first = try await mover.upload(caseId: "CASE-1", from: local)
        // Something wrote into the uploaded case (an input file); then the same upload is delivered again.
        let written = temp.file("hpc/upload/CASE-1/moqui_tps.in")
        try Data("GPUID 0\n".utf8).write(to: URL(fileURLWithPath: written))
        let again = try await mover.upload(caseId: "CASE-1", from: local)
        #expect(again == first)
        #expect(FileManager.default.fileExists(atPath: written), "the final copy was found, not replaced")
        // A copy in which steps already ran (run directories: a previous life of the case, before
        // its database was rebuilt) is replaced, so its attempts are not adopted as the new ones.
        let oldRun = temp.file("hpc/upload/CASE-1/.mqi/sim.1/exit_code")
        try FileManager.default.createDirectory(atPath: (oldRun as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data("0\n".utf8).write(to: URL(fileURLWithPath: oldRun))
        _ = try await mover.upload(caseId: "CASE-1", from: local)
        #expect(!FileManager.default.fileExists(atPath: oldRun))
        // A changed case is sent again.
        try Data("plan v2".utf8).write(to: URL(fileURLWithPath: local + "/RP.1.dcm"))
        _ = try await mover.upload(caseId: "CASE-1", from: local)
        #expect(try String(contentsOfFile: temp.file("hpc/upload/CASE-1/RP.1.dcm"), encoding: .utf8) == "plan v2")
    }

    @Test(.timeLimit(.minutes(1)))
    func aLocalDownloadOfAnEmptyOrMissingDirectorySaysNoResultFiles() async throws {
        let temp = try TemporaryDirectory("mqi-retry")
        defer { temp.remove() }
        let download = temp.file("hpc/download")
        try FileManager.default.createDirectory(atPath: download + "/CASE-1/empty-subdir", withIntermediateDirectories: true)
        let mover = LocalFileMover(uploadDir: temp.file("hpc/upload"), downloadDir: download)
        let empty = await #expect(throws: TransportError.self) { try await mover.download(caseId: "CASE-1", into: temp.file("results")) }
        #expect(empty?.message == "no result files in \(download)/CASE-1", "\(empty?.message ?? "")")
        let missing = await #expect(throws: TransportError.self) { try await mover.download(caseId: "CASE-2", into: temp.file("results")) }
        #expect(missing?.message.hasPrefix("no result files in \(download)/CASE-2") == true, "\(missing?.message ?? "")")
        #expect(!FileManager.default.fileExists(atPath: temp.file("results/CASE-1")))
    }

    // MARK: - ssh

    struct Remote {
        let server: SSHServer
        let temp: TemporaryDirectory
        let connection: SSHConnection

        init() async throws {
            server = try SSHServer()
            try await server.start()
            temp = try TemporaryDirectory("mqi-retry-ssh")
            connection = try SSHConnection(config: server.sshConfig(), retry: RetryPolicy(maxAttempts: 3, initialDelaySec: 0.2, maxDelaySec: 1),
                                           logger: TransferRetryTests.quiet, reconnectPatienceSec: 5)
        }

        func mover(beforeVerify: (@Sendable (String) async throws -> Void)? = nil) -> SSHFileMover {
            SSHFileMover(connection: connection, uploadDir: temp.file("remote/upload"), downloadDir: temp.file("remote/download"), beforeVerify: beforeVerify)
        }

        func finish() async {
            await connection.closeMaster()
            server.remove()
            temp.remove()
        }
    }

    @Test(.timeLimit(.minutes(1)), .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync"))
    func anSSHUploadRetriedAfterTheRenameOrRedeliveredSucceeds() async throws {
        let remote = try await Remote()
        let local = remote.temp.file("local/CASE-1")
        try Self.writeCase(local)
        let final = remote.temp.file("remote/upload/CASE-1")
        // The verify-and-rename script already ran and renamed the copy, but its answer was lost
        // with the connection: the retry of the script finds no staging copy and a final copy
        // that matches the manifest.
        let renamedAlready = remote.mover { partial in
            try FileManager.default.moveItem(atPath: partial, toPath: final)
        }
        let report = try await renamedAlready.upload(caseId: "CASE-1", from: local)
        #expect(report.files == 6)
        #expect(FileManager.default.contentsEqual(atPath: local, andPath: final))

        // Redelivered after something wrote into the case (an input file): found, not sent again, not replaced.
        let written = final + "/moqui_tps.in"
        try Data("GPUID 0\n".utf8).write(to: URL(fileURLWithPath: written))
        let untouched = remote.mover { _ in Issue.record("a redelivered upload of an uploaded case copied it again") }
        #expect(try await untouched.upload(caseId: "CASE-1", from: local) == report)
        #expect(FileManager.default.fileExists(atPath: written))
        // A copy in which steps already ran (a previous life of the case) is replaced.
        let oldRun = final + "/.mqi/sim.1/exit_code"
        try FileManager.default.createDirectory(atPath: (oldRun as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data("0\n".utf8).write(to: URL(fileURLWithPath: oldRun))
        _ = try await remote.mover().upload(caseId: "CASE-1", from: local)
        #expect(!FileManager.default.fileExists(atPath: oldRun))

        // A final copy that does not match (the case changed) is replaced by a new copy.
        try Data("plan v2".utf8).write(to: URL(fileURLWithPath: local + "/RP.1.dcm"))
        _ = try await remote.mover().upload(caseId: "CASE-1", from: local)
        #expect(FileManager.default.contentsEqual(atPath: local, andPath: final))

        // The staging copy vanished and the final copy does not match: transient, sent again.
        try Data("plan v3".utf8).write(to: URL(fileURLWithPath: local + "/RP.1.dcm"))
        let vanishing = remote.mover { partial in try FileManager.default.removeItem(atPath: partial) }
        let error = await #expect(throws: TransportError.self) { try await vanishing.upload(caseId: "CASE-1", from: local) }
        #expect(error?.isTransient == true && error?.message.contains("vanished") == true, "\(error?.message ?? "")")
        await remote.finish()
    }

    @Test(.timeLimit(.minutes(1)), .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync"))
    func anSSHDownloadOfAnEmptyOrMissingDirectorySaysNoResultFiles() async throws {
        let remote = try await Remote()
        let download = remote.temp.file("remote/download")
        try FileManager.default.createDirectory(atPath: download + "/CASE-1/empty-subdir", withIntermediateDirectories: true)
        let mover = remote.mover()
        let destination = remote.connection.destination
        let empty = await #expect(throws: TransportError.self) { try await mover.download(caseId: "CASE-1", into: remote.temp.file("results")) }
        #expect(empty?.message == "no result files in \(download)/CASE-1 on \(destination)", "\(empty?.message ?? "")")
        #expect(empty?.message.contains("checksum") == false)
        let missing = await #expect(throws: TransportError.self) { try await mover.download(caseId: "CASE-2", into: remote.temp.file("results")) }
        #expect(missing?.message.hasPrefix("no result files in \(download)/CASE-2 on \(destination)") == true, "\(missing?.message ?? "")")
        #expect(!FileManager.default.fileExists(atPath: remote.temp.file("results/CASE-1")))
        await remote.finish()
    }
}
