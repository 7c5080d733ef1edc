import Foundation
import Logging
import MQIServices

// MARK: - 9. JSON log lines
//
// What one JSON log record costs the daemon: the handler (`MQILogHandler`, which writes each
// record directly) against the same record built as a dictionary and encoded by
// JSONSerialization (sorted keys, what the handler did before), in the same run, into /dev/null.
// CPU time of this thread (CLOCK_THREAD_CPUTIME_ID), so other processes do not count.
enum LogFigures {
    static let section = "9. JSON log lines (100,000 records into /dev/null, this thread's CPU)"

    static func run() throws -> [Figure] {
        guard let handle = FileHandle(forWritingAtPath: "/dev/null") else { throw BenchError("cannot open /dev/null") }
        defer { try? handle.close() }
        let sink = LogSink(handle)
        var logger = Logger(label: "mqi") { label in MQILogHandler(label: label, level: .info, format: .json, sink: sink) }
        logger[metadataKey: "instance"] = "site-1"
        let count = 100_000
        let message = "download_results: 12 files, 3456789 bytes in 0.12 s"
        var ours: [Double] = [], dictionary: [Double] = []
        // Three rounds in turns; the medians.
        for _ in 0..<3 {
            var started = threadCPU()
            for index in 0..<count {
                logger.info("\(message)", metadata: ["case_id": "CASE-\(index % 100)"])
            }
            ours.append(threadCPU() - started)
            started = threadCPU()
            for index in 0..<count {
                let object: [String: Any] = [
                    "timestamp": MQILogHandler.timestamp(Date()), "level": "INFO", "message": message,
                    "logger_name": "mqi", "module": "mqi_bench", "funcName": "run()", "lineno": 30,
                    "instance": "site-1", "case_id": "CASE-\(index % 100)",
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
                sink.write(String(decoding: data, as: UTF8.self))
            }
            dictionary.append(threadCPU() - started)
        }
        let perRecord = (percentile(ours, 50) ?? 0) / Double(count), before = (percentile(dictionary, 50) ?? 0) / Double(count)
        return [
            .info(section, "CPU per JSON log record (MQILogHandler)", perRecord * 1e6, unit: "us",
                  baseline: "\(fmt(perRecord / before)) x a dictionary through JSONSerialization (\(fmt(before * 1e6)) us), same run"),
        ]
    }

    static func threadCPU() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }
}
