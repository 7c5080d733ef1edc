import Foundation
import Logging
import MQICore
import MQIStore

/// What each `mqi` subcommand does, called by the executable once it has parsed the arguments
/// (like SwiftPM's `Commands` library behind `swift-package`). Each returns the process's exit
/// status (0 ok, 1 failure, 2 usage or config error, 3 another instance is running) after
/// printing its result to stdout and why it failed to stderr; other errors are thrown.
public enum Commands {
    /// `mqi run`: the daemon, until SIGTERM/SIGINT (or idle with `exitWhenIdle`). The executable
    /// passes `LoggingSystem.bootstrap`, so only it bootstraps logging.
    public static func run(configPath: String, exitWhenIdle: Bool, logLevel: String?, logFormat: LogFormat,
                           bootstrapLogging: (@escaping @Sendable (String) -> any LogHandler) -> Void) async throws -> Int32 {
        try await exitStatus {
            let config = try loadConfig(configPath)
            let levelName = logLevel ?? config.logging.level
            guard let level = Logger.Level(name: levelName) else {
                printError("--log-level: unknown level '\(levelName)'")
                throw Failure(status: 2)
            }
            let repeats = RepeatFilter()
            bootstrapLogging { label in MQILogHandler(label: label, level: level, format: logFormat, repeats: repeats) }
            let logger = Logger(label: "mqi")
            do {
                try await Daemon(config: config, logger: logger, exitWhenIdle: exitWhenIdle).run()
            } catch let error as PIDLock.AlreadyRunning {
                logger.error("\(error.description)")
                printError("mqi: \(error.description)")
                throw Failure(status: 3)
            } catch {
                logger.critical("the daemon stopped on an error: \(error)")
                throw Failure(status: 1)
            }
        }
    }

    /// `mqi status`: cases per status, GPUs and queues.
    public static func status(configPath: String, json: Bool) async throws -> Int32 {
        try await exitStatus {
            let config = try loadConfig(configPath)
            print(try await Reports.status(config: config, store: Daemon.openStore(config), json: json))
        }
    }

    /// `mqi cases list`: cases newest first, optionally of one status.
    public static func listCases(configPath: String, status: String?, limit: Int, json: Bool) async throws -> Int32 {
        try await exitStatus {
            let config = try loadConfig(configPath)
            var filter: CaseStatus?
            if let status {
                guard let parsed = CaseStatus(rawValue: status.uppercased()) else {
                    printError("--status: unknown status '\(status)'; expected one of \(CaseStatus.allCases.map(\.rawValue).joined(separator: ", "))")
                    throw Failure(status: 2)
                }
                filter = parsed
            }
            // Read-only: the listing writes nothing and runs no migration (see openForReading).
            let store = try Store.openForReading(state: config.state, maxDeliveries: config.retry.maxAttempts)
            let cases = try await store.cases(status: filter, limit: limit)
            print(json ? Reports.casesJSON(cases) : Reports.casesTable(cases))
        }
    }

    /// `mqi cases show`: one case with its history.
    public static func showCase(configPath: String, caseId: String, json: Bool) async throws -> Int32 {
        try await exitStatus {
            let config = try loadConfig(configPath)
            guard let detail = try await Reports.caseDetail(caseId, store: Daemon.openStore(config), json: json, fractionWindowMin: config.scanner.fractionWindowMin) else {
                printError("no case '\(caseId)'")
                throw Failure(status: 1)
            }
            print(detail)
        }
    }

    /// `mqi cases retry` and `mqi cases cancel`: the event through the Conductor, in one
    /// transaction; a running daemon picks up the result.
    public static func operate(configPath: String, caseId: String, event: ConductorEvent) async throws -> Int32 {
        try await exitStatus {
            let config = try loadConfig(configPath)
            let store = try Daemon.openStore(config)
            // Who did it, in the case's history, as the API records its callers.
            let user = ProcessInfo.processInfo.environment["SUDO_USER"].map { "\(ProcessInfo.processInfo.userName) (sudo by \($0))" }
                ?? ProcessInfo.processInfo.userName
            let applied = try await store.conduct(event, caseId: caseId, conductor: Conductor(config: config),
                                                  audit: "\(event.name) by \(user) with the mqi command on \(StateConfig.localHostName)")
            guard let first = applied.first else {
                printError("no case '\(caseId)'")
                throw Failure(status: 1)
            }
            guard first.decision.outcome == .applied else {
                printError(first.decision.note)
                throw Failure(status: 1)
            }
            print("\(caseId): \(first.previousStatus.rawValue) → \(first.decision.state.status.rawValue): \(first.decision.note)")
        }
    }

