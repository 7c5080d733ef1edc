import Foundation
import MQICore
import MQIStore
import MQITransport
import MQITestSupport
import Testing
@testable import MQIServices

/// A delivery folder that appears in a registered case (a later fraction) runs
/// `scanner.followup_workflow` once, as a job of its own, with its results beside the case's;
/// the case's own results are not recomputed. The real `mqi` binary on a demo site.
@Suite(.serialized)
struct FollowupDeliveryTests {
    static let caseId = "DEMO-001_1.2.840.113619.2.55.3.1"

    /// A one-case demo site (its follow-up workflow `delivery_check`), whose follow-up step also
    /// records each run in a ledger.
    static func site(_ temp: TemporaryDirectory) throws -> DemoSite {
        let site = try DemoSite.create(at: temp.file("site"), cases: 1)
        let ledger = ShellQuote.quote(temp.file("followups.txt"))
        var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        func replace(_ old: String, _ new: String) throws {
            guard text.contains(old) else { throw TestSupportError("the demo config has no \(old)") }
            text = text.replacingOccurrences(of: old, with: new)
        }
        // The demo site runs delivery_check for follow-ups; here its step also writes a ledger line.
        try replace("  rescan_interval_sec: 30\n", "  rescan_interval_sec: 1\n")
        let demoCommand = try #require(text.split(separator: "\n").first { $0.hasPrefix("  check_delivery:") })
        try replace(String(demoCommand), """
              check_delivery: "echo \\"$MQI_CASE_ID\\" >> \(ledger); ls {case_dir} > /dev/null && mkdir -p {result_dir} && ls {case_dir}/{delivery} > {result_dir}/check.txt && echo {delivery} >> {result_dir}/check.txt"
            """)
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        return site
    }

    @Test(.timeLimit(.minutes(4)))
    func aLaterFractionRunsItsFollowupOnceAcrossRestartsAndNoiseStartsNothing() async throws {
        let temp = try TemporaryDirectory("mqi-followup")
        defer { temp.remove() }
        let site = try Self.site(temp)
        let config = try ConfigLoader.load(path: site.configPath)
        let store = try Daemon.openStore(config)
        var daemon = try MQIProcess(["run", "--config", site.configPath, "--log-format", "text"], output: temp.file("daemon-1.log"))
        defer { daemon.signal(SIGKILL) }
        #expect(await eventually(within: 90) { (try? await store.caseSummary(Self.caseId))??.status == .completed }, "\(daemon.output.suffix(3000))")
        let initial = try await store.deliveries(caseId: Self.caseId)
        #expect(initial.count == 2 && initial.allSatisfy { !$0.followup }, "\(initial)")
        let simulations = try await store.history(Self.caseId).filter { $0.message.contains("starting run_moqui_sim") }.count

        // The second fraction, a day later: one beam now (the others after a restart).
        let caseDir = (config.scanner.localLogdata as NSString).appendingPathComponent(Self.caseId)
        let plan = try #require(try FileManager.default.contentsOfDirectory(atPath: caseDir).first { $0.hasPrefix("RP") })
        let planUID = String(plan.dropFirst(3).dropLast(4))
        let day2 = try #require(initial.first?.start).addingTimeInterval(86_400)
        let folder = try DemoSite.writeDelivery(in: caseDir, beam: 1, at: day2, patientID: "DEMO-001", planUID: planUID, seed: 7)
        let jobId = Store.followupJobId(caseId: Self.caseId, folder: folder)
        #expect(await eventually(within: 60) { (try? await store.caseSummary(jobId))??.status == .completed },
                "\(daemon.output.suffix(3000))")
        // Its results sit beside the case's, which verify as before.
        let results = (config.conductor.resultsDir as NSString).appendingPathComponent(Self.caseId)
        let check = try String(contentsOfFile: results + "/deliveries/\(folder)/check.txt", encoding: .utf8)
        #expect(check.contains("PlanInfo.txt") && check.hasSuffix("\(folder)\n"), "\(check)")
        #expect(ResultManifest.verify(results) == nil)

        // Noise: a touched file, a renamed file and a folder that is not a delivery.
        try "note\n".write(toFile: caseDir + "/notes.txt", atomically: true, encoding: .utf8)
        try FileManager.default.moveItem(atPath: caseDir + "/notes.txt", toPath: caseDir + "/notes-renamed.txt")
        try FileManager.default.createDirectory(atPath: caseDir + "/scratch", withIntermediateDirectories: true)

        // kill -9 and a restart: nothing runs again; day 2's other beams get their follow-ups.
        daemon.signal(SIGKILL)
        _ = await daemon.wait(upTo: 10)
        daemon = try MQIProcess(["run", "--config", site.configPath, "--log-format", "text"], output: temp.file("daemon-2.log"))
        let second = try DemoSite.writeDelivery(in: caseDir, beam: 2, at: day2.addingTimeInterval(420), patientID: "DEMO-001", planUID: planUID, seed: 7)
        let third = try DemoSite.writeDelivery(in: caseDir, beam: 3, at: day2.addingTimeInterval(840), patientID: "DEMO-001", planUID: planUID, seed: 7)
        let secondJob = Store.followupJobId(caseId: Self.caseId, folder: second)
        let thirdJob = Store.followupJobId(caseId: Self.caseId, folder: third)
        #expect(await eventually(within: 60) {
            let second = (try? await store.caseSummary(secondJob))??.status
            let third = (try? await store.caseSummary(thirdJob))??.status
            return second == .completed && third == .completed
        }, "\(daemon.output.suffix(3000))")
        try await Task.sleep(for: .seconds(3))

        let ledger = try String(contentsOfFile: temp.file("followups.txt"), encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(ledger.sorted() == [jobId, secondJob, thirdJob].sorted(), "each follow-up once: \(ledger)")
        let cases = try await store.cases().map(\.caseId).sorted()
        #expect(cases == [Self.caseId, jobId, secondJob, thirdJob].sorted(), "noise started something: \(cases)")
        let after = try await store.history(Self.caseId).filter { $0.message.contains("starting run_moqui_sim") }.count
        #expect(after == simulations, "the case's simulation ran again")
        // Two fractions: day 1 gave 2 of the plan's 3 treatment beams, day 2 all three, with their jobs.
        let fractions = try await store.fractions(caseId: Self.caseId, windowMin: 60)
        #expect(fractions.map(\.complete) == [false, true], "\(fractions)")
        #expect(fractions.last?.deliveries.map(\.jobId) == [jobId, secondJob, thirdJob])
        #expect(fractions.last?.deliveries.allSatisfy { $0.jobStatus == .completed } == true)
        // `cases show` lists them.
        let shown = try runProcess(try mqiExecutable(), ["cases", "show", Self.caseId, "--config", site.configPath])
        #expect(shown.output.contains("fraction 2  complete") && shown.output.contains("follow-up \(jobId) COMPLETED"), "\(shown.output)")
    }
}
