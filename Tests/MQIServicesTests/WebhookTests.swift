import Foundation
import MQICore
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// `notifications.webhooks` end to end: the real `mqi run` posting to local receivers (Python's
/// http.server on 127.0.0.1) that are down, then refuse, then accept, and a daemon killed with
/// kill -9 in the middle of a delivery.
@Suite(.serialized)
struct WebhookTests {
    /// A receiver: answers 503 to its first `refuse` POSTs, then 200 (after `delay` seconds);
    /// logs every POST (its headers, body and answer) as one JSON line, before answering.
    static let receiverScript = """
        import http.server, json, sys, threading, time
        port, log, refuse, delay = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        count = [0]
        lock = threading.Lock()
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                with lock:
                    count[0] += 1
                    answer = 503 if count[0] <= refuse else 200
                    record = {'answer': answer, 'path': self.path, 'auth': self.headers.get('Authorization'),
                              'type': self.headers.get('Content-Type'), 'body': json.loads(body), 'start': time.time()}
                    with open(log, 'a') as f:
                        f.write(json.dumps(record) + '\\n')
                if answer == 200 and delay > 0:
                    time.sleep(delay)
                self.send_response(answer)
                self.send_header('Content-Length', '0')
                self.end_headers()
            def log_message(self, *args):
                pass
        # Threads: POSTs that overlap (two communicators delivering at once) would show.
        http.server.ThreadingHTTPServer(('127.0.0.1', port), Handler).serve_forever()
        """

    /// One receiver process on a fixed port, started and stopped at will.
    /// One delivered POST: the event's JSON body (`{event, case_id, status, error, at, ...}`) to
    /// `/hook`, with `auth` as its Authorization header.
    static func expectPost(_ request: Receiver.Request, of event: OutboxEvent, auth: String?) throws {
        #expect(request.path == "/hook")
        #expect(request.auth == auth)
        #expect(request.type == "application/json")
        #expect(request.body["event"] as? String == event.event)
        #expect(request.body["case_id"] as? String == event.caseId)
        #expect(request.body["status"] as? String == event.status)
        #expect(request.body["workflow"] as? String == "default_qa")
        #expect((request.body["instance"] as? String)?.isEmpty == false)
        let at = try #require(request.body["at"] as? String)
        let parsed = try Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(at)
        #expect(abs(parsed.timeIntervalSince(event.at)) < 0.002 && at.hasSuffix("Z"), "\(at)")
        if event.event == "case_failed" {
            #expect((request.body["error"] as? String)?.contains("FATAL ERROR") == true, "\(request.body)")
        } else {
            #expect(request.body["error"] is NSNull, "error is present and null: \(request.body)")
        }
    }

    final class Receiver: @unchecked Sendable {
        let port: Int
        let log: String
        let script: String
        var process: Process?

        init(port: Int, log: String, script: String) {
            self.port = port
            self.log = log
            self.script = script
        }

        func start(refuse: Int = 0, delay: Double = 0) async throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            process.arguments = [script, String(port), log, String(refuse), String(delay)]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            self.process = process
            // Listening when a connection is accepted.
            let port = port
            #expect(await eventually(within: 30) { Self.listening(port) }, "receiver on \(port) did not start")
        }

        /// Down at once: killed (SIGKILL: the test runner's children may ignore SIGTERM), not listening.
        func stop() async {
            guard let process else { return }
            kill(process.processIdentifier, SIGKILL)
            let deadline = Date().addingTimeInterval(10)
            while process.isRunning, Date() < deadline { try? await Task.sleep(for: .milliseconds(20)) }
            self.process = nil
            let port = port
            #expect(await eventually(within: 30) { !Self.listening(port) }, "receiver on \(port) still listens")
        }

        static func listening(_ port: Int) -> Bool {
            (try? runProcess("/usr/bin/python3", ["-c", "import socket; socket.create_connection(('127.0.0.1', \(port)), 1).close()"]).status) == 0
        }

