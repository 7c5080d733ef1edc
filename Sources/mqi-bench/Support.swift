import Foundation
import Logging
import MQICore
import MQIServices
#if canImport(Glibc)
import Glibc
#endif

/// One measured figure with its goal.
struct Figure: Codable, Sendable {
    enum Verdict: String, Codable, Sendable { case pass = "PASS", miss = "MISS", info = "INFO", notAvailable = "N/A" }

    var section: String
    var name: String
    var value: Double?
    var unit: String
    /// e.g. "<= 10 ms"; empty for figures without a goal.
    var goal: String
    var verdict: Verdict
    /// A baseline measured in the same run (or a published one), as "ratio x baseline".
    var baseline: String?
    var note: String?

    /// A figure with a goal `value <= limit` (or `>=` when `atLeast`).
    static func goal(_ section: String, _ name: String, _ value: Double?, unit: String, limit: Double, atLeast: Bool = false,
                     baseline: String? = nil, note: String? = nil) -> Figure {
        guard let value else {
            return Figure(section: section, name: name, value: nil, unit: unit, goal: "\(atLeast ? ">=" : "<=") \(fmt(limit)) \(unit)",
                          verdict: .notAvailable, baseline: baseline, note: note)
        }
        let ok = atLeast ? value >= limit : value <= limit
        return Figure(section: section, name: name, value: value, unit: unit, goal: "\(atLeast ? ">=" : "<=") \(fmt(limit)) \(unit)",
                      verdict: ok ? .pass : .miss, baseline: baseline, note: note)
    }

    static func info(_ section: String, _ name: String, _ value: Double?, unit: String, baseline: String? = nil, note: String? = nil) -> Figure {
        Figure(section: section, name: name, value: value, unit: unit, goal: "", verdict: value == nil ? .notAvailable : .info,
               baseline: baseline, note: note)
    }

    static func notAvailable(_ section: String, _ name: String, unit: String, goal: String, note: String) -> Figure {
        Figure(section: section, name: name, value: nil, unit: unit, goal: goal, verdict: .notAvailable, baseline: nil, note: note)
    }
}

func fmt(_ value: Double) -> String {
    if value == value.rounded(), abs(value) < 1e9 { return String(Int(value)) }
    if abs(value) >= 100 { return String(format: "%.0f", value) }
    if abs(value) >= 10 { return String(format: "%.1f", value) }
    if abs(value) >= 1 { return String(format: "%.2f", value) }
    return String(format: "%.3f", value)
}

/// Nearest-rank percentile of unsorted samples (p in 0...100).
func percentile(_ samples: [Double], _ p: Double) -> Double? {
    guard !samples.isEmpty else { return nil }
    let sorted = samples.sorted()
    let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
    return sorted[min(sorted.count - 1, max(0, rank - 1))]
}

/// Wall-clock seconds since the epoch (the clock `date +%s%N` and file mtimes use).
func nowEpoch() -> Double { Date().timeIntervalSince1970 }

/// A file's modification time in seconds since the epoch, with nanoseconds.
func mtime(_ path: String) -> Double? {
    var info = stat()
    guard stat(path, &info) == 0 else { return nil }
    return Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9
}

/// A fresh directory under the temp dir, removed by `remove()`.
struct BenchDirectory {
    let path: String

