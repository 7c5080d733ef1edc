import Foundation
import MQICore
@testable import MQIServices
@testable import MQIStore
import Testing

/// `mqi cases list --json` writes its JSON directly (`Reports.casesJSON`); it must stay the
/// text that `JSONEncoder` (`Reports.jsonText`) wrote before, byte for byte.
struct CaseListOutputTests {
    static let awkward = "quote \" backslash \\ slash / tab\t newline\n return\r nul\u{0} bell\u{7} esc\u{1B} del\u{7F} unit\u{1F} "
        + "é ü 日本語 😀 👩‍⚕️ e\u{301} \u{2028}\u{2029}\u{FEFF} last line\nFATAL ERROR: beam 2"

    static func summary(_ id: String, everything: Bool, text: String = "plain") -> CaseSummary {
        let base = Date(timeIntervalSince1970: 1_745_459_414.123)
        return CaseSummary(
            caseId: id, status: everything ? .failed : .new, workflow: everything ? "default_qa \(text)" : "default_qa",
            workflowStep: everything ? "run_moqui_sim" : nil, progress: everything ? 70 : 0, gpuIds: everything ? [0, 3, 12] : [],
            attempt: everything ? 2 : 0, error: everything ? text : nil, createdAt: base, updatedAt: base.addingTimeInterval(0.5),
            startedAt: everything ? base.addingTimeInterval(1.001) : nil, finishedAt: everything ? base.addingTimeInterval(600.999) : nil,
            failureClass: everything ? .permanent : nil, patientId: everything ? "PAT \(text)" : nil, beamNumbers: everything ? [1, 2, 3] : [],
            beams: everything ? [
                BeamRun(beam: 1, status: .succeeded, attempt: 1, gpuIds: [0], progress: 40, error: nil,
                        startedAt: base.addingTimeInterval(2), finishedAt: base.addingTimeInterval(30.25)),
                BeamRun(beam: 2, status: .failed, attempt: 3, gpuIds: [1, 2], progress: 50, error: text,
                        startedAt: base.addingTimeInterval(3), finishedAt: nil),
                BeamRun(beam: 3, status: .waiting),
            ] : [],
            detail: everything ? "queued in Slurm: \(text)" : nil)
    }

    static let tables: [(String, [CaseSummary])] = [
        ("no cases", []),
        ("every optional field unset", [summary("C-1", everything: false)]),
        ("every optional field set", [summary("C-2", everything: true)]),
        ("quotes, backslashes, control characters and Unicode", [summary("C-3 \(awkward)", everything: true, text: awkward)]),
        ("a mix", [summary("C-4", everything: true), summary("C-5", everything: false), summary("ü/\"", everything: true, text: "\u{1}")]),
        ("every status and failure class", CaseStatus.allCases.enumerated().map { index, status in
            var summary = summary("S-\(index)", everything: index % 2 == 0)
            summary.status = status
            summary.failureClass = index % 3 == 0 ? .retryable : summary.failureClass
            summary.progress = -index
            summary.beams = BeamRun.Status.allCases.map { BeamRun(beam: index, status: $0, attempt: Int.max, gpuIds: [Int.min]) }
            return summary
        }),
    ]

    @Test(arguments: tables.map(\.0))
    func sameTextAsJSONEncoder(_ name: String) throws {
        let cases = try #require(Self.tables.first { $0.0 == name }).1
        #expect(Reports.casesJSON(cases) == (try Reports.jsonText(cases)))
    }

    @Test func everyControlCharacterAndMoreEscapedAlike() throws {
        var text = ""
        for scalar in 0..<0x250 { text.unicodeScalars.append(Unicode.Scalar(UInt32(scalar))!) }
        let cases = [Self.summary("all", everything: true, text: text)]
        #expect(Reports.casesJSON(cases) == (try Reports.jsonText(cases)))
    }

