import Foundation
import Yams

/// Reads and validates `config.yaml`. Unknown keys, duplicate keys, wrong types and values out
/// of range are all reported with their file, line, column and key path.
public enum ConfigLoader {
    public static func load(path: String) throws(ConfigErrors) -> Config {
        let absolute = PathResolver.absolute(path, relativeTo: FileManager.default.currentDirectoryPath)
        let text: String
        do {
            text = try String(contentsOfFile: absolute, encoding: .utf8)
        } catch {
            throw ConfigErrors([ConfigError(file: path, line: 0, column: 0, keyPath: "", message: "cannot read config file: \(error.localizedDescription)")])
        }
        return try parse(text, file: path, baseDirectory: (absolute as NSString).deletingLastPathComponent)
    }

    /// Parses config text; `file` is used in error messages, `baseDirectory` resolves relative paths.
    public static func parse(_ text: String, file: String, baseDirectory: String) throws(ConfigErrors) -> Config {
        let parser = ConfigParser(file: file, base: baseDirectory, text: text)
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw ConfigErrors([parser.yamlError(error)])
        } catch {
            throw ConfigErrors([ConfigError(file: file, line: 1, column: 1, keyPath: "", message: "\(error)")])
        }
        guard let node else {
            throw ConfigErrors([ConfigError(file: file, line: 1, column: 1, keyPath: "", message: "the config file is empty")])
        }
        let config = parser.config(node)
        if let config, parser.errors.isEmpty { return config }
        throw ConfigErrors(parser.errors.sorted { ($0.line, $0.column) < ($1.line, $1.column) })
    }
}

/// Resolves config paths: `~` to the home directory, relative paths against a base directory.
public enum PathResolver {
    public static func absolute(_ path: String, relativeTo base: String) -> String {
        var path = path
        if path == "~" || path.hasPrefix("~/") {
            path = NSHomeDirectory() + path.dropFirst()
        }
        let joined = path.hasPrefix("/") ? path : (base as NSString).appendingPathComponent(path)
        return (joined as NSString).standardizingPath
    }
}

/// The keys of one YAML mapping being read; remembers which were read so the rest are reported.
private final class Fields {
    let node: Node
    let path: String
    var pairs: [(key: String, keyNode: Node, value: Node)] = []
    var read: Set<String> = []

    init(node: Node, path: String) {
        self.node = node
        self.path = path
    }

    func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    subscript(key: String) -> Node? {
        read.insert(key)
        return pairs.first { $0.key == key }?.value
    }
}

private final class ConfigParser {
    let file: String
    let base: String
    let text: String
    var errors: [ConfigError] = []

    init(file: String, base: String, text: String) {
        self.file = file
        self.base = base
        self.text = text
    }

    // MARK: errors

    func fail(_ node: Node?, _ path: String, _ message: String) {
        let mark = node?.mark
        errors.append(ConfigError(file: file, line: mark?.line ?? 1, column: mark?.column ?? 1, keyPath: path, message: message))
    }

