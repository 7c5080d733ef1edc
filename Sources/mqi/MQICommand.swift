import ArgumentParser
import Foundation
import Logging
import MQICore
import MQIServices
import MQIStore

@main
struct MQICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mqi",
        abstract: "MQI Communicator: runs proton-therapy QA cases through MOQUI on GPUs and tracks them.",
        discussion: "Exit codes: 0 ok, 1 failure, 2 usage or config error, 3 another instance is running.",
        subcommands: [Run.self, Status.self, Cases.self, GPUs.self, Prune.self, ConfigCommand.self, Demo.self])
}

/// `--config PATH`, shared by every command that reads a config.
struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Path to config.yaml.")
    var config: String = "config.yaml"

    /// The validated config, or exit 2 with `file:line:col: key.path: message` lines.
    func load() throws -> Config {
        do {
            return try ConfigLoader.load(path: config)
        } catch {
            printError(error.description)
            throw ExitCode(2)
        }
    }
}

func printError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
}

extension LogFormat: ExpressibleByArgument {}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the daemon.")

    @OptionGroup var options: ConfigOption
    @Flag(help: "Shut down once nothing is left to do and a scan finds nothing new.")
    var exitWhenIdle = false
    @Option(help: "Log level (trace, debug, info, notice, warning, error, critical); overrides logging.level.")
    var logLevel: String?
    @Option(help: "Log format: json (one object per line) or text.")
    var logFormat: LogFormat = .json

    func run() async throws {
        let config = try options.load()
        let levelName = logLevel ?? config.logging.level
        guard let level = Logger.Level(name: levelName) else {
            printError("--log-level: unknown level '\(levelName)'")
            throw ExitCode(2)
        }
        let format = logFormat
        let repeats = RepeatFilter()
        LoggingSystem.bootstrap { label in MQILogHandler(label: label, level: level, format: format, repeats: repeats) }
        let logger = Logger(label: "mqi")
        do {
            try await Daemon(config: config, logger: logger, exitWhenIdle: exitWhenIdle).run()
        } catch let error as PIDLock.AlreadyRunning {
            logger.error("\(error.description)")
            printError("mqi: \(error.description)")
            throw ExitCode(3)
        } catch {
            logger.critical("the daemon stopped on an error: \(error)")
            throw ExitCode(1)
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show cases per status, GPUs and queues.")

    @OptionGroup var options: ConfigOption
    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let config = try options.load()
        print(try await Reports.status(config: config, store: Daemon.openStore(config), json: json))
    }
}

struct Cases: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List, show, retry and cancel cases.",
                                                    subcommands: [List.self, Show.self, Retry.self, Cancel.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List cases, newest first.")
        @OptionGroup var options: ConfigOption
        @Option(help: "Only cases with this status (NEW, PROCESSING, PENDING_RESOURCE, COMPLETED, FAILED, CANCELLED).")
        var status: String?
        @Option(help: "At most this many cases.")
        var limit: Int = 10_000
        @Flag(help: "Print a JSON array.")
        var json = false

        func run() async throws {
            let config = try options.load()
            var filter: CaseStatus?
            if let status {
                guard let parsed = CaseStatus(rawValue: status.uppercased()) else {
                    printError("--status: unknown status '\(status)'; expected one of \(CaseStatus.allCases.map(\.rawValue).joined(separator: ", "))")
                    throw ExitCode(2)
                }
                filter = parsed
            }
            let cases = try await Daemon.openStore(config).cases(status: filter, limit: limit)
            if json {
                print(try Reports.jsonText(cases))
                return
            }
            print(Reports.casesTable(cases))
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one case with its history.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The case id.") var caseId: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let config = try options.load()
            guard let detail = try await Reports.caseDetail(caseId, store: Daemon.openStore(config), json: json) else {
                printError("no case '\(caseId)'")
                throw ExitCode(1)
            }
            print(detail)
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run a FAILED or CANCELLED case again from the step where it stopped.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The case id.") var caseId: String

        func run() async throws {
            try await operate(options, caseId, .retry)
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a case; its running step is stopped (also if the daemon is down now: on its next start), and its GPU drains until the stop is confirmed.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The case id.") var caseId: String

        func run() async throws {
            try await operate(options, caseId, .cancel(reason: "by an operator (mqi cases cancel)"))
        }
    }
}

/// Retry or cancel through the Conductor, in one transaction; a running daemon picks up the result.
func operate(_ options: ConfigOption, _ caseId: String, _ event: ConductorEvent) async throws {
    let config = try options.load()
    let store = try Daemon.openStore(config)
    let applied = try await store.conduct(event, caseId: caseId, conductor: Conductor(config: config))
    guard let first = applied.first else {
        printError("no case '\(caseId)'")
        throw ExitCode(1)
    }
    guard first.decision.outcome == .applied else {
        printError(first.decision.note)
        throw ExitCode(1)
    }
    print("\(caseId): \(first.previousStatus.rawValue) → \(first.decision.state.status.rawValue): \(first.decision.note)")
}

struct GPUs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "gpus", abstract: "Show each GPU: reservation, health and the last telemetry.")

    @OptionGroup var options: ConfigOption
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let config = try options.load()
        let gpus = try await Daemon.openStore(config).gpus()
        if json {
            print(try Reports.jsonText(gpus))
            return
        }
        print(Reports.gpusTable(gpus))
    }
}