    /// `mqi gpus`: each GPU's reservation, health and last telemetry.
    public static func gpus(configPath: String, json: Bool) async throws -> Int32 {
        try await exitStatus {
            let config = try loadConfig(configPath)
            let gpus = try await Daemon.openStore(config).gpus()
            print(json ? try Reports.jsonText(gpus) : Reports.gpusTable(gpus))
        }
    }

    /// `mqi prune`: step logs and history of finished cases past retention (or, dry, what would go).
    public static func prune(configPath: String, dryRun: Bool) async throws -> Int32 {
        try await exitStatus {
            let config = try loadConfig(configPath)
            let store = try Daemon.openStore(config)
            let retention = Retention(config: config.retention, logsDir: config.state.logsDir, store: store)
            let report = try await retention.prune(dryRun: dryRun)
            for line in Retention.describe(report, dryRun: dryRun, config: config.retention) { print(line) }
            if !report.problems.isEmpty { throw Failure(status: 1) }
        }
    }

    /// `mqi db migrate-to URL`: copies the config's SQLite state into the empty PostgreSQL
    /// database at `url` (in one transaction: all or nothing). Refused while the daemon runs on
    /// the SQLite file (its lock is held), when the config's state is PostgreSQL already, or
    /// when the target holds any row. The password comes from state.password_file or PGPASSWORD.
    public static func migrateTo(configPath: String, url: String) async throws -> Int32 {
        try await exitStatus {
            let config = try loadConfig(configPath)
            guard !config.state.isPostgres else {
                printError("mqi db migrate-to: state.database is already PostgreSQL (\(config.state.database)); migrate-to copies a SQLite state")
                throw Failure(status: 2)
            }
            guard PostgresLocation.isURL(url) else {
                printError("mqi db migrate-to: '\(url)' is not a PostgreSQL URL (postgresql://USER@HOST[:PORT]/DATABASE)")
                throw Failure(status: 2)
            }
            let daemon = PIDLock.holder(of: config.state.database + ".lock")
            if daemon.running {
                printError("mqi db migrate-to: a daemon (PID \(daemon.pid.map(String.init) ?? "?")) is using \(config.state.database); stop it first, so nothing changes during the copy")
                throw Failure(status: 3)
            }
            let source = try Daemon.openStore(config)
            var targetState = config.state
            targetState.database = url
            let target: Store
            do {
                target = try Store.open(state: targetState, maxDeliveries: config.retry.maxAttempts)
            } catch {
                printError("mqi db migrate-to: \(error)")
                throw Failure(status: 1)
            }
            do {
                let copied = try await source.copyState(to: target)
                for (table, rows) in copied { print("\(table): \(rows) row(s)") }
                print("copied \(config.state.database) into \(url); set state.database: \(url) in \(configPath) and start the communicators")
            } catch {
                printError("mqi db migrate-to: nothing was copied: \(error)")
                throw Failure(status: 1)
            }
        }
    }

    /// `mqi config check`: exit 0 with a one-line summary, or the config's errors and exit 2.
    public static func checkConfig(configPath: String) async throws -> Int32 {
        try await exitStatus {
            let config = try loadConfig(configPath)
            let steps = config.workflows.values.map(\.steps.count).reduce(0, +)
            print("\(configPath): OK (\(config.workflows.count) workflow(s), \(steps) step(s), GPUs \(config.hpc.gpus))")
        }
    }

