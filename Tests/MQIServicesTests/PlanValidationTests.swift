import Foundation
import MQICore
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// `case_layout: moqui` reads the case's RT plan: PlanInfo beams must be treatment beams of the
/// plan and PlanInfo's patient the plan's; the plan's treatment beams are stored and shown.
struct PlanValidationTests {
    /// A demo case (plan: treatment beams 1–3 named `Field N`, SETUP beam 4) with `beams` deliveries.
    static func demoCase(_ name: String = "P-100_1.2.3", beams: Int = 2, in temp: TemporaryDirectory) throws -> String {
        try DemoSite.writeCase(named: name, in: temp.file("data"), beams: beams)
        return temp.file("data/\(name)")
    }

    static func planInfos(_ caseDir: String) throws -> [String] {
        try FileManager.default.subpathsOfDirectory(atPath: caseDir).filter { $0.hasSuffix("PlanInfo.txt") }.sorted()
            .map { (caseDir as NSString).appendingPathComponent($0) }
    }

    /// Replaces the `key` line of a PlanInfo.txt.
    static func edit(_ planInfo: String, _ key: String, _ value: String) throws {
        let lines = try String(contentsOfFile: planInfo, encoding: .utf8).components(separatedBy: "\n")
            .map { $0.hasPrefix(key + ",") ? "\(key),\(value)" : $0 }
        try lines.joined(separator: "\n").write(toFile: planInfo, atomically: true, encoding: .utf8)
    }

    static func refusal(_ caseDir: String) -> String? {
        do {
            _ = try CaseValidator.validate(caseDir)
            return nil
        } catch {
            return error.description
        }
    }

    @Test func aValidCaseYieldsThePlansTreatmentBeams() throws {
        let temp = try TemporaryDirectory("mqi-plan")
        defer { temp.remove() }
        let details = try CaseValidator.validate(try Self.demoCase(beams: 2, in: temp))
        #expect(details.patientId == "P-100")
        #expect(details.beamNumbers == [1, 2])
        #expect(details.planBeams == (1...3).map { RTPlan.Beam(number: $0, name: "Field \($0)") }, "the SETUP beam 4 is left out")
    }

    /// (PlanInfo beam number, what the refusal says)
    static let wrongBeams: [(Int, [String])] = [
        (4, ["DICOM_BEAM_NUMBER 4 is not a treatment beam", "(a SETUP beam)", "its treatment beams: 1, 2, 3"]),
        (9, ["DICOM_BEAM_NUMBER 9 is not a treatment beam", "its treatment beams: 1, 2, 3"]),
    ]