    init(_ name: String) throws {
        var template = Array((NSTemporaryDirectory() as NSString).appendingPathComponent("mqi-bench-\(name)-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw BenchError("cannot create a temporary directory") }
        path = String(cString: made)
    }

    func file(_ relative: String) -> String { (path as NSString).appendingPathComponent(relative) }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The bench site's config: the default 4-step workflow on the local transport.
func benchConfigText(gpus: Int, interpreter: String, simulation: String, rescanSec: Double = 30) -> String {
    """
    scanner: { local_logdata: ./data, ready_marker: _CASE_READY, rescan_interval_sec: \(fmt(rescanSec)) }
    state: { database: ./var/mqi.sqlite, pid_file: ./var/mqi.pid, logs_dir: ./var/logs }
    hpc: { transport: local, gpus: [\((0..<gpus).map(String.init).joined(separator: ", "))] }
    conductor:
      remote_paths: { upload_dir: ./hpc/upload, download_dir: ./hpc/download }
      results_dir: ./var/results
    workflows:
      default_qa:
        - { name: upload_case_files, type: upload,   progress: 10 }
        - { name: run_interpreter,   type: execute,  progress: 30 }
        - { name: run_moqui_sim,     type: execute,  progress: 70, timeout_sec: 600 }
        - { name: download_results,  type: download, progress: 90 }
    remote_commands:
      run_interpreter: \(yamlQuote(interpreter))
      run_moqui_sim: \(yamlQuote(simulation))
    retry: { max_attempts: 3, initial_delay_sec: 0.1, max_delay_sec: 1, multiplier: 2 }
    metrics: { port: 0 }
    gpu_monitor: { enabled: false }

    """
}

func yamlQuote(_ text: String) -> String {
    "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
}

/// A step command that appends `STEP CASE GPU START_NS` to `ledger` when it starts, runs `tail`,
/// and appends `STEP.end CASE GPU END_NS` as its last act (file mtimes are only as fine as the
/// kernel's tick, 4 ms here, so the command reports its own end).
func ledgerCommand(step: String, ledger: String, tail: String = "") -> String {
    let file = ShellQuote.quote(ledger)
    return "echo \(step) {case_id} {gpu_id} $(date +%s%N) >> \(file); " + (tail.isEmpty ? "" : "\(tail); ")
        + "echo \(step).end {case_id} {gpu_id} $(date +%s%N) >> \(file)"
}

/// One line of the ledger.
struct LedgerEntry {
    var step: String
    var caseId: String
    var gpu: Int
    var start: Double
}

func readLedger(_ path: String) -> [LedgerEntry] {
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    return text.split(separator: "\n").compactMap { line in
        let parts = line.split(separator: " ")
        guard parts.count == 4, let gpu = Int(parts[2]), let ns = Double(parts[3]) else { return nil }
        return LedgerEntry(step: String(parts[0]), caseId: String(parts[1]), gpu: gpu, start: ns / 1e9)
    }
}

/// When each (step, case) command ended, from the `.end` lines of the ledger.
func ledgerEnds(_ entries: [LedgerEntry]) -> [String: Double] {
    var ends: [String: Double] = [:]
    for entry in entries where entry.step.hasSuffix(".end") {
        ends[String(entry.step.dropLast(4)) + " " + entry.caseId] = entry.start
    }
    return ends
}

/// When step `step` of `caseId` ended: the mtime of its run directory's `exit_code` (written by
/// the executor's wrapper the moment the command exits). Takes the last attempt.
func stepEnd(uploadDir: String, caseId: String, step: String) -> Double? {
    let mqi = [uploadDir, caseId, ".mqi"].reduce("") { ($0 as NSString).appendingPathComponent($1) }
    let runs = ((try? FileManager.default.contentsOfDirectory(atPath: mqi)) ?? []).filter { $0.hasPrefix(step + ".") }.sorted()
    guard let last = runs.last else { return nil }
    return mtime((mqi as NSString).appendingPathComponent(last + "/exit_code"))
}

/// A logger that writes the daemon's JSON lines to a file (never to the bench's stdout).
func fileLogger(_ path: String, label: String = "mqi") -> Logger {
    FileManager.default.createFile(atPath: path, contents: nil)
    let handle = FileHandle(forWritingAtPath: path) ?? FileHandle.nullDevice
    let sink = LogSink(handle)
    return Logger(label: label) { label in MQILogHandler(label: label, level: .info, format: .json, sink: sink) }
}

/// Minimal HTTP/1.1 GET to 127.0.0.1 (no FoundationNetworking needed). Returns status and body.
func httpGet(port: Int, path: String, timeoutSec: Int = 5) -> (status: Int, body: String)? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var timeout = timeval(tv_sec: timeoutSec, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { return nil }
    let request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    let sent = request.utf8CString.withUnsafeBufferPointer { send(fd, $0.baseAddress, $0.count - 1, 0) }
    guard sent > 0 else { return nil }
    var data = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { break }
        data.append(contentsOf: buffer[0..<n])
    }
    let text = String(decoding: data, as: UTF8.self)
    guard let firstLine = text.split(separator: "\r\n", maxSplits: 1).first else { return nil }
    let fields = firstLine.split(separator: " ")
    guard fields.count >= 2, let status = Int(fields[1]) else { return nil }
    let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
    return (status, body)
}

/// Runs a program to its end with output into `outputPath` (or discarded; standard error too
/// with `errorsToOutput`, else discarded), in `directory` when given; returns the wall seconds
/// from the spawn to the child's exit, its exit status (128 + the signal that ended it) and the
/// CPU seconds (user + system) it and the children it waited for used, which, unlike the wall,
/// other work on the machine hardly changes.
///
/// `posix_spawn` and a blocking `waitpid`, not `Process`: Foundation's `waitUntilExit` on
/// Linux polls its run loop in 50 ms slices, so every wall it measured was rounded up to the
/// next 50 ms (a 9 ms `sqlite3` read as 51 ms).
func timedRun(_ executable: String, _ arguments: [String], outputPath: String? = nil, errorsToOutput: Bool = false,
              append: Bool = false, directory: String? = nil) throws -> (seconds: Double, status: Int32, cpuSeconds: Double) {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outputPath ?? "/dev/null", O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0o644)
    if errorsToOutput, outputPath != nil {
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
    } else {
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    }
    if let directory {
        // glibc 2.29+; Swift's Glibc module does not import it.
        typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
        guard let symbol = dlsym(nil, "posix_spawn_file_actions_addchdir_np") else {
            throw BenchError("this C library has no posix_spawn_file_actions_addchdir_np (glibc 2.29 or later needed)")
        }
        _ = unsafeBitCast(symbol, to: AddChdir.self)(&actions, directory)
    }
    // The child starts with no signal blocked and every handler at its default, whatever the
    // calling thread had.
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    var allSignals = sigset_t()
    sigfillset(&allSignals)
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    posix_spawnattr_setsigdefault(&attributes, &allSignals)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid = pid_t()
    let started = nowEpoch()
    let spawned = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
    guard spawned == 0 else { throw BenchError("cannot start \(executable): \(String(cString: strerror(spawned)))") }
    var status: Int32 = 0
    var usage = rusage()
    while wait4(pid, &status, 0, &usage) < 0 {
        guard errno == EINTR else { throw BenchError("wait4 \(pid): \(String(cString: strerror(errno)))") }
    }
    let seconds = nowEpoch() - started
    let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    return (seconds, status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f), cpu)
}

/// `VmHWM` (peak resident set) of a process, in MB.
func peakRSSMB(_ pid: Int32) -> Double? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kb = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap { Double($0) }
        return kb.map { $0 / 1024 }
    }
    return nil
}

func progress(_ text: String) {
    FileHandle.standardError.write(Data(("mqi-bench: " + text + "\n").utf8))
}
