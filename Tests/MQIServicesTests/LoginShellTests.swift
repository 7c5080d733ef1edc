import Foundation
import MQICore
import MQIStore
import MQITestSupport
import MQITransport
import Testing
@testable import MQIServices

/// The daemon over ssh to an account whose login shell is tcsh: every remote script, command,
/// step and rsync runs as it does for a bash account, and every case completes.
@Suite(.serialized, .enabled(if: SSHServer.isAvailable && !SSHServer.installedShells(["/usr/bin/tcsh"]).isEmpty,
                             "needs sshd, ssh, rsync and tcsh (scripts/test installs them)"))
struct LoginShellTests {
    @Test(.timeLimit(.minutes(3)))
    func everyCaseCompletesForATcshAccount() async throws {
        let server = try SSHServer(loginShell: "/usr/bin/tcsh")
        defer { server.stop(); server.remove() }
        try await server.start()
        var (temp, config, ledger) = try SSHEndToEndTests.site(server, cases: 3)
        // Keep the case directories on the HPC (hpc.cleanup) to see who wrote them.
        config.hpc.cleanup = .never
        defer { temp.remove() }
        #expect(config.hpc.ssh?.user == "mqihpc-tcsh")
        // The account writes the "HPC" side of the site and the simulation ledger.
        _ = FileManager.default.createFile(atPath: ledger, contents: nil)
        try server.giveToUser(config.conductor.uploadDir, config.conductor.downloadDir, ledger)
        try await Daemon(config: config, logger: CapturedLogs().logger(level: .info), exitWhenIdle: true).run()
        try await SSHEndToEndTests.expectAllCompletedOnce(config, ledger: ledger, cases: 3)
        // The steps ran as that account.
        let owner = try FileManager.default.attributesOfItem(atPath: (config.conductor.uploadDir as NSString).appendingPathComponent(DemoSite.caseID(1)))[.ownerAccountName] as? String
        #expect(owner == "mqihpc-tcsh")
    }
}
