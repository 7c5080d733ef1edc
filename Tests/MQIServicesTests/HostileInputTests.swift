import Foundation
import MQICore
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// Bad input gets a clear message and loses nothing.
@Suite(.serialized)
struct HostileInputTests {
    static let validConfig = """
        scanner:
          local_logdata: ./data
        workflows:
          default_qa:
            - { name: upload_case_files, type: upload, progress: 10 }
            - { name: run_moqui_sim, type: execute, progress: 70 }
        remote_commands:
          run_moqui_sim: "echo {case_id}"
        """

    struct BadConfig: CustomTestStringConvertible, Sendable {
        var name: String
        var text: String
        /// `line:col: key.path` expected at the start of the first error (after the file name).
        var location: String
        var testDescription: String { name }
    }

    static let badConfigs: [BadConfig] = [
        BadConfig(name: "truncated YAML", text: "scanner:\n  local_logdata: ./data\nworkflows: { default_qa: [ { name: a", location: ":4:1: (document)"),
        BadConfig(name: "tab indentation", text: "scanner:\n\tlocal_logdata: ./data\n", location: ":2:1: (document)"),
        BadConfig(name: "wrong type", text: validConfig + "\nretry: { max_attempts: three }", location: ":9:24: retry.max_attempts"),
        BadConfig(name: "negative number", text: validConfig.replacingOccurrences(of: "./data\n", with: "./data\n  quiet_period_sec: -5\n"), location: ":3:21: scanner.quiet_period_sec"),
        BadConfig(name: "unknown key", text: validConfig + "\nlogging: { levle: info }", location: ":9:12: logging.levle"),
        BadConfig(name: "duplicate key", text: validConfig.replacingOccurrences(of: "./data\n", with: "./data\n  local_logdata: ./other\n"), location: ":3:3: scanner.local_logdata"),
        BadConfig(name: "missing required key", text: validConfig.replacingOccurrences(of: "  local_logdata: ./data\n", with: "  workflow: default_qa\n"), location: ":2:3: scanner.local_logdata"),
        BadConfig(name: "step without a command", text: validConfig.replacingOccurrences(of: "  run_moqui_sim: \"echo {case_id}\"", with: "  {}"), location: ":6:7: workflows.default_qa[1]"),
        BadConfig(name: "unknown placeholder", text: validConfig.replacingOccurrences(of: "{case_id}", with: "{patient}"), location: ":8:18: remote_commands.run_moqui_sim"),
    ]

    @Test(.timeLimit(.minutes(4)), arguments: badConfigs)
    func badConfigsExitTwoWithFileLineColumnAndKey(_ bad: BadConfig) async throws {
        let temp = try TemporaryDirectory("mqi-badconfig")
        defer { temp.remove() }
        let path = temp.file("config.yaml")
        try bad.text.write(toFile: path, atomically: true, encoding: .utf8)
        for command in [["config", "check"], ["run"]] {
            let process = try MQIProcess(command + ["--config", path], output: temp.file("out-\(command[0]).txt"))
            #expect(await process.wait(upTo: 30) == 2, "\(command): \(process.output)")
            let first = process.output.split(separator: "\n").first.map(String.init) ?? ""
            #expect(first.hasPrefix(path + bad.location), "\(bad.name): \(first)")
            #expect(!process.output.contains("Fatal error") && !process.output.contains("Stack dump"))
        }
    }

    /// Names a sender could produce; none may run anything but the configured command.
    static let hostileNames = [
        "x'; touch CANARY; '", "$(touch CANARY)", "`touch CANARY`", "a;touch CANARY", "with spaces and \"quotes\"",
        "new\nline", "ünïcødé-患者-🩺", "back\\slash", "-rf", String(repeating: "L", count: 255),
    ]

    @Test(.timeLimit(.minutes(3)))
    func hostileCaseNamesRunNothingAndBrokenCasesFailAlone() async throws {
        let temp = try TemporaryDirectory("mqi-hostile")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 1)
        let config = try ConfigLoader.load(path: site.configPath)
        let logdata = config.scanner.localLogdata
        for name in Self.hostileNames {
            try DemoSite.writeCase(named: name, in: logdata, beams: 1)
        }
        // An empty case and one with a symlink to a file outside it.
        try FileManager.default.createDirectory(atPath: logdata + "/EMPTY", withIntermediateDirectories: true)
        try "".write(toFile: logdata + "/EMPTY/_CASE_READY", atomically: true, encoding: .utf8)
        let secret = temp.file("secret.txt")
        try "outside".write(toFile: secret, atomically: true, encoding: .utf8)
        try DemoSite.writeCase(named: "SYMLINK", in: logdata, beams: 1)
        try FileManager.default.createSymbolicLink(atPath: logdata + "/SYMLINK/leak.txt", withDestinationPath: secret)

