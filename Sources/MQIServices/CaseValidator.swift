import Foundation
import MQICore

/// What a valid MOQUI case holds.
public struct CaseDetails: Sendable, Equatable {
    public var patientId: String?
    public var beamNumbers: [Int]
}

/// Checks a case directory against `scanner.case_layout: moqui` before anything is uploaded: an
/// RT plan `RP*.dcm`, and delivery folders each with a `PlanInfo.txt` of `KEY,value` lines that
/// include `DICOM_BEAM_NUMBER`, and at least one `*.ptn` layer log.
public enum CaseValidator {
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
        let names = entries.map { ($0 as NSString).lastPathComponent }
        guard names.contains(where: { $0.hasPrefix("RP") && $0.lowercased().hasSuffix(".dcm") }) else {
            throw Invalid(description: "no RT plan file (RP*.dcm) in the case")
        }
        let planInfos = entries.filter { ($0 as NSString).lastPathComponent == "PlanInfo.txt" }.sorted()
        guard !planInfos.isEmpty else {
            throw Invalid(description: "no delivery folder with a PlanInfo.txt in the case")
        }
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
            patientId = patientId ?? values["DICOM_PATIENT_ID"].flatMap { $0.isEmpty ? nil : $0 }
            let folder = (relative as NSString).deletingLastPathComponent
            let hasLayers = entries.contains { entry in
                (entry as NSString).deletingLastPathComponent == folder && entry.lowercased().hasSuffix(".ptn")
            }
            guard hasLayers else {
                throw Invalid(description: "delivery folder \(folder.isEmpty ? "." : folder) has no *.ptn layer log")
            }
        }
        return CaseDetails(patientId: patientId, beamNumbers: Array(Set(beams)).sorted())
    }
}
