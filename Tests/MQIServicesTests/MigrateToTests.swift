import Foundation
import MQICore
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// `mqi db migrate-to`: a SQLite state with cases in flight, copied into PostgreSQL by the real
/// binary, finishes there.
@Suite(.serialized)
struct MigrateToTests {
    static func migrate(_ site: CrashSafetyTests.Site, to url: String, tag: String) async throws -> (status: Int32?, output: String) {
        let process = try MQIProcess(["db", "migrate-to", "--config", site.config, url], output: site.temp.file("migrate-\(tag).log"))
        let status = await process.wait(upTo: 60)
        return (status, process.output)
    }

    @Test(.timeLimit(.minutes(3)))
    func aStateKilledMidRunIsCopiedAndFinishesOnPostgreSQL() async throws {
        let server = try PostgresServer.shared()
        // 16 cases: with 8, the faster pipeline had finished them all before the kill under CI's load.
        let site = try CrashSafetyTests.Site(cases: 16, gpus: [0, 1])
        defer { site.temp.remove() }
        let daemon = try site.run(tag: "sqlite")
        #expect(await eventually(within: 30) { (try? site.runs().keys.contains { $0.hasPrefix("simulation") }) == true })
        // Refused while the daemon runs on the file.
        let url = try server.freshDatabase(prefix: "mig")
        let busy = try await Self.migrate(site, to: url, tag: "busy")
        #expect(busy.status == 3, "\(busy.output)")
        #expect(busy.output.contains("stop it first"))
        daemon.signal(SIGKILL)
        #expect(await daemon.wait(upTo: 10) != nil)

        let sqlite = try site.store()
        let before = try await sqlite.cases()
        let inFlight = before.filter { !$0.status.isFinal }
        #expect(!inFlight.isEmpty, "the kill should leave cases in flight")
        let queued = try await sqlite.queuedMessages().count

        let copied = try await Self.migrate(site, to: url, tag: "copy")
        #expect(copied.status == 0, "\(copied.output)")
        #expect(copied.output.contains("cases: \(before.count) row(s)"))
        #expect(copied.output.contains("messages: \(queued) row(s)"))
        // A second copy into the now non-empty database is refused and changes nothing.
        let again = try await Self.migrate(site, to: url, tag: "again")
        #expect(again.status == 1)
        #expect(again.output.contains("not empty"))

        // The communicator now runs on PostgreSQL and finishes what was in flight.
        let text = try String(contentsOfFile: site.config, encoding: .utf8)
            .replacingOccurrences(of: "database: ./var/mqi.sqlite", with: "database: \(url)")
        try text.write(toFile: site.config, atomically: true, encoding: .utf8)
        let postgres = try site.store()
        #expect(postgres.isShared)
        let migrated = try await postgres.cases()
        #expect(Dictionary(uniqueKeysWithValues: migrated.map { ($0.caseId, $0.status) }) == Dictionary(uniqueKeysWithValues: before.map { ($0.caseId, $0.status) }))
        for summary in before.prefix(3) {
            #expect(try await postgres.history(summary.caseId).map(\.message) == (try await sqlite.history(summary.caseId)).map(\.message))
        }
        let last = try site.run(["--exit-when-idle"], tag: "postgres")
        #expect(await last.wait(upTo: 120) == 0, "\(last.output.suffix(3000))")
        try await site.expectCleanFinish(cases: 16)
    }
}