    func yamlError(_ error: YamlError) -> ConfigError {
        switch error {
        case .duplicatedKeysInMapping(let duplicates, let context):
            return duplicateKeyError(duplicates.first ?? "?", first: context.mark)
        case .scanner(let context, let problem, let mark, _),
             .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            let text = [context?.text, problem].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: ": ")
            var message = "invalid YAML: \(text)"
            if problem.contains("cannot start any token") { message += " (tabs cannot indent YAML; use spaces)" }
            return ConfigError(file: file, line: mark.line, column: mark.column, keyPath: "", message: message)
        default:
            return ConfigError(file: file, line: 1, column: 1, keyPath: "", message: "invalid YAML: \(error)")
        }
    }

    /// Yams rejects duplicate keys before we see the tree and names only the first occurrence;
    /// find the second one in the text and the block keys above it for the key path.
    func duplicateKeyError(_ key: String, first: Mark) -> ConfigError {
        let lines = text.components(separatedBy: "\n")
        let escaped = NSRegularExpression.escapedPattern(for: key)
        let pattern = try? NSRegularExpression(pattern: "(^|[\\s{,])[\"']?\(escaped)[\"']?\\s*:")
        var seen = 0
        for (index, line) in lines.enumerated() where index + 1 >= first.line {
            let range = NSRange(line.startIndex..., in: line)
            for match in pattern?.matches(in: line, range: range) ?? [] {
                seen += 1
                guard seen == 2 else { continue }
                let column = line.distance(from: line.startIndex, to: Range(match.range, in: line)!.lowerBound)
                    + (match.range(at: 1).length > 0 ? 1 : 0) + 1
                return ConfigError(file: file, line: index + 1, column: column, keyPath: blockPath(lines, index, key),
                                   message: "duplicate key (first defined on line \(first.line))")
            }
        }
        return ConfigError(file: file, line: first.line, column: first.column, keyPath: key, message: "duplicate key")
    }

    /// The dotted path of `key` on line `index`, from the less-indented block keys above it.
    func blockPath(_ lines: [String], _ index: Int, _ key: String) -> String {
        func indent(_ line: String) -> Int { line.prefix { $0 == " " }.count }
        var path = [key]
        var level = indent(lines[index])
        var cursor = index - 1
        while cursor >= 0, level > 0 {
            let line = lines[cursor]
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if !trimmed.isEmpty, !trimmed.hasPrefix("#"), indent(line) < level, let colon = trimmed.firstIndex(of: ":") {
                let name = trimmed[..<colon].trimmingCharacters(in: .whitespaces)
                if !name.hasPrefix("-") { path.insert(name, at: 0) }
                level = indent(line)
            }
            cursor -= 1
        }
        return path.joined(separator: ".")
    }

    // MARK: structure

    func mapping(_ node: Node?, _ path: String) -> Fields? {
        guard let node else { return nil }
        guard case .mapping(let mapping) = node else {
            fail(node, path, "expected a mapping of keys, got \(describe(node))")
            return nil
        }
        let fields = Fields(node: node, path: path)
        for (keyNode, value) in mapping {
            guard let key = keyNode.string else {
                fail(keyNode, path, "keys must be strings")
                continue
            }
            if fields.pairs.contains(where: { $0.key == key }) {
                fail(keyNode, fields.child(key), "duplicate key")
                continue
            }
            fields.pairs.append((key, keyNode, value))
        }
        return fields
    }

    /// Reports every key of `fields` that was never read.
    func finish(_ fields: Fields, allowed: [String]) {
        for pair in fields.pairs where !fields.read.contains(pair.key) && !allowed.contains(pair.key) {
            fail(pair.keyNode, fields.child(pair.key), "unknown key; expected one of: \(allowed.joined(separator: ", "))")
        }
    }

    func describe(_ node: Node) -> String {
        switch node {
        case .scalar(let scalar): return "'\(scalar.string)'"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    func isNull(_ node: Node) -> Bool {
        if case .scalar(let scalar) = node, scalar.style == .plain, ["", "~", "null", "Null", "NULL"].contains(scalar.string) {
            return true
        }
        return false
    }

    // MARK: scalars

    func string(_ fields: Fields, _ key: String, required: Bool = false) -> String? {
        let path = fields.child(key)
        guard let node = fields[key], !isNull(node) else {
            if required { fail(fields.node, path, "missing required key") }
            return nil
        }
        guard case .scalar(let scalar) = node else {
            fail(node, path, "expected a string, got \(describe(node))")
            return nil
        }
        return scalar.string
    }

    func nonEmptyString(_ fields: Fields, _ key: String, required: Bool = false) -> String? {
        guard let value = string(fields, key, required: required) else { return nil }
        if value.trimmingCharacters(in: .whitespaces).isEmpty {
            fail(fields[key], fields.child(key), "must not be empty")
            return nil
        }
        return value
    }

    func number(_ fields: Fields, _ key: String, default value: Double, min: Double, exclusiveMin: Bool = false) -> Double {
        guard let node = fields[key], !isNull(node) else { return value }
        let path = fields.child(key)
        guard case .scalar(let scalar) = node, scalar.style == .plain, let parsed = Double(scalar.string), parsed.isFinite else {
            fail(node, path, "expected a number, got \(describe(node))")
            return value
        }
        if exclusiveMin ? parsed <= min : parsed < min {
            fail(node, path, "must be \(exclusiveMin ? "greater than" : "at least") \(format(min)), got \(scalar.string)")
            return value
        }
        return parsed
    }

    func integer(_ node: Node, _ path: String, min: Int, max: Int = .max) -> Int? {
        guard case .scalar(let scalar) = node, scalar.style == .plain, let parsed = Int(scalar.string) else {
            fail(node, path, "expected an integer, got \(describe(node))")
            return nil
        }
        guard parsed >= min, parsed <= max else {
            let range = max == .max ? "at least \(min)" : "between \(min) and \(max)"
            fail(node, path, "must be \(range), got \(parsed)")
            return nil
        }
        return parsed
    }

    func integer(_ fields: Fields, _ key: String, default value: Int, min: Int, max: Int = .max) -> Int {
        guard let node = fields[key], !isNull(node) else { return value }
        return integer(node, fields.child(key), min: min, max: max) ?? value
    }

    func bool(_ fields: Fields, _ key: String) -> Bool? {
        guard let node = fields[key], !isNull(node) else { return nil }
        guard case .scalar(let scalar) = node, scalar.style == .plain else {
            fail(node, fields.child(key), "expected true or false, got \(describe(node))")
            return nil
        }
        switch scalar.string.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            fail(node, fields.child(key), "expected true or false, got \(describe(node))")
            return nil
        }
    }

    func path(_ fields: Fields, _ key: String, default value: String? = nil, required: Bool = false) -> String {
        let raw = nonEmptyString(fields, key, required: required) ?? value ?? ""
        return PathResolver.absolute(raw, relativeTo: base)
    }

    func format(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }

    // MARK: sections

    static let topKeys = ["scanner", "state", "hpc", "conductor", "workflows", "remote_commands", "retry", "logging",
                          "metrics", "gpu_monitor", "shutdown_timeout_sec", "http", "retention", "notifications"]

    func config(_ root: Node) -> Config? {
        guard let top = mapping(root, "") else { return nil }
        let remoteCommands = self.remoteCommands(top)
        let workflows = self.workflows(top, remoteCommands: remoteCommands)
        let scanner = self.scanner(top, workflows: workflows)
        let state = self.state(top)
        let hpc = self.hpc(top)
        let conductor = self.conductor(top)
        let retry = self.retry(top)
        let logging = self.logging(top)
        let metrics = self.metrics(top)
        let gpuMonitor = self.gpuMonitor(top)
        checkGPUDemands(hpc)
        let shutdown = number(top, "shutdown_timeout_sec", default: 30, min: 0, exclusiveMin: true)
        let http = self.http(top)
        let notifications = self.notifications(top)
        var retention = RetentionConfig()
        if let fields = mapping(top["retention"], "retention") {
            retention.logsDays = number(fields, "logs_days", default: 90, min: 0, exclusiveMin: true)
            retention.eventsDays = number(fields, "events_days", default: 365, min: 0, exclusiveMin: true)
            finish(fields, allowed: ["logs_days", "events_days"])
        }
        finish(top, allowed: Self.topKeys)
        guard let scanner else { return nil }
        return Config(
            sourcePath: file, scanner: scanner, state: state, hpc: hpc, conductor: conductor,
            workflows: workflows, retry: retry, logging: logging, metrics: metrics, gpuMonitor: gpuMonitor,
            shutdownTimeoutSec: shutdown, http: http, retention: retention, notifications: notifications)
    }

    func http(_ top: Fields) -> HTTPConfig {
        var http = HTTPConfig()
        guard let fields = mapping(top["http"], "http") else { return http }
        defer { finish(fields, allowed: ["token_file", "tokens_file", "tls"]) }
        http.tokenFile = nonEmptyString(fields, "token_file").map { PathResolver.absolute($0, relativeTo: base) }
        http.tokensFile = nonEmptyString(fields, "tokens_file").map { PathResolver.absolute($0, relativeTo: base) }
        if let tls = mapping(fields["tls"], "http.tls") {
            defer { finish(tls, allowed: ["cert_file", "key_file"]) }
            if let cert = nonEmptyString(tls, "cert_file", required: true), let key = nonEmptyString(tls, "key_file", required: true) {
                http.tls = TLSFiles(certFile: PathResolver.absolute(cert, relativeTo: base), keyFile: PathResolver.absolute(key, relativeTo: base))
            }
        }
        return http
    }

    func notifications(_ top: Fields) -> NotificationsConfig {
        var notifications = NotificationsConfig()
        guard let fields = mapping(top["notifications"], "notifications") else { return notifications }
        defer { finish(fields, allowed: ["webhooks", "timeout_sec", "max_backoff_sec"]) }
        notifications.timeoutSec = number(fields, "timeout_sec", default: 10, min: 0, exclusiveMin: true)
        notifications.maxBackoffSec = number(fields, "max_backoff_sec", default: 300, min: 1)
        guard let node = fields["webhooks"], !isNull(node) else { return notifications }
        guard case .sequence(let sequence) = node else {
            fail(node, "notifications.webhooks", "expected a list of { url, events }, got \(describe(node))")
            return notifications
        }
        let names = NotificationEvent.allCases.map(\.rawValue)
        // Each webhook once, by the URL it is known by (its label): a second entry would share the
        // first one's metrics and log lines, and receive each event twice.
        var seen: [String: (path: String, line: Int)] = [:]
        for (index, item) in sequence.enumerated() {
            let path = "notifications.webhooks[\(index)]"
            guard let entry = mapping(item, path) else { continue }
            defer { finish(entry, allowed: ["url", "events", "token_file"]) }
            let url = nonEmptyString(entry, "url", required: true)
            if let url, !Self.isWebhookURL(url) {
                fail(entry["url"], "\(path).url", "expected an http:// or https:// URL with a host, got '\(url)'")
            } else if let url {
                let label = WebhookConfig.label(url)
                if let earlier = seen[label] {
                    fail(entry["url"], "\(path).url",
                         "the same webhook as \(earlier.path) (line \(earlier.line)): both post to \(label) (credentials, query and fragment aside); "
                         + "list each webhook once, with all its events")
                } else {
                    seen[label] = (path, entry["url"]?.mark?.line ?? 0)
                }
            }
            let events = optionList(entry, "events", "\(path).events", item: "one of \(names.joined(separator: ", "))",
                                    list: "a list of events like [case_failed, case_completed]") { names.contains($0) }
            if let eventsNode = entry["events"], case .sequence(let listed) = eventsNode, listed.isEmpty {
                fail(eventsNode, "\(path).events", "must list at least one of \(names.joined(separator: ", "))")
            } else if entry["events"] == nil {
                fail(entry.node, "\(path).events", "missing required key")
            }
            let tokenFile = nonEmptyString(entry, "token_file").map { PathResolver.absolute($0, relativeTo: base) }
            if let url, Self.isWebhookURL(url), !events.isEmpty {
                notifications.webhooks.append(WebhookConfig(url: url, events: events.compactMap(NotificationEvent.init(rawValue:)), tokenFile: tokenFile))
            }
        }
        return notifications
    }

    static func isWebhookURL(_ text: String) -> Bool {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(),
              scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty else { return false }
        return true
    }

    func scanner(_ top: Fields, workflows: [String: Workflow]) -> ScannerConfig? {
        guard let fields = mapping(top["scanner"], "scanner") else {
            if top["scanner"] == nil { fail(top.node, "scanner", "missing required section (scanner.local_logdata is required)") }
            return nil
        }
        defer { finish(fields, allowed: ["local_logdata", "ready_marker", "quiet_period_sec", "rescan_interval_sec", "workflow", "case_layout",
                                                   "case_depth", "marker_timeout_min", "fraction_window_min", "followup_workflow"]) }
        let logdata = path(fields, "local_logdata", required: true)
        let marker = nonEmptyString(fields, "ready_marker")
        if let marker, marker.contains("/") {
            fail(fields["ready_marker"], "scanner.ready_marker", "must be a file name, not a path")
        }
        let quiet = number(fields, "quiet_period_sec", default: 5, min: 0)
        let rescan = number(fields, "rescan_interval_sec", default: 30, min: 0, exclusiveMin: true)
        let workflow = nonEmptyString(fields, "workflow") ?? "default_qa"
        if !workflows.isEmpty, workflows[workflow] == nil {
            fail(fields["workflow"] ?? fields.node, "scanner.workflow",
                 "no workflow named '\(workflow)'; defined: \(workflows.keys.sorted().joined(separator: ", "))")
        }
        var layout = CaseLayout.any
        if let text = string(fields, "case_layout") {
            if let parsed = CaseLayout(rawValue: text) {
                layout = parsed
            } else {
                fail(fields["case_layout"], "scanner.case_layout", "unknown case layout '\(text)'; expected one of: \(CaseLayout.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }
        let depth = integer(fields, "case_depth", default: 1, min: 1, max: 8)
        let markerTimeout = number(fields, "marker_timeout_min", default: 60, min: 0, exclusiveMin: true)
        var config = ScannerConfig(localLogdata: logdata, readyMarker: marker, quietPeriodSec: quiet, rescanIntervalSec: rescan, workflow: workflow,
                                   caseLayout: layout, caseDepth: depth, markerTimeoutMin: markerTimeout)
        config.fractionWindowMin = number(fields, "fraction_window_min", default: 60, min: 0, exclusiveMin: true)
        if let followup = nonEmptyString(fields, "followup_workflow") {
            if !workflows.isEmpty, workflows[followup] == nil {
                fail(fields["followup_workflow"], "scanner.followup_workflow",
                     "no workflow named '\(followup)'; defined: \(workflows.keys.sorted().joined(separator: ", "))")
            } else if layout != .moqui {
                fail(fields["followup_workflow"], "scanner.followup_workflow",
                     "follow-up deliveries are the PlanInfo.txt folders of case_layout: moqui; set scanner.case_layout: moqui")
            }
            config.followupWorkflow = followup
        }
        return config
    }

    func state(_ top: Fields) -> StateConfig {
        let fields = mapping(top["state"], "state")
        defer { if let fields { finish(fields, allowed: ["database", "pid_file", "logs_dir", "password_file", "instance_name", "lease_sec"]) } }
        func value(_ key: String, _ fallback: String) -> String {
            fields.map { path($0, key, default: fallback) } ?? PathResolver.absolute(fallback, relativeTo: base)
        }
        var database: String
        if let fields, let url = string(fields, "database"), url.hasPrefix("postgresql://") || url.hasPrefix("postgres://") {
            // A PostgreSQL URL, not a path. The password never sits in the config.
            database = url
            if let components = URLComponents(string: url) {
                if components.host?.isEmpty ?? true {
                    fail(fields["database"], "state.database", "a PostgreSQL URL needs a host: postgresql://USER@HOST[:PORT]/DATABASE")
                }
                if components.password != nil {
                    fail(fields["database"], "state.database", "must not hold the password (it would sit in the config): put it in state.password_file or PGPASSWORD")
                }
            } else {
                fail(fields["database"], "state.database", "not a valid URL; expected postgresql://USER@HOST[:PORT]/DATABASE")
            }
        } else {
            database = value("database", "./var/mqi.sqlite")
        }
        var state = StateConfig(database: database, pidFile: value("pid_file", "./var/mqi.pid"), logsDir: value("logs_dir", "./var/logs"))
        if let fields {
            if fields["password_file"] != nil { state.passwordFile = path(fields, "password_file") }
            state.leaseSec = number(fields, "lease_sec", default: 30, min: 3)
            if let name = nonEmptyString(fields, "instance_name") {
                if name.contains("/") || name.contains(where: \.isWhitespace) {
                    fail(fields["instance_name"], "state.instance_name", "'\(name)': no '/' or spaces (it prefixes lease owners)")
                } else {
                    state.instanceName = name
                }
            }
        }
        return state
    }

    /// A step that can never start: it needs more GPUs than `hpc.gpus` lists (a list, not
    /// `auto`: discovered GPUs are checked at start). Under `{ min, max }` only `min` counts.
    func checkGPUDemands(_ hpc: HPCConfig) {
        guard hpc.executor == .direct, !hpc.gpusAuto, !hpc.gpus.isEmpty else { return }
        for demand in gpuDemands where demand.min > hpc.gpus.count {
            let asks = demand.isRange ? "needs at least \(demand.min) GPUs (min)" : "asks for \(demand.min) GPUs"
            fail(demand.node, demand.path, "\(asks) but hpc.gpus lists only \(hpc.gpus.count) (\(hpc.gpus.map(String.init).joined(separator: ", "))), so it could never start; list more GPUs in hpc.gpus or lower this step's gpus")
        }
    }

    func hpc(_ top: Fields) -> HPCConfig {
        var config = HPCConfig(transport: .local, gpus: [0])
        guard let fields = mapping(top["hpc"], "hpc") else { return config }
        defer { finish(fields, allowed: ["transport", "executor", "gpus", "ssh", "cleanup", "slurm"]) }
        if let transport = string(fields, "transport") {
            if let kind = TransportKind(rawValue: transport) {
                config.transport = kind
            } else {
                fail(fields["transport"], "hpc.transport", "unknown transport '\(transport)'; expected one of: \(TransportKind.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }
        if let cleanup = string(fields, "cleanup") {
            if let kind = RemoteCleanup(rawValue: cleanup) {
                config.cleanup = kind
            } else {
                fail(fields["cleanup"], "hpc.cleanup", "unknown cleanup '\(cleanup)'; expected one of: \(RemoteCleanup.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }
        if let executor = string(fields, "executor") {
            if let kind = ExecutorKind(rawValue: executor) {
                config.executor = kind
            } else {
                fail(fields["executor"], "hpc.executor", "unknown executor '\(executor)'; expected one of: \(ExecutorKind.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }
        if let slurm = slurm(fields) { config.slurm = slurm }
        // Under Slurm no GPU id is reserved here: hpc.gpus is optional (only the GPU monitor reads it).
        if config.executor == .slurm, fields["gpus"] == nil { config.gpus = [] }
        if let node = fields["gpus"], !isNull(node) {
            if case .sequence(let sequence) = node {
                var ids: [Int] = []
                for (index, item) in sequence.enumerated() {
                    guard let id = integer(item, "hpc.gpus[\(index)]", min: 0) else { continue }
                    if ids.contains(id) { fail(item, "hpc.gpus[\(index)]", "GPU \(id) is listed twice") } else { ids.append(id) }
                }
                if sequence.isEmpty { fail(node, "hpc.gpus", "must list at least one GPU id") }
                config.gpus = ids
            } else if case .scalar(let scalar) = node, scalar.string == "auto" {
                config.gpus = []
                config.gpusAuto = true
            } else {
                fail(node, "hpc.gpus", "expected a list of GPU ids like [0, 1] or auto, got \(describe(node))")
            }
        }
        config.ssh = ssh(fields)
        if config.transport == .ssh, config.ssh == nil, fields["ssh"] == nil {
            fail(fields.node, "hpc.ssh", "missing required section for transport ssh (hpc.ssh.host is required)")
        }
        return config
    }

    func slurm(_ hpc: Fields) -> SlurmConfig? {
        guard let fields = mapping(hpc["slurm"], "hpc.slurm") else { return nil }
        defer { finish(fields, allowed: ["partition", "account", "qos", "max_jobs", "poll_interval_sec", "extra_args"]) }
        let extra = optionList(fields, "extra_args", "hpc.slurm.extra_args", item: "an sbatch option like --mem=8G",
                               list: "a list of sbatch options like [\"--mem=8G\"]") { $0.hasPrefix("-") }
        return SlurmConfig(
            partition: nonEmptyString(fields, "partition"), account: nonEmptyString(fields, "account"), qos: nonEmptyString(fields, "qos"),
            maxJobs: integer(fields, "max_jobs", default: 32, min: 1),
            pollIntervalSec: number(fields, "poll_interval_sec", default: 5, min: 0, exclusiveMin: true),
            extraArgs: extra)
    }

    /// A list of command-line options (`hpc.ssh.extra_options`, `hpc.slurm.extra_args`): each item
    /// a string that passes `valid`; a wrong item or a non-list names the key and its line.
    func optionList(_ fields: Fields, _ key: String, _ path: String, item: String, list: String, valid: (String) -> Bool) -> [String] {
        guard let node = fields[key], !isNull(node) else { return [] }
        guard case .sequence(let sequence) = node else {
            fail(node, path, "expected \(list), got \(describe(node))")
            return []
        }
        var options: [String] = []
        for (index, element) in sequence.enumerated() {
            guard case .scalar(let scalar) = element, valid(scalar.string) else {
                fail(element, "\(path)[\(index)]", "expected \(item), got \(describe(element))")
                continue
            }
            options.append(scalar.string)
        }
        return options
    }

    static let sshKeys = ["host", "port", "user", "identity_file", "known_hosts_file", "strict_host_key_checking",
                          "connect_timeout_sec", "max_new_connections_per_min", "extra_options"]

    func ssh(_ hpc: Fields) -> SSHConfig? {
        guard let fields = mapping(hpc["ssh"], "hpc.ssh") else { return nil }
        defer { finish(fields, allowed: Self.sshKeys) }
        guard let host = nonEmptyString(fields, "host", required: true) else { return nil }
        let extra = optionList(fields, "extra_options", "hpc.ssh.extra_options", item: "an ssh option like Key=Value",
                               list: "a list of Key=Value ssh options") { $0.contains("=") }
        return SSHConfig(
            host: host, port: integer(fields, "port", default: 22, min: 1, max: 65535),
            user: nonEmptyString(fields, "user"),
            identityFile: nonEmptyString(fields, "identity_file").map { PathResolver.absolute($0, relativeTo: base) },
            knownHostsFile: nonEmptyString(fields, "known_hosts_file").map { PathResolver.absolute($0, relativeTo: base) },
            strictHostKeyChecking: bool(fields, "strict_host_key_checking") ?? true,
            connectTimeoutSec: number(fields, "connect_timeout_sec", default: 10, min: 0, exclusiveMin: true),
            maxNewConnectionsPerMin: integer(fields, "max_new_connections_per_min", default: 6, min: 1),
            extraOptions: extra)
    }

    func metrics(_ top: Fields) -> MetricsConfig {
        guard let fields = mapping(top["metrics"], "metrics") else { return MetricsConfig() }
        defer { finish(fields, allowed: ["enabled", "host", "port"]) }
        return MetricsConfig(
            enabled: bool(fields, "enabled") ?? true,
            host: nonEmptyString(fields, "host") ?? "127.0.0.1",
            port: integer(fields, "port", default: 8000, min: 0, max: 65535))
    }

    func gpuMonitor(_ top: Fields) -> GPUMonitorConfig {
        guard let fields = mapping(top["gpu_monitor"], "gpu_monitor") else { return GPUMonitorConfig() }
        defer { finish(fields, allowed: ["enabled", "interval_sec", "command", "busy_memory_mb"]) }
        return GPUMonitorConfig(
            enabled: bool(fields, "enabled") ?? true,
            intervalSec: number(fields, "interval_sec", default: 10, min: 0, exclusiveMin: true),
            command: nonEmptyString(fields, "command") ?? GPUMonitorConfig.defaultCommand,
            busyMemoryMB: number(fields, "busy_memory_mb", default: 500, min: 0))
    }

    func conductor(_ top: Fields) -> ConductorConfig {
        let fields = mapping(top["conductor"], "conductor")
        var upload = "./hpc/upload", download = "./hpc/download"
        if let fields, let paths = mapping(fields["remote_paths"], "conductor.remote_paths") {
            upload = nonEmptyString(paths, "upload_dir") ?? upload
            download = nonEmptyString(paths, "download_dir") ?? download
            finish(paths, allowed: ["upload_dir", "download_dir"])
        }
        let results = fields.map { path($0, "results_dir", default: "./var/results") } ?? PathResolver.absolute("./var/results", relativeTo: base)
        let monitor = fields.map { number($0, "monitor_interval_sec", default: 60, min: 0, exclusiveMin: true) } ?? 60
        if let fields { finish(fields, allowed: ["monitor_interval_sec", "remote_paths", "results_dir"]) }
        return ConductorConfig(
            uploadDir: PathResolver.absolute(upload, relativeTo: base),
            downloadDir: PathResolver.absolute(download, relativeTo: base),
            resultsDir: results, monitorIntervalSec: monitor)
    }

    func retry(_ top: Fields) -> RetryPolicy {
        guard let fields = mapping(top["retry"], "retry") else { return RetryPolicy() }
        defer { finish(fields, allowed: ["max_attempts", "initial_delay_sec", "max_delay_sec", "multiplier"]) }
        let policy = RetryPolicy(
            maxAttempts: integer(fields, "max_attempts", default: 3, min: 1),
            initialDelaySec: number(fields, "initial_delay_sec", default: 1, min: 0),
            maxDelaySec: number(fields, "max_delay_sec", default: 60, min: 0),
            multiplier: number(fields, "multiplier", default: 2, min: 1))
        if policy.maxDelaySec < policy.initialDelaySec {
            fail(fields["max_delay_sec"], "retry.max_delay_sec", "must not be less than retry.initial_delay_sec")
        }
        return policy
    }

    static let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    func logging(_ top: Fields) -> LoggingConfig {
        guard let fields = mapping(top["logging"], "logging") else { return LoggingConfig(level: "info") }
        defer { finish(fields, allowed: ["level"]) }
        let level = (string(fields, "level") ?? "info").lowercased()
        guard Self.levels.contains(level) else {
            fail(fields["level"], "logging.level", "unknown level '\(level)'; expected one of: \(Self.levels.joined(separator: ", "))")
            return LoggingConfig(level: "info")
        }
        return LoggingConfig(level: level)
    }

    /// Commands that were present but invalid (already reported).
    var brokenCommands: Set<String> = []
    /// Steps' explicit `gpus` demands, checked against `hpc.gpus` once that is read.
    var gpuDemands: [(node: Node?, path: String, min: Int, isRange: Bool)] = []

    func remoteCommands(_ top: Fields) -> [String: (template: CommandTemplate, node: Node, keyNode: Node)] {
        guard let fields = mapping(top["remote_commands"], "remote_commands") else { return [:] }
        var commands: [String: (CommandTemplate, Node, Node)] = [:]
        for pair in fields.pairs {
            guard let text = nonEmptyString(fields, pair.key) else { continue }
            do {
                commands[pair.key] = (try CommandTemplate(text), pair.value, pair.keyNode)
            } catch {
                brokenCommands.insert(pair.key)
                fail(pair.value, fields.child(pair.key), error.description)
            }
        }
        return commands
    }

    static let stepKeys = ["name", "type", "progress", "timeout_sec", "gpu", "gpus", "progress_pattern", "failure_patterns",
                           "success_pattern", "retryable_patterns", "max_step_retries", "input_files", "for_each"]

    /// A regular expression from the config; nil (and an error) if it does not compile.
    func regex(_ node: Node?, _ path: String, requiringGroups groups: [String] = []) -> String? {
        guard let node, !isNull(node) else { return nil }
        guard case .scalar(let scalar) = node, !scalar.string.isEmpty else {
            fail(node, path, "expected a regular expression, got \(describe(node))")
            return nil
        }
        do {
            _ = try NSRegularExpression(pattern: scalar.string)
        } catch {
            fail(node, path, "invalid regular expression: \(scalar.string)")
            return nil
        }
        for group in groups where !scalar.string.contains("(?<\(group)>") {
            fail(node, path, "needs a named group (?<\(group)>...)")
            return nil
        }
        return scalar.string
    }

    func regexList(_ fields: Fields, _ key: String, _ path: String) -> [String] {
        guard let node = fields[key], !isNull(node) else { return [] }
        guard case .sequence(let sequence) = node else {
            fail(node, path, "expected a list of regular expressions, got \(describe(node))")
            return []
        }
        return sequence.enumerated().compactMap { regex($1, "\(path)[\($0)]") }
    }

    /// `gpus: N` or `gpus: { min: A, max: B }`; nil when absent.
    func gpuRange(_ fields: Fields, _ path: String) -> (min: Int, max: Int)? {
        guard let node = fields["gpus"], !isNull(node) else { return nil }
        if case .mapping = node, let range = mapping(node, path) {
            defer { finish(range, allowed: ["min", "max"]) }
            let low = integer(range, "min", default: 1, min: 1)
            let high = integer(range, "max", default: low, min: 1)
            if high < low { fail(node, path, "max (\(high)) is less than min (\(low))") }
            return (low, max(low, high))
        }
        guard let count = integer(node, path, min: 1) else { return nil }
        return (count, count)
    }

    func inputFiles(_ fields: Fields, _ path: String) -> [InputFileTemplate] {
        guard let node = fields["input_files"], !isNull(node) else { return [] }
        guard case .sequence(let sequence) = node else {
            fail(node, path, "expected a list of { path, template }, got \(describe(node))")
            return []
        }
        var files: [InputFileTemplate] = []
        for (index, item) in sequence.enumerated() {
            let itemPath = "\(path)[\(index)]"
            guard let entry = mapping(item, itemPath) else { continue }
            defer { finish(entry, allowed: ["path", "template"]) }
            guard let target = nonEmptyString(entry, "path", required: true),
                  let template = nonEmptyString(entry, "template", required: true) else { continue }
            let source = PathResolver.absolute(template, relativeTo: base)
            guard let text = try? String(contentsOfFile: source, encoding: .utf8) else {
                fail(entry["template"], "\(itemPath).template", "cannot read template file \(source)")
                continue
            }
            do {
                files.append(InputFileTemplate(path: try CommandTemplate(target), content: try CommandTemplate(text), source: source))
            } catch {
                fail(entry["template"], "\(itemPath)", "\(source): \(error.description)")
            }
        }
        return files
    }

    func workflows(_ top: Fields, remoteCommands: [String: (template: CommandTemplate, node: Node, keyNode: Node)]) -> [String: Workflow] {
        guard let node = top["workflows"] else {
            fail(top.node, "workflows", "missing required section: define at least one workflow")
            return [:]
        }
        guard let fields = mapping(node, "workflows") else { return [:] }
        var workflows: [String: Workflow] = [:]
        var usedCommands: Set<String> = []
        for pair in fields.pairs {
            fields.read.insert(pair.key)
            let workflowPath = fields.child(pair.key)
            guard case .sequence(let sequence) = pair.value else {
                fail(pair.value, workflowPath, "expected a list of steps, got \(describe(pair.value))")
                continue
            }
            if sequence.isEmpty { fail(pair.value, workflowPath, "a workflow needs at least one step") }
            var steps: [WorkflowStep] = []
            for (index, item) in sequence.enumerated() {
                let stepPath = "\(workflowPath)[\(index)]"
                guard let stepFields = mapping(item, stepPath) else { continue }
                defer { finish(stepFields, allowed: Self.stepKeys) }
                guard let name = nonEmptyString(stepFields, "name", required: true) else { continue }
                if !name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_-.".contains($0)) }) {
                    fail(stepFields["name"], "\(stepPath).name", "step names may use letters, digits, '_', '-' and '.' only")
                }
                if steps.contains(where: { $0.name == name }) {
                    fail(stepFields["name"], "\(stepPath).name", "step '\(name)' appears twice in this workflow")
                }
                guard let typeText = string(stepFields, "type", required: true) else { continue }
                guard let type = StepType(rawValue: typeText) else {
                    fail(stepFields["type"], "\(stepPath).type", "unknown step type '\(typeText)'; expected one of: \(StepType.allCases.map(\.rawValue).joined(separator: ", "))")
                    continue
                }
                let progress = integer(stepFields, "progress", default: 0, min: 0, max: 100)
                var timeout: Double?
                if let node = stepFields["timeout_sec"], !isNull(node) {
                    timeout = number(stepFields, "timeout_sec", default: 0, min: 0, exclusiveMin: true)
                }
                let gpu = bool(stepFields, "gpu") ?? (type == .execute)
                var gpus = gpu ? (min: 1, max: 1) : (min: 0, max: 0)
                if type == .local, gpu || stepFields["gpus"].map({ !isNull($0) }) == true {
                    fail(stepFields["gpu"] ?? stepFields["gpus"], "\(stepPath).gpu", "a local step runs on the communicator's own machine and takes no HPC GPU; remove gpu/gpus")
                }
                if type == .local, !steps.contains(where: { $0.type == .download }) {
                    fail(stepFields["type"], "\(stepPath).type", "a local step runs in results_dir/<case_id> once the results are there: put it after a download step")
                }
                if let range = type == .local ? nil : gpuRange(stepFields, "\(stepPath).gpus") {
                    if stepFields["gpu"].map({ !isNull($0) }) == true {
                        fail(stepFields["gpus"], "\(stepPath).gpus", "use either gpu or gpus, not both")
                    }
                    gpus = range
                    var isRange = false
                    if case .mapping = stepFields["gpus"] { isRange = true }
                    gpuDemands.append((stepFields["gpus"], "\(stepPath).gpus", range.min, isRange))
                }
                let rules = OutputRules(
                    progressPattern: regex(stepFields["progress_pattern"], "\(stepPath).progress_pattern", requiringGroups: ["done", "total"]),
                    failurePatterns: regexList(stepFields, "failure_patterns", "\(stepPath).failure_patterns"),
                    successPattern: regex(stepFields["success_pattern"], "\(stepPath).success_pattern"),
                    retryablePatterns: regexList(stepFields, "retryable_patterns", "\(stepPath).retryable_patterns"))
                var step = WorkflowStep(
                    name: name, type: type, progress: progress, timeoutSec: timeout, gpuCount: gpus.max, gpuMin: gpus.min,
                    rules: rules == OutputRules() ? nil : rules,
                    maxStepRetries: integer(stepFields, "max_step_retries", default: 0, min: 0, max: 100),
                    inputFiles: inputFiles(stepFields, "\(stepPath).input_files"))
                if let forEach = string(stepFields, "for_each") {
                    if forEach != "beam" {
                        fail(stepFields["for_each"], "\(stepPath).for_each", "unknown value '\(forEach)'; the only one is: beam")
                    } else if type != .execute {
                        fail(stepFields["for_each"], "\(stepPath).for_each", "for_each applies to execute steps only")
                    } else {
                        step.forEachBeam = true
                    }
                }
                if !type.runsCommand, step.rules != nil || !step.inputFiles.isEmpty {
                    fail(item, stepPath, "progress/failure patterns and input_files apply to execute and local steps only")
                }
                if type.runsCommand {
                    if let command = remoteCommands[name] {
                        usedCommands.insert(name)
                        step.command = command.template
                        if gpus.max == 0, let used = command.template.placeholders.first(where: { $0 == "gpu_id" || $0 == "gpu_ids" }) {
                            fail(command.node, "remote_commands.\(name)", "uses {\(used)} but step '\(name)' has gpu: false")
                        }
                        if !step.forEachBeam, command.template.placeholders.contains("beam_number") {
                            fail(command.node, "remote_commands.\(name)", "uses {beam_number} but step '\(name)' has no for_each: beam")
                        }
                    } else if !brokenCommands.contains(name) {
                        fail(item, "\(stepPath)", "\(type.rawValue) step '\(name)' has no command: add remote_commands.\(name)")
                    }
                }
                steps.append(step)
            }
            workflows[pair.key] = Workflow(name: pair.key, steps: steps)
        }
        for (name, command) in remoteCommands where !usedCommands.contains(name) {
            fail(command.keyNode, "remote_commands.\(name)", "no execute or local step named '\(name)' in any workflow")
        }
        return workflows
    }
}

extension WebhookConfig {
    /// The URL a webhook is known by in logs, metrics (`url` label), `mqi status` and the config
    /// check for duplicates: without credentials, query or fragment (where tokens hide), scheme
    /// and host in lower case.
    public static func label(_ url: String) -> String {
        guard var components = URLComponents(string: url) else { return "(invalid URL)" }
        components.user = nil
        components.password = nil
        components.query = nil
        components.fragment = nil
        if let scheme = components.scheme, scheme != scheme.lowercased() { components.scheme = scheme.lowercased() }
        if let host = components.host, host != host.lowercased() { components.host = host.lowercased() }
        return components.string ?? "(invalid URL)"
    }

    /// `WebhookConfig.label(url)`.
    public var label: String { Self.label(url) }
}
