import Foundation
import MQICore
import MQIStore
import MQITransport
@testable import MQITestSupport
import Testing
@testable import MQIServices

/// Results that reach the clinic: the workflow's last step, a `type: local` step, sends the case's
/// RT Dose files (written by pydicom in the simulation step) to a DICOM node with DCMTK's
/// `storescu`; the "PACS" is DCMTK's `storescp` on 127.0.0.1. The daemon runs in-process over the
/// local transport and a real SQLite file.
@Suite(.serialized)
struct DICOMHandoverTests {
    static let dcmtkMissing = "needs DCMTK's storescp and storescu (Debian package dcmtk; scripts/test installs it as optional)"

    /// The case's RT Doses: the plan dose and one beam dose in a subfolder (storescu recurses).
    static let doses = [PyDICOM.Dose(path: "RD.plan.dcm", patientId: "P-1001", seed: 1),
                        PyDICOM.Dose(path: "beams/RD.beam1.dcm", patientId: "P-1001", summation: "BEAM", beamNumber: 1, seed: 2)]

    struct Site {
        let temp: TemporaryDirectory
        let config: Config

        /// The simulation writes `doses` into `{result_dir}` (and a summary.txt that is not sent);
        /// `send_to_pacs` stores every `*.dcm` of the case's results to `PACS` on `port`.
        init(port: Int, sendStepKeys: String = "") throws {
            temp = try TemporaryDirectory("mqi-dicom-handover")
            try FileManager.default.createDirectory(atPath: temp.file("scripts"), withIntermediateDirectories: true)
            let writeDoses = try PyDICOM.doseCommand(DICOMHandoverTests.doses, scriptsIn: temp.file("scripts"))
                .map(ShellQuote.quote).joined(separator: " ")
            try SampleConfigs.localSite(simCommand: "mkdir -p {result_dir} && \(writeDoses) {result_dir} && echo 'dose written' > {result_dir}/summary.txt", localStep: (
                name: "send_to_pacs", keys: "timeout_sec: 60\(sendStepKeys)",
                command: "\(ShellQuote.quote(StoreSCP.storescu)) -v -aet MQI -aec PACS +sd +r +sp '*.dcm' 127.0.0.1 \(port) {results_dir}"
            ), retryAttempts: 3, metrics: false).write(toFile: temp.file("config.yaml"), atomically: true, encoding: .utf8)
            let caseDir = temp.file("data/CASE-1")
            try FileManager.default.createDirectory(atPath: caseDir, withIntermediateDirectories: true)
            try "x\n".write(toFile: caseDir + "/PlanInfo.txt", atomically: true, encoding: .utf8)
            try "".write(toFile: caseDir + "/_CASE_READY", atomically: true, encoding: .utf8)
            config = try ConfigLoader.load(path: temp.file("config.yaml"))
        }

        var results: String { config.conductor.resultsDir + "/CASE-1" }

        func log(attempt: Int) -> String? {
            try? String(contentsOfFile: config.state.logsDir + "/CASE-1/send_to_pacs.\(attempt).log", encoding: .utf8)
        }

        /// Runs the daemon until the case has finished.
        func run() async throws -> CaseSummary {
            try await Daemon(config: config, logger: CapturedLogs().logger(), exitWhenIdle: true).run()
            return try #require(try await Daemon.openStore(config).caseSummary("CASE-1"))
        }
    }

