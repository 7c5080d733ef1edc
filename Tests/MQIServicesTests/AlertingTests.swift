import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import MQICore
import MQIMetrics
import MQIStore
import MQITestSupport
import MQITransport
import Synchronization
import Testing
@testable import MQIServices

/// The Prometheus side of the deployment (deploy/prometheus, deploy/grafana) against the real
/// tools and a real daemon: the alerting rules pass `promtool check rules` and their unit tests
/// (`promtool test rules`), every alert is tested firing and quiet, the Grafana dashboard's
/// queries are PromQL, and every metric the rules and the dashboard use is in a live scrape of a
/// daemon working over ssh.
@Suite(.serialized)
struct AlertingTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardizedFileURL.path

    static func path(_ relative: String) -> String { (repository as NSString).appendingPathComponent(relative) }

    static func text(_ relative: String) throws -> String { try String(contentsOfFile: path(relative), encoding: .utf8) }

    static let promtoolPath: String? = ["/usr/bin/promtool", "/usr/local/bin/promtool", "/bin/promtool"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    /// `promtool ARGUMENTS...`; promtool is required (scripts/test installs Debian's `prometheus`).
    static func promtool(_ arguments: String...) async throws -> (status: Int32, output: String) {
        let promtool = try #require(promtoolPath, "promtool is missing: scripts/test installs it (Debian package prometheus)")
        return try await offPool { try runProcess(promtool, arguments) }
    }

    // MARK: parsing the files (their regular layout; promtool checks the YAML itself)

    /// One alerting rule of alerts.yml: its name and its lines.
    struct Rule {
        var name: String
        var body: String
    }

    static func rules() throws -> [Rule] {
        let blocks = try text("deploy/prometheus/alerts.yml").components(separatedBy: "\n      - alert: ").dropFirst()
        return blocks.map { block in
            Rule(name: String(block.prefix { !$0.isNewline }), body: block)
        }
    }

    /// alertname → (tested firing, tested quiet) in alerts.test.yml.
    static func ruleTests() throws -> [String: (firing: Bool, quiet: Bool)] {
        var tests: [String: (firing: Bool, quiet: Bool)] = [:]
        var current: String?
        for line in try text("deploy/prometheus/alerts.test.yml").split(separator: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("alertname: ") {
                current = String(trimmed.dropFirst("alertname: ".count))
            } else if trimmed.hasPrefix("exp_alerts:"), let name = current {
                var seen = tests[name] ?? (false, false)
                if trimmed == "exp_alerts: []" { seen.quiet = true } else { seen.firing = true }
                tests[name] = seen
                current = nil
            }
        }
        return tests
    }

    /// Every PromQL query of the Grafana dashboard: targets' `expr` and the template variables'
    /// queries.
    static func dashboardQueries() throws -> [String] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path("deploy/grafana/mqi-dashboard.json")))
        var queries: [String] = []
        func walk(_ value: Any) {
            if let object = value as? [String: Any] {
                for (key, value) in object {
                    if ["expr", "query", "definition"].contains(key), let query = value as? String, key != "query" || query.contains("(") {
                        queries.append(query)
                    }
                    walk(value)
                }
            } else if let array = value as? [Any] {
                array.forEach(walk)
            }
        }
        walk(try JSONSerialization.jsonObject(with: data))
        return queries
    }

    static func metricNames(in text: String) -> Set<String> {
        Set(text.matches(of: #/mqi_[a-z_]+/#).map { String($0.output) })
    }

    /// The series names an exposition offers: each family of a `# TYPE` line, and a histogram's
    /// `_bucket`, `_sum` and `_count`.
    static func seriesNames(_ exposition: String) -> Set<String> {
        var names: Set<String> = []
        for line in exposition.split(separator: "\n") where line.hasPrefix("# TYPE ") {
            let parts = line.split(separator: " ")
            guard parts.count == 4 else { continue }
            let name = String(parts[2])
            names.insert(name)
            if parts[3] == "histogram" { names.formUnion(["_bucket", "_sum", "_count"].map { name + $0 }) }
        }
        return names
    }

    // MARK: alerting rules

    @Test(.timeLimit(.minutes(3)))
    func theAlertRulesPassPromtoolCheckRules() async throws {
        let rules = try Self.rules()
        let check = try await Self.promtool("check", "rules", Self.path("deploy/prometheus/alerts.yml"))
        #expect(check.status == 0, "\(check.output)")
        #expect(check.output.contains("SUCCESS: \(rules.count) rules found"), "\(check.output)")
        print("promtool check rules deploy/prometheus/alerts.yml:\n\(check.output)")
    }

    @Test(.timeLimit(.minutes(3)))
    func theAlertRuleUnitTestsPass() async throws {
        let run = try await Self.promtool("test", "rules", Self.path("deploy/prometheus/alerts.test.yml"))
        #expect(run.status == 0, "\(run.output)")
        #expect(run.output.contains("SUCCESS"), "\(run.output)")
        print("promtool test rules deploy/prometheus/alerts.test.yml:\n\(run.output)")
    }

    @Test(.timeLimit(.minutes(3)))
    func theExamplePrometheusConfigPassesPromtool() async throws {
        let check = try await Self.promtool("check", "config", Self.path("deploy/prometheus/prometheus.yml"))
        #expect(check.status == 0, "\(check.output)")
    }

    /// What an operator gets from each alert: how long the condition must hold, a severity, what
    /// happened and what to do; and each is unit-tested firing and quiet.
    @Test func everyAlertHasForSeverityAndNextStepAndIsTestedBothWays() throws {
        let rules = try Self.rules()
        let expected: Set = ["MQICaseFailed", "MQICasePendingResourceTooLong", "MQICaseWaitingForReadyMarker", "MQIDeadLetters",
                             "MQIHPCUnreachable", "MQIGPUDrainingTooLong", "MQIGPUMissing", "MQIScrapeFailing", "MQIScrapeTargetMissing",
                             "MQIStateDiskLow"]
        #expect(expected.isSubset(of: Set(rules.map(\.name))), "\(rules.map(\.name))")
        let tests = try Self.ruleTests()
        for rule in rules {
            #expect(rule.body.contains("\n        for: "), "\(rule.name) has no for:")
            #expect(rule.body.contains("\n          severity: warning\n") || rule.body.contains("\n          severity: critical\n"),
                    "\(rule.name) has no severity warning|critical")
            #expect(rule.body.contains("\n          summary: "), "\(rule.name) has no summary")
            #expect(rule.body.contains("\n          description: "), "\(rule.name) has no description")
            #expect(tests[rule.name]?.firing == true, "\(rule.name) is not tested firing")
            #expect(tests[rule.name]?.quiet == true, "\(rule.name) is not tested quiet")
        }
        #expect(Set(tests.keys).isSubset(of: Set(rules.map(\.name))), "tests of alerts that do not exist: \(Set(tests.keys).subtracting(rules.map(\.name)))")
    }

    // MARK: Grafana dashboard

    @Test func theDashboardHasADatasourceVariableAndThePanels() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.path("deploy/grafana/mqi-dashboard.json")))
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect((dashboard["schemaVersion"] as? Int).map { (36...41).contains($0) } == true, "\(dashboard["schemaVersion"] ?? "none")")
        let variables = try #require((dashboard["templating"] as? [String: Any])?["list"] as? [[String: Any]])
        #expect(variables.contains { $0["name"] as? String == "datasource" && $0["type"] as? String == "datasource" && $0["query"] as? String == "prometheus" })
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        let ids = panels.compactMap { $0["id"] as? Int }
        #expect(Set(ids).count == panels.count, "panel ids are unique")
        var queriesByTitle: [String: String] = [:]
        for panel in panels where panel["type"] as? String != "row" {
            let title = try #require(panel["title"] as? String)
            let targets = try #require(panel["targets"] as? [[String: Any]], "\(title) has no targets")
            #expect(!targets.isEmpty)
            for target in targets {
                #expect((target["datasource"] as? [String: Any])?["uid"] as? String == "${datasource}", "\(title) does not use the datasource variable")
                queriesByTitle[title, default: ""] += (target["expr"] as? String ?? "") + "\n"
            }
        }
        let queries = queriesByTitle.values.joined()
        for metric in ["mqi_cases{", "mqi_cases_completed_total", "mqi_cases_failed_total", "mqi_queue_depth", "mqi_dead_letters",
                       "mqi_gpu_utilization_percent", "mqi_gpu_memory_used_bytes", "mqi_gpu_reserved", "mqi_gpu_draining",
                       "mqi_hpc_reachable", "histogram_quantile(0.95, sum by (le, task_type) (rate(mqi_task_execution_duration_seconds_bucket",
                       "mqi_state_disk_free_bytes", "mqi_state_disk_free_ratio"] {
            #expect(queries.contains(metric), "no panel queries \(metric)")
        }
    }

    /// The dashboard's queries are PromQL that Prometheus parses (checked as recording rules,
    /// with Grafana's variables filled in).
    @Test(.timeLimit(.minutes(3)))
    func theDashboardQueriesArePromQL() async throws {
        let queries = try Self.dashboardQueries().filter { !$0.hasPrefix("label_values(") }
        #expect(queries.count >= 20)
        let temp = try TemporaryDirectory("mqi-dashboard-promql")
        defer { temp.remove() }
        var rules = "groups:\n  - name: dashboard\n    rules:\n"
        for (index, query) in queries.enumerated() {
            let expr = query.replacingOccurrences(of: "$__rate_interval", with: "5m").replacingOccurrences(of: "$instance", with: ".*")
            rules += "      - record: dashboard:query_\(index)\n        expr: '\(expr.replacingOccurrences(of: "'", with: "''"))'\n"
        }
        try rules.write(toFile: temp.file("dashboard-rules.yml"), atomically: true, encoding: .utf8)
        let check = try await Self.promtool("check", "rules", temp.file("dashboard-rules.yml"))
        #expect(check.status == 0, "\(check.output)\n--- rules ---\n\(rules)")
    }

    // MARK: gauges from the scanner

    /// The scanner's cases without their ready marker: how many, and how long the oldest has
    /// waited (from when the scanner first saw it, at each scrape); both 0 once it is taken.
    @Test func theMarkerWaitGaugesFollowTheScanner() async throws {
        let temp = try TemporaryDirectory("mqi-marker-gauges")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 0)
        let config = try ConfigLoader.load(path: site.configPath)
        let marker = try #require(config.scanner.readyMarker)
        let store = try Daemon.openStore(config)
        let metrics = MQIMetrics()
        let clock = Mutex(Date().addingTimeInterval(-90 * 60))
        let scanner = CaseScanner(config: config.scanner, store: store, logger: CapturedLogs().logger(), metrics: metrics,
                                  waitListPath: MarkerWaitList.path(state: config.state), now: { clock.withLock { $0 } })
        func samples() async throws -> [String: Double] { ObservabilityEndToEndTests.samples(try await metrics.render(from: store)) }
        #expect(try await samples()["mqi_cases_waiting_for_marker"] == 0)
        #expect(try await samples()["mqi_oldest_marker_wait_seconds"] == 0)
        // Seen without its marker 90 min ago, and another one 10 min ago.
        try DemoSite.writeCase(named: "DEMO-A", in: config.scanner.localLogdata, marker: nil)
        #expect(await scanner.scan().waitingForMarker == 1)
        clock.withLock { $0 = Date().addingTimeInterval(-10 * 60) }
        try DemoSite.writeCase(named: "DEMO-B", in: config.scanner.localLogdata, marker: nil)
        #expect(await scanner.scan().waitingForMarker == 2)
        var values = try await samples()
        #expect(values["mqi_cases_waiting_for_marker"] == 2)
        #expect(abs((values["mqi_oldest_marker_wait_seconds"] ?? 0) - 5400) < 30, "\(values["mqi_oldest_marker_wait_seconds"] ?? -1)")
        // DEMO-A's marker arrives: DEMO-B is the oldest; then DEMO-B's: none waits.
        clock.withLock { $0 = Date() }
        try Data().write(to: URL(fileURLWithPath: (config.scanner.localLogdata as NSString).appendingPathComponent("DEMO-A/\(marker)")))
        #expect(await scanner.scan().registered == 1)
        values = try await samples()
        #expect(values["mqi_cases_waiting_for_marker"] == 1)
        #expect(abs((values["mqi_oldest_marker_wait_seconds"] ?? 0) - 600) < 30, "\(values["mqi_oldest_marker_wait_seconds"] ?? -1)")
        try Data().write(to: URL(fileURLWithPath: (config.scanner.localLogdata as NSString).appendingPathComponent("DEMO-B/\(marker)")))
        #expect(await scanner.scan().registered == 1)
        values = try await samples()
        #expect(values["mqi_cases_waiting_for_marker"] == 0)
        #expect(values["mqi_oldest_marker_wait_seconds"] == 0)
    }

    // MARK: a live daemon

    static func get(_ port: Int, _ path: String, accept: String?) async throws -> (status: Int, contentType: String?, body: String) {
        var request = URLRequest(url: try #require(URL(string: "http://127.0.0.1:\(port)\(path)")))
        request.timeoutInterval = 20
        if let accept { request.setValue(accept, forHTTPHeaderField: "Accept") }
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = try #require(response as? HTTPURLResponse)
        return (http.statusCode, http.value(forHTTPHeaderField: "Content-Type"), String(decoding: data, as: UTF8.self))
    }

    /// A daemon working over ssh (loopback sshd) has run two cases, and a third case directory
    /// waits for its ready marker. Prometheus's scrape of `/` passes promtool, and every metric
    /// that the alert rules and the dashboard use is in it.
    @Test(.enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync (scripts/test installs them)"), .timeLimit(.minutes(4)))
    func everyMetricTheAlertsAndTheDashboardUseIsInALiveScrape() async throws {
        let server = try SSHServer()
        defer { server.stop(); server.remove() }
        try await server.start()
        let (temp, siteConfig, _) = try SSHEndToEndTests.site(server, cases: 2)
        defer { temp.remove() }
        var config = siteConfig
        // One reading at start feeds the GPU gauges; no more, so the shutdown never meets a
        // reading in flight.
        config.gpuMonitor.intervalSec = 600
        // A webhook whose receiver is down (nothing listens on its port): the webhook metrics
        // exist only for configured webhooks.
        config.notifications.webhooks = [WebhookConfig(url: "http://127.0.0.1:\(try WebhookTests.freePort())/hook", events: [.caseCompleted])]
        try DemoSite.writeCase(named: "DEMO-LATE", in: config.scanner.localLogdata, marker: nil)
        let port = Mutex<Int?>(nil)
        var daemon = Daemon(config: config, logger: CapturedLogs().logger(level: .info), metrics: MQIMetrics(),
                            onListening: { bound in port.withLock { $0 = bound } })
        let shutdown = OneShot()
        daemon.shutdown = shutdown
        let running = Task { [daemon] in try await daemon.run() }
        let store = try Daemon.openStore(config)
        let done = await eventually(within: 150) {
            let cases = (try? await store.cases()) ?? []
            return cases.count == 2 && cases.allSatisfy { $0.status == .completed }
        }
        let http = port.withLock { $0 }
        var scrape: (status: Int, contentType: String?, body: String)?
        var plain: (status: Int, contentType: String?, body: String)?
        if done, let http {
            scrape = try? await Self.get(http, "/", accept:
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
            plain = try? await Self.get(http, "/metrics", accept: nil)
        }
        shutdown.fire()
        try await running.value
        let cases = try await store.cases().map { "\($0.caseId) \($0.status.rawValue) \($0.error ?? "")" }
        #expect(done, "the two cases did not complete: \(cases)")
        let root = try #require(scrape, "no scrape of / (HTTP port \(http.map(String.init) ?? "never reported"))")
        let metrics = try #require(plain)
        #expect(root.status == 200)
        #expect(root.contentType == "text/plain; version=0.0.4; charset=utf-8")
        let promtool = try #require(Self.promtoolPath, "promtool is missing: scripts/test installs it (Debian package prometheus)")
        let scrapeFile = temp.file("scrape.txt")
        try root.body.write(toFile: scrapeFile, atomically: true, encoding: .utf8)
        let check = try await offPool { try runProcess("/bin/sh", ["-c", "\(ShellQuote.quote(promtool)) check metrics < \(ShellQuote.quote(scrapeFile))"]) }
        #expect(check.status == 0, "promtool check metrics (live scrape of /):\n\(check.output)\n--- input ---\n\(root.body)")
        let exported = Self.seriesNames(root.body)
        #expect(exported == Self.seriesNames(metrics.body), "/ and /metrics offer the same families")

        let alertMetrics = Self.metricNames(in: try Self.text("deploy/prometheus/alerts.yml"))
        let dashboardMetrics = Self.metricNames(in: try Self.dashboardQueries().joined(separator: "\n"))
        #expect(alertMetrics.count >= 8 && dashboardMetrics.count >= 15, "\(alertMetrics) \(dashboardMetrics)")
        #expect(alertMetrics.subtracting(exported).isEmpty, "the alert rules use metrics the daemon does not export: \(alertMetrics.subtracting(exported).sorted())")
        #expect(dashboardMetrics.subtracting(exported).isEmpty, "the dashboard queries metrics the daemon does not export: \(dashboardMetrics.subtracting(exported).sorted())")

        // The values behind the alerts, as this run left them.
        let samples = ObservabilityEndToEndTests.samples(root.body)
        #expect(samples[#"mqi_hpc_reachable{host="127.0.0.1"}"#] == 1, "\(root.body)")
        #expect(samples["mqi_cases_waiting_for_marker"] == 1)
        #expect((samples["mqi_oldest_marker_wait_seconds"] ?? 0) > 0)
        #expect(samples["mqi_oldest_pending_resource_seconds"] == 0)
        #expect(samples["mqi_dead_letters"] == 0)
        #expect(samples[#"mqi_gpu_health{gpu_id="0",health="ok"}"#] == 1)
        let stateDirectory = config.state.localDirectory
        #expect((samples["mqi_state_disk_free_ratio{path=\"\(stateDirectory)\"}"] ?? 0) > 0, "\(root.body.split(separator: "\n").filter { $0.contains("disk") })")
        print("promtool check metrics (live scrape of /): exit \(check.status) \(check.output)")
        print("metrics used by the alert rules: \(alertMetrics.sorted().joined(separator: ", "))")
        print("metrics used by the dashboard: \(dashboardMetrics.sorted().joined(separator: ", "))")
    }
}