        let logs = CapturedLogs()
        try await Daemon(config: config, logger: logs.logger(level: .info), exitWhenIdle: true).run()

        let store = try Daemon.openStore(config)
        for name in Self.hostileNames {
            let summary = try #require(try await store.caseSummary(name), "case \(name.debugDescription) not registered")
            let history = try await store.history(name).map(\.message)
            #expect(summary.status == .completed, "\(name.debugDescription): \(summary.error ?? "")\n\(history)")
            let results = (config.conductor.resultsDir as NSString).appendingPathComponent(name)
            #expect(FileManager.default.fileExists(atPath: results + "/moqui_summary.txt"))
        }
        let empty = try #require(try await store.caseSummary("EMPTY"))
        // Refused before upload: by the MOQUI layout check (the demo's case_layout), or the transfer's own check.
        #expect(empty.status == .failed, "\(empty.error ?? "")")
        #expect(empty.error?.contains("no RT plan file") == true || empty.error?.contains("holds no files") == true, "\(empty.error ?? "")")
        #expect(!FileManager.default.fileExists(atPath: config.conductor.uploadDir + "/EMPTY"))
        let symlink = try #require(try await store.caseSummary("SYMLINK"))
        #expect(symlink.status == .failed && symlink.error?.contains("leak.txt is a symlink") == true, "\(symlink.error ?? "")")
        #expect(!FileManager.default.fileExists(atPath: config.conductor.uploadDir + "/SYMLINK"), "nothing of a refused case is uploaded")
        // The canary: no file named CANARY anywhere the commands could have written.
        let walker = FileManager.default.enumerator(atPath: temp.path)
        var canaries: [String] = []
        while let path = walker?.nextObject() as? String {
            if (path as NSString).lastPathComponent == "CANARY" { canaries.append(path) }
        }
        #expect(canaries.isEmpty, "commands were injected: \(canaries)")
        #expect(try await store.gpus().allSatisfy { $0.status == .free })
    }

    @Test(.timeLimit(.minutes(4)))
    func anUnwritableResultsDirFailsTheCasesWithTheReasonAndTheDaemonGoesOn() async throws {
        let temp = try TemporaryDirectory("mqi-results")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 2)
        var config = try ConfigLoader.load(path: site.configPath)
        // A plain file where the results directory should be (root ignores permission bits, so
        // this stands in for a read-only or full disk).
        config.conductor.resultsDir = temp.file("results")
        try FileManager.default.createDirectory(atPath: config.conductor.resultsDir, withIntermediateDirectories: true)
        try "not a directory".write(toFile: config.conductor.resultsDir + "/.mqi-partial", atomically: true, encoding: .utf8)
        try await Daemon(config: config, logger: CapturedLogs().logger(), exitWhenIdle: true).run()
        let cases = try await Daemon.openStore(config).cases()
        #expect(cases.count == 2)
        for summary in cases {
            #expect(summary.status == .failed)
            #expect(summary.workflowStep == "download_results")
            #expect(summary.error?.contains(config.conductor.resultsDir) == true, "\(summary.error ?? "")")
        }
    }

    @Test func aCaseDeletedBeforeItsUploadFailsWithAClearReason() async throws {
        let temp = try TemporaryDirectory("mqi-deleted")
        defer { temp.remove() }
        let mover = MQITransportLocal.mover(upload: temp.file("upload"), download: temp.file("download"))
        await #expect {
            _ = try await mover.upload(caseId: "GONE", from: temp.file("data/GONE"))
        } throws: { error in
            "\(error)".contains("GONE")
        }
    }
}

import MQITransport

enum MQITransportLocal {
    static func mover(upload: String, download: String) -> LocalFileMover {
        LocalFileMover(uploadDir: upload, downloadDir: download)
    }
}
