import ArgumentParser
import Logging
import MQICore
import MQIServices

/// `mqi`: parses the arguments and calls `Commands` in MQIServices, which does the work.
@main
struct MQICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mqi",
        abstract: "MQI Communicator: runs proton-therapy QA cases through MOQUI on GPUs and tracks them.",
        discussion: "Exit codes: 0 ok, 1 failure, 2 usage or config error, 3 another instance is running.",
        subcommands: [Run.self, Status.self, Cases.self, GPUs.self, Prune.self, ConfigCommand.self, DB.self, Demo.self])
}

/// `--config PATH`, shared by every command that reads a config.
struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Path to config.yaml.")
    var config: String = "config.yaml"
}

/// Ends the command with the exit status a `Commands` function returned.
func finish(_ status: Int32) throws {
    if status != 0 { throw ExitCode(status) }
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
        try finish(await Commands.run(configPath: options.config, exitWhenIdle: exitWhenIdle, logLevel: logLevel,
                                          logFormat: logFormat, bootstrapLogging: LoggingSystem.bootstrap))
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show cases per status, GPUs and queues.")
    @OptionGroup var options: ConfigOption
    @Flag(help: "Print JSON.") var json = false

    func run() async throws { try finish(await Commands.status(configPath: options.config, json: json)) }
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
            try finish(await Commands.listCases(configPath: options.config, status: status, limit: limit, json: json))
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one case with its history.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The case id.") var caseId: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws { try finish(await Commands.showCase(configPath: options.config, caseId: caseId, json: json)) }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run a FAILED or CANCELLED case again from the step where it stopped.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The case id.") var caseId: String

        func run() async throws { try finish(await Commands.operate(configPath: options.config, caseId: caseId, event: .retry)) }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a case; its running step is stopped (also if the daemon is down now: on its next start), and its GPU drains until the stop is confirmed.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The case id.") var caseId: String

        func run() async throws {
            try finish(await Commands.operate(configPath: options.config, caseId: caseId,
                                                  event: .cancel(reason: "by an operator (mqi cases cancel)")))
        }
    }
}

struct GPUs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "gpus", abstract: "Show each GPU: reservation, health and the last telemetry.")
    @OptionGroup var options: ConfigOption
    @Flag(help: "Print JSON.") var json = false

    func run() async throws { try finish(await Commands.gpus(configPath: options.config, json: json)) }
}

struct Prune: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete step logs and history of finished cases older than retention.logs_days / retention.events_days now.",
        discussion: "Prints what it removed (or, with --dry-run, would remove): counts, then each log directory and case. The case rows stay.")
    @OptionGroup var options: ConfigOption
    @Flag(help: "Only print what would be removed.")
    var dryRun = false

    func run() async throws { try finish(await Commands.prune(configPath: options.config, dryRun: dryRun)) }
}

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "config", abstract: "Work with the config file.", subcommands: [Check.self])

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Validate a config: exit 0, or print file:line:col: key.path: message lines and exit 2.")
        @OptionGroup var options: ConfigOption

        func run() async throws { try finish(await Commands.checkConfig(configPath: options.config)) }
    }
}

struct DB: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "db", abstract: "Work with the state database.", subcommands: [MigrateTo.self])

    struct MigrateTo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "migrate-to",
            abstract: "Copy the SQLite state (cases, history, queues, dead letters, GPUs) into an empty PostgreSQL database.",
            discussion: "The daemon must be stopped. The copy is one transaction; a target that holds any row is refused. The password comes from state.password_file or PGPASSWORD.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "postgresql://USER@HOST[:PORT]/DATABASE") var url: String

        func run() async throws { try finish(await Commands.migrateTo(configPath: options.config, url: url)) }
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
        try finish(await Commands.demo(directory: dir, cases: cases, bootstrapLogging: LoggingSystem.bootstrap))
    }
}
