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
    /// Writes finished attempts of a previous life at the run directory location and at the old
    /// one inside the case, uploads, and checks both were moved to `.mqi-runs/<case>.superseded-*`
    /// (never deleted) while `written` (in the matching final copy) stays.
    static func checkPreviousLifeMovedAside(uploadDir: String, caseId: String, written: String, upload: () async throws -> Void) async throws {
        let files = FileManager.default
        let runs = RunDirectories(uploadDir: uploadDir)
        let current = runs.runDirectory(caseId: caseId, step: "sim", attempt: 1) + "/exit_code"
        let legacy = runs.legacyRunDirectory(caseId: caseId, step: "sim", attempt: 1) + "/exit_code"
        for path in [current, legacy] {
            try files.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try Data("0\n".utf8).write(to: URL(fileURLWithPath: path))
        }
        try await upload()
        #expect(!files.fileExists(atPath: current) && !files.fileExists(atPath: legacy))
        #expect(files.fileExists(atPath: written), "the matching copy was kept")
        let aside = try files.contentsOfDirectory(atPath: runs.root).filter { $0.hasPrefix("\(caseId).superseded-") }.sorted()
        #expect(aside.count == 2, "\(aside)")
        #expect(aside.allSatisfy { files.fileExists(atPath: runs.root + "/\($0)/sim.1/exit_code") }, "\(aside)")
        #expect(aside.contains { $0.hasSuffix(".legacy") })
    }

    static let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    static func writeCase(_ directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory + "/beam 1", withIntermediateDirectories: true)
        for index in 0..<5 { try Data(repeating: UInt8(index), count: 1000 + index).write(to: URL(fileURLWithPath: "\(directory)/beam 1/\(index).ptn")) }
        try Data("plan".utf8).write(to: URL(fileURLWithPath: directory + "/RP.1.dcm"))
    }

    // MARK: - local

    @Test(.timeLimit(.minutes(3)))
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
        // Run directories of a previous life of the case (before its database was rebuilt; the
        // old layout inside the case too) are moved aside, never deleted, so their attempts are
        // not adopted as the new ones; the matching copy itself stays.
        try await Self.checkPreviousLifeMovedAside(uploadDir: temp.file("hpc/upload"), caseId: "CASE-1", written: written) {
            _ = try await mover.upload(caseId: "CASE-1", from: local)
        }
        // A changed case is sent again.
        try Data("plan v2".utf8).write(to: URL(fileURLWithPath: local + "/RP.1.dcm"))
        _ = try await mover.upload(caseId: "CASE-1", from: local)
        #expect(try String(contentsOfFile: temp.file("hpc/upload/CASE-1/RP.1.dcm"), encoding: .utf8) == "plan v2")
    }

    @Test(.timeLimit(.minutes(3)))
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

    @Test(.timeLimit(.minutes(3)), .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync"))
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
        // Run directories of a previous life of the case are moved aside; the copy stays.
        try await Self.checkPreviousLifeMovedAside(uploadDir: (final as NSString).deletingLastPathComponent, caseId: "CASE-1", written: written) {
            _ = try await remote.mover().upload(caseId: "CASE-1", from: local)
        }

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

    @Test(.timeLimit(.minutes(3)), .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync"))
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
