import Foundation
import MQICore
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// The real `mqi` binary against state databases it must not use, or not alone: only a damaged
/// file is set aside; anything else is refused with a clear message and left untouched.
@Suite(.serialized)
struct DatabaseSafetyTests {
    /// A local site with fast steps; the database lives alone in `db/` so its directory listing
    /// shows anything created or renamed there.
    struct Site {
        let temp: TemporaryDirectory
        var config: String { temp.file("config.yaml") }
        var database: String { temp.file("db/mqi.sqlite") }

        init(cases: Int = 0, pidFile: String = "./var/mqi.pid") throws {
            temp = try TemporaryDirectory("mqi-dbsafety")
            let step = temp.file("step.sh")
            try "#!/bin/sh\nmkdir -p \"$1\" && echo \"dose\" > \"$1/dose.txt\"\n".write(toFile: step, atomically: true, encoding: .utf8)
            try Self.config(pidFile: pidFile, step: step).write(toFile: config, atomically: true, encoding: .utf8)
            for directory in ["data", "db", "var"] {
                try FileManager.default.createDirectory(atPath: temp.file(directory), withIntermediateDirectories: true)
            }
            for index in stride(from: 1, through: cases, by: 1) {
                try DemoSite.writeCase(named: String(format: "CASE-%03d", index), in: temp.file("data"), beams: 1)
            }
        }

        static func config(pidFile: String, step: String) -> String {
            """
            scanner: { local_logdata: ./data, ready_marker: _CASE_READY, rescan_interval_sec: 5 }
            state: { database: ./db/mqi.sqlite, pid_file: \(pidFile), logs_dir: ./var/logs }
            hpc: { transport: local, gpus: [0] }
            conductor:
              remote_paths: { upload_dir: ./var/hpc/upload, download_dir: ./var/hpc/download }
              results_dir: ./var/results
            workflows:
              default_qa:
                - { name: upload_case_files, type: upload,   progress: 10 }
                - { name: run_moqui_sim,     type: execute,  progress: 70, timeout_sec: 60 }
                - { name: download_results,  type: download, progress: 90 }
            remote_commands:
              run_moqui_sim: "/bin/sh \(ShellQuote.quote(step)) {result_dir}"
            retry: { max_attempts: 3, initial_delay_sec: 0.1, max_delay_sec: 1, multiplier: 2 }
            metrics: { port: 0 }
            gpu_monitor: { enabled: false }
            """
        }

        /// Creates the database with the current schema in another process (`mqi cases list`),
        /// so it is closed and checkpointed (no -wal left) before the test looks at it.
        func createDatabase() async throws {
            let created = try await DatabaseSafetyTests.mqi(as: nil, ["cases", "list", "--config", config], output: temp.file("create.log"))
            guard created.status == 0 else { throw TestSupportError("mqi cases list: \(created.output)") }
        }

        func store() throws -> Store { try Daemon.openStore(try ConfigLoader.load(path: config)) }

