import Foundation
import Logging
import MQIServices
import MQITestSupport
import Synchronization
import Testing

/// `MQILogHandler` writing into a `LogSink` over a temp file. Loggers are made with
/// `Logger(label:factory:)`; nothing here bootstraps the global LoggingSystem.
struct LogHandlerTests {
    /// A log file in a fresh temp dir and loggers writing into it.
    final class LogFile {
        let temp: TemporaryDirectory
        let path: String
        let sink: LogSink
        let handle: FileHandle

        init() throws {
            temp = try TemporaryDirectory("mqi-log")
            path = temp.file("mqi.log")
            FileManager.default.createFile(atPath: path, contents: nil)
            handle = try #require(FileHandle(forWritingAtPath: path))
            sink = LogSink(handle)
        }

        func logger(_ label: String = "mqi.test", level: Logger.Level = .trace, format: LogFormat = .json, repeats: RepeatFilter? = nil) -> Logger {
            let sink = sink
            return Logger(label: label) { label in MQILogHandler(label: label, level: level, format: format, sink: sink, repeats: repeats) }
        }

        var text: String {
            (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        }

        /// Lines as written (the file ends with a newline, so the last piece is empty).
        var lines: [String] {
            var pieces = text.components(separatedBy: "\n")
            if pieces.last == "" { pieces.removeLast() }
            return pieces
        }

        func objects() throws -> [[String: Any]] {
            try lines.map { line in
                let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
                return try #require(object as? [String: Any], "not a JSON object: \(line.prefix(200))")
            }
        }

        func remove() {
            try? handle.close()
            temp.remove()
        }
    }

    /// A clock the test moves by hand.
    final class TestClock: Sendable {
        private let current = Mutex(Date(timeIntervalSince1970: 1_750_000_000))
        var now: Date { current.withLock { $0 } }
        func advance(_ seconds: TimeInterval) { current.withLock { $0 = $0.addingTimeInterval(seconds) } }
    }

    static func isTimestamp(_ text: String) -> Bool {
        text.wholeMatch(of: #/\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/#) != nil
    }

    @Test func jsonLineHasEveryRequiredFieldAndMetadataAtTopLevel() throws {
        let log = try LogFile()
        defer { log.remove() }
        var logger = log.logger("mqi.conductor")
        logger[metadataKey: "correlation_id"] = "msg-4711"
        let before = Date()
        let line = #line + 1
        logger.warning("step run_moqui_sim failed", metadata: [
            "case_id": "DEMO-001_1.2.840.113619.2.55.3.1", "step": "run_moqui_sim", "attempt": "2", "gpu_id": "1",
        ])
        let after = Date()

        let objects = try log.objects()
        #expect(objects.count == 1)
        let object = try #require(objects.first)
        #expect(object["level"] as? String == "WARNING")
        #expect(object["message"] as? String == "step run_moqui_sim failed")
        #expect(object["logger_name"] as? String == "mqi.conductor")
        #expect(object["module"] as? String == "MQIServicesTests")
        #expect(object["funcName"] as? String == "jsonLineHasEveryRequiredFieldAndMetadataAtTopLevel()")
        #expect(object["lineno"] as? Int == line)
        #expect(object["case_id"] as? String == "DEMO-001_1.2.840.113619.2.55.3.1")
        #expect(object["step"] as? String == "run_moqui_sim")
        #expect("\(object["attempt"] ?? "")" == "2")
        #expect("\(object["gpu_id"] ?? "")" == "1")
        #expect(object["correlation_id"] as? String == "msg-4711")

        let timestamp = try #require(object["timestamp"] as? String)
        #expect(Self.isTimestamp(timestamp), "\(timestamp)")
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        formatter.timeZone = TimeZone(identifier: "UTC")
        let parsed = try #require(formatter.date(from: timestamp), "\(timestamp) is not ISO-8601")
        #expect(parsed >= before.addingTimeInterval(-0.002) && parsed <= after.addingTimeInterval(0.002), "\(timestamp) vs \(before)…\(after)")
    }

    @Test(arguments: [Logger.Level.trace, .debug, .info, .notice, .warning, .error, .critical])
    func levelsAreUpperCaseNames(_ level: Logger.Level) throws {
        let log = try LogFile()
        defer { log.remove() }
        log.logger().log(level: level, "a \(level) line")
        let object = try #require(try log.objects().first)
        #expect(object["level"] as? String == level.rawValue.uppercased())
    }

    @Test func recordsBelowTheLevelAreDropped() throws {
        let log = try LogFile()
        defer { log.remove() }
        let logger = log.logger(level: .info)
        logger.debug("not written")
        logger.trace("not written either")
        logger.info("written")
        #expect(try log.objects().map { $0["message"] as? String } == ["written"])
    }

    /// Messages an operator's log pipeline must survive: each is exactly one line of valid JSON
    /// and the message comes back exactly.
    static let hostileMessages: [String] = [
        #"quoted "case" name"#,
        #"C:\MOQUI\logs\case\n is a path, not a newline"#,
        "two\nlines",
        "windows\r\nline end",
        "lone carriage return\rhere",
        "tab\tseparated\tvalues",
        "a NUL \u{0} in the middle",
        "control \u{1}\u{7}\u{8}\u{B}\u{C}\u{1B}[31m characters\u{7F}",
        "unicode: Müller, 患者, Ωμέγα, \u{2028}line separator\u{2029}",
        "emoji 🧑‍⚕️🏥☢️ and a flag 🇨🇭",
        #"{"json":"inside"}"#,
        "</script><script>alert(1)</script>",
        "trailing backslash \\",
        "",
        String(repeating: "x\"y\\z\n", count: 100_000 / 6) + "end",
    ]

    @Test(arguments: hostileMessages.indices)
    func hostileMessageIsOneValidJSONLine(_ index: Int) throws {
        let message = Self.hostileMessages[index]
        let log = try LogFile()
        defer { log.remove() }
        log.logger().error("\(message)", metadata: ["case_id": "\(message)", "nested": ["k": "\(message)"], "list": ["a", "\(message)"]])
        let lines = log.lines
        #expect(lines.count == 1, "message \(index) became \(lines.count) lines")
        let object = try #require(try log.objects().first)
        #expect(object["message"] as? String == message, "message \(index) did not round-trip")
        #expect(object["case_id"] as? String == message)
        #expect((object["nested"] as? [String: Any])?["k"] as? String == message)
        #expect((object["list"] as? [Any])?.last as? String == message)
    }

    /// Many tasks logging at once never interleave lines.
    @Test func concurrentWritersNeverInterleave() async throws {
        let log = try LogFile()
        defer { log.remove() }
        let logger = log.logger()
        let payload = String(repeating: "p", count: 5_000)
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<8 {
                group.addTask {
                    for n in 0..<50 { logger.info("task \(task) line \(n) \(payload)", metadata: ["case_id": "case-\(task)"]) }
                }
            }
        }
        let objects = try log.objects()
        #expect(objects.count == 400)
        #expect(objects.allSatisfy { ($0["message"] as? String)?.hasSuffix(payload) == true })
    }

