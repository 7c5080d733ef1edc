import Foundation

/// One delivery folder of a case (`<case>/<start time>/` with `PlanInfo.txt`): one beam given
/// once, at `start`.
public struct Delivery: Sendable, Equatable, Codable {
    /// The folder's name in the case directory (`2025042401501400`).
    public var folder: String
    public var start: Date
    /// PlanInfo's `DICOM_BEAM_NUMBER`; nil when it has none.
    public var beam: Int?

    public init(folder: String, start: Date, beam: Int?) {
        self.folder = folder
        self.start = start
        self.beam = beam
    }

    /// Reads a delivery folder: its beam and start time from `PlanInfo.txt`
    /// (`TCSC_IRRAD_DATETIME`, else the folder's name). Nil when it is not a delivery folder
    /// (no readable PlanInfo.txt) or no start time can be read.
    public static func read(folder: String, in caseDir: String) -> Delivery? {
        let planInfo = ((caseDir as NSString).appendingPathComponent(folder) as NSString).appendingPathComponent("PlanInfo.txt")
        guard let text = try? String(contentsOfFile: planInfo, encoding: .utf8) else { return nil }
        var values: [String: String] = [:]
        for line in text.components(separatedBy: "\n") {
            guard let comma = line.firstIndex(of: ",") else { continue }
            values[line[..<comma].trimmingCharacters(in: .whitespaces)] = line[line.index(after: comma)...].trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let start = values["TCSC_IRRAD_DATETIME"].flatMap(parseTime) ?? parseTime(folder) else { return nil }
        return Delivery(folder: folder, start: start, beam: values["DICOM_BEAM_NUMBER"].flatMap { Int($0) })
    }

    /// A time written as digits with or without separators: `2025042401501400`,
    /// `20250424015014`, `2025-04-24 01:50:14`, `2025/04/24 01:50:14.5`, read as UTC (the
    /// treatment machine's clock; only differences between deliveries matter).
    public static func parseTime(_ text: String) -> Date? {
        let digits = text.prefix { $0 != "." }.filter(\.isNumber)
        guard digits.count >= 14 else { return nil }
        let chars = Array(digits)
        func number(_ from: Int, _ count: Int) -> Int { Int(String(chars[from..<(from + count)]))! }
        var components = DateComponents()
        components.calendar = Calendar(identifier: .gregorian)
        components.timeZone = TimeZone(identifier: "UTC")
        components.year = number(0, 4)
        components.month = number(4, 2)
        components.day = number(6, 2)
        components.hour = number(8, 2)
        components.minute = number(10, 2)
        components.second = number(12, 2)
        guard (1...12).contains(components.month!), (1...31).contains(components.day!), components.hour! < 24, components.minute! < 60,
              components.second! < 61, components.isValidDate else { return nil }
        return components.date
    }
}

/// The deliveries of one treatment session: those within `scanner.fraction_window_min` of its
/// first delivery.
public struct Fraction: Sendable, Equatable, Codable {
    /// 1, 2, ... in time order.
    public var number: Int
    public var deliveries: [Delivery]
    /// It covers every treatment beam of the plan.
    public var complete: Bool
    /// What is wrong with it: a beam delivered more often than the plan has it.
    public var anomaly: String?

    /// Groups deliveries into fractions, in time order whatever order they were found in: a
    /// fraction starts at the earliest delivery not in one yet and takes every delivery that
    /// started within `windowMin` minutes of it (the edge included). `planBeams` are the plan's
    /// treatment beam numbers (each once); without them a fraction is complete once it has a
    /// delivery.
    public static func group(_ deliveries: [Delivery], planBeams: [Int], windowMin: Double) -> [Fraction] {
        let sorted = deliveries.sorted { ($0.start, $0.folder) < ($1.start, $1.folder) }
        var fractions: [Fraction] = []
        var index = 0
        while index < sorted.count {
            let first = sorted[index].start
            var members: [Delivery] = []
            while index < sorted.count, sorted[index].start.timeIntervalSince(first) <= windowMin * 60 {
                members.append(sorted[index])
                index += 1
            }
            let given = members.compactMap(\.beam)
            let planned = Set(planBeams)
            let complete = planned.isEmpty ? !members.isEmpty : planned.isSubset(of: Set(given))
            var counts: [Int: Int] = [:]
            for beam in given { counts[beam, default: 0] += 1 }
            let repeated = counts.filter { $0.value > 1 && (planned.isEmpty || planned.contains($0.key)) }.sorted { $0.key < $1.key }
            let anomaly = repeated.isEmpty ? nil
                : repeated.map { "beam \($0.key) delivered \($0.value) times" }.joined(separator: ", ") + " (the plan has each beam once)"
            fractions.append(Fraction(number: fractions.count + 1, deliveries: members, complete: complete, anomaly: anomaly))
        }
        return fractions
    }
}
