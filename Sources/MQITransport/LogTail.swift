import Foundation

/// Reads the end of a log file without loading all of it.
public enum LogTail {
    /// The last `count` lines of the file, reading at most `maxBytes` from its end (a partial
    /// first line is dropped when the read starts mid-file); nil if the file cannot be read.
    public static func lines(of path: String, count: Int, maxBytes: Int = 256 * 1024) -> [String]? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        let start = size > UInt64(maxBytes) ? size - UInt64(maxBytes) : 0
        try? handle.seek(toOffset: start)
        let data = (try? handle.readToEnd()) ?? Data()
        var lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        if start > 0, !lines.isEmpty { lines.removeFirst() }
        return Array(lines.suffix(count))
    }

    /// The last `count` lines as one text ("" if the file cannot be read), for failure reasons.
    public static func lastLines(of path: String, count: Int, maxBytes: Int = 8192) -> String {
        (lines(of: path, count: count, maxBytes: maxBytes) ?? []).joined(separator: "\n")
    }
}
