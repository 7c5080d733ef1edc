import Foundation
import Logging
import MQICore
import MQIServices
import MQITestSupport
import MQITransport

// MARK: - 5. SSH transport figures
//
// Against a private sshd on 127.0.0.1 (the same harness the tests use): an upload and a
// download with verification vs raw `rsync -a` over the same connection, and the new
// connections a 20-case run opens. (Per-command latency has a figure of its own.)
enum SSHFigures {
    static let section = "5. SSH transport"

    static func run(quick: Bool) async -> [Figure] {
        guard SSHServer.isAvailable else {
            let note = "n/a (sshd, ssh or rsync not installed)"
            return [
                .notAvailable(section, "verified upload vs raw rsync", unit: "x", goal: ">= 0.9 x", note: note),
                .notAvailable(section, "verified download vs raw rsync", unit: "x", goal: ">= 0.9 x", note: note),
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
        // The daemon's steady state: the master is up and a remote command has run (whatever
        // the connection keeps for the next command is ready), as for the raw rsync beside it.
        _ = try await SSHCommandRunner(connection: connection).capture("true", timeoutSec: 30)
        var figures: [Figure] = []

        // A case of many files, 200 MB in all without --quick (50 MB with it).
        let temp = try TemporaryDirectory("mqi-bench-ssh")
        defer { temp.remove() }
        let files = quick ? 250 : 1000
        let fileSize = 200 * 1024
        let caseDir = temp.file("case/BENCH-1")
        for index in 0..<files {
            let dir = caseDir + "/beam\(index % 4)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var bytes = [UInt8](repeating: 0, count: fileSize)
            for offset in stride(from: 0, to: fileSize, by: 4096) { bytes[offset] = UInt8(truncatingIfNeeded: index &+ offset) }
            try Data(bytes).write(to: URL(fileURLWithPath: "\(dir)/\(String(format: "%04d", index))_layer.ptn"))
        }
        let megabytes = Int(Double(files * fileSize) / 1_048_576)
        let shell = (["ssh"] + connection.clientOptions).map(ShellQuote.quote).joined(separator: " ")
        let remote = temp.file("remote")
        let mover = SSHFileMover(connection: connection, uploadDir: remote + "/upload", downloadDir: temp.file("case"))
        // Rounds interleaved, ours first in even rounds and raw first in odd ones, so load changes
        // and order hit both alike; medians of the rounds. The download takes the same data the
        // other way (the case directory stands for the results on the HPC).
        let rounds = quick ? 2 : 5
        var upOurs: [Double] = [], upRaw: [Double] = [], downOurs: [Double] = [], downRaw: [Double] = []
        func timed(_ body: () async throws -> Void) async rethrows -> Double {
            let started = nowEpoch()
            try await body()
            return nowEpoch() - started
        }
        for round in 0..<rounds {
            try FileManager.default.createDirectory(atPath: remote + "/raw", withIntermediateDirectories: true)
            for ours in round % 2 == 0 ? [true, false] : [false, true] {
                if ours {
                    upOurs.append(try await timed { _ = try await mover.upload(caseId: "BENCH-UP-\(round)", from: caseDir) })
                } else {
                    upRaw.append(try await timed {
                        try runProcess(["/usr/bin/rsync", "-a", "-e", shell, caseDir + "/", "127.0.0.1:" + remote + "/raw/BENCH-UP-\(round)/"])
                    })
                }
            }
            for ours in round % 2 == 0 ? [true, false] : [false, true] {
                if ours {
                    downOurs.append(try await timed { _ = try await mover.download(caseId: "BENCH-1", into: temp.file("results-\(round)")) })
                } else {
                    downRaw.append(try await timed {
                        try runProcess(["/usr/bin/rsync", "-a", "-e", shell, "127.0.0.1:" + caseDir + "/", temp.file("results-raw-\(round)") + "/"])
                    })
                }
            }
            for name in ["results-\(round)", "results-raw-\(round)", "remote"] { try? FileManager.default.removeItem(atPath: temp.file(name)) }
        }
        for (name, ours, raw) in [("upload", upOurs, upRaw), ("download", downOurs, downRaw)] {
            let oursMedian = percentile(ours, 50)!, rawMedian = percentile(raw, 50)!
            figures.append(.goal(section, "\(name) \(megabytes) MB / \(files) files, verified, vs raw rsync", rawMedian / oursMedian,
                                 unit: "x", limit: 0.9, atLeast: true,
                                 baseline: "\(fmt(oursMedian)) s vs \(fmt(rawMedian)) s, median of \(rounds) interleaved (speed ratio, higher is better)"))
        }
        await connection.closeMaster()

        // New connections over a 20-case run of the daemon.
        let before = server.acceptedConnections
        let site = try DemoSite.create(at: temp.file("site"), cases: 20)
        var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        text = text.replacingOccurrences(of: "hpc:\n  transport: local\n  gpus: [0, 1]", with: server.hpcYAML(gpus: [0, 1]))
        try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: site.configPath)
        let started = nowEpoch()
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