        struct Request {
            var answer: Int
            var path: String
            var auth: String?
            var type: String?
            var body: [String: Any]
            var start: Double
            var id: Int64 { (body["id"] as? NSNumber)?.int64Value ?? -1 }
        }

        var requests: [Request] {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { line in
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                      let body = object["body"] as? [String: Any] else { return nil }
                return Request(answer: (object["answer"] as? Int) ?? 0, path: (object["path"] as? String) ?? "", auth: object["auth"] as? String,
                               type: object["type"] as? String, body: body, start: (object["start"] as? Double) ?? 0)
            }
        }

        /// The ids answered 200, in the order received.
        var accepted: [Int64] { requests.filter { $0.answer == 200 }.map(\.id) }
    }

    static func freePort() throws -> Int {
        let result = try runProcess("/usr/bin/python3", ["-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"])
        return try #require(Int(result.output.trimmingCharacters(in: .whitespacesAndNewlines)))
    }

    static let subscribed: [NotificationEvent] = [.caseReceived, .caseCompleted, .caseFailed, .caseCancelled]

    @Test(.timeLimit(.minutes(4)), .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs python3 for the receiver"))
    func everyEventArrivesOnceInOrderThroughRefusalsOutagesAndKillMinusNine() async throws {
        let temp = try TemporaryDirectory("mqi-webhook")
        defer { temp.remove() }
        let script = temp.file("receiver.py")
        try Self.receiverScript.write(toFile: script, atomically: true, encoding: .utf8)
        let main = Receiver(port: try Self.freePort(), log: temp.file("main.jsonl"), script: script)
        let failures = Receiver(port: try Self.freePort(), log: temp.file("failures.jsonl"), script: script)
        defer {
            for receiver in [main, failures] {
                if let pid = receiver.process?.processIdentifier { kill(pid, SIGKILL) }
            }
        }
        let step = temp.file("step.sh")
        try """
            #!/bin/sh
            # step.sh CASE_DIR [OUT]: fails for FAIL-* cases, runs a minute for SLOW-* ones.
            case "$(basename "$1")" in
              FAIL-*) echo "FATAL ERROR: no beam data"; exit 3 ;;
              SLOW-*) sleep 60 ;;
            esac
            if [ -n "$2" ]; then mkdir -p "$2" && echo dose > "$2/dose.txt"; fi
            """.write(toFile: step, atomically: true, encoding: .utf8)
        try "s3cret-token\n".write(toFile: temp.file("webhook.token"), atomically: true, encoding: .utf8)
        let config = temp.file("config.yaml")
        try SampleConfigs.localSite(simCommand: "/bin/sh \(ShellQuote.quote(step)) {case_dir} {result_dir}", simKeys: "timeout_sec: 120",
                                    scanner: "rescan_interval_sec: 1", gpus: [0, 1], retryAttempts: 3, extra: """
            notifications:
              timeout_sec: 2
              max_backoff_sec: 1
              webhooks:
                - url: http://127.0.0.1:\(main.port)/hook
                  events: [case_received, case_completed, case_failed, case_cancelled]
                  token_file: ./webhook.token
                - { url: "http://127.0.0.1:\(failures.port)/failures", events: [case_failed] }
            """).write(toFile: config, atomically: true, encoding: .utf8)
        let data = temp.file("data")
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        for name in ["OK-1", "OK-2", "FAIL-1"] { try DemoSite.writeCase(named: name, in: data, beams: 1) }
        let store = try Daemon.openStore(try ConfigLoader.load(path: config))
        func finished(_ ids: [String]) async -> Bool {
            guard let cases = try? await store.cases() else { return false }
            return ids.allSatisfy { id in cases.contains { $0.caseId == id && $0.status.isFinal } }
        }
        func expected() async throws -> [OutboxEvent] { try await store.outboxEvents(events: Self.subscribed) }

        // 1. The main receiver is down (nothing listens): the cases finish anyway, their events wait.
        try await failures.start()
        var daemon = try MQIProcess(["run", "--config", config, "--log-format", "text"], output: temp.file("daemon-1.log"))
        #expect(await eventually(within: 30) { await finished(["OK-1", "OK-2", "FAIL-1"]) }, "\(daemon.output.suffix(3000))")
        let url = "http://127.0.0.1:\(main.port)/hook"
        // Several tries (1 s apart at most), logged once.
        #expect(await eventually(within: 30) { ((try? await store.webhookCursor(url: url))?.attempts ?? 0) >= 3 })
        let cursor = try #require(try await store.webhookCursor(url: url))
        #expect(cursor.lastError?.contains("connection refused") == true, "\(cursor)")
        let warnings = daemon.output.split(separator: "\n").filter { $0.contains("webhook http://127.0.0.1:\(main.port)/hook failed") }
        #expect(warnings.count == 1, "\(warnings)")
        #expect(warnings.first?.contains("connection refused") == true, "\(warnings)")

        // The outage shows in the metrics: the events waiting, the failed tries.
        let metricsPort = try #require(daemon.output.firstMatch(of: /serving \/metrics, \/healthz and \/readyz on http:\/\/[^:]+:(\d+)/).map { String($0.1) })
        let scrape = try runProcess("/usr/bin/python3", ["-c", "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:\(metricsPort)/metrics').read().decode())"]).output
        let label = "{url=\"http://127.0.0.1:\(main.port)/hook\"}"
        #expect(scrape.contains("mqi_webhook_pending_events\(label) 6"), "\(scrape)")
        let failed = scrape.split(separator: "\n").first { $0.hasPrefix("mqi_webhook_failures_total\(label) ") }
        #expect((failed?.split(separator: " ").last).flatMap { Double($0) }.map { $0 >= 3 } == true, "\(failed ?? "no mqi_webhook_failures_total")")

        // And in `mqi status`: the events waiting, since when it fails, the tries, the last error
        // and when the next try is due (max_backoff_sec 1 after the last failed try).
        let statusText = try MQIProcess(["status", "--config", config], output: temp.file("status-1.txt"))
        #expect(await statusText.wait(upTo: 60) == 0, "\(statusText.output)")
        let line = statusText.output.split(separator: "\n").first { $0.hasPrefix("webhook: http://127.0.0.1:\(main.port)/hook  ") }.map(String.init) ?? ""
        #expect(line.contains("  6 events pending, FAILING since ") && line.contains(" failed tries, last: connection refused")
                && line.contains("; next try by 20"), "\(statusText.output)")
        #expect(statusText.output.contains("webhook: http://127.0.0.1:\(failures.port)/failures  "), "\(statusText.output)")
        print("mqi status during the outage: \(line)")
        let statusJSON = try MQIProcess(["status", "--config", config, "--json"], output: temp.file("status-1.json"))
        #expect(await statusJSON.wait(upTo: 60) == 0, "\(statusJSON.output)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(statusJSON.output.utf8)) as? [String: Any], "\(statusJSON.output)")
        let hooks = try #require(object["webhooks"] as? [[String: Any]])
        #expect(hooks.map { $0["url"] as? String } == ["http://127.0.0.1:\(main.port)/hook", "http://127.0.0.1:\(failures.port)/failures"])
        let hook = hooks[0]
        #expect(hook["registered"] as? Bool == true && hook["pending"] as? Int == 6, "\(hook)")
        #expect((hook["failed_tries"] as? Int ?? 0) >= 3 && (hook["last_error"] as? String)?.contains("connection refused") == true, "\(hook)")
        #expect(hook["events"] as? [String] == ["case_received", "case_completed", "case_failed", "case_cancelled"])
        let iso = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
        let since = try iso.parse(try #require(hook["failing_since"] as? String))
        let lastTry = try iso.parse(try #require(hook["last_try_at"] as? String))
        let nextTry = try iso.parse(try #require(hook["next_try_by"] as? String))
        #expect(since <= lastTry && abs(nextTry.timeIntervalSince(lastTry) - 1) < 0.01, "\(hook)")
        #expect(try await store.webhookCursor(url: url)?.failingSince.map { abs($0.timeIntervalSince(since)) < 0.002 } == true)

        // 2. It comes back refusing its first 3 POSTs (503), then accepts: every event arrives
        // once, in order.
        let before = try await expected()
        #expect(before.map(\.event).filter { $0 == "case_received" }.count == 3)
        #expect(before.contains { $0.event == "case_completed" && $0.caseId == "OK-1" } && before.contains { $0.event == "case_failed" && $0.caseId == "FAIL-1" })
        try await main.start(refuse: 3)
        let back = Date()
        #expect(await eventually(within: 20) { main.accepted.count >= before.count }, "\(main.requests.map { "\($0.answer) \($0.id)" })")
        let deliveredAfter = Date().timeIntervalSince(back)
        print("webhook: \(before.count) events delivered \(String(format: "%.2f", deliveredAfter)) s after the receiver came back (3 refused with 503 first)")
        let refused = main.requests.filter { $0.answer == 503 }
        #expect(refused.count == 3 && Set(refused.map(\.id)) == [before[0].id], "the first event is retried, nothing overtakes it")
        #expect(main.accepted == before.map(\.id), "every event once, in order")
        for (request, event) in zip(main.requests.filter { $0.answer == 200 }, before) {
            try Self.expectPost(request, of: event, auth: "Bearer s3cret-token")
        }
        #expect(await eventually(within: 30) { daemon.output.contains("webhook http://127.0.0.1:\(main.port)/hook delivers again after") })

        // 3. kill -9 in the middle of a delivery: the receiver holds each answer 1.5 s.
        await main.stop()
        try await main.start(delay: 1.5)
        let acceptedBefore = main.accepted.count
        for name in ["OK-3", "SLOW-1"] { try DemoSite.writeCase(named: name, in: data, beams: 1) }
        #expect(await eventually(within: 20) {
            let slow = (try? await store.caseExists("SLOW-1")) == true
            let ok = (try? await store.caseExists("OK-3")) == true
            return slow && ok && main.accepted.count > acceptedBefore
        }, "\(daemon.output.suffix(2000))")
        daemon.signal(SIGKILL)
        #expect(await daemon.wait(upTo: 10) != nil)
        let inFlight = try #require(main.accepted.last)
        // While it is dead, the CLI cancels a case: its event is recorded by the CLI's transaction.
        let cancel = try MQIProcess(["cases", "cancel", "SLOW-1", "--config", config], output: temp.file("cancel.log"))
        #expect(await cancel.wait(upTo: 20) == 0, "\(cancel.output)")
        #expect(try await expected().contains { $0.event == "case_cancelled" && $0.caseId == "SLOW-1" })

        // 4. Restarted: everything recorded meanwhile arrives, in order; at most the event in
        // flight at the kill arrives twice (same id: the receiver drops it).
        await main.stop()
        try await main.start()
        daemon = try MQIProcess(["run", "--config", config, "--log-format", "text"], output: temp.file("daemon-2.log"))
        let restarted = Date()
        defer { daemon.signal(SIGKILL) }
        #expect(await eventually(within: 30) { await finished(["OK-3"]) }, "\(daemon.output.suffix(3000))")
        let all = try await expected()
        #expect(all.contains { $0.event == "case_completed" && $0.caseId == "OK-3" })
        #expect(await eventually(within: 20) { Set(main.accepted).count >= all.count }, "\(main.accepted) vs \(all.map(\.id))")
        var firstSeen: [Int64] = []
        for id in main.accepted where !firstSeen.contains(id) { firstSeen.append(id) }
        #expect(firstSeen == all.map(\.id), "every event, in order")
        // The event in flight at the kill (the receiver logged it, the daemon died before its 200)
        // comes again, and only it: delivery is at least once, the id tells the receiver.
        let repeated = Dictionary(grouping: main.accepted, by: { $0 }).filter { $0.value.count > 1 }.mapValues(\.count)
        #expect(repeated == [inFlight: 2], "\(repeated)")
        print("webhook: \(all.count) events, \(main.requests.count) POSTs to the main receiver (\(main.requests.filter { $0.answer == 503 }.count) refused), event \(inFlight) in flight at the kill sent again after the restart; restart to last delivery \(String(format: "%.2f", Date().timeIntervalSince(restarted))) s")

        // The second webhook got the failures only, each once, from its own cursor.
        let failedEvents = all.filter { $0.event == "case_failed" }
        #expect(await eventually(within: 30) { failures.accepted == failedEvents.map(\.id) }, "\(failures.accepted) vs \(failedEvents.map(\.id))")
        #expect(failures.requests.allSatisfy { $0.auth == nil && $0.path == "/failures" })
        let caughtUp = try MQIProcess(["status", "--config", config], output: temp.file("status-2.txt"))
        #expect(await caughtUp.wait(upTo: 60) == 0, "\(caughtUp.output)")
        #expect(caughtUp.output.contains("webhook: http://127.0.0.1:\(main.port)/hook  0 events pending, all delivered\n"), "\(caughtUp.output)")

        daemon.signal(SIGTERM)
        #expect(await daemon.wait(upTo: 30) == 0, "\(daemon.output.suffix(2000))")
        #expect(try await store.webhookCursor(url: url)?.leaseOwner == nil, "a graceful shutdown gives the delivery up")
    }

    @Test(.timeLimit(.minutes(4)), .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") && PostgresServer.isAvailable,
                                            "needs python3 and PostgreSQL"))
    func twoCommunicatorsOnPostgreSQLDeliverEachEventOnceNeverAtTheSameTime() async throws {
        let temp = try TemporaryDirectory("mqi-webhook-pg")
        defer { temp.remove() }
        let script = temp.file("receiver.py")
        try Self.receiverScript.write(toFile: script, atomically: true, encoding: .utf8)
        let receiver = Receiver(port: try Self.freePort(), log: temp.file("hook.jsonl"), script: script)
        defer { if let pid = receiver.process?.processIdentifier { kill(pid, SIGKILL) } }
        // Each answer takes 50 ms: two deliveries at once would overlap at the (threaded) receiver.
        try await receiver.start(delay: 0.05)
        let location = try PostgresLocation(url: try PostgresServer.shared().freshDatabase(prefix: "webhook"))
        var first = try Store(postgres: location)
        first.instance = "first"
        var second = try Store(postgres: location)
        second.instance = "second"
        let url = "http://127.0.0.1:\(receiver.port)/hook"
        let config = NotificationsConfig(webhooks: [WebhookConfig(url: url, events: [.caseReceived])], timeoutSec: 2, maxBackoffSec: 1)
        let logs = CapturedLogs()
        let notifiers = [first, second].map { store in
            Notifier(config: config, store: store, instance: store.instance, logger: logs.logger(), metrics: nil, pollSec: 0.05)
        }
        for notifier in notifiers { try await notifier.registerWebhooks() }
        let running = notifiers.map { notifier in Task { try await notifier.run() } }
        defer { for task in running { task.cancel() } }
        // Both communicators record events while both deliver.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, store) in [first, second].enumerated() {
                group.addTask { for number in 0..<15 { try await store.registerCase("c\(index)-\(number)", workflow: "qa") } }
            }
            try await group.waitForAll()
        }
        var expected = try await first.outboxEvents().map(\.id)
        #expect(expected.count == 30)
        #expect(await eventually(within: 30) { receiver.accepted.count >= expected.count }, "\(receiver.accepted.count) of \(expected.count)")
        // The holder stops (a graceful shutdown gives the lease up): the other goes on from the cursor.
        let holder = try #require(try await first.webhookCursor(url: url)?.leaseOwner)
        let index = holder == "first" ? 0 : 1
        running[index].cancel()
        _ = await running[index].result
        for number in 0..<10 { try await first.registerCase("late-\(number)", workflow: "qa") }
        expected = try await first.outboxEvents().map(\.id)
        #expect(await eventually(within: 30) { receiver.accepted.count >= expected.count }, "\(receiver.accepted.count) of \(expected.count)")
        try await Task.sleep(for: .milliseconds(300))
        #expect(receiver.accepted == expected, "every event once, in order, from two communicators")
        #expect(try await first.webhookCursor(url: url)?.leaseOwner == (holder == "first" ? "second" : "first"))
        let starts = receiver.requests.map(\.start)
        let overlapping = zip(starts, starts.dropFirst()).filter { $1 - $0 < 0.045 }
        #expect(overlapping.isEmpty, "POSTs less than one answer apart: \(overlapping)")
        print("webhook on PostgreSQL: \(expected.count) events from two communicators, delivered once each by \(holder) then the other")
    }

    /// A webhook listed twice (here once with a token in its query) is a config error: `mqi config
    /// check` and `mqi run` say where and exit 2, and the daemon does not start.
    @Test(.timeLimit(.minutes(3)))
    func aWebhookListedTwiceStopsTheCLIWithExitTwo() async throws {
        let temp = try TemporaryDirectory("mqi-webhook-twice")
        defer { temp.remove() }
        let config = temp.file("config.yaml")
        try """
            scanner: { local_logdata: ./data }
            state: { database: ./var/mqi.sqlite, pid_file: ./var/mqi.pid, logs_dir: ./var/logs }
            workflows:
              default_qa:
                - { name: upload_case_files, type: upload }
            notifications:
              webhooks:
                - { url: "http://127.0.0.1:9/hook", events: [case_failed] }
                - { url: "http://127.0.0.1:9/hook?token=x", events: [case_completed] }
            """.write(toFile: config, atomically: true, encoding: .utf8)
        for (index, arguments) in [["config", "check", "--config", config], ["run", "--config", config]].enumerated() {
            let process = try MQIProcess(arguments, output: temp.file("out-\(index).txt"))
            #expect(await process.wait(upTo: 30) == 2, "\(arguments): \(process.output)")
            #expect(process.output.contains("\(config):9:14: notifications.webhooks[1].url: the same webhook as notifications.webhooks[0] (line 8): both post to http://127.0.0.1:9/hook "),
                    "\(arguments): \(process.output)")
            #expect(!process.output.contains("token=x"), "\(process.output)")
        }
        #expect(!FileManager.default.fileExists(atPath: temp.file("var/mqi.sqlite")), "the daemon did not start")
    }

    @Test func theURLIsLoggedWithoutCredentialsAndThePayloadHasEveryFieldNullOrNot() throws {
        #expect(WebhookConfig.label("https://alice:pw@hooks.example.org:8443/mqi?token=abc#x") == "https://hooks.example.org:8443/mqi")
        #expect(WebhookConfig.label("HTTPS://Hooks.Example.org/MQI") == "https://hooks.example.org/MQI")
        let event = OutboxEvent(id: 7, event: "gpu_missing", caseId: nil, status: "missing", error: "GPU 1 is not listed",
                                at: Date(timeIntervalSince1970: 1_750_000_000.25), detail: #"{"gpu_id":1}"#)
        let body = try #require(try JSONSerialization.jsonObject(with: Notifier.payload(event, instance: "site-a")) as? [String: Any])
        #expect(Set(body.keys) == ["id", "event", "case_id", "status", "error", "at", "instance", "gpu_id"])
        #expect(body["id"] as? Int == 7 && body["gpu_id"] as? Int == 1 && body["case_id"] is NSNull && body["instance"] as? String == "site-a")
        #expect(body["at"] as? String == "2025-06-15T15:06:40.250Z")
    }
}