struct Prune: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete step logs and history of finished cases older than retention.logs_days / retention.events_days now.",
        discussion: "Prints what it removed (or, with --dry-run, would remove): counts, then each log directory and case. The case rows stay.")

    @OptionGroup var options: ConfigOption
    @Flag(help: "Only print what would be removed.")
    var dryRun = false

    func run() async throws {
        let config = try options.load()
        let store = try Daemon.openStore(config)
        let retention = Retention(config: config.retention, logsDir: config.state.logsDir, store: store)
        let report = try await retention.prune(dryRun: dryRun)
        for line in Retention.describe(report, dryRun: dryRun, config: config.retention) { print(line) }
        if !report.problems.isEmpty { throw ExitCode(1) }
    }
}

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Work with the config file.", subcommands: [Check.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a config: exit 0, or print file:line:col: key.path: message lines and exit 2.")
        @OptionGroup var options: ConfigOption

        func run() async throws {
            let config = try options.load()
            let steps = config.workflows.values.map(\.steps.count).reduce(0, +)
            print("\(options.config): OK (\(config.workflows.count) workflow(s), \(steps) step(s), GPUs \(config.hpc.gpus))")
        }
    }
}

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a self-contained demo site, run every case through the default workflow, and print the result.")

    @Option(help: "Directory of the demo site (created; a previous demo site there is reset).")
    var dir: String = "./mqi-demo"
    @Option(help: "Number of sample cases.")
    var cases: Int = 6

    func run() async throws {
        guard (1...10_000).contains(cases) else {
            printError("--cases must be between 1 and 10000")
            throw ExitCode(2)
        }
        let site: DemoSite
        do {
            site = try DemoSite.create(at: dir, cases: cases, perBeam: true)
        } catch {
            printError("mqi demo: \(error)")
            throw ExitCode(1)
        }
        let config = try ConfigOption.parse(["--config", site.configPath]).load()
        let logPath = (site.directory as NSString).appendingPathComponent("var/mqi.log")
        FileManager.default.createFile(atPath: logPath, contents: nil)
        guard let logFile = FileHandle(forWritingAtPath: logPath) else { throw ExitCode(1) }
        let sink = LogSink(logFile)
        let repeats = RepeatFilter()
        LoggingSystem.bootstrap { label in MQILogHandler(label: label, level: .info, format: .json, sink: sink, repeats: repeats) }
        print("MQI Communicator demo: \(cases) case(s) in \(site.directory)")
        print("config: \(site.configPath)")
        print("log:    \(logPath)")
        print("running until every case is done...")
        let started = Date()
        do {
            try await Daemon(config: config, logger: Logger(label: "mqi"), exitWhenIdle: true, onListening: { port in
                print("metrics: http://127.0.0.1:\(port)/metrics (while the demo runs)")
            }).run()
        } catch {
            printError("mqi demo: the daemon failed: \(error)")
            throw ExitCode(1)
        }
        let all = try await Daemon.openStore(config).cases().sorted { $0.caseId < $1.caseId }
        print("")
        print(Reports.casesTable(all))
        let completed = all.filter { $0.status == .completed }.count
        print("")
        print("\(completed) of \(all.count) case(s) COMPLETED in \(String(format: "%.1f", Date().timeIntervalSince(started))) s; results in \(config.conductor.resultsDir)")
        if completed != all.count || all.count != cases {
            print("see `mqi cases show ID --config \(site.configPath)` and the log for what went wrong")
            throw ExitCode(1)
        }
    }
}