    /// `mqi demo`: a demo site in `directory`, every case run through the default workflow, the
    /// result printed. The executable passes `LoggingSystem.bootstrap` (the log goes to a file).
    public static func demo(directory: String, cases: Int,
                            bootstrapLogging: (@escaping @Sendable (String) -> any LogHandler) -> Void) async throws -> Int32 {
        try await exitStatus {
            guard (1...10_000).contains(cases) else {
                printError("--cases must be between 1 and 10000")
                throw Failure(status: 2)
            }
            let site: DemoSite
            do {
                site = try DemoSite.create(at: directory, cases: cases, perBeam: true)
            } catch {
                printError("mqi demo: \(error)")
                throw Failure(status: 1)
            }
            let config = try loadConfig(site.configPath)
            let logPath = (site.directory as NSString).appendingPathComponent("var/mqi.log")
            FileManager.default.createFile(atPath: logPath, contents: nil)
            guard let logFile = FileHandle(forWritingAtPath: logPath) else { throw Failure(status: 1) }
            let sink = LogSink(logFile)
            let repeats = RepeatFilter()
            bootstrapLogging { label in MQILogHandler(label: label, level: .info, format: .json, sink: sink, repeats: repeats) }
            print("MQI Communicator demo: \(cases) case(s) in \(site.directory)")
            print("config: \(site.configPath)")
            print("log:    \(logPath)")
            print("running until every case is done...")
            let started = Date()
            // The first case receives a second fraction while it runs: its deliveries arrive a
            // day later, and each runs the follow-up workflow once the case is COMPLETED.
            // Opened (and migrated) here, before the daemon opens it too.
            let store = try Daemon.openStore(config)
            let secondFraction = Task {
                let firstCase = try DemoSite.caseIDs(in: config.scanner.localLogdata, depth: config.scanner.caseDepth).first
                guard let firstCase else { return [String]() }
                while !Task.isCancelled {
                    if let state = try await store.caseState(firstCase), state.status == .completed || (state.stepIndex ?? 0) >= 2 {
                        return try DemoSite.addFraction(toCase: (config.scanner.localLogdata as NSString).appendingPathComponent(firstCase))
                    }
                    try await Task.sleep(for: .milliseconds(200))
                }
                return []
            }
            do {
                try await Daemon(config: config, logger: Logger(label: "mqi"), exitWhenIdle: true, onListening: { port in
                    print("metrics: http://127.0.0.1:\(port)/metrics (while the demo runs)")
                }).run()
            } catch {
                printError("mqi demo: the daemon failed: \(error)")
                throw Failure(status: 1)
            }
            secondFraction.cancel()
            let followups = (try? await secondFraction.value) ?? []
            let all = try await Daemon.openStore(config).cases().sorted { $0.caseId < $1.caseId }
            print("")
            print(Reports.casesTable(all))
            let completed = all.filter { $0.status == .completed }.count
            let mainCases = all.filter { !$0.caseId.contains("#") }.count
            print("")
            print("\(completed) of \(all.count) case(s) COMPLETED in \(String(format: "%.1f", Date().timeIntervalSince(started))) s; results in \(config.conductor.resultsDir)")
            if !followups.isEmpty {
                print("a second fraction arrived for the first case (\(followups.count) deliveries): each ran the follow-up workflow delivery_check once (the <case>#<delivery> rows); its simulation did not run again")
            }
            if completed != all.count || mainCases != cases {
                print("see `mqi cases show ID --config \(site.configPath)` and the log for what went wrong")
                throw Failure(status: 1)
            }
        }
    }

    // MARK: helpers

    /// The end of a command with a non-zero exit status, after it printed why.
    struct Failure: Error {
        let status: Int32
    }

    /// 0 when `body` returns, the status of the `Failure` it throws; other errors pass through.
    static func exitStatus(_ body: () async throws -> Void) async throws -> Int32 {
        do {
            try await body()
            return 0
        } catch let failure as Failure {
            return failure.status
        }
    }

    /// The validated config, or `Failure(2)` after printing `file:line:col: key.path: message` lines.
    static func loadConfig(_ path: String) throws -> Config {
        do {
            return try ConfigLoader.load(path: path)
        } catch {
            printError(error.description)
            throw Failure(status: 2)
        }
    }

    static func printError(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }
}
