import Foundation
import Logging
@testable import MQIServices
import MQITestSupport
import Testing

/// `JSONLine` against its oracle: JSONSerialization with `[.sortedKeys, .withoutEscapingSlashes]`,
/// which is what `MQILogHandler` wrote each JSON record with before. Every line must be the same
/// bytes.
struct LogLineTests {
    static func oracle(_ object: [String: Any]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
    }

    static func written(_ object: [String: Logger.MetadataValue]) -> String {
        var line = JSONLine()
        line.appendObject(keys: Array(object.keys)) { line, key in line.appendMetadata(object[key]!) }
        return String(decoding: line.bytes, as: UTF8.self)
    }

    /// Every scalar below U+0080, and the awkward ones above.
    static let strings: [String] = {
        var strings = ["", " ", "plain", "\"", "\\", "/", "//", "\\/", "\"quoted\" and \\back\\slashed\\",
                       "a/b/c.dcm", "http://127.0.0.1:8000/metrics", "line\nbreak", "cr\rlf\r\n", "tab\there",
                       "\u{8}\u{c}\u{0}\u{1}\u{1f}\u{7f}", "é (NFC) e\u{301} (NFD)", "환자 ID 한글", "日本語のテキスト",
                       "emoji 🧪🔬 flag 🇰🇷 family 👨‍👩‍👧‍👦 skin 👍🏽", "\u{feff}BOM", "\u{2028}\u{2029}", "\u{fffd}",
                       "\u{10ffff}", "\u{d7ff}\u{e000}", "… \"x\" repeated 3 times in the last 10 min", "C:\\logs\\case 1",
                       String(repeating: "long/line\\with\"escapes\t", count: 200)]
        for value in 0..<0x80 { strings.append("<\(Character(Unicode.Scalar(UInt8(value))))>") }
        strings.append(String((0..<0x80).map { Character(Unicode.Scalar(UInt8($0))) }))
        return strings
    }()

    @Test(arguments: strings)
    func aStringIsWrittenAsJSONSerializationWritesIt(_ string: String) throws {
        #expect(Self.written(["value": .string(string), string: .string("key")]) == (try Self.oracle(["value": string, string: "key"])))
    }

    @Test
    func randomStringsAreWrittenAsJSONSerializationWritesThem() throws {
        var generator = SystemRandomNumberGenerator()
        let pool: [Unicode.Scalar] = (0..<0x80).map { Unicode.Scalar(UInt8($0)) } + ["é", "\u{301}", "ß", "İ", "한", "🧪", "\u{200d}", "\u{fe0f}", "\u{7ff}", "\u{10000}"]
        for _ in 0..<2000 {
            var string = String.UnicodeScalarView()
            for _ in 0..<Int.random(in: 0..<40, using: &generator) { string.append(pool.randomElement(using: &generator)!) }
            let text = String(string)
            #expect(Self.written(["m": .string(text)]) == (try Self.oracle(["m": text])), "\(Array(text.unicodeScalars.map(\.value)))")
        }
    }

    /// Keys in Foundation's order (numeric, case-insensitive, locale-aware), nested objects and
    /// arrays included.
    @Test
    func keysAreInJSONSerializationsOrder() throws {
        let keys = ["case_id", "caseId", "case.id", "case-id", "case id", "Case_ID", "CASE", "case", "case2", "case10", "case1",
                    "gpu_id", "gpu", "GPU", "a", "A", "b", "B", "_", "_x", "x_", "0", "00", "1", "10", "9", "a1b2", "a01b",
                    "a1b10", "lineno", "funcName", "funcname", "logger_name", "loggerName", "step.name", "step_name",
                    "é", "e", "f", "Z", "z", "ä", "한", "🧪", "", "-", ".", "/", "~", "é", "a b"]
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            let chosen = Array(Set(keys.shuffled(using: &generator).prefix(Int.random(in: 1...12, using: &generator))))
            var object: [String: Logger.MetadataValue] = [:]
            var oracle: [String: Any] = [:]
            for (index, key) in chosen.enumerated() {
                object[key] = .string("\(index)")
                oracle[key] = "\(index)"
            }
            #expect(Self.written(object) == (try Self.oracle(oracle)))
        }
        let nested: [String: Logger.MetadataValue] = [
            "list": .array([.string("a/b"), .stringConvertible(42), .array([]), .dictionary([:]), .dictionary(["z": "1", "A": "2", "a10": "3", "a9": "4"])]),
            "dict": .dictionary(["inner": .dictionary(["k\n": .array([.string("\"")])]), "Inner": .string("x")]),
            "empty": .array([]),
        ]
        #expect(Self.written(nested) == (try Self.oracle(nested.mapValues(MQILogHandler.json))))
    }

    @Test(arguments: [0, 1, 9, 10, 42, 99, 100, 12345, -1, -10, Int.max, Int.min])
    func integersAreWrittenAsJSONSerializationWritesThem(_ value: Int) throws {
        var line = JSONLine()
        line.appendObject(keys: ["n"]) { line, _ in line.appendInteger(value) }
        #expect(String(decoding: line.bytes, as: UTF8.self) == (try Self.oracle(["n": value])))
    }

    /// The handler's whole record: the same bytes as the previous JSONSerialization code for the
    /// same event (its timestamp taken from the line).
    @Test
    func theHandlersRecordsAreTheSameBytesAsBefore() throws {
        let temp = try TemporaryDirectory("mqi-logline")
        defer { temp.remove() }
        let path = temp.file("log")
        FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try #require(FileHandle(forWritingAtPath: path))
        defer { try? handle.close() }
        let sink = LogSink(handle)
        var logger = Logger(label: "mqi.test/é") { label in MQILogHandler(label: label, level: .trace, format: .json, sink: sink) }
        logger[metadataKey: "instance"] = "site-1"
        logger[metadataKey: "message"] = "metadata that a fixed field hides"
        let cases: [(String, Logger.Metadata)] = Self.strings.map { ($0, ["case_id": .string($0)]) } + [
            ("upload_case: 12 files, 345 bytes in 0.12 s", ["case_id": "CASE/1", "gpu_id": .stringConvertible(3), "step.name": "moqui"]),
            ("nested", ["list": .array(["a", .dictionary(["b": "c\"d"])]), "Level": "x", "lineNo": "y", "timestamp2": "z"]),
            ("", [:]),
        ]
        for (message, metadata) in cases { logger.warning("\(message)", metadata: metadata) }
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        try #require(lines.count == cases.count)
        for ((message, metadata), line) in zip(cases, lines) {
            let parsed = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            var object: [String: Any] = [
                "timestamp": try #require(parsed["timestamp"] as? String),
                "level": "WARNING",
                "message": message,
                "logger_name": "mqi.test/é",
                "module": try #require(parsed["module"] as? String),
                "funcName": try #require(parsed["funcName"] as? String),
                "lineno": try #require(parsed["lineno"] as? Int),
            ]
            var merged = logger.handler.metadata
            merged.merge(metadata) { $1 }
            for (key, value) in merged where object[key] == nil { object[key] = MQILogHandler.json(value) }
            #expect(String(line) == (try Self.oracle(object)))
        }
    }
}
