import Foundation
import MQICore

/// What a valid MOQUI case holds.
public struct CaseDetails: Sendable, Equatable {
    public var patientId: String?
    /// The beams delivered: the PlanInfo.txt beam numbers.
    public var beamNumbers: [Int]
    /// The RT plan's treatment beams (SETUP beams left out), by number.
    public var planBeams: [RTPlan.Beam] = []
}

/// Checks a case directory against `scanner.case_layout: moqui` before anything is uploaded: an
/// RT plan `RP*.dcm`, and delivery folders each with a `PlanInfo.txt` of `KEY,value` lines that
/// include `DICOM_BEAM_NUMBER`, and at least one `*.ptn` layer log. The plan is read as DICOM:
/// every PlanInfo beam number must be a treatment beam of the plan, and PlanInfo's
/// `DICOM_PATIENT_ID` must be the plan's PatientID.
public enum CaseValidator {
    /// RT plans are a few MB at most; a larger `RP*.dcm` is not read.
    public static let maxPlanBytes = 64 << 20

    public struct Invalid: Error, Sendable, CustomStringConvertible, Equatable {
        public var description: String
    }

    public static func validate(_ caseDir: String) throws(Invalid) -> CaseDetails {
        let files = FileManager.default
        var entries: [String] = []
        if let walker = files.enumerator(atPath: caseDir) {
            while let relative = walker.nextObject() as? String {
                entries.append(relative)
                if walker.level > 4 { walker.skipDescendants() }
            }
        }
        let plans = entries.filter {
            let name = ($0 as NSString).lastPathComponent
            return name.hasPrefix("RP") && name.lowercased().hasSuffix(".dcm")
        }.sorted()
        guard let planFile = plans.first else {
            throw Invalid(description: "no RT plan file (RP*.dcm) in the case")
        }
        guard plans.count == 1 else {
            throw Invalid(description: "\(plans.count) RT plan files (\(plans.joined(separator: ", "))): a case holds one plan")
        }
        let planInfos = entries.filter { ($0 as NSString).lastPathComponent == "PlanInfo.txt" }.sorted()
        guard !planInfos.isEmpty else {
            throw Invalid(description: "no delivery folder with a PlanInfo.txt in the case")
        }
        let plan = try readPlan(caseDir, planFile)
        var patientId: String?
        var beams: [Int] = []
        for relative in planInfos {
            let path = (caseDir as NSString).appendingPathComponent(relative)
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                throw Invalid(description: "\(relative): cannot be read as UTF-8 text")
            }
            var values: [String: String] = [:]
            for (number, rawLine) in text.components(separatedBy: "\n").enumerated() {
                let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
                if line.isEmpty { continue }
                guard let comma = line.firstIndex(of: ","), comma != line.startIndex else {
                    throw Invalid(description: "\(relative) line \(number + 1): expected KEY,value, got '\(line.prefix(80))'")
                }
                values[String(line[..<comma]).trimmingCharacters(in: .whitespaces)] = String(line[line.index(after: comma)...]).trimmingCharacters(in: .whitespaces)
            }
            if values.isEmpty { throw Invalid(description: "\(relative) is empty") }
            guard let beamText = values["DICOM_BEAM_NUMBER"] else {
                throw Invalid(description: "\(relative): no DICOM_BEAM_NUMBER line")
            }
            guard let beam = Int(beamText) else {
                throw Invalid(description: "\(relative): DICOM_BEAM_NUMBER is '\(beamText.prefix(40))', not a number")
            }
            beams.append(beam)
            let planInfoPatient = values["DICOM_PATIENT_ID"].flatMap { $0.isEmpty ? nil : $0 }
            if let planInfoPatient, planInfoPatient != plan.patientId {
                throw Invalid(description: "patient mismatch: \(relative) has DICOM_PATIENT_ID '\(planInfoPatient)', the plan \(planFile) has PatientID '\(plan.patientId)'")
            }
            patientId = patientId ?? planInfoPatient
            let folder = (relative as NSString).deletingLastPathComponent
            let hasLayers = entries.contains { entry in
                (entry as NSString).deletingLastPathComponent == folder && entry.lowercased().hasSuffix(".ptn")
            }
            guard hasLayers else {
                throw Invalid(description: "delivery folder \(folder.isEmpty ? "." : folder) has no *.ptn layer log")
            }
        }
        let treatment = plan.treatmentBeams
        let treatmentNumbers = Set(treatment.map(\.number))
        let planList = treatment.isEmpty ? "none" : treatment.map { String($0.number) }.joined(separator: ", ")
        for (relative, beam) in zip(planInfos, beams) where !treatmentNumbers.contains(beam) {
            let setup = plan.beams.first { $0.number == beam }.map { " (a \($0.deliveryType) beam)" } ?? ""
            throw Invalid(description: "\(relative): DICOM_BEAM_NUMBER \(beam) is not a treatment beam of the plan \(planFile)\(setup); its treatment beams: \(planList)")
        }
        return CaseDetails(patientId: patientId ?? (plan.patientId.isEmpty ? nil : plan.patientId),
                           beamNumbers: Array(Set(beams)).sorted(), planBeams: treatment)
    }

    /// The case's RT plan, read as DICOM.
    static func readPlan(_ caseDir: String, _ relative: String) throws(Invalid) -> RTPlan {
        let path = (caseDir as NSString).appendingPathComponent(relative)
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw Invalid(description: "\(relative): cannot be opened")
        }
        defer { try? handle.close() }
        let data: Data
        do {
            data = try handle.read(upToCount: maxPlanBytes + 1) ?? Data()
        } catch {
            throw Invalid(description: "\(relative): cannot be read: \(error.localizedDescription)")
        }
        guard data.count <= maxPlanBytes else {
            throw Invalid(description: "\(relative): over \(maxPlanBytes >> 20) MB, not an RT plan")
        }
        do throws(DICOMError) {
            return try RTPlan(dicom: [UInt8](data))
        } catch {
            throw Invalid(description: "\(relative): not a readable RT plan: \(error.description)")
        }
    }
}
