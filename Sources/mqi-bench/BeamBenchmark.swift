import Foundation
import MQICore
import MQIServices
import MQIStore

/// Section 6: a case's delivered beams on their own GPUs (`for_each: beam`) against the same case
/// run by one whole-case step that covers its beams one after another on one GPU. Both run the
/// real daemon in-process (local transport, `gpu_monitor` off, metrics port 0, `case_layout: moqui`)
/// on a 4-beam case written by `DemoSite.writeCase`, with a stand-in simulation that takes a
/// fixed time per beam; the variants alternate, each round on a fresh site and daemon.
enum BeamBenchmark {
    enum Variant: String { case wholeCase = "whole-case", perBeam = "for_each: beam" }

    /// One round's figures, in seconds (epoch times from `case_events`, `cases` and the ledger).
    struct Round {
        var variant: Variant
        /// The upload-completed event (the first event that moves the case to the simulation step) → COMPLETED.
        var uploadToCompleted: Double
        /// First simulation start → last simulation end (the ledger the stand-in writes).
        var simulationSpan: Double
        /// Last beam start − first beam start.
        var startSpread: Double
        /// Distinct GPUs the simulation ran on.
        var gpusUsed: Int
        var beamsRun: Int
    }

    static func run(beams: Int = 4, gpus: Int = 4, secondsPerBeam: Double = 1, rounds: Int, keep: Bool) async throws -> [Figure] {
        let section = "6. Beam runs (\(beams)-beam case, simulation \(fmt(secondsPerBeam)) s per beam, \(gpus) GPUs, median of \(rounds) rounds)"
        var results: [Round] = []
        for round in 1...rounds {
            for variant in (round % 2 == 1 ? [Variant.wholeCase, .perBeam] : [.perBeam, .wholeCase]) {
                progress("beams: round \(round)/\(rounds), \(variant.rawValue)")
                results.append(try await runOnce(variant, beams: beams, gpus: gpus, secondsPerBeam: secondsPerBeam, keep: keep))
            }
        }
        let whole = results.filter { $0.variant == .wholeCase }
        let perBeam = results.filter { $0.variant == .perBeam }
        func median(_ rounds: [Round], _ value: (Round) -> Double) -> Double? { percentile(rounds.map(value), 50) }
        let wholeTime = median(whole, \.uploadToCompleted)
        let beamTime = median(perBeam, \.uploadToCompleted)
        let ratio = wholeTime.flatMap { whole in beamTime.map { $0 / whole } }
        let ideal = 1 / Double(min(beams, gpus))
        let allRan = results.allSatisfy { $0.beamsRun == beams }
        return [
            .info(section, "whole-case step: upload-completed event -> COMPLETED", wholeTime, unit: "s",
                  note: "1 run, beams one after another on 1 GPU; sim span \(fmt(median(whole, \.simulationSpan) ?? 0)) s; "
                      + "rounds \(whole.map { fmt($0.uploadToCompleted) }.joined(separator: ", ")) s"),
            .info(section, "for_each: beam: upload-completed event -> COMPLETED", beamTime, unit: "s",
                  note: "\(beams) runs on \(perBeam.map(\.gpusUsed).min() ?? 0) GPUs; sim span \(fmt(median(perBeam, \.simulationSpan) ?? 0)) s; "
                      + "rounds \(perBeam.map { fmt($0.uploadToCompleted) }.joined(separator: ", ")) s"),
            .goal(section, "for_each: beam / whole-case (wall time, same run)", ratio, unit: "x", limit: 0.3,
                  baseline: "\(fmt(beamTime ?? 0)) s vs \(fmt(wholeTime ?? 0)) s; ideal \(fmt(ideal)) x",
                  note: allRan ? nil : "some round ran fewer than \(beams) beams"),
            .info(section, "for_each: beam: last beam start - first beam start", median(perBeam, \.startSpread).map { $0 * 1000 }, unit: "ms",
                  note: "max \(fmt((perBeam.map(\.startSpread).max() ?? 0) * 1000)) ms"),
            .info(section, "for_each: beam: overhead over one beam (COMPLETED - upload-completed - \(fmt(secondsPerBeam)) s)",
                  beamTime.map { ($0 - secondsPerBeam) * 1000 }, unit: "ms",
                  note: "whole-case: \(fmt(((wholeTime ?? 0) - Double(beams) * secondsPerBeam) * 1000)) ms over \(fmt(Double(beams) * secondsPerBeam)) s"),
        ]
    }