    @Test func textFormatIsOneCompactLine() throws {
        let log = try LogFile()
        defer { log.remove() }
        log.logger(format: .text).warning("upload_case failed", metadata: ["case_id": "DEMO-001", "attempt": "2"])
        let lines = log.lines
        #expect(lines.count == 1)
        let line = try #require(lines.first)
        #expect(line.hasSuffix("WARNING upload_case failed [attempt=2 case_id=DEMO-001]"), "\(line)")
        let timestamp = String(line.prefix { $0 != " " })
        #expect(Self.isTimestamp(timestamp), "\(line)")
        #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) == nil, "text format is not JSON")
    }

    /// A multi-line message (a command's output in an error) must not forge extra log lines in the
    /// text format either.
    @Test func textFormatKeepsAMultiLineMessageOnOneLine() throws {
        let log = try LogFile()
        defer { log.remove() }
        log.logger(format: .text).error("run_moqui_sim failed:\nFATAL ERROR: CUDA error\r\n2025-01-01T00:00:00.000Z INFO case completed", metadata: ["case_id": "a\nb"])
        #expect(log.lines.count == 1, "\(log.lines)")
    }

    // MARK: - repeats

    @Test func repeatedWarningIsSummarisedAfterTheWindow() throws {
        let log = try LogFile()
        defer { log.remove() }
        let clock = TestClock()
        let logger = log.logger(repeats: RepeatFilter(window: 600, now: { clock.now }))

        logger.warning("cannot reach hpc01: ssh exited 255 (attempt 1, retrying in 2.0 s)")
        #expect(log.lines.count == 1)
        for n in 0..<120 {
            clock.advance(4.9)  // 120 × 4.9 s = 588 s, all within the 10 min window
            logger.warning("cannot reach hpc01: ssh exited 255 (attempt \(n + 2), retrying in \(n % 7).\(n % 10) s)")
        }
        #expect(log.lines.count == 1, "repeats within the window are not written")

        clock.advance(15)  // 603 s after the first: the window is over
        logger.warning("cannot reach hpc01: ssh exited 255 (attempt 122, retrying in 60.0 s)")
        let objects = try log.objects()
        #expect(objects.count == 3)
        guard objects.count == 3 else { return }
        let summary = objects[1]["message"] as? String ?? ""
        #expect(summary.contains("repeated 120 times in the last 10 min"), "\(summary)")
        #expect(summary.contains("cannot reach hpc01"), "the summary says what was repeated: \(summary)")
        #expect(objects[1]["level"] as? String == "WARNING")
        #expect(objects[2]["message"] as? String == "cannot reach hpc01: ssh exited 255 (attempt 122, retrying in 60.0 s)")

        // A new window started with that line: 5 more repeats, then a summary of 5.
        for _ in 0..<5 {
            clock.advance(10)
            logger.warning("cannot reach hpc01: ssh exited 255 (attempt 123, retrying in 60.0 s)")
        }
        #expect(log.lines.count == 3)
        clock.advance(600)
        logger.warning("cannot reach hpc01: ssh exited 255 (attempt 129, retrying in 60.0 s)")
        let later = try log.objects()
        #expect(later.count == 5)
        #expect((later.dropLast().last?["message"] as? String)?.contains("repeated 5 times in the last 10 min") == true)
    }