    /// The dates as `Reports.isoDate` prints them: whole milliseconds truncated as Foundation
    /// does, the calendar's edges, and dates outside the years the fast path writes itself.
    @Test func datesAsTheFormatStyle() {
        var generator = SystemRandomNumberGenerator()
        var dates: [Date] = [
            Date(timeIntervalSince1970: 0), Date(timeIntervalSince1970: -0.0005), Date(timeIntervalSince1970: -1.0005),
            Date(timeIntervalSince1970: 0.0015), Date(timeIntervalSince1970: 1_745_459_414.123), Date(timeIntervalSince1970: 1_745_459_414.9995),
            Date(timeIntervalSince1970: 951_782_400), // 2000-02-29
            Date(timeIntervalSince1970: 4_107_542_400), // 2100-03-01
            Date(timeIntervalSince1970: 253_402_300_799.999), Date(timeIntervalSince1970: 253_402_300_800), // 9999-12-31, 10000-01-01
            Date(timeIntervalSince1970: -11_644_473_600), Date(timeIntervalSince1970: -11_644_473_600.001), // 1601-01-01
            Date(timeIntervalSince1970: -12_219_292_800), Date(timeIntervalSince1970: -62_135_596_800), // 1582-10-15, 0001-01-01
            Date(timeIntervalSinceReferenceDate: 0), Date(timeIntervalSinceReferenceDate: -0.000_000_1),
            Date.distantPast, Date.distantFuture,
        ]
        for _ in 0..<20_000 {
            // Millisecond dates as the store reads them back, and arbitrary ones.
            let milliseconds = Int64.random(in: -12_000_000_000_000...260_000_000_000_000, using: &generator)
            dates.append(SQLDate.parse(SQLDate.format(Date(timeIntervalSince1970: Double(milliseconds) / 1000))) ?? Date())
            dates.append(Date(timeIntervalSince1970: Double.random(in: -12e9...2.6e11, using: &generator)))
        }
        for date in dates {
            var bytes: [UInt8] = []
            let fast = ISODate.write(date, into: &bytes) ? String(decoding: bytes, as: UTF8.self) : Reports.isoDate(date)
            #expect(fast == Reports.isoDate(date), "\(date.timeIntervalSinceReferenceDate)")
        }
    }

    // MARK: the read-only store the listing opens

    static func temporaryState() throws -> StateConfig {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("case-list-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return StateConfig(database: directory + "/var/mqi.sqlite", pidFile: directory + "/var/mqi.pid", logsDir: directory + "/var/logs")
    }

    @Test func listingReadsWhatTheDaemonWroteAndWritesNothing() async throws {
        let state = try Self.temporaryState()
        defer { try? FileManager.default.removeItem(atPath: (state.database as NSString).deletingLastPathComponent) }
        let writer = try Store(path: state.database)
        try await writer.registerCase("C-1", workflow: "default_qa", patientId: "PAT ü", beamNumbers: [1, 2])
        #expect(try await writer.registerRejectedCase("C-2", workflow: "default_qa", reason: "bad \"input\"\nline 2"))

        let reader = try Store.openForReading(state: state)
        let listed = try await reader.cases()
        #expect(listed == (try await writer.cases()))
        #expect(Set(listed.map(\.caseId)) == ["C-1", "C-2"])
        #expect(try await reader.cases(status: .failed).map(\.caseId) == ["C-2"])
        // Read-only: a write through it fails, and nothing changed.
        await #expect(throws: (any Error).self) { try await reader.registerCase("C-3", workflow: "default_qa") }
        #expect(try await writer.caseIds() == ["C-1", "C-2"])
        // A write by the daemon after the reader opened is seen by the reader's next read.
        try await writer.registerCase("C-4", workflow: "default_qa")
        #expect(try await reader.cases().count == 3)
    }

    @Test func aMissingDatabaseIsCreatedAsBefore() async throws {
        let state = try Self.temporaryState()
        defer { try? FileManager.default.removeItem(atPath: (state.database as NSString).deletingLastPathComponent) }
        #expect(try await Store.openForReading(state: state).cases().isEmpty)
        #expect(FileManager.default.fileExists(atPath: state.database))
    }

    @Test func aNewerMqisDatabaseIsRefusedAsBefore() async throws {
        let state = try Self.temporaryState()
        defer { try? FileManager.default.removeItem(atPath: (state.database as NSString).deletingLastPathComponent) }
        let writer = try Store(path: state.database)
        try await writer.pool.write(.serialized) { db in try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v999-from-the-future')") }
        let error = #expect(throws: StoreOpenError.self) { try Store.openForReading(state: state) }
        #expect(error?.code == .newerVersion)
    }
}

