/// What the communicator reads from an RT (Ion) Plan: the patient and the beams, with which of
/// them are treatment beams (a SETUP beam delivers no dose and has no delivery log).
public struct RTPlan: Sendable, Equatable {
    /// One beam of the plan's IonBeamSequence (300A,03A2) or BeamSequence (300A,00B0).
    public struct Beam: Sendable, Equatable, Hashable, Codable {
        /// BeamNumber (300A,00C0).
        public var number: Int
        /// BeamName (300A,00C2); empty when the plan has none.
        public var name: String
        /// TreatmentDeliveryType (300A,00CE): TREATMENT, SETUP, ...; empty when the plan leaves it empty.
        public var deliveryType: String

        public init(number: Int, name: String, deliveryType: String = "TREATMENT") {
            self.number = number
            self.name = name
            self.deliveryType = deliveryType
        }

        /// Delivers dose: TREATMENT, TRMT_PORTFILM, CONTINUATION, or no type given. SETUP and
        /// OPEN_PORTFILM beams do not.
        public var isTreatment: Bool {
            !["SETUP", "OPEN_PORTFILM"].contains(deliveryType)
        }
    }

    /// PatientID (0010,0020); empty when the plan has none.
    public var patientId: String
    /// SOPInstanceUID (0008,0018), when present.
    public var planUID: String?
    /// Every beam, in the plan's order.
    public var beams: [Beam]

    public init(patientId: String, planUID: String? = nil, beams: [Beam]) {
        self.patientId = patientId
        self.planUID = planUID
        self.beams = beams
    }

    /// The beams that deliver dose, by beam number.
    public var treatmentBeams: [Beam] { beams.filter(\.isTreatment).sorted { $0.number < $1.number } }

    static let patientID = DICOMTag(0x0010, 0x0020)
    static let sopInstanceUID = DICOMTag(0x0008, 0x0018)
    static let ionBeamSequence = DICOMTag(0x300A, 0x03A2)
    static let beamSequence = DICOMTag(0x300A, 0x00B0)
    static let beamNumber = DICOMTag(0x300A, 0x00C0)
    static let beamName = DICOMTag(0x300A, 0x00C2)
    static let treatmentDeliveryType = DICOMTag(0x300A, 0x00CE)

    /// Reads a plan from a DICOM Part 10 file's bytes.
    public init(dicom bytes: [UInt8]) throws(DICOMError) {
        try self.init(DICOMReader.read(bytes))
    }

    /// Reads a plan from a parsed data set: IonBeamSequence (ion plans), else BeamSequence.
    public init(_ dataSet: DICOMDataSet) throws(DICOMError) {
        guard let items = dataSet.sequence(Self.ionBeamSequence) ?? dataSet.sequence(Self.beamSequence) else {
            throw DICOMError(.missing, "no IonBeamSequence (300A,03A2) or BeamSequence (300A,00B0): not an RT plan")
        }
        var beams: [Beam] = []
        for (index, item) in items.enumerated() {
            guard let text = item.string(Self.beamNumber) else {
                throw DICOMError(.missing, "beam item \(index + 1) has no BeamNumber (300A,00C0)")
            }
            guard let number = Int(text) else {
                throw DICOMError(.malformed, "beam item \(index + 1): BeamNumber (300A,00C0) is '\(text.prefix(20))', not a number")
            }
            guard !beams.contains(where: { $0.number == number }) else {
                throw DICOMError(.malformed, "beam number \(number) appears twice in the plan")
            }
            beams.append(Beam(number: number, name: item.string(Self.beamName) ?? "",
                              deliveryType: (item.string(Self.treatmentDeliveryType) ?? "").uppercased()))
        }
        self.init(patientId: dataSet.string(Self.patientID) ?? "", planUID: dataSet.string(Self.sopInstanceUID), beams: beams)
    }

    /// This plan as a minimal RT Ion Plan Part 10 file in explicit VR little endian (UTF-8 text),
    /// with an IonBeamSequence of undefined length: what the demo site writes.
    public func encoded() -> [UInt8] {
        var meta: [UInt8] = []
        let sopClass = "1.2.840.10008.5.1.4.1.1.481.8"  // RT Ion Plan Storage
        let uid = planUID ?? "2.25.1"
        meta += Self.element(0x0002, 0x0001, "OB", [0, 1])
        meta += Self.element(0x0002, 0x0002, "UI", sopClass)
        meta += Self.element(0x0002, 0x0003, "UI", uid)
        meta += Self.element(0x0002, 0x0010, "UI", "1.2.840.10008.1.2.1")  // explicit VR little endian
        meta += Self.element(0x0002, 0x0012, "UI", "1.2.826.0.1.3680043.10.1")
        var out = [UInt8](repeating: 0, count: 128) + Array("DICM".utf8)
        out += Self.element(0x0002, 0x0000, "UL", Self.le32(UInt32(meta.count)))
        out += meta
        out += Self.element(0x0008, 0x0005, "CS", "ISO_IR 192")
        out += Self.element(0x0008, 0x0016, "UI", sopClass)
        out += Self.element(0x0008, 0x0018, "UI", uid)
        out += Self.element(0x0008, 0x0060, "CS", "RTPLAN")
        out += Self.element(0x0010, 0x0020, "LO", patientId)
        out += Self.element(0x300A, 0x0002, "SH", "MQI DEMO")
        // IonBeamSequence, undefined length: items of undefined length, then a sequence delimiter.
        out += Self.header(0x300A, 0x03A2, "SQ", 0xFFFF_FFFF)
        for beam in beams {
            out += Self.le16(0xFFFE) + Self.le16(0xE000) + Self.le32(0xFFFF_FFFF)
            out += Self.element(0x300A, 0x00C0, "IS", String(beam.number))
            out += Self.element(0x300A, 0x00C2, "LO", beam.name)
            out += Self.element(0x300A, 0x00CE, "CS", beam.deliveryType)
            out += Self.le16(0xFFFE) + Self.le16(0xE00D) + Self.le32(0)
        }
        out += Self.le16(0xFFFE) + Self.le16(0xE0DD) + Self.le32(0)
        return out
    }

    static func le16(_ value: UInt16) -> [UInt8] { [UInt8(value & 0xFF), UInt8(value >> 8)] }
    static func le32(_ value: UInt32) -> [UInt8] { le16(UInt16(value & 0xFFFF)) + le16(UInt16(value >> 16)) }

    static func header(_ group: UInt16, _ element: UInt16, _ vr: String, _ length: UInt32) -> [UInt8] {
        var out = le16(group) + le16(element) + Array(vr.utf8)
        if DICOMReader.longVRs.contains(vr) { out += [0, 0] + le32(length) } else { out += le16(UInt16(length)) }
        return out
    }

    static func element(_ group: UInt16, _ element: UInt16, _ vr: String, _ text: String) -> [UInt8] {
        var value = Array(text.utf8)
        if value.count % 2 == 1 { value.append(vr == "UI" ? 0 : 0x20) }
        return Self.element(group, element, vr, value)
    }

    static func element(_ group: UInt16, _ element: UInt16, _ vr: String, _ value: [UInt8]) -> [UInt8] {
        header(group, element, vr, UInt32(value.count)) + value
    }
}