    static func runOnce(_ variant: Variant, beams: Int, gpus: Int, secondsPerBeam: Double, keep: Bool) async throws -> Round {
        let dir = try BenchDirectory(variant == .perBeam ? "beams-each" : "beams-whole")
        defer { if !keep { dir.remove() } }
        let ledger = dir.file("ledger.txt")
        FileManager.default.createFile(atPath: ledger, contents: nil)
        // sim.sh LEDGER CASE BEAMS(comma-separated) GPU SECONDS OUT: each beam takes SECONDS, one after another.
        let script = dir.file("sim.sh")
        try """
            #!/bin/sh
            for beam in $(echo "$3" | tr ',' ' '); do
              echo "$2 $beam start $(date +%s%N) $4" >> "$1"
              sleep "$5"
              mkdir -p "$6" && echo "dose of beam $beam" > "$6/dose_beam_$beam.txt"
              echo "$2 $beam end $(date +%s%N) $4" >> "$1"
            done
            echo "Total execution time: done"

            """.write(toFile: script, atomically: true, encoding: .utf8)
        let beamsArgument = variant == .perBeam ? "{beam_number}" : "{beam_numbers}"
        let command = "/bin/sh \(ShellQuote.quote(script)) \(ShellQuote.quote(ledger)) {case_id} \(beamsArgument) {gpu_id} \(fmt(secondsPerBeam)) {result_dir}"
        let text = """
            scanner: { local_logdata: ./data, ready_marker: _CASE_READY, case_layout: moqui, rescan_interval_sec: 30 }
            state: { database: ./var/mqi.sqlite, pid_file: ./var/mqi.pid, logs_dir: ./var/logs }
            hpc: { transport: local, gpus: [\((0..<gpus).map(String.init).joined(separator: ", "))] }
            conductor:
              remote_paths: { upload_dir: ./hpc/upload, download_dir: ./hpc/download }
              results_dir: ./var/results
            workflows:
              default_qa:
                - { name: upload_case_files, type: upload, progress: 10 }
                - name: run_moqui_sim
                  type: execute
                  gpus: 1\(variant == .perBeam ? "\n      for_each: beam" : "")
                  progress: 30
                  timeout_sec: 600
                  success_pattern: 'Total execution time:'
                - { name: download_results, type: download, progress: 90 }
            remote_commands:
              run_moqui_sim: \(yamlQuote(command))
            retry: { max_attempts: 3, initial_delay_sec: 0.1, max_delay_sec: 1, multiplier: 2 }
            metrics: { port: 0 }
            gpu_monitor: { enabled: false }

            """
        try text.write(toFile: dir.file("config.yaml"), atomically: true, encoding: .utf8)
        let config = try ConfigLoader.parse(text, file: dir.file("config.yaml"), baseDirectory: dir.path)
        try FileManager.default.createDirectory(atPath: config.scanner.localLogdata, withIntermediateDirectories: true)
        let caseId = "BEAMS01_STUDY"
        try DemoSite.writeCase(named: caseId, in: config.scanner.localLogdata, beams: beams)

        let daemon = Daemon(config: config, logger: fileLogger(dir.file("daemon.log")), exitWhenIdle: true)
        try await daemon.run()
        let store = try Daemon.openStore(config)
        guard let times = try await store.benchCaseTimes()[caseId] else {
            throw BenchError("beams (\(variant.rawValue)): the case was not registered; see \(dir.file("daemon.log"))")
        }
        guard times.status == CaseStatus.completed.rawValue, let finished = times.finished?.timeIntervalSince1970 else {
            throw BenchError("beams (\(variant.rawValue)): the case ended \(times.status), not COMPLETED; see \(dir.file("daemon.log"))")
        }
        let events = try await store.benchEvents()
        guard let uploaded = events.first(where: { $0.caseId == caseId && $0.step == "run_moqui_sim" })?.at.timeIntervalSince1970 else {
            throw BenchError("beams (\(variant.rawValue)): no event moved the case to the simulation step; see \(dir.file("daemon.log"))")
        }
        // The stand-in's ledger: CASE BEAM start|end NS GPU.
        var starts: [Double] = [], ends: [Double] = [], gpusUsed = Set<String>(), beamsRun = Set<String>()
        for line in ((try? String(contentsOfFile: ledger, encoding: .utf8)) ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 5, let ns = Double(parts[3]) else { continue }
            if parts[2] == "start" {
                starts.append(ns / 1e9)
                gpusUsed.insert(String(parts[4]))
            } else if parts[2] == "end" {
                ends.append(ns / 1e9)
                beamsRun.insert(String(parts[1]))
            }
        }
        return Round(variant: variant, uploadToCompleted: finished - uploaded,
                     simulationSpan: (ends.max() ?? 0) - (starts.min() ?? 0),
                     startSpread: (starts.max() ?? 0) - (starts.min() ?? 0),
                     gpusUsed: gpusUsed.count, beamsRun: beamsRun.count)
    }
}
