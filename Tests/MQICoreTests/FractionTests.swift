import Foundation
import Testing
@testable import MQICore

/// Deliveries grouped into fractions by `scanner.fraction_window_min`.
@Suite("Fractions: grouping deliveries")
struct FractionTests {
    static let t0 = Date(timeIntervalSince1970: 1_745_459_414)

    static func delivery(_ folder: String, minutes: Double, beam: Int?) -> Delivery {
        Delivery(folder: folder, start: t0.addingTimeInterval(minutes * 60), beam: beam)
    }

    @Test("a delivery exactly at the window's edge belongs to the fraction; one second later starts the next")
    func windowEdges() {
        let deliveries = [Self.delivery("a", minutes: 0, beam: 1), Self.delivery("b", minutes: 60, beam: 2),
                          Self.delivery("c", minutes: 60 + 1.0 / 60, beam: 1)]
        let fractions = Fraction.group(deliveries, planBeams: [1, 2], windowMin: 60)
        #expect(fractions.map { $0.deliveries.map(\.folder) } == [["a", "b"], ["c"]])
        #expect(fractions.map(\.complete) == [true, false])
        #expect(fractions.map(\.number) == [1, 2])
    }

    @Test("deliveries found out of order are grouped by their start times")
    func outOfOrder() {
        let deliveries = [Self.delivery("day2-b2", minutes: 1440 + 7, beam: 2), Self.delivery("day1-b2", minutes: 7, beam: 2),
                          Self.delivery("day2-b1", minutes: 1440, beam: 1), Self.delivery("day1-b1", minutes: 0, beam: 1)]
        let fractions = Fraction.group(deliveries, planBeams: [1, 2], windowMin: 60)
        #expect(fractions.map { $0.deliveries.map(\.folder) } == [["day1-b1", "day1-b2"], ["day2-b1", "day2-b2"]])
        #expect(fractions.allSatisfy { $0.complete })
        #expect(fractions.allSatisfy { $0.anomaly == nil })
    }

    @Test("a beam delivered more often than the plan has it makes the fraction an anomaly")
    func anomaly() {
        let deliveries = [Self.delivery("a", minutes: 0, beam: 1), Self.delivery("b", minutes: 5, beam: 1), Self.delivery("c", minutes: 9, beam: 2)]
        let fraction = Fraction.group(deliveries, planBeams: [1, 2], windowMin: 60)[0]
        #expect(fraction.complete)
        #expect(fraction.anomaly == "beam 1 delivered 2 times (the plan has each beam once)")
    }

    @Test("start times: PlanInfo's TCSC_IRRAD_DATETIME, else the folder name")
    func startTimes() throws {
        #expect(Delivery.parseTime("2025042401501400") == Self.t0)
        #expect(Delivery.parseTime("2025-04-24 01:50:14") == Self.t0)
        #expect(Delivery.parseTime("2025/04/24 01:50:14.75") == Self.t0)
        #expect(Delivery.parseTime("notes") == nil)
        #expect(Delivery.parseTime("2025139901501400") == nil)
        let temp = NSTemporaryDirectory() + "mqi-fraction-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: temp) }
        try FileManager.default.createDirectory(atPath: temp + "/2025042401501400", withIntermediateDirectories: true)
        try "DICOM_BEAM_NUMBER,2\n".write(toFile: temp + "/2025042401501400/PlanInfo.txt", atomically: true, encoding: .utf8)
        #expect(Delivery.read(folder: "2025042401501400", in: temp) == Delivery(folder: "2025042401501400", start: Self.t0, beam: 2))
        try FileManager.default.createDirectory(atPath: temp + "/beam-a", withIntermediateDirectories: true)
        try "DICOM_BEAM_NUMBER,1\nTCSC_IRRAD_DATETIME,2025-04-24 02:50:14\n".write(toFile: temp + "/beam-a/PlanInfo.txt", atomically: true, encoding: .utf8)
        #expect(Delivery.read(folder: "beam-a", in: temp)?.start == Self.t0.addingTimeInterval(3600))
        try FileManager.default.createDirectory(atPath: temp + "/notes", withIntermediateDirectories: true)
        #expect(Delivery.read(folder: "notes", in: temp) == nil)
    }
}