        func databaseDirectory() throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: temp.file("db")).sorted()
        }
    }

    /// Runs `sqlite3 DATABASE SQL` and returns its output.
    @discardableResult
    static func sqlite(_ database: String, _ sql: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        process.arguments = [database, sql]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestSupportError("sqlite3 \(sql) exited \(process.terminationStatus)") }
        return String(decoding: output, as: UTF8.self)
    }

    /// Runs `mqi ARGUMENTS` as `user` (via runuser) and returns its exit status and output.
    static func mqi(as user: String?, _ arguments: [String], output: String) async throws -> (status: Int32?, output: String) {
        FileManager.default.createFile(atPath: output, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        defer { try? handle.close() }
        let process = Process()
        if let user {
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/runuser")
            process.arguments = ["-u", user, "--", try mqiExecutable()] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: try mqiExecutable())
            process.arguments = arguments
        }
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while process.isRunning, Date() < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if process.isRunning { process.terminate() }
        let status = process.isRunning ? nil : process.terminationStatus
        return (status, (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
    }

    static let testUser = "mqitest-db"

    /// The uid of a non-root user for the permission tests, created if missing (tests run as root).
    static func nonRootUser() throws -> uid_t {
        if let entry = getpwnam(testUser) { return entry.pointee.pw_uid }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/useradd")
        process.arguments = ["-M", "-s", "/bin/sh", testUser]
        try process.run()
        process.waitUntilExit()
        guard let entry = getpwnam(testUser) else { throw TestSupportError("useradd \(testUser) failed") }
        return entry.pointee.pw_uid
    }

    static var canSwitchUser: Bool {
        getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/sbin/runuser")
            && (getpwnam(testUser) != nil || FileManager.default.isExecutableFile(atPath: "/usr/sbin/useradd"))
    }

    enum Unwritable: String, CaseIterable, CustomTestStringConvertible, Sendable {
        /// The database and its directory belong to root (`sudo mqi run` once, say).
        case rootOwnedDirectory
        /// The directory and file are the daemon's, but `sudo mqi cases list` left -wal/-shm owned by root.
        case walLeftByRoot
        var testDescription: String { rawValue }
    }

    @Test(.timeLimit(.minutes(4)), .enabled(if: canSwitchUser, "needs root, runuser and useradd"), arguments: Unwritable.allCases)
    func aDatabaseTheDaemonCannotWriteIsRefusedAndLeftAlone(_ setup: Unwritable) async throws {
        let site = try Site()
        defer { site.temp.remove() }
        let uid = try Self.nonRootUser()
        try await site.createDatabase()
        // The daemon's user owns everything it writes except the database.
        for path in [site.temp.file("var"), site.temp.file("data")] { chown(path, uid, gid_t(uid)) }
        switch setup {
        case .rootOwnedDirectory:
            break
        case .walLeftByRoot:
            chown(site.temp.file("db"), uid, gid_t(uid))
            chown(site.database, uid, gid_t(uid))
            for suffix in ["-wal", "-shm"] {
                FileManager.default.createFile(atPath: site.database + suffix, contents: nil, attributes: [.posixPermissions: 0o644])
            }
        }
        let before = try Data(contentsOf: URL(fileURLWithPath: site.database))
        let listing = try site.databaseDirectory()

        let run = try await Self.mqi(as: Self.testUser, ["run", "--config", site.config, "--log-format", "text"], output: site.temp.file("run.log"))
        #expect(run.status == 1, "\(run.output.suffix(2000))")
        #expect(run.output.contains(site.database) && run.output.contains("not writable by uid \(uid)") && run.output.contains("chown"),
                "\(run.output.suffix(2000))")
        #expect(!run.output.contains("set aside"), "\(run.output.suffix(2000))")

        let status = try await Self.mqi(as: Self.testUser, ["status", "--config", site.config], output: site.temp.file("status.log"))
        #expect(status.status == 1, "\(status.output)")
        #expect(status.output.contains("not writable by uid \(uid)"), "\(status.output)")

        #expect(try Data(contentsOf: URL(fileURLWithPath: site.database)) == before, "the database file is unchanged")
        #expect(try site.databaseDirectory() == listing, "nothing renamed or created beside the database")
    }

    @Test(.timeLimit(.minutes(4)))
    func aDatabaseOfANewerVersionIsRefusedNeverMigratedOrRebuilt() async throws {
        let site = try Site(cases: 1)
        defer { site.temp.remove() }
        try await site.createDatabase()
        try Self.sqlite(site.database, "INSERT INTO grdb_migrations (identifier) VALUES ('v99-future')")
        // Its schema and rows (opening a WAL database with GRDB rewrites header bytes).
        let before = try Self.sqlite(site.database, ".dump")
        let listing = try site.databaseDirectory()

        let run = try await Self.mqi(as: nil, ["run", "--config", site.config, "--log-format", "text", "--exit-when-idle"], output: site.temp.file("run.log"))
        #expect(run.status == 1, "\(run.output.suffix(2000))")
        #expect(run.output.contains("\(site.database) was written by a newer version of mqi") && run.output.contains("v99-future"),
                "\(run.output.suffix(2000))")
        let status = try await Self.mqi(as: nil, ["cases", "list", "--config", site.config], output: site.temp.file("cases.log"))
        #expect(status.status == 1, "\(status.output)")
        #expect(status.output.contains("newer version of mqi"), "\(status.output)")

        #expect(try Self.sqlite(site.database, ".dump") == before, "the database is neither migrated nor rebuilt")
        let after = try site.databaseDirectory()
        #expect(after == listing, "nothing set aside: \(after)")
    }

    @Test(.timeLimit(.minutes(4)))
    func unreadableMessagesGoToTheDeadLettersAndTheQueueGoesOn() async throws {
        let site = try Site(cases: 3)
        defer { site.temp.remove() }
        try await site.createDatabase()
        // Two rows this version cannot read, due long ago: at the head of the conductor's queue.
        try Self.sqlite(site.database, """
            INSERT INTO messages (queue, kind, case_id, body, created_at, available_at) VALUES
              ('conductor_queue', 'xyz', 'CASE-X', '{"case_id":"CASE-X"}', '2000-01-01 00:00:00.000', '2000-01-01 00:00:00.000'),
              ('conductor_queue', 'new_case_found', 'CASE-Y', '{not json', '2000-01-01 00:00:00.000', '2000-01-01 00:00:00.000');
            """)
        let run = try await Self.mqi(as: nil, ["run", "--config", site.config, "--log-format", "text", "--exit-when-idle"], output: site.temp.file("run.log"))
        #expect(run.status == 0, "\(run.output.suffix(3000))")

        let store = try site.store()
        let all = try await store.cases()
        #expect(all.count == 3 && all.allSatisfy { $0.status == .completed }, "\(all.map { "\($0.caseId) \($0.status.rawValue) \($0.error ?? "")" })")
        let dead = try await store.deadLetters()
        #expect(dead.count == 2, "\(dead)")
        #expect(dead.contains { $0.caseId == "CASE-X" && $0.error == "unknown message kind 'xyz'" }, "\(dead)")
        #expect(dead.contains { $0.caseId == "CASE-Y" && $0.error.hasPrefix("undecodable body: ") }, "\(dead)")
    }

    @Test(.timeLimit(.minutes(4)))
    func twoConfigsWithOneDatabaseCannotBothRun() async throws {
        let site = try Site(pidFile: "./var/first.pid")
        defer { site.temp.remove() }
        let second = site.temp.file("second.yaml")
        try Site.config(pidFile: "./var/second.pid", step: site.temp.file("step.sh")).write(toFile: second, atomically: true, encoding: .utf8)

        let first = try MQIProcess(["run", "--config", site.config, "--log-format", "text"], output: site.temp.file("first.log"))
        defer { first.signal(SIGTERM) }
        #expect(await eventually(within: 30) { first.output.contains("mqi daemon started") }, "\(first.output.suffix(2000))")

        let other = try await Self.mqi(as: nil, ["run", "--config", second, "--log-format", "text"], output: site.temp.file("second.log"))
        #expect(other.status == 3, "\(other.output.suffix(2000))")
        #expect(other.output.contains("already using the database \(site.database)") && other.output.contains("PID \(first.pid)"),
                "\(other.output.suffix(2000))")
        #expect(first.isRunning, "the first daemon is not disturbed")

        first.signal(SIGTERM)
        #expect(await first.wait(upTo: 30) == 0, "\(first.output.suffix(2000))")
    }
}
