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
        let store = try Daemon.openStore(config)
        let counts = try await store.statusCounts()
        let gpus = try await store.gpus()
        let depths = try await store.queueDepths()
        let dead = try await store.deadLetters()
        let daemon = PIDLock.holder(of: config.state.pidFile)
        let hosts = try await store.hosts()
        // Written by the daemon's scanner (`MarkerWaitList`); only with a ready marker.
        let waitList = config.scanner.readyMarker == nil ? nil : MarkerWaitList.read(from: MarkerWaitList.path(database: config.state.database))
        let waiting = waitList?.cases ?? []
        let now = Date()
        if json {
            let object: [String: Any] = [
                "daemon_running": daemon.running,
                "daemon_pid": daemon.running ? daemon.pid.map { Int($0) } as Any : NSNull(),
                "cases": Dictionary(uniqueKeysWithValues: counts.map { ($0.key.rawValue, $0.value) }),
                "gpus": gpus.map { ["gpu_id": $0.gpuId, "status": $0.status.rawValue, "reserved_by": $0.reservedBy as Any,
                                    "draining_for": $0.drain?.caseId as Any, "drain_reason": $0.drain?.reason as Any] },
                "hosts": hosts.map { ["host": $0.host, "reachable": $0.reachable, "since": isoDate($0.since), "reason": $0.reason as Any] },
                "queues": Dictionary(uniqueKeysWithValues: depths.map { ($0.key.rawValue, $0.value) }),
                "dead_letters": dead.count,
                "waiting_for_marker": waiting.map { entry in
                    ["case_id": entry.caseId, "since": isoDate(entry.since), "waited_min": Int(now.timeIntervalSince(entry.since) / 60),
                     "overdue": waitList?.isOverdue(entry, now: now) ?? false] as [String: Any]
                },
            ]
            try printJSON(object)
            return
        }
        print("daemon: " + (daemon.running ? "running (PID \(daemon.pid.map(String.init) ?? "?"))" : "not running"))
        print("cases:  " + CaseStatus.allCases.map { "\($0.rawValue) \(counts[$0] ?? 0)" }.joined(separator: "  "))
        for host in hosts {
            let seconds = Int(Date().timeIntervalSince(host.since))
            print("hpc:    " + (host.reachable ? "\(host.host) reachable"
                                              : "\(host.host) UNREACHABLE since \(isoDate(host.since)) (\(seconds) s): \(host.reason ?? "no answer"); work that needs it is paused"))
        }
        print("gpus:   " + (gpus.isEmpty ? "none" : gpus.map { gpu in
            let holder = gpu.status == .draining ? " (\(gpu.holder ?? ""))" : gpu.reservedBy.map { " by \($0)" } ?? ""
            return "\(gpu.gpuId): \(gpu.status.rawValue)\(holder)"
        }.joined(separator: "  ")))
        print("queues: " + QueueName.allCases.map { "\($0.rawValue) \(depths[$0] ?? 0)" }.joined(separator: "  ") + "  dead_letters \(dead.count)")
        if let waitList, !waiting.isEmpty {
            let asOf = daemon.running ? "" : " (as the daemon last saw it, \(isoDate(waitList.updatedAt)); it is not running)"
            print("waiting for \(waitList.marker)\(asOf):")
            for entry in waiting {
                let minutes = Int(now.timeIntervalSince(entry.since) / 60)
                let overdue = waitList.isOverdue(entry, now: now) ? "  OVER scanner.marker_timeout_min (\(MarkerWaitList.formatMinutes(waitList.timeoutMin)))" : ""
                print("  \(entry.caseId)  since \(isoDate(entry.since)) (\(minutes) min)\(overdue)")
            }
        }
        let active = try await store.cases(status: .processing, limit: 50) + (try await store.cases(status: .pendingResource, limit: 50))
        if !active.isEmpty {
            print("active:")
            for summary in active {
                let filled = summary.progress / 5
                let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: 20 - filled)
                let gpus = summary.gpuIds.isEmpty ? "" : " GPU \(summary.gpuIds.map(String.init).joined(separator: ","))"
                print("  [\(bar)] \(String(format: "%3d", summary.progress))%  \(summary.caseId)  \(summary.status.rawValue) \(summary.workflowStep ?? "-")\(gpus)")
            }
        }
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
                print(try jsonText(cases))
                return
            }
            printTable(cases)
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one case with its history.")
        @OptionGroup var options: ConfigOption
        @Argument(help: "The case id.") var caseId: String
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            let config = try options.load()
            let store = try Daemon.openStore(config)
            guard let summary = try await store.caseSummary(caseId) else {
                printError("no case '\(caseId)'")
                throw ExitCode(1)
            }
            let history = try await store.history(caseId)
            let planBeams = try await store.planBeams(caseId)
            if json {
                struct Detail: Encodable {
                    var `case`: CaseSummary
                    var planBeams: [CasePlanBeam]
                    var history: [CaseHistoryEntry]
                    enum CodingKeys: String, CodingKey { case `case`, planBeams = "plan_beams", history }
                }
                print(try jsonText(Detail(case: summary, planBeams: planBeams, history: history)))
                return
            }
            print("case:     \(summary.caseId)")
            print("status:   \(summary.status.rawValue)")
            print("workflow: \(summary.workflow)  step: \(summary.workflowStep ?? "-")  attempt: \(summary.attempt)  progress: \(summary.progress)%")
            print("gpus:     \(summary.gpuIds.isEmpty ? "-" : summary.gpuIds.map(String.init).joined(separator: ","))")
            if summary.patientId != nil || !summary.beamNumbers.isEmpty {
                print("patient:  \(summary.patientId ?? "-")  beams: \(summary.beamNumbers.map(String.init).joined(separator: ","))")
            }
            if !planBeams.isEmpty {
                print("plan beams:")
                for beam in planBeams {
                    print("  beam \(beam.number)  \(beam.name.isEmpty ? "-" : beam.name)  \(beam.delivered ? "delivered" : "not delivered")")
                }
            }
            if !summary.beams.isEmpty {
                print("beam runs:")
                for run in summary.beams {
                    let gpus = run.gpuIds.isEmpty ? "" : "  GPU \(run.gpuIds.map(String.init).joined(separator: ","))"
                    let times = [run.startedAt.map { "started \(isoDate($0))" }, run.finishedAt.map { "finished \(isoDate($0))" }].compactMap { $0 }
                    print("  beam \(run.beam)  \(run.status.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0))  attempt \(run.attempt)  \(run.progress)%\(gpus)"
                          + (times.isEmpty ? "" : "  " + times.joined(separator: ", ")) + (run.error.map { "  error: \($0)" } ?? ""))
                }
            }
            if let error = summary.error { print("error:    \(summary.failureClass.map { "[\($0.rawValue)] " } ?? "")\(error)") }
            print("history:")
            for entry in history {
                let step = entry.step.map { " \($0)" + (entry.attempt.map { "#\($0)" } ?? "") } ?? ""
                print("  \(isoDate(entry.at))  \(entry.status.rawValue.padding(toLength: 16, withPad: " ", startingAt: 0)) \(entry.event)\(step): \(entry.message)")
            }
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
            print(try jsonText(gpus))
            return
        }
        let header = ["GPU", "NAME", "STATUS", "RESERVED BY", "HEALTH", "UTIL", "MEMORY", "TEMP", "LAST SEEN"]
        let rows = gpus.map { gpu -> [String] in
            let memory = gpu.memoryUsedMB.map { used in "\(Int(used))/\(gpu.memoryTotalMB.map { String(Int($0)) } ?? "?") MiB" } ?? "-"
            return [String(gpu.gpuId), gpu.name ?? "-", gpu.status.rawValue, gpu.holder ?? "-", gpu.health.rawValue,
                    gpu.utilizationPercent.map { "\(Int($0))%" } ?? "-", memory,
                    gpu.temperatureC.map { "\(Int($0)) C" } ?? "-", gpu.lastSeen.map(isoDate) ?? "never"]
        }
        printColumns(header, rows)
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
        printTable(all)
        let completed = all.filter { $0.status == .completed }.count
        print("")
        print("\(completed) of \(all.count) case(s) COMPLETED in \(String(format: "%.1f", Date().timeIntervalSince(started))) s; results in \(config.conductor.resultsDir)")
        if completed != all.count || all.count != cases {
            print("see `mqi cases show ID --config \(site.configPath)` and the log for what went wrong")
            throw ExitCode(1)
        }
    }
}

