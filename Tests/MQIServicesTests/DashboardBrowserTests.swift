import Foundation
import Logging
import MQICore
import MQIStore
import MQITransport
import MQITestSupport
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
    static func browser(_ url: String, _ mode: [String], userDataDir: String, size: String = "1280,800", timeout: Double = 60) async throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try #require(chromium))
        process.arguments = ["--headless=new", "--no-sandbox", "--disable-gpu", "--user-data-dir=\(userDataDir)", "--window-size=\(size)",
                             "--hide-scrollbars"] + mode + [url]
        let outPath = userDataDir + ".out"
        FileManager.default.createFile(atPath: outPath, contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        defer { try? out.close() }
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        if process.isRunning {
            process.terminate()
            Issue.record("chromium did not finish within \(timeout) s: \(mode) \(url)")
        }
        return (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
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

    /// A browser left open on the overview (real time: no dump, no virtual time) sees the daemon go
    /// away and come back on the same port; the page's console says so.
    @Test(.enabled(if: chromium != nil, "chromium is not installed (scripts/test installs it): the dashboard browser test is skipped"),
          .timeLimit(.minutes(2)))
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
        func lines() -> [String] {
            ((try? String(contentsOfFile: console, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
                line.range(of: "mqi-dashboard: ").map { String(line[$0.lowerBound...].prefix(60)) }
            }
        }
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