    @Test func aWarningNotRepeatedWithinTheWindowIsJustWritten() throws {
        let log = try LogFile()
        defer { log.remove() }
        let clock = TestClock()
        let logger = log.logger(repeats: RepeatFilter(window: 600, now: { clock.now }))
        for attempt in 1...3 {
            logger.warning("hpc01 unreachable (attempt \(attempt))")
            clock.advance(601)
        }
        let messages = try log.objects().map { $0["message"] as? String ?? "" }
        #expect(messages == ["hpc01 unreachable (attempt 1)", "hpc01 unreachable (attempt 2)", "hpc01 unreachable (attempt 3)"])
    }

    @Test func differentMessagesAndLevelsAreCountedApart() throws {
        let log = try LogFile()
        defer { log.remove() }
        let clock = TestClock()
        let logger = log.logger(repeats: RepeatFilter(window: 600, now: { clock.now }))
        for _ in 0..<10 {
            logger.warning("cannot reach hpc01")
            logger.warning("disk almost full on /data")
            logger.error("cannot reach hpc01")
            clock.advance(1)
        }
        let messages = try log.objects().map { "\($0["level"] ?? ""): \($0["message"] ?? "")" }
        #expect(messages == ["WARNING: cannot reach hpc01", "WARNING: disk almost full on /data", "ERROR: cannot reach hpc01"])
    }

    @Test func infoLinesAreNeverSuppressed() throws {
        let log = try LogFile()
        defer { log.remove() }
        let clock = TestClock()
        let logger = log.logger(repeats: RepeatFilter(window: 600, now: { clock.now }))
        for n in 0..<200 {
            logger.info("case DEMO-\(n) completed")
            logger.notice("heartbeat")
            logger.debug("polling")
            clock.advance(0.5)
        }
        #expect(log.lines.count == 600)
    }

    @Test(arguments: [
        ("retry 3 in 1.2 s", "retry 4 in 0.7 s"),
        ("GPU 0 busy: 20000 MiB", "GPU 7 busy: 1 MiB"),
        ("case DEMO-001_1.2.840.113619.2.55.3.1 failed", "case DEMO-002_1.2.840.113619.2.55.3.2 failed"),
    ])
    func messagesDifferingOnlyInNumbersCountAsTheSame(_ first: String, _ second: String) {
        let clock = TestClock()
        let filter = RepeatFilter(window: 600, now: { clock.now })
        #expect(filter.check(.warning, first) == .write)
        #expect(filter.check(.warning, second) == .suppress)
        #expect(filter.check(.warning, "something else entirely") == .write)
        clock.advance(700)
        #expect(filter.check(.warning, first) == .writeAfterSummary(repeats: 1, minutes: 10))
    }

    /// The same failure message for two different cases (the case id is only in the metadata, as
    /// ConductorService logs "case failed: …") is two things an operator must see, not a repeat.
    @Test func sameMessageForDifferentCasesIsNotARepeat() throws {
        let log = try LogFile()
        defer { log.remove() }
        let clock = TestClock()
        let logger = log.logger(repeats: RepeatFilter(window: 600, now: { clock.now }))
        logger.error("case failed: run_moqui_sim failed: exit status 3", metadata: ["case_id": "DEMO-001"])
        clock.advance(30)
        logger.error("case failed: run_moqui_sim failed: exit status 3", metadata: ["case_id": "DEMO-002"])
        let written = try log.objects().compactMap { $0["case_id"] as? String }
        #expect(written == ["DEMO-001", "DEMO-002"])
    }
}