    @Test(.enabled(if: StoreSCP.isAvailable, Comment(rawValue: dcmtkMissing)),
          .enabled(Comment(rawValue: PyDICOM.skipReason)) { PyDICOM.shouldRun },
          .timeLimit(.minutes(4)))
    func everyResultDoseArrivesAtThePACSUnchanged() async throws {
        let pacs = try StoreSCP()
        defer { pacs.stop(); pacs.temp.remove() }
        let site = try Site(port: pacs.port)
        defer { site.temp.remove() }
        let summary = try await site.run()
        #expect(summary.status == .completed, "\(summary.error ?? "") / storescp: \(pacs.output)")

        let sent = try Self.dicomFiles(in: site.results)
        #expect(Set(sent.map { ($0 as NSString).lastPathComponent }) == ["RD.plan.dcm", "RD.beam1.dcm"], "\(sent)")
        let received = try FileManager.default.contentsOfDirectory(atPath: pacs.directory).map { pacs.directory + "/" + $0 }
        #expect(received.count == sent.count, "received \(received), sent \(sent); storescp: \(pacs.output)")
        let receivedByUID = try Dictionary(received.map { path in
            let file = try Part10File(path: path)
            return (file.meta[Part10File.mediaStorageSOPInstanceUID] ?? Data(), file)
        }) { first, _ in first }
        for path in sent {
            let original = try Part10File(path: path)
            let uid = try #require(original.meta[Part10File.mediaStorageSOPInstanceUID])
            guard let copy = receivedByUID[uid] else {
                Issue.record("\(path) (SOP instance \(String(decoding: uid, as: UTF8.self))) did not arrive: \(received)")
                continue
            }
            // storescp writes its own file meta header (its implementation UID and version, the
            // sender's AE title); the data set it received (+B: written exactly as read) is the
            // pydicom file's, byte for byte: SOP instance, dose grid scaling, pixel data, all of it.
            #expect(copy.dataSet == original.dataSet, "\(path): the data set changed on the way")
            for tag in [Part10File.mediaStorageSOPClassUID, Part10File.transferSyntaxUID] {
                #expect(copy.meta[tag] == original.meta[tag], "\(path): file meta (0002,\(String(tag & 0xFFFF, radix: 16))) differs")
            }
        }
        let log = try #require(site.log(attempt: 1))
        #expect(site.log(attempt: 2) == nil)
        #expect(!log.contains("summary.txt") && !log.contains(ResultManifest.fileName), "only the .dcm files are sent: \(log)")
    }

    @Test(.enabled(if: StoreSCP.isAvailable, Comment(rawValue: dcmtkMissing)),
          .enabled(Comment(rawValue: PyDICOM.skipReason)) { PyDICOM.shouldRun },
          .timeLimit(.minutes(4)))
    func aRefusingPACSFailsTheStepWithStorescusReasonAfterItsRetries() async throws {
        let pacs = try StoreSCP(refuse: true)
        defer { pacs.stop(); pacs.temp.remove() }
        let site = try Site(port: pacs.port, sendStepKeys: """
            , retryable_patterns: ['Association Rejected|Association Request Failed'], max_step_retries: 1
            """)
        defer { site.temp.remove() }
        let summary = try await site.run()
        #expect(summary.status == .failed)
        #expect(summary.workflowStep == "send_to_pacs")
        #expect(summary.failureClass == .retryable)
        #expect(summary.attempt == 2, "retried once, then given up")
        let error = summary.error ?? ""
        #expect(error.contains("exit status") && error.contains("Association Rejected") && error.contains("Rejected Permanent"), "\(error)")
        for attempt in 1...2 {
            let log = site.log(attempt: attempt) ?? ""
            #expect(log.contains("Association Rejected"), "attempt \(attempt): \(log)")
        }
        #expect(site.log(attempt: 3) == nil)
        #expect(try FileManager.default.contentsOfDirectory(atPath: pacs.directory).isEmpty)
        // The results stay where they were, complete, for a `mqi cases retry` once the PACS accepts.
        #expect(ResultManifest.verify(site.results) == nil)
    }