    @Test(arguments: wrongBeams.indices)
    func aPlanInfoBeamThatIsNotATreatmentBeamIsRefused(_ index: Int) throws {
        let (beam, phrases) = Self.wrongBeams[index]
        let temp = try TemporaryDirectory("mqi-plan")
        defer { temp.remove() }
        let caseDir = try Self.demoCase(beams: 2, in: temp)
        try Self.edit(try Self.planInfos(caseDir)[1], "DICOM_BEAM_NUMBER", String(beam))
        let reason = try #require(Self.refusal(caseDir))
        for phrase in phrases { #expect(reason.contains(phrase), "\(reason)") }
        #expect(reason.contains("PlanInfo.txt") && reason.contains("RP."), "names the files: \(reason)")
    }

    @Test func aPatientMismatchIsRefusedNamingBoth() throws {
        let temp = try TemporaryDirectory("mqi-plan")
        defer { temp.remove() }
        let caseDir = try Self.demoCase(beams: 2, in: temp)
        try Self.edit(try Self.planInfos(caseDir)[0], "DICOM_PATIENT_ID", "P-999")
        let reason = try #require(Self.refusal(caseDir))
        #expect(reason.contains("patient mismatch") && reason.contains("'P-999'") && reason.contains("PatientID 'P-100'"), "\(reason)")
    }

    @Test func anUnreadablePlanOrTwoPlansAreRefused() throws {
        let temp = try TemporaryDirectory("mqi-plan")
        defer { temp.remove() }
        let caseDir = try Self.demoCase(beams: 2, in: temp)
        let plan = try #require(try FileManager.default.contentsOfDirectory(atPath: caseDir).first { $0.hasPrefix("RP.") })
        try FileManager.default.copyItem(atPath: caseDir + "/" + plan, toPath: caseDir + "/RP.copy.dcm")
        #expect(Self.refusal(caseDir)?.contains("2 RT plan files") == true, "\(Self.refusal(caseDir) ?? "accepted")")
        try FileManager.default.removeItem(atPath: caseDir + "/RP.copy.dcm")
        let bytes = try Data(contentsOf: URL(fileURLWithPath: caseDir + "/" + plan))
        try bytes.prefix(bytes.count - 30).write(to: URL(fileURLWithPath: caseDir + "/" + plan))
        let truncated = try #require(Self.refusal(caseDir))
        #expect(truncated.contains("\(plan): not a readable RT plan: truncated"), "\(truncated)")
        try Data("plan".utf8).write(to: URL(fileURLWithPath: caseDir + "/" + plan))
        #expect(Self.refusal(caseDir)?.contains("not a readable RT plan: not DICOM") == true, "\(Self.refusal(caseDir) ?? "accepted")")
    }

    /// Plans from pydicom in implicit and explicit VR, with undefined lengths: the case is valid
    /// with the plan's patient, and refused with another.
    @Test(.enabled(Comment(rawValue: PyDICOM.skipReason)) { PyDICOM.shouldRun }, .timeLimit(.minutes(5)))
    func pydicomPlansValidateTheCase() throws {
        let temp = try TemporaryDirectory("mqi-plan")
        defer { temp.remove() }
        let caseDir = try Self.demoCase(beams: 3, in: temp)
        let plan = try #require(try FileManager.default.contentsOfDirectory(atPath: caseDir).first { $0.hasPrefix("RP.") })
        let beams = [PyDICOM.Plan.Beam(1, "Field 1"), PyDICOM.Plan.Beam(2, "Field 2"), PyDICOM.Plan.Beam(3, "Field 3"),
                     PyDICOM.Plan.Beam(4, "SETUP", "SETUP")]
        for implicit in [false, true] {
            try PyDICOM.write([PyDICOM.Plan(path: caseDir + "/" + plan, patientId: "P-100", beams: beams, implicit: implicit,
                                            undefinedLength: true, bulky: true)])
            let details = try CaseValidator.validate(caseDir)
            #expect(details.planBeams.map(\.number) == [1, 2, 3] && details.beamNumbers == [1, 2, 3], "implicit \(implicit)")
            try PyDICOM.write([PyDICOM.Plan(path: caseDir + "/" + plan, patientId: "OTHER", beams: beams, implicit: implicit)])
            #expect(Self.refusal(caseDir)?.contains("PatientID 'OTHER'") == true, "implicit \(implicit)")
        }
    }

    /// The demo site with a good case and two bad ones: the good one completes with its plan
    /// beams stored and shown by `mqi cases show`; the bad ones are refused before upload.
    @Test(.timeLimit(.minutes(4)))
    func planBeamsAreStoredAndShownByTheCLI() async throws {
        let temp = try TemporaryDirectory("mqi-plan")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 0)
        let config = try ConfigLoader.load(path: site.configPath)
        let logdata = config.scanner.localLogdata
        try DemoSite.writeCase(named: "GOOD", in: logdata, beams: 2)
        try DemoSite.writeCase(named: "BADBEAM", in: logdata, beams: 2)
        try DemoSite.writeCase(named: "BADPATIENT", in: logdata, beams: 2)
        try Self.edit(try Self.planInfos(logdata + "/BADBEAM")[0], "DICOM_BEAM_NUMBER", "4")
        for planInfo in try Self.planInfos(logdata + "/BADPATIENT") { try Self.edit(planInfo, "DICOM_PATIENT_ID", "SOMEONE-ELSE") }

        try await Daemon(config: config, logger: CapturedLogs().logger(level: .info), exitWhenIdle: true).run()

        let store = try Daemon.openStore(config)
        let good = try #require(try await store.caseSummary("GOOD"))
        #expect(good.status == .completed, "\(good.error ?? "")")
        #expect(try await store.planBeams("GOOD") == [
            CasePlanBeam(number: 1, name: "Field 1", delivered: true), CasePlanBeam(number: 2, name: "Field 2", delivered: true),
            CasePlanBeam(number: 3, name: "Field 3", delivered: false),
        ])
        let badBeam = try #require(try await store.caseSummary("BADBEAM"))
        #expect(badBeam.status == .failed && badBeam.error?.contains("DICOM_BEAM_NUMBER 4 is not a treatment beam") == true, "\(badBeam.error ?? "")")
        let badPatient = try #require(try await store.caseSummary("BADPATIENT"))
        #expect(badPatient.status == .failed && badPatient.error?.contains("'SOMEONE-ELSE'") == true
                && badPatient.error?.contains("PatientID 'BADPATIENT'") == true, "\(badPatient.error ?? "")")
        for refused in ["BADBEAM", "BADPATIENT"] {
            #expect(!FileManager.default.fileExists(atPath: config.conductor.uploadDir + "/" + refused), "\(refused) was not uploaded")
            #expect(try await store.planBeams(refused).isEmpty)
        }

        let show = try MQIProcess(["cases", "show", "GOOD", "--config", site.configPath], output: temp.file("show.out"))
        #expect(await show.wait(upTo: 30) == 0, "\(show.output)")
        for line in ["plan beams:", "beam 1  Field 1  delivered", "beam 2  Field 2  delivered", "beam 3  Field 3  not delivered"] {
            #expect(show.output.contains(line), "\(show.output)")
        }
        let json = try MQIProcess(["cases", "show", "GOOD", "--config", site.configPath, "--json"], output: temp.file("show.json"))
        #expect(await json.wait(upTo: 30) == 0, "\(json.output)")
        let detail = try #require(try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [String: Any], "\(json.output)")
        let beams = try #require(detail["plan_beams"] as? [[String: Any]], "\(json.output)")
        #expect(beams.map { $0["number"] as? Int } == [1, 2, 3])
        #expect(beams.map { $0["delivered"] as? Bool } == [true, true, false])
        #expect(beams.first?["name"] as? String == "Field 1")
    }
}
