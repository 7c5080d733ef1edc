import Foundation
import Hummingbird
import Logging
import MQICore
import MQIHTTP
import MQIMetrics
import MQIStore
import MQITransport
import MQITestSupport
import ServiceLifecycle
import Synchronization
import Testing
@testable import MQIServices

/// The dashboard in a real browser (headless Chromium) against the real daemon on a demo site.
@Suite(.serialized)
struct DashboardBrowserTests {
    static let chromium: String? = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Where screenshots go (kept after the test): `<package>/.artifacts/`.
    static var artifacts: String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../.artifacts").standardizedFileURL.path
        try? FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        return root
    }

    /// Runs Chromium headless on `url` with `mode` (`--dump-dom`, `--screenshot=FILE`); returns its stdout.
    /// With `console`, the page's console messages go to that file (Chromium's stderr).
    static func browser(_ url: String, _ mode: [String], userDataDir: String, size: String = "1280,800", timeout: Double = 60,
                        console: String? = nil) async throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(chromium))
        process.arguments = ["--headless=new", "--no-sandbox", "--disable-gpu", "--user-data-dir=\(userDataDir)", "--window-size=\(size)",
                             "--hide-scrollbars"] + (console == nil ? [] : ["--enable-logging=stderr", "--v=0"]) + mode + [url]
        let outPath = userDataDir + ".out"
        FileManager.default.createFile(atPath: outPath, contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        defer { try? out.close() }
        process.standardOutput = out
        if let console {
            FileManager.default.createFile(atPath: console, contents: nil)
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: console))
        } else {
            process.standardError = FileHandle.nullDevice
        }
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        if process.isRunning {
            process.terminate()
            Issue.record("chromium did not finish within \(timeout) s: \(mode) \(url)")
        }
        return (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
    }

    /// The dashboard's own console messages (`mqi-dashboard: ...`) in a Chromium stderr file.
    static func consoleLines(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
            line.range(of: "mqi-dashboard: ").map { String(line[$0.lowerBound...]) }
        }
    }

    /// The attributes of each `<tr data-case-id=...>` in a DOM dump.
    static func caseRows(_ dom: String) -> [(id: String, status: String, initial: String)] {
        let tag = try! Regex(#"<tr [^>]*data-case-id="[^"]*"[^>]*>"#)
        return dom.matches(of: tag).map { match in
            let text = String(dom[match.range])
            func attribute(_ name: String) -> String {
                guard let m = text.firstMatch(of: try! Regex("\(name)=\"([^\"]*)\"")) else { return "" }
                return String(m.output[1].substring ?? "")
            }
            return (attribute("data-case-id"), attribute("data-status"), attribute("data-initial-status"))
        }
    }

    static func attribute(_ name: String, ofTag tagPrefix: String, in dom: String) -> String? {
        guard let start = dom.range(of: tagPrefix), let end = dom[start.lowerBound...].firstIndex(of: ">") else { return nil }
        let tag = dom[start.lowerBound..<end]
        guard let m = tag.firstMatch(of: try! Regex("\(name)=\"([^\"]*)\"")) else { return nil }
        return String(m.output[1].substring ?? "")
    }

    @Test(.enabled(if: chromium != nil, "chromium is not installed (scripts/test installs it): the dashboard browser test is skipped"),
          .timeLimit(.minutes(3)))
    func dashboardShowsCasesAndGPUsAndUpdatesLive() async throws {
        let temp = try TemporaryDirectory("mqi-dash")
        defer { temp.remove() }
        let caseCount = 6
        let site = try DemoSite.create(at: temp.file("site"), cases: caseCount)
        try Data("dashboard-test-token\n".utf8).write(to: URL(fileURLWithPath: temp.file("site/api-token")))
        let configText = try String(contentsOfFile: site.configPath, encoding: .utf8) + "http:\n  token_file: ./api-token\n"
        try configText.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: site.configPath)

        let port = Mutex<Int?>(nil)
        let logs = CapturedLogs()
        // Stopped gracefully (as SIGTERM does), never by cancelling the task: see Daemon.shutdown.
        let stop = OneShot()
        var server = Daemon(config: config, logger: logs.logger(level: .info), onListening: { bound in port.withLock { $0 = bound } })
        server.shutdown = stop
        let daemon = Task { [server] in try await server.run() }
        var stopped = false
        defer { if !stopped { stop.fire() } }
        #expect(await eventually(within: 30) { port.withLock { $0 } != nil }, "the daemon did not start listening")
        let base = "http://127.0.0.1:\(try #require(port.withLock { $0 }))"
        let store = try Daemon.openStore(config)
        #expect(try await eventually(within: 30) { try await !store.cases(status: .processing).isEmpty }, "no case started")
        let started = Date()

        // The live page: loaded now, while cases are running; the dump is written once the stream
        // ends (Chromium's virtual time stands still while the event stream is open).
        let liveDump = Task { try await Self.browser(base + "/", ["--virtual-time-budget=4000", "--dump-dom"], userDataDir: temp.file("chrome-live"), timeout: 120) }
        try await Task.sleep(for: .milliseconds(800))

        // Screenshots while cases run.
        let overviewPNG = (Self.artifacts as NSString).appendingPathComponent("dashboard-overview.png")
        let detailPNG = (Self.artifacts as NSString).appendingPathComponent("dashboard-case-detail.png")
        try? FileManager.default.removeItem(atPath: overviewPNG)
        try? FileManager.default.removeItem(atPath: detailPNG)
        _ = try await Self.browser(base + "/", ["--screenshot=\(overviewPNG)"], userDataDir: temp.file("chrome-shot1"), size: "1280,1100")
        let processing = try await store.cases(status: .processing)
        let all = try await store.cases()
        let detailId = try #require((processing.first ?? all.first)?.caseId)
        let detailURL = base + "/cases/" + detailId.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        _ = try await Self.browser(detailURL, ["--screenshot=\(detailPNG)"], userDataDir: temp.file("chrome-shot2"), size: "1280,1100")
        print("dashboard screenshots: \(overviewPNG) \(detailPNG)")
        #expect(FileManager.default.fileExists(atPath: overviewPNG))
        #expect(FileManager.default.fileExists(atPath: detailPNG))

        // Every case completes; give the stream a poll interval to deliver it, then stop the daemon.
        #expect(try await eventually(within: 90) { try await store.cases(status: .completed).count == caseCount }, "not every case completed")
        print("cases completed \(String(format: "%.1f", Date().timeIntervalSince(started))) s after the live page was opened")
        let detailDOM = try await Self.browser(detailURL, ["--dump-dom"], userDataDir: temp.file("chrome-detail"))
        try await Task.sleep(for: .milliseconds(1500))
        stop.fire()
        _ = try? await daemon.value
        stopped = true

        let dom = try await liveDump.value
        try dom.write(toFile: (Self.artifacts as NSString).appendingPathComponent("dashboard-overview-live.html"), atomically: true, encoding: .utf8)
        let rows = Self.caseRows(dom)
        let ids = Set(try await store.cases().map(\.caseId))
        #expect(Set(rows.map(\.id)) == ids, "rows \(rows.map(\.id)) vs cases \(ids)")
        #expect(rows.allSatisfy { $0.status == "COMPLETED" }, "\(rows)")
        // Rendered as running or waiting when the page loaded, COMPLETED now: applied from the stream.
        let updatedLive = rows.filter { $0.initial != "COMPLETED" && $0.status == "COMPLETED" }
        #expect(!updatedLive.isEmpty, "no row changed after the page loaded: \(rows)")
        let liveUpdates = Int(Self.attribute("data-live-updates", ofTag: "<body", in: dom) ?? "") ?? 0
        #expect(liveUpdates >= updatedLive.count, "data-live-updates \(liveUpdates)")
        #expect(dom.contains("data-count-status=\"COMPLETED\"><span class=\"tile-count\">\(caseCount)</span>"), "the COMPLETED tile did not update")
        // GPU cards, with telemetry from the (stand-in) nvidia-smi.
        #expect(dom.contains("data-gpu-id=\"0\"") && dom.contains("data-gpu-id=\"1\""))
        #expect(dom.contains("DEMO STAND-IN GPU"))
        // The daemon went away: the page says so.
        #expect(Self.attribute("data-connection", ofTag: "<body", in: dom) == "disconnected")
        let banner = try #require(dom.range(of: "id=\"conn-banner\"").map { dom[$0.lowerBound...].prefix(80) })
        #expect(!banner.contains("hidden"), "the disconnected banner is hidden: \(banner)")
        print("live page: \(updatedLive.count) row(s) went to COMPLETED without a reload; \(liveUpdates) live update(s) applied")

        // The case page: timeline with durations and the log tail.
        #expect(detailDOM.contains("class=\"timeline\""))
        #expect(detailDOM.contains("outcome-succeeded"))
        #expect(detailDOM.contains("run_moqui_sim"))
        #expect(detailDOM.contains("data-action=\"retry\""), "token configured: the buttons exist")
    }

    /// The browser test's MOQUI stand-in, by the case's number (the last part of its study UID):
    /// case 1's beam 1 fails once with a retryable error, then every beam of case 1 runs until
    /// `CTL/go` exists (a progress line every 0.5 s), then writes a last line and succeeds; cases 2
    /// and 4 fail with a FATAL ERROR; the others run the demo's stand-in.
    static func consoleSimulator(control: String, demo: String) -> String {
        """
        #!/bin/sh
        set -u
        say() { printf '%s\\n' "$*"; }
        CTL=\(ShellQuote.quote(control))
        case_dir= out= beam= prev=
        for arg in "$@"; do
            case $prev in
                --case-dir) case_dir=$arg ;;
                --out) out=$arg ;;
                --beam) beam=$arg ;;
            esac
            prev=$arg
        done
        n=${case_dir%/}; n=${n##*.}
        case $n in
        1)
            say "MOQUI Monte Carlo dose engine (browser test stand-in)"
            say "Beam $beam"
            if [ "$beam" = 1 ] && [ ! -e "$CTL/beam1-failed" ]; then
                : > "$CTL/beam1-failed"
                say "Uploading particles with batch.. : Particle count --> 100000 with 100 batches"
                say "FATAL ERROR: cudaMalloc failed (out of memory): No free GPU remains on this node"
                sleep 5
                exit 3
            fi
            say "Uploading particles with batch.. : Particle count --> 100000 with 100 batches"
            k=1
            while [ ! -e "$CTL/go" ]; do
                say "Generating particles for ($k of 100 batches)"
                [ "$k" -ge 99 ] || k=$((k + 1))
                sleep 0.5
            done
            say "LIVE LINE beam $beam: written after the page was opened"
            say "Generating particles for (100 of 100 batches)"
            mkdir -p "$out" && say "stand-in dose" > "$out/RTDOSE_beam$beam.dcm"
            say "Total execution time: 1.000 s"
            ;;
        2|4)
            say "MOQUI Monte Carlo dose engine (browser test stand-in)"
            say "Beam $beam"
            say "Uploading particles with batch.. : Particle count --> 100000 with 10 batches"
            say "FATAL ERROR: CUDA error: an illegal memory access was encountered (beam $beam)"
            sleep 5
            exit 3
            ;;
        *)
            exec /bin/sh \(ShellQuote.quote(demo)) "$@"
            ;;
        esac

        """
    }

    /// The operators' console, screenshot by screenshot (kept in `.artifacts/`): the case list
    /// filtered by status, received dates and text; a case whose beams run with its log followed
    /// live (and a beam's failed attempt one click away, its failure line marked); a FAILED case;
    /// the GPU panel with each GPU's last hour.
    @Test(.enabled(if: chromium != nil, "chromium is not installed (scripts/test installs it): the dashboard browser test is skipped"),
          .timeLimit(.minutes(4)))
    func consoleScreenshots() async throws {
        let temp = try TemporaryDirectory("mqi-console")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 4, gpus: [0, 1, 2, 3, 4, 5], perBeam: true)
        let control = temp.file("control")
        try FileManager.default.createDirectory(atPath: control, withIntermediateDirectories: true)
        let simulator = temp.file("site/bin/console-sim.sh")
        try Self.consoleSimulator(control: control, demo: temp.file("site/bin/moquisim.sh")).write(toFile: simulator, atomically: true, encoding: .utf8)
        var configText = try String(contentsOfFile: site.configPath, encoding: .utf8)
        let simLine = try #require(configText.split(separator: "\n").first { $0.contains("run_moqui_sim:") && $0.contains("moquisim.sh") })
        configText = configText.replacingOccurrences(of: simLine, with: simLine.replacingOccurrences(of: "moquisim.sh", with: "console-sim.sh"))
        try configText.write(toFile: site.configPath, atomically: true, encoding: .utf8)
        let config = try ConfigLoader.load(path: site.configPath)
        let ids = try DemoSite.caseIDs(in: config.scanner.localLogdata, depth: 3)
        let id = { (number: Int) in try #require(ids.first { $0.hasSuffix(".3.\(number)") }, "\(ids)") }
        let live = try id(1), failed = try id(2)

        let port = Mutex<Int?>(nil)
        let stop = OneShot()
        let logs = CapturedLogs()
        var server = Daemon(config: config, logger: logs.logger(level: .info), onListening: { bound in port.withLock { $0 = bound } })
        server.shutdown = stop
        let daemon = Task { [server] in try await server.run() }
        var stopped = false
        defer { if !stopped { stop.fire() } }
        #expect(await eventually(within: 30) { port.withLock { $0 } != nil }, "the daemon did not start listening")
        let base = "http://127.0.0.1:\(try #require(port.withLock { $0 }))"
        let started = Date()
        let store = try Daemon.openStore(config)
        // Case 1: beam 1 failed once (retryable) and runs again, its other beams run; 2 and 4 failed.
        let ready = try await eventually(within: 90) {
            let beams = try await store.caseSummary(live)?.beams ?? []
            let failedCount = try await store.cases(status: .failed).count
            return failedCount == 2 && beams.count == 3 && beams.allSatisfy { $0.status == .running }
                && beams.first { $0.beam == 1 }?.attempt == 2
        }
        let liveSummary = try await store.caseSummary(live)
        #expect(ready, "case 1 is not running its beams with beam 1 on attempt 2: \(String(describing: liveSummary))")
        // A few GPU readings (every 2 s) for the chart.
        let settle = 12 - Date().timeIntervalSince(started)
        if settle > 0 { try await Task.sleep(for: .seconds(settle)) }

        func shot(_ name: String, _ path: String, size: String = "1280,1000") async throws -> String {
            let png = (Self.artifacts as NSString).appendingPathComponent(name)
            try? FileManager.default.removeItem(atPath: png)
            _ = try await Self.browser(base + path, ["--screenshot=\(png)"], userDataDir: temp.file("chrome-\(name)"), size: size)
            #expect(FileManager.default.fileExists(atPath: png), "no screenshot \(png)")
            return png
        }
        func dom(_ path: String, _ name: String) async throws -> String {
            let text = try await Self.browser(base + path, ["--dump-dom"], userDataDir: temp.file("chrome-dom-\(name)"))
            try text.write(toFile: (Self.artifacts as NSString).appendingPathComponent("console-\(name).html"), atomically: true, encoding: .utf8)
            return text
        }
        func casePath(_ caseId: String) -> String { "/cases/" + caseId.addingPercentEncoding(withAllowedCharacters: .alphanumerics)! }

        // The list, filtered: FAILED, received yesterday or today, "DEMO" in the id.
        let day = DateFormatter()
        day.dateFormat = "yyyy-MM-dd"
        day.timeZone = .current
        let listPath = "/cases?status=FAILED&received_from=\(day.string(from: Date().addingTimeInterval(-86_400)))&received_to=\(day.string(from: Date()))&q=DEMO"
        let listPNG = try await shot("console-cases-filtered.png", listPath, size: "1280,700")
        let listDOM = try await dom(listPath, "cases-filtered")
        let rows = Self.caseRows(listDOM)
        #expect(Set(rows.map(\.id)) == Set([try id(2), try id(4)]), "\(rows)")
        #expect(rows.allSatisfy { $0.status == "FAILED" })
        #expect(listDOM.contains(#"<option value="FAILED" selected"#) || listDOM.contains(#"value="FAILED" selected"#), "the status filter is shown")

        // Case 1 while its beams run: the log panel follows a running beam's log.
        let livePNG = try await shot("console-case-live.png", casePath(live), size: "1280,2000")
        // Beam 1's failed attempt, one click away: its failure line marked.
        let attemptPath = casePath(live) + "?log=run_moqui_sim.1&attempt=1"
        let attemptPNG = try await shot("console-case-failed-attempt.png", attemptPath, size: "1280,2000")
        let attemptDOM = try await dom(attemptPath, "case-failed-attempt")
        #expect(attemptDOM.contains(#"data-failure="true""#) && attemptDOM.contains("No free GPU remains on this node</mark>"), "the failure line is not marked")
        #expect(attemptDOM.contains("run_moqui_sim · beam 1 #1") && attemptDOM.contains("run_moqui_sim · beam 1 #2"), "every attempt's log is linked")
        // The FAILED case: failed beams, its log with the FATAL ERROR marked.
        let failedPNG = try await shot("console-case-failed.png", casePath(failed), size: "1280,2000")
        let failedDOM = try await dom(casePath(failed), "case-failed")
        #expect(failedDOM.contains(#"data-beam-status="FAILED""#), "no failed beam in the beam runs")
        #expect(failedDOM.contains("an illegal memory access was encountered"))
        #expect(failedDOM.range(of: #"<mark class="log-fail"[^>]*>FATAL ERROR: CUDA error"#, options: .regularExpression) != nil, "the failure line is not marked")
        // The log shown is the failed beam's.
        let failedBeam = try #require(try await store.caseSummary(failed)?.beams.first { $0.status == .failed })
        #expect(failedDOM.contains("run_moqui_sim · beam \(failedBeam.beam) · attempt 1</span>"), "not the failed beam's log")
        // The GPU panel: holder, state, and the last hour as a chart with points.
        let gpuPNG = try await shot("console-gpus.png", "/", size: "1280,1700")
        let overviewDOM = try await dom("/", "overview")
        let points = overviewDOM.matches(of: try Regex(#"class="spark-util" points="([^"]*)""#)).map { match in
            (match.output[1].substring ?? "").split(separator: " ").count
        }
        // The daemon hands its GPU monitor's history to the pages (APIContext.gpuHistory).
        #expect(points.count == 6 && points.allSatisfy { $0 >= 3 }, "utilization points per GPU chart: \(points)")
        #expect(overviewDOM.contains(#"data-gpu-state="reserved""#) && overviewDOM.contains(#"data-gpu-state="free""#))

        // The live page: opened while the beams run; then they write their last line and end.
        // The dump comes once the event streams end (Chromium's virtual time stands still while
        // one is open): the daemon stops below.
        let liveConsole = temp.file("chrome-live.console")
        let liveDump = Task { try await Self.browser(base + casePath(live), ["--virtual-time-budget=8000", "--dump-dom"], userDataDir: temp.file("chrome-live"),
                                                     timeout: 120, console: liveConsole) }
        #expect(await eventually(within: 60) { Self.consoleLines(liveConsole).contains { $0.contains(" followed") } },
                "the page did not follow a log: \(Self.consoleLines(liveConsole))")
        try await Task.sleep(for: .seconds(1))
        FileManager.default.createFile(atPath: (control as NSString).appendingPathComponent("go"), contents: nil)
        #expect(try await eventually(within: 60) { try await store.caseSummary(live)?.status == .completed }, "case 1 did not complete")
        // The daemon stops once the page has seen COMPLETED and every log it followed has ended
        // (each stream sees the end at its next poll and sends `end`). A stream still open at the
        // stop closes without it, and the page waits to reconnect, still live: under the whole
        // suite's load the page caught up seconds after the case completed.
        let settled = await eventually(within: 60) {
            let page = Self.consoleLines(liveConsole)
            let followed = page.filter { $0.contains(" followed") }.count
            let over = page.filter { $0.contains(" ended") || $0.contains(" refused") }.count
            return page.contains { $0.hasPrefix("mqi-dashboard: case COMPLETED") } && followed > 0 && followed == over
        }
        try? FileManager.default.removeItem(atPath: (Self.artifacts as NSString).appendingPathComponent("console-case-live.console.txt"))
        try? FileManager.default.copyItem(atPath: liveConsole, toPath: (Self.artifacts as NSString).appendingPathComponent("console-case-live.console.txt"))
        #expect(settled, "the page did not settle: \(Self.consoleLines(liveConsole).map { $0.prefix(60) })")
        try await Task.sleep(for: .seconds(1))
        stop.fire()
        _ = try? await daemon.value
        stopped = true
        let liveDOM = try await liveDump.value
        try liveDOM.write(toFile: (Self.artifacts as NSString).appendingPathComponent("console-case-live.html"), atomically: true, encoding: .utf8)
        let pre = try #require(liveDOM.range(of: #"<pre class="log" id="log-tail""#).map { String(liveDOM[$0.lowerBound...]) })
        let logText = String(pre[..<(pre.range(of: "</pre>")?.lowerBound ?? pre.endIndex)])
        #expect(logText.contains("LIVE LINE beam"), "the line written after the page opened did not arrive: \(logText.suffix(600))")
        #expect((Int(Self.attribute("data-stream-lines", ofTag: #"<pre class="log" id="log-tail""#, in: liveDOM) ?? "") ?? 0) > 0)
        #expect(Self.attribute("data-live", ofTag: #"<pre class="log" id="log-tail""#, in: liveDOM) == "false",
                "the stream ended with the attempt; the page: \(Self.consoleLines(liveConsole).map { $0.prefix(60) }); the daemon: \(logs.all.filter { $0.message.contains("stream") }.map(\.message))")
        print("console screenshots: \([listPNG, livePNG, attemptPNG, failedPNG, gpuPNG].joined(separator: " "))")
    }

    /// The GPU panel in a browser, fed the way the daemon feeds it: the GPU monitor polls the demo's
    /// stand-in nvidia-smi and records into `MQIMetrics.gpuHistory`, which the pages draw.
    @Test(.enabled(if: chromium != nil, "chromium is not installed (scripts/test installs it): the dashboard browser test is skipped"),
          .timeLimit(.minutes(3)))
    func gpuPanelDrawsTheMonitorsReadings() async throws {
        let temp = try TemporaryDirectory("mqi-gpu-panel")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 0, gpus: [0, 1, 2, 3])
        let config = try ConfigLoader.load(path: site.configPath)
        let store = try Daemon.openStore(config)
        _ = try await store.reconcileGPUs(configured: [0, 1, 2, 3])
        // A case on the interpreter step holds a GPU.
        let conductor = Conductor(config: config)
        #expect(try await store.registerCase("CASE-GPU-HOLDER", workflow: "default_qa"))
        _ = try await store.conduct(.newCaseFound, caseId: "CASE-GPU-HOLDER", conductor: conductor)
        _ = try await store.conduct(.stepSucceeded(stepIndex: 0, attempt: 1), caseId: "CASE-GPU-HOLDER", conductor: conductor)
        let metrics = MQIMetrics()
        let monitor = GPUMonitor(config: config.gpuMonitor, runner: LocalCommandRunner(), store: store, conductor: conductor,
                                 metrics: metrics, logger: CapturedLogs().logger())
        // Readings every 0.5 s (the daemon's monitor: every gpu_monitor.interval_sec).
        for _ in 0..<8 {
            #expect(await monitor.poll()?.count == 4)
            try await Task.sleep(for: .milliseconds(500))
        }

        let api = APIContext(store: store, conductor: conductor, config: config, logger: CapturedLogs().logger(), gpuHistory: metrics.gpuHistory)
        let port = Mutex<Int?>(nil)
        let app = Application(router: HTTPServer.router(store: store, metrics: metrics, readiness: { [:] }, api: api),
                              configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { channel in port.withLock { $0 = channel.localAddress?.port } })
        let group = ServiceGroup(configuration: .init(services: [app], logger: CapturedLogs().logger()))
        let server = Task { try await group.run() }
        defer { server.cancel() }
        #expect(await eventually(within: 20) { port.withLock { $0 } != nil }, "the HTTP server did not start")
        let base = "http://127.0.0.1:\(try #require(port.withLock { $0 }))"
        let png = (Self.artifacts as NSString).appendingPathComponent("console-gpus-monitor.png")
        try? FileManager.default.removeItem(atPath: png)
        _ = try await Self.browser(base + "/", ["--screenshot=\(png)"], userDataDir: temp.file("chrome-shot"), size: "1280,1300")
        let dom = try await Self.browser(base + "/", ["--dump-dom"], userDataDir: temp.file("chrome-dom"))

        // A page left open draws the charts again every 30 s from /api/gpus/{id}/history (its console says so).
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(Self.chromium))
        process.arguments = ["--headless=new", "--no-sandbox", "--disable-gpu", "--user-data-dir=\(temp.file("chrome-open"))", "--window-size=1280,800",
                             "--enable-logging=stderr", "--v=0", "--remote-debugging-port=0", base + "/"]
        let console = temp.file("chrome.err")
        FileManager.default.createFile(atPath: console, contents: nil)
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: console))
        defer { try? err.close() }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = err
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        for _ in 0..<4 { _ = await monitor.poll() }
        func redrawn() -> String? {
            let text = (try? String(contentsOfFile: console, encoding: .utf8)) ?? ""
            guard let range = text.range(of: "GPU charts redrawn: ") else { return nil }
            return String(text[range.upperBound...].prefix { $0 == "," || $0.isNumber })
        }
        #expect(await eventually(within: 45) { redrawn() != nil }, "the open page did not draw its charts again")
        #expect(redrawn() == "12,12,12,12", "readings per GPU in the redraw: \(redrawn() ?? "none")")
        process.terminate()
        await group.triggerGracefulShutdown()
        _ = try? await server.value
        #expect(FileManager.default.fileExists(atPath: png))
        let charts = dom.matches(of: try Regex(#"class="spark-util" points="([^"]*)""#)).map { ($0.output[1].substring ?? "").split(separator: " ").count }
        #expect(charts == [8, 8, 8, 8], "utilization points per GPU: \(charts)")
        #expect(dom.contains(#"data-points="8""#))
        #expect(dom.contains("CASE-GPU-HOLDER") && dom.contains(#"data-gpu-state="reserved""#), "the holder is shown")
        print("GPU panel screenshot: \(png)")
    }

    /// A browser left open on the overview (real time: no dump, no virtual time) sees the daemon go
    /// away and come back on the same port; the page's console says so.
    @Test(.enabled(if: chromium != nil, "chromium is not installed (scripts/test installs it): the dashboard browser test is skipped"),
          .timeLimit(.minutes(4)))
    func dashboardReconnectsWhenTheDaemonReturns() async throws {
        let temp = try TemporaryDirectory("mqi-dash-rc")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 1)
        var config = try ConfigLoader.load(path: site.configPath)

        var restarting = false
        // The port may still be held for a moment (the stopped daemon's listener closing, or,
        // for the first pick, anything else on this machine): try again for a while.
        func start(_ config: Config) async throws -> (Task<Void, any Error>, Int, OneShot) {
            var config = config
            let deadline = Date().addingTimeInterval(30)
            while true {
                do {
                    return try await startOnce(config)
                } catch let error as TestSupportError where "\(error)".contains("Address already in use") && Date() < deadline {
                    try await Task.sleep(for: .milliseconds(500))
                    if !restarting { config.metrics.port = 20_000 + Int.random(in: 0..<9_000) }
                }
            }
        }
        func startOnce(_ config: Config) async throws -> (Task<Void, any Error>, Int, OneShot) {
            let port = Mutex<Int?>(nil)
            let failure = Mutex<String?>(nil)
            let stop = OneShot()
            var server = Daemon(config: config, logger: CapturedLogs().logger(level: .info), onListening: { bound in port.withLock { $0 = bound } })
            server.shutdown = stop
            let task = Task { [server] in
                do {
                    try await server.run()
                } catch {
                    failure.withLock { $0 = "\(error)" }
                    throw error
                }
            }
            // Generous: this test shares 2 cores with the rest of the suite.
            guard await eventually(within: 90, { port.withLock { $0 } != nil || failure.withLock { $0 } != nil }),
                  port.withLock({ $0 }) != nil else {
                stop.fire()
                throw TestSupportError("the daemon did not start listening: \(failure.withLock { $0 } ?? "no error, still starting")")
            }
            return (task, port.withLock { $0 }!, stop)
        }

        // A port below the ephemeral range (32768+), so no test that binds port 0 (sshd harness,
        // other daemons) can take it while this daemon is down.
        config.metrics.port = 20_000 + Int(getpid() % 9_000)
        let (first, port, firstStop) = try await start(config)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(Self.chromium))
        process.arguments = ["--headless=new", "--no-sandbox", "--disable-gpu", "--user-data-dir=\(temp.file("chrome"))", "--window-size=1280,800",
                             "--enable-logging=stderr", "--v=0", "--remote-debugging-port=0", "http://127.0.0.1:\(port)/"]
        let console = temp.file("chrome.err")
        FileManager.default.createFile(atPath: console, contents: nil)
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: console))
        defer { try? err.close() }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = err
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        func lines() -> [String] { Self.consoleLines(console).map { String($0.prefix(60)) } }
        #expect(await eventually(within: 30) { lines().contains { $0.hasPrefix("mqi-dashboard: live") } }, "the page never connected: \(lines())")

        firstStop.fire()
        _ = try? await first.value
        #expect(await eventually(within: 20) { lines().contains { $0.contains("disconnected") } }, "the page did not notice: \(lines())")

        config.metrics.port = port
        restarting = true
        let (second, _, secondStop) = try await start(config)
        defer { secondStop.fire() }
        #expect(await eventually(within: 30) { lines().contains { $0.contains("recovered") } }, "the page did not reconnect: \(lines())")
        print("browser console: \(lines())")
        secondStop.fire()
        _ = try? await second.value
    }
}