    @Test func theExampleConfigIsValidAndEndsWithTheHandover() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../deploy/examples/dicom-handover.yaml").standardizedFileURL.path
        let config = try ConfigLoader.parse(try String(contentsOfFile: path, encoding: .utf8), file: path, baseDirectory: "/srv/mqi")
        let workflow = try #require(config.workflows[config.scanner.workflow])
        let last = try #require(workflow.steps.last)
        #expect(last.type == .local && last.name == "send_to_pacs")
        #expect(last.command?.source.contains("storescu") == true)
    }

    /// The `.dcm` files under `directory`, recursively.
    static func dicomFiles(in directory: String) throws -> [String] {
        try #require(FileManager.default.subpaths(atPath: directory)).filter { $0.hasSuffix(".dcm") }.map { directory + "/" + $0 }
    }
}

/// DCMTK's `storescp` on 127.0.0.1 and a free port as the receiving "PACS" (AE title `PACS`):
/// bit-preserving (`+B`: each data set written exactly as received) into `directory`;
/// `refuse`: rejects every association. `stop()` ends it by its pid.
final class StoreSCP: Sendable {
    static let storescp = LintTools.installed("storescp") ?? "/usr/bin/storescp"
    static let storescu = LintTools.installed("storescu") ?? "/usr/bin/storescu"
    static var isAvailable: Bool { LintTools.installed("storescp") != nil && LintTools.installed("storescu") != nil }

    let temp: TemporaryDirectory
    let port: Int
    let pid: pid_t
    var directory: String { temp.file("received") }
    var output: String { (try? String(contentsOfFile: temp.file("storescp.log"), encoding: .utf8)) ?? "" }

    init(refuse: Bool = false) throws {
        temp = try TemporaryDirectory("mqi-storescp")
        port = try SSHServer.freePort()
        try FileManager.default.createDirectory(atPath: temp.file("received"), withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: temp.file("storescp.log"), contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: temp.file("storescp.log")))
        defer { try? log.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.storescp)
        process.arguments = ["-v", "-dhl", "-aet", "PACS", "-od", temp.file("received"), "+B"] + (refuse ? ["--refuse"] : []) + ["\(port)"]
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        pid = process.processIdentifier
        let deadline = Date().addingTimeInterval(10)
        while !SSHServer.canConnect(port) {
            guard Date() < deadline, process.isRunning else {
                stop()
                throw TestSupportError("storescp did not listen on 127.0.0.1:\(port): \(output)")
            }
            usleep(20_000)
        }
    }

    func stop() {
        kill(pid, SIGTERM)
        var status: Int32 = 0
        for _ in 0..<250 where waitpid(pid, &status, WNOHANG) == 0 { usleep(20_000) }
        if kill(pid, 0) == 0 {
            kill(pid, SIGKILL)
            waitpid(pid, &status, 0)
        }
    }
}

/// A DICOM Part 10 file split into its file meta elements (group 0002, always explicit VR little
/// endian) by tag, and the bytes of the data set after them.
struct Part10File {
    static let mediaStorageSOPClassUID: UInt32 = 0x0002_0002
    static let mediaStorageSOPInstanceUID: UInt32 = 0x0002_0003
    static let transferSyntaxUID: UInt32 = 0x0002_0010

    var meta: [UInt32: Data] = [:]
    var dataSet: Data

    init(path: String) throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        guard bytes.count >= 132, bytes[128..<132].elementsEqual("DICM".utf8) else {
            throw TestSupportError("\(path) is not a DICOM file (no DICM after the preamble)")
        }
        func u16(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        var offset = 132
        while offset + 8 <= bytes.count, u16(offset) == 0x0002 {
            let tag = UInt32(u16(offset)) << 16 | UInt32(u16(offset + 2))
            let vr = String(decoding: bytes[offset + 4..<offset + 6], as: UTF8.self)
            let long = ["OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UR", "UT", "UN"].contains(vr)
            let (header, length) = long ? (12, u32(offset + 8)) : (8, u16(offset + 6))
            guard offset + header + length <= bytes.count else { throw TestSupportError("\(path): file meta element \(tag) runs past the end") }
            meta[tag] = Data(bytes[offset + header..<offset + header + length])
            offset += header + length
        }
        dataSet = Data(bytes[offset...])
    }
}
