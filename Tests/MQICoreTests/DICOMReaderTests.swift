import Foundation
import MQICore
import MQITestSupport
import Testing

/// pydicom, or a clear skip (evaluated only when such a test is about to run).
let pydicomTrait = Testing.ConditionTrait.enabled(Comment(rawValue: PyDICOM.skipReason)) { PyDICOM.shouldRun }

/// The DICOM reader and RT plan model against plans written by a real toolkit (pydicom), and
/// against truncated, corrupted and hostile bytes.
struct DICOMReaderTests {
    static let beams = [
        PyDICOM.Plan.Beam(1, "G000 Field 1"), PyDICOM.Plan.Beam(2, "SETUP kV", "SETUP"),
        PyDICOM.Plan.Beam(3, "G090 Field 2"), PyDICOM.Plan.Beam(7, "Ü-Feld 7 患者"),
    ]

    /// (name, implicit VR, sequence, undefined length, bulky)
    static let variants: [(String, Bool, String, Bool, Bool)] = [
        ("explicit VR, defined lengths", false, "IonBeamSequence", false, false),
        ("explicit VR, undefined-length sequence and items", false, "IonBeamSequence", true, false),
        ("implicit VR, defined lengths", true, "IonBeamSequence", false, false),
        ("implicit VR, undefined-length sequence and items", true, "IonBeamSequence", true, false),
        ("explicit VR, control points and 100 KB OB", false, "IonBeamSequence", false, true),
        ("explicit VR, undefined lengths, control points and OB", false, "IonBeamSequence", true, true),
        ("implicit VR, undefined lengths, control points and OB", true, "IonBeamSequence", true, true),
        ("photon-style BeamSequence, explicit VR", false, "BeamSequence", false, false),
        ("photon-style BeamSequence, implicit VR, undefined length", true, "BeamSequence", true, true),
    ]

    static func pydicomPlan(_ index: Int, in temp: TemporaryDirectory, patient: String = "PAT-0042") throws -> [UInt8] {
        let (_, implicit, sequence, undefined, bulky) = variants[index]
        let path = temp.file("RP.\(index).dcm")
        try PyDICOM.write([PyDICOM.Plan(path: path, patientId: patient, beams: beams, implicit: implicit, sequence: sequence,
                                        undefinedLength: undefined, bulky: bulky)])
        return [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    @Test(pydicomTrait, arguments: variants.indices)
    func readsPydicomPlans(_ index: Int) throws {
        let temp = try TemporaryDirectory("mqi-dicom")
        defer { temp.remove() }
        let bytes = try Self.pydicomPlan(index, in: temp)
        let plan = try RTPlan(dicom: bytes)
        let name = Self.variants[index].0
        #expect(plan.patientId == "PAT-0042", "\(name)")
        #expect(plan.planUID?.isEmpty == false, "\(name)")
        #expect(plan.beams.map(\.number) == [1, 2, 3, 7], "\(name)")
        #expect(plan.treatmentBeams == [
            RTPlan.Beam(number: 1, name: "G000 Field 1"), RTPlan.Beam(number: 3, name: "G090 Field 2"),
            RTPlan.Beam(number: 7, name: "Ü-Feld 7 患者"),
        ], "\(name): the SETUP beam is left out, names are read as UTF-8")
        #expect(plan.beams.first { $0.number == 2 }?.deliveryType == "SETUP", "\(name)")
    }

    @Test func theDemoPlanWriterRoundTrips() throws {
        let plan = RTPlan(patientId: "DEMO-001", planUID: "1.2.3.4", beams: [
            RTPlan.Beam(number: 1, name: "Field 1"), RTPlan.Beam(number: 2, name: "Field 2"),
            RTPlan.Beam(number: 3, name: "SETUP", deliveryType: "SETUP"),
        ])
        let read = try RTPlan(dicom: plan.encoded())
        #expect(read == plan)
        #expect(read.treatmentBeams.map(\.number) == [1, 2])
    }