// MARK: output

func printTable(_ cases: [CaseSummary]) {
    let header = ["CASE", "STATUS", "STEP", "PROGRESS", "GPUS", "DURATION", "ERROR"]
    let rows = cases.map { summary -> [String] in
        let end = summary.finishedAt ?? Date()
        let duration = String(format: "%.1f s", end.timeIntervalSince(summary.createdAt))
        return [summary.caseId, summary.status.rawValue, summary.workflowStep ?? "-", "\(summary.progress)%",
                summary.gpuIds.isEmpty ? "-" : summary.gpuIds.map(String.init).joined(separator: ","), duration,
                summary.error.map { String($0.prefix(60)).replacingOccurrences(of: "\n", with: " ") } ?? ""]
    }
    printColumns(header, rows)
}

func printColumns(_ header: [String], _ rows: [[String]]) {
    let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
    for row in [header] + rows {
        print(row.indices.map { $0 == row.count - 1 ? row[$0] : row[$0].padding(toLength: widths[$0], withPad: " ", startingAt: 0) }
            .joined(separator: "  ").trimmingCharacters(in: .whitespaces))
    }
}

/// ISO-8601 UTC with milliseconds. One format style for every date printed (creating a
/// formatter per date made `cases list` spend most of its time in ICU).
func isoDate(_ date: Date) -> String {
    date.formatted(isoStyle)
}

let isoStyle = Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: TimeZone(identifier: "UTC")!)

func jsonText<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    encoder.dateEncodingStrategy = .custom { date, encoder in
        var container = encoder.singleValueContainer()
        try container.encode(isoDate(date))
    }
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

func printJSON(_ object: Any) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}
