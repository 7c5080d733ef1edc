import Foundation
import Logging
import MQICore
import MQIServices
import MQITestSupport
import MQITransport

// MARK: - 5. SSH transport figures
//
// Against a private sshd on 127.0.0.1 (the same harness the tests use): a no-op command through
// the transport vs raw `ssh` over the same ControlMaster, an upload with verification vs raw
// `rsync -a` over the same connection, and the new connections a 20-case run opens.
enum SSHFigures {
    static let section = "5. SSH transport"

    static func run(quick: Bool) async -> [Figure] {
        guard SSHServer.isAvailable else {
            let note = "n/a (sshd, ssh or rsync not installed)"
            return [
                .notAvailable(section, "per-command latency vs raw ssh", unit: "x", goal: "<= 1.2 x", note: note),
                .notAvailable(section, "transfer speed vs raw rsync", unit: "x", goal: ">= 0.9 x", note: note),
                .notAvailable(section, "new SSH connections per 20-case run", unit: "connections", goal: "<= 1", note: note),
            ]
        }
        do {
            return try await measure(quick: quick)
        } catch {
            return [.notAvailable(section, "ssh figures", unit: "", goal: "", note: "failed: \(error)")]
        }
    }

    static func measure(quick: Bool) async throws -> [Figure] {
        let server = try SSHServer()
        defer { server.stop(); server.remove() }
        try await server.start()
        let logger = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }
        let connection = try SSHConnection(config: server.sshConfig(), retry: RetryPolicy(), logger: logger)
        try await connection.ensureMaster()
        let runner = SSHCommandRunner(connection: connection)
        let ssh = ["/usr/bin/ssh"] + connection.clientOptions + ["127.0.0.1"]

        // Per-command latency, interleaved so load changes hit both alike.
        var ours: [Double] = []
        var raw: [Double] = []
        for _ in 0..<50 {
            var started = nowEpoch()
            _ = try await runner.capture("true", timeoutSec: 30)
            ours.append(nowEpoch() - started)
            started = nowEpoch()
            try runProcess(ssh + ["true"])
            raw.append(nowEpoch() - started)
        }
        let oursMedian = percentile(ours, 50)!, rawMedian = percentile(raw, 50)!
        var figures: [Figure] = [
            .goal(section, "per-command latency vs raw ssh (median of 50)", oursMedian / rawMedian, unit: "x", limit: 1.2,
                  baseline: "\(fmt(oursMedian * 1000)) ms vs \(fmt(rawMedian * 1000)) ms"),
        ]

        // Upload: a case of many files, with verification, vs plain rsync over the same master.
        let temp = try TemporaryDirectory("mqi-bench-ssh")
        defer { temp.remove() }
        let files = quick ? 250 : 1000
        let fileSize = 200 * 1024  // 200 MB in all without --quick, 50 MB with it
        let caseDir = temp.file("case/BENCH-1")
        for index in 0..<files {
            let dir = caseDir + "/beam\(index % 4)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var bytes = [UInt8](repeating: 0, count: fileSize)
            for offset in stride(from: 0, to: fileSize, by: 4096) { bytes[offset] = UInt8(truncatingIfNeeded: index &+ offset) }
            try Data(bytes).write(to: URL(fileURLWithPath: "\(dir)/\(String(format: "%04d", index))_layer.ptn"))
        }
        let mover = SSHFileMover(connection: connection, uploadDir: temp.file("remote-ours"), downloadDir: temp.file("remote-down"))
        var started = nowEpoch()
        _ = try await mover.upload(caseId: "BENCH-1", from: caseDir)
        let oursTransfer = nowEpoch() - started
        try FileManager.default.createDirectory(atPath: temp.file("remote-raw"), withIntermediateDirectories: true)
        started = nowEpoch()
        try runProcess(["/usr/bin/rsync", "-a", "-e", (["ssh"] + connection.clientOptions).map(ShellQuote.quote).joined(separator: " "),
                        caseDir + "/", "127.0.0.1:" + temp.file("remote-raw/BENCH-1") + "/"])
        let rawTransfer = nowEpoch() - started
        let megabytes = Double(files * fileSize) / 1_048_576
        figures.append(.goal(section, "upload \(Int(megabytes)) MB / \(files) files, verified, vs raw rsync", rawTransfer / oursTransfer,
                             unit: "x", limit: 0.9, atLeast: true,
                             baseline: "\(fmt(oursTransfer)) s vs \(fmt(rawTransfer)) s (speed ratio, higher is better)"))
        await connection.closeMaster()

        // New connections over a 20-case run of the daemon.
        let before = server.acceptedConnections
        let site = try DemoSite.create(at: temp.file("site"), cases: 20)
        var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        text = text.replacingOccurrences(of: "hpc:\n  transport: local\n  gpus: [0, 1]", with: server.hpcYAML(gpus: [0, 1]))
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: site.configPath)
        started = nowEpoch()
        try await Daemon(config: config, logger: logger, exitWhenIdle: true).run()
        let runSeconds = nowEpoch() - started
        let completed = try await Daemon.openStore(config).cases(status: .completed).count
        figures.append(.goal(section, "new SSH connections per 20-case run", Double(server.acceptedConnections - before), unit: "connections",
                             limit: 1, note: "\(completed)/20 COMPLETED in \(fmt(runSeconds)) s"))
        return figures
    }

    static func runProcess(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestSupportError("\(arguments.prefix(1)) exited \(process.terminationStatus)")
        }
    }
}