    @Test(pydicomTrait, .timeLimit(.minutes(3)))
    func pydicomReadsTheDemoPlanWriter() throws {
        let python = try PyDICOM.python.get()
        let temp = try TemporaryDirectory("mqi-dicom")
        defer { temp.remove() }
        let plan = RTPlan(patientId: "DEMO-007", planUID: "1.2.3.4.5", beams: [
            RTPlan.Beam(number: 1, name: "Field 1"), RTPlan.Beam(number: 4, name: "SETUP", deliveryType: "SETUP"),
        ])
        try Data(plan.encoded()).write(to: URL(fileURLWithPath: temp.file("RP.dcm")))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", """
            import pydicom, sys
            ds = pydicom.dcmread(sys.argv[1])
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            print(ds.PatientID, ";".join(f"{b.BeamNumber}:{b.BeamName}:{b.TreatmentDeliveryType}" for b in ds.IonBeamSequence))
            """, temp.file("RP.dcm")]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(text.trimmingCharacters(in: .whitespacesAndNewlines) == "DEMO-007 1:Field 1:TREATMENT;4:SETUP:SETUP")
    }

    /// Every strict prefix of a plan is an error (the beam sequence is last), never a crash or hang.
    @Test func everyTruncationOfADemoPlanIsAClearError() throws {
        let bytes = RTPlan(patientId: "P", planUID: "1.2", beams: [RTPlan.Beam(number: 1, name: "F1"), RTPlan.Beam(number: 2, name: "F2")]).encoded()
        for length in 0..<bytes.count {
            #expect(throws: DICOMError.self, "prefix of \(length) bytes") { try RTPlan(dicom: Array(bytes.prefix(length))) }
        }
        #expect(throws: DICOMError.self) { try RTPlan(dicom: Array(bytes.prefix(bytes.count - 4))) }
        do {
            _ = try RTPlan(dicom: Array(bytes.prefix(bytes.count - 20)))
        } catch {
            #expect(error.code == .truncated, "\(error)")
            #expect(error.description.contains("(300A,"), "names the element it ends in: \(error)")
        }
    }

    @Test(pydicomTrait, arguments: [1, 3, 6])
    func truncatedPydicomPlansAreErrors(_ index: Int) throws {
        let temp = try TemporaryDirectory("mqi-dicom")
        defer { temp.remove() }
        let bytes = try Self.pydicomPlan(index, in: temp)
        // Cut anywhere inside the undefined-length beam sequence (it runs to its delimiter, after
        // every beam): a truncated or missing-attribute error, never a plan with fewer beams.
        var outcomes: [String: Int] = [:]
        for length in stride(from: 0, to: bytes.count, by: max(1, bytes.count / 3000)) {
            do {
                let plan = try RTPlan(dicom: Array(bytes.prefix(length)))
                #expect(plan.beams.count == 4, "a cut at \(length) of \(bytes.count) lost beams: \(plan.beams)")
                outcomes["read", default: 0] += 1
            } catch {
                outcomes[error.code.name, default: 0] += 1
            }
        }
        #expect(outcomes["truncated", default: 0] > 0, "\(outcomes)")
    }

    static let garbage: [(String, [UInt8], DICOMError.Code)] = [
        ("empty", [], .notDICOM),
        ("text", Array("plan".utf8), .notDICOM),
        ("no DICM", [UInt8](repeating: 0, count: 400), .notDICOM),
        ("DICM and nothing", [UInt8](repeating: 0, count: 128) + Array("DICM".utf8), .missing),
        ("element claims 4 GB", header() + tag(0x0010, 0x0020) + Array("UN".utf8) + [0, 0, 0xF0, 0xFF, 0xFF, 0x7F] + [1, 2], .truncated),
        ("bad VR bytes", header() + tag(0x0010, 0x0020) + [0x01, 0x02, 4, 0] + Array("ABCD".utf8), .malformed),
        ("undefined length on a string", header() + tag(0x0010, 0x0020) + Array("UT".utf8) + [0, 0, 0xFF, 0xFF, 0xFF, 0xFF], .malformed),
        ("stray item delimiter", header() + tag(0xFFFE, 0xE00D) + [0, 0, 0, 0], .malformed),
        ("non-item in a sequence", header() + tag(0x300A, 0x03A2) + Array("SQ".utf8) + [0, 0, 0xFF, 0xFF, 0xFF, 0xFF] + tag(0x0010, 0x0020) + [0, 0, 0, 0], .malformed),
        ("sequence never delimited", header() + tag(0x300A, 0x03A2) + Array("SQ".utf8) + [0, 0, 0xFF, 0xFF, 0xFF, 0xFF], .truncated),
        ("item longer than its sequence", header() + tag(0x300A, 0x03A2) + Array("SQ".utf8) + [0, 0, 8, 0, 0, 0] + tag(0xFFFE, 0xE000) + [100, 0, 0, 0], .truncated),
        ("deflated", header(syntax: "1.2.840.10008.1.2.1.99"), .unsupported),
        ("big endian", header(syntax: "1.2.840.10008.1.2.2"), .unsupported),
        ("nesting bomb", header() + Array(repeating: tag(0x300A, 0x03A2) + Array("SQ".utf8) + [0, 0, 0xFF, 0xFF, 0xFF, 0xFF]
                                                    + tag(0xFFFE, 0xE000) + [0xFF, 0xFF, 0xFF, 0xFF], count: 10_000).flatMap { $0 }, .malformed),
        ("not a plan", header() + RTPlanTestBytes.element(0x0010, 0x0020, "LO", "P1"), .missing),
        ("beam without number", header() + RTPlanTestBytes.sequence([RTPlanTestBytes.element(0x300A, 0x00C2, "LO", "F1")]), .missing),
        ("beam number not a number", header() + RTPlanTestBytes.sequence([RTPlanTestBytes.element(0x300A, 0x00C0, "IS", "X1")]), .malformed),
        ("beam number twice", header() + RTPlanTestBytes.sequence([RTPlanTestBytes.element(0x300A, 0x00C0, "IS", "1")],
                                                                 [RTPlanTestBytes.element(0x300A, 0x00C0, "IS", " 1 ")]), .malformed),
    ]

    static func tag(_ group: UInt16, _ element: UInt16) -> [UInt8] {
        [UInt8(group & 0xFF), UInt8(group >> 8), UInt8(element & 0xFF), UInt8(element >> 8)]
    }

    static func header(syntax: String = "1.2.840.10008.1.2.1") -> [UInt8] {
        [UInt8](repeating: 0, count: 128) + Array("DICM".utf8) + RTPlanTestBytes.element(0x0002, 0x0010, "UI", syntax)
    }

    @Test(arguments: garbage.indices)
    func garbageIsAClearError(_ index: Int) throws {
        let (name, bytes, code) = Self.garbage[index]
        do {
            let plan = try RTPlan(dicom: bytes)
            Issue.record("\(name): read as \(plan)")
        } catch {
            #expect(error.code == code, "\(name): \(error)")
            #expect(!error.message.isEmpty)
        }
    }

    /// Random corruption of a real plan: an error or a plan, always quickly, never a crash.
    @Test(.timeLimit(.minutes(3)))
    func corruptedPlansNeverCrashOrHang() throws {
        let plan = RTPlan(patientId: "P", planUID: "1.2", beams: (1...4).map { RTPlan.Beam(number: $0, name: "F\($0)") }).encoded()
        var generator = SplitMix(seed: 42)
        let started = Date()
        for _ in 0..<5_000 {
            var bytes = plan
            for _ in 0..<(1 + Int(generator.next() % 4)) {
                let at = 128 + Int(generator.next() % UInt64(bytes.count - 128))
                bytes[at] = UInt8(truncatingIfNeeded: generator.next())
            }
            _ = try? RTPlan(dicom: bytes)
        }
        #expect(Date().timeIntervalSince(started) < 30)
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/dcmdump"), "needs DCMTK's dcmdump (Debian dcmtk)"))
    func dcmtkReadsTheDemoPlanWriter() throws {
        let temp = try TemporaryDirectory("mqi-dicom")
        defer { temp.remove() }
        let plan = RTPlan(patientId: "DEMO-009", planUID: "1.2.3.4.9", beams: [
            RTPlan.Beam(number: 1, name: "Field 1"), RTPlan.Beam(number: 2, name: "SETUP", deliveryType: "SETUP"),
        ])
        try Data(plan.encoded()).write(to: URL(fileURLWithPath: temp.file("RP.dcm")))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/dcmdump")
        process.arguments = ["-q", "+P", "300a,00c0", "+P", "300a,00ce", "+P", "0010,0020", temp.file("RP.dcm")]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(text)")
        #expect(text.contains("[DEMO-009]") && text.contains("IS [1]") && text.contains("IS [2]") && text.contains("CS [SETUP]"), "\(text)")
    }
}

/// Explicit VR little endian elements for hand-made test files.
enum RTPlanTestBytes {
    static func element(_ group: UInt16, _ element: UInt16, _ vr: String, _ text: String) -> [UInt8] {
        var value = Array(text.utf8)
        if value.count % 2 == 1 { value.append(vr == "UI" ? 0 : 0x20) }
        return DICOMReaderTests.tag(group, element) + Array(vr.utf8) + [UInt8(value.count & 0xFF), UInt8(value.count >> 8)] + value
    }

    /// An IonBeamSequence of undefined length with one item of undefined length per argument,
    /// holding its elements.
    static func sequence(_ items: [[UInt8]]...) -> [UInt8] {
        let undefined: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF]
        var out = DICOMReaderTests.tag(0x300A, 0x03A2) + Array("SQ".utf8) + [0, 0] + undefined
        for elements in items {
            out += DICOMReaderTests.tag(0xFFFE, 0xE000) + undefined
            for element in elements { out += element }
            out += DICOMReaderTests.tag(0xFFFE, 0xE00D) + [0, 0, 0, 0]
        }
        return out + DICOMReaderTests.tag(0xFFFE, 0xE0DD) + [0, 0, 0, 0]
    }
}

/// A small deterministic random generator for the corruption test.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D4_9BA7_0F4B_0B8D
        return z ^ (z >> 31)
    }
}
