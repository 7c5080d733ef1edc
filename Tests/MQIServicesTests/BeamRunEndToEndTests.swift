import Foundation
import MQICore
import MQIStore
import MQITransport
import MQITestSupport
import Testing
@testable import MQIServices

/// `for_each: beam` through the real `mqi` binary: one GPU run per delivered beam, in parallel,
/// each with its own attempt and outcome, against a real SQLite file and the local transport.
@Suite(.serialized)
struct BeamRunEndToEndTests {
    /// 4 GPUs; the simulation step runs once per beam. `sim.sh` logs `start`/`end`/`killed` per
    /// (case, beam) with nanosecond times, and fails as told by files in `faults/`.
    struct Site {
        let temp: TemporaryDirectory
        var config: String { temp.file("config.yaml") }
        var ledger: String { temp.file("ledger.txt") }

        init(gpus: Int = 4, seconds: Double = 2) throws {
            temp = try TemporaryDirectory("mqi-beams")
            let script = temp.file("sim.sh")
            try """
                #!/bin/sh
                # sim.sh LEDGER FAULTS CASE BEAM GPU OUT
                trap 'echo "$3 $4 killed $(date +%s%N) $5" >> "$1"; exit 143' TERM
                echo "$3 $4 start $(date +%s%N) $5" >> "$1"
                if [ -f "$2/retry-$4" ]; then rm -f "$2/retry-$4"; echo "No free GPU remains"; exit 1; fi
                if [ -f "$2/fatal-$4" ]; then echo "FATAL ERROR: beam $4"; sleep 1; exit 3; fi
                sleep \(seconds) &
                wait $!
                mkdir -p "$6" && echo "dose of beam $4" > "$6/dose_beam_$4.txt"
                echo "Total execution time: \(seconds) s"
                echo "$3 $4 end $(date +%s%N) $5" >> "$1"
                """.write(toFile: script, atomically: true, encoding: .utf8)
            try FileManager.default.createDirectory(atPath: temp.file("faults"), withIntermediateDirectories: true)
            let command = "/bin/sh \(ShellQuote.quote(script)) \(ShellQuote.quote(ledger)) \(ShellQuote.quote(temp.file("faults"))) {case_id} {beam_number} {gpu_id} {result_dir}"
            let simKeys = "timeout_sec: 120, for_each: beam, gpus: 1, failure_patterns: ['FATAL ERROR'], success_pattern: 'Total execution time:', "
                + "retryable_patterns: ['No free GPU remains'], max_step_retries: 1"
            try SampleConfigs.localSite(simCommand: command, simKeys: simKeys, scanner: "case_layout: moqui, rescan_interval_sec: 5", gpus: Array(0..<gpus),
                                        retryAttempts: 5).write(toFile: config, atomically: true, encoding: .utf8)
            try FileManager.default.createDirectory(atPath: temp.file("data"), withIntermediateDirectories: true)
        }

        func addCase(_ name: String, beams: Int) throws {
            try DemoSite.writeCase(named: name, in: temp.file("data"), beams: beams)
        }

        func fault(_ kind: String, beam: Int) throws {
            try "".write(toFile: temp.file("faults/\(kind)-\(beam)"), atomically: true, encoding: .utf8)
        }

        struct Line {
            var caseId: String
            var beam: Int
            var event: String
            var ns: UInt64
        }

        func lines() -> [Line] {
            ((try? String(contentsOfFile: ledger, encoding: .utf8)) ?? "").split(separator: "\n").compactMap { line in
                let parts = line.split(separator: " ")
                guard parts.count >= 4, let beam = Int(parts[1]), let ns = UInt64(parts[3]) else { return nil }
                return Line(caseId: String(parts[0]), beam: beam, event: String(parts[2]), ns: ns)
            }
        }

        func store() throws -> Store {
            try Daemon.openStore(try ConfigLoader.load(path: config))
        }

        func daemon(tag: String, _ extra: [String] = []) throws -> MQIProcess {
            try MQIProcess(["run", "--config", config, "--log-format", "text"] + extra, output: temp.file("daemon-\(tag).log"))
        }
    }

    @Test(.timeLimit(.minutes(4)))
    func aFourBeamCaseOnFourGPUsTakesAboutOneBeamsTime() async throws {
        let site = try Site(seconds: 3)
        defer { site.temp.remove() }
        try site.addCase("P1_STUDY", beams: 4)
        let daemon = try site.daemon(tag: "run", ["--exit-when-idle"])
        #expect(await daemon.wait(upTo: 90) == 0, "\(daemon.output.suffix(3000))")
        let store = try site.store()
        let summary = try #require(try await store.caseSummary("P1_STUDY"))
        #expect(summary.status == .completed, "\(summary.error ?? "")")
        let starts = site.lines().filter { $0.event == "start" }
        let ends = site.lines().filter { $0.event == "end" }
        #expect(starts.map(\.beam).sorted() == [1, 2, 3, 4], "each beam ran once")
        #expect(ends.count == 4)
        // In parallel: the whole step took about one beam's time, not four.
        let span = Double((ends.map(\.ns).max() ?? 0) - (starts.map(\.ns).min() ?? 0)) / 1e9
        print("4 beams of 3 s on 4 GPUs: step span \(String(format: "%.2f", span)) s")
        // All four ran at one moment: the last start came before the first end (one after the
        // other, or two at a time, they could not). A wall-clock bound on the span is left out:
        // CI's load stretches it.
        #expect((starts.map(\.ns).max() ?? 0) < (ends.map(\.ns).min() ?? 0), "the beams did not all run at once (span \(span) s): \(site.lines())")
        let runs = try #require(try await store.beamRuns("P1_STUDY").first)
        #expect(runs.runs.map(\.status) == [.succeeded, .succeeded, .succeeded, .succeeded])
        #expect(Set(runs.runs.flatMap(\.gpuIds)).isEmpty, "GPUs are released once a beam ends")
        #expect(runs.runs.allSatisfy { $0.startedAt != nil && $0.finishedAt != nil && $0.attempt == 1 })
        for beam in 1...4 {
            #expect(FileManager.default.fileExists(atPath: site.temp.file("var/results/P1_STUDY/dose_beam_\(beam).txt")))
            #expect(FileManager.default.fileExists(atPath: site.temp.file("var/logs/P1_STUDY/run_moqui_sim.\(beam).1.log")))
        }
        #expect(try await store.gpus().allSatisfy { $0.status == .free })
    }

    @Test(.timeLimit(.minutes(4)))
    func aRetryableBeamFailureRetriesThatBeamAlone() async throws {
        let site = try Site(gpus: 2, seconds: 1)
        defer { site.temp.remove() }
        try site.addCase("P2_STUDY", beams: 3)
        try site.fault("retry", beam: 2)
        let daemon = try site.daemon(tag: "run", ["--exit-when-idle"])
        #expect(await daemon.wait(upTo: 90) == 0, "\(daemon.output.suffix(3000))")
        let store = try site.store()
        #expect(try await store.caseSummary("P2_STUDY")?.status == .completed)
        let runs = try #require(try await store.beamRuns("P2_STUDY").first).runs
        #expect(runs.map(\.attempt) == [1, 2, 1])
        #expect(runs.allSatisfy { $0.status == .succeeded })
        let starts = site.lines().filter { $0.event == "start" }
        #expect(starts.filter { $0.beam == 2 }.count == 2 && starts.filter { $0.beam != 2 }.count == 2)
    }

    @Test(.timeLimit(.minutes(4)))
    func aPermanentBeamFailureFailsTheCaseStopsItsOtherBeamsAndARetryRunsOnlyTheUnfinishedOnes() async throws {
        let site = try Site(gpus: 4, seconds: 30)
        defer { site.temp.remove() }
        try site.addCase("P3_STUDY", beams: 3)
        try site.fault("fatal", beam: 3)
        let daemon = try site.daemon(tag: "run")
        defer { daemon.signal(SIGKILL) }
        let store = try site.store()
        #expect(await eventually(within: 60) { (try? await store.caseSummary("P3_STUDY")?.status) == .failed }, "\(daemon.output.suffix(3000))")
        let failed = try #require(try await store.caseSummary("P3_STUDY"))
        #expect(failed.error?.contains("beam 3") == true, "\(failed.error ?? "")")
        // The other beams' simulations are stopped, and their GPUs come back.
        #expect(await eventually(within: 20) { Set(site.lines().filter { $0.event == "killed" }.map(\.beam)).isSuperset(of: [1, 2]) },
                "\(site.lines().map { "\($0.beam) \($0.event)" })")
        #expect(await eventually(within: 20) { (try? await store.gpus().allSatisfy { $0.status == .free }) == true })
        var runs = try #require(try await store.beamRuns("P3_STUDY").first).runs
        #expect(runs.map(\.status) == [.cancelled, .cancelled, .failed])

        // Fixed: the retry runs the beams that did not succeed, each as its next attempt.
        try FileManager.default.removeItem(atPath: site.temp.file("faults/fatal-3"))
        let retry = try MQIProcess(["cases", "retry", "P3_STUDY", "--config", site.config], output: site.temp.file("retry.log"))
        #expect(await retry.wait(upTo: 20) == 0, "\(retry.output)")
        #expect(await eventually(within: 20) {
            (try? await store.beamRuns("P3_STUDY").first?.runs.allSatisfy { $0.status == .running }) == true
        })
        runs = try #require(try await store.beamRuns("P3_STUDY").first).runs
        #expect(runs.map(\.attempt) == [2, 2, 2])
    }

    @Test(.timeLimit(.minutes(3)))
    func killMinusNineDuringBeamRunsRunsEachBeamOnce() async throws {
        let site = try Site(gpus: 2, seconds: 2)
        defer { site.temp.remove() }
        try site.addCase("P4_STUDY", beams: 3)
        try site.addCase("P5_STUDY", beams: 2)
        for round in 1...3 {
            let daemon = try site.daemon(tag: "\(round)")
            try await Task.sleep(for: .milliseconds(1500))
            daemon.signal(SIGKILL)
            #expect(await daemon.wait(upTo: 10) != nil)
        }
        let last = try site.daemon(tag: "last", ["--exit-when-idle"])
        #expect(await last.wait(upTo: 120) == 0, "\(last.output.suffix(3000))")
        let store = try site.store()
        for (caseId, beams) in [("P4_STUDY", 3), ("P5_STUDY", 2)] {
            #expect(try await store.caseSummary(caseId)?.status == .completed)
            let starts = site.lines().filter { $0.caseId == caseId && $0.event == "start" }
            #expect(starts.map(\.beam).sorted() == Array(1...beams), "\(caseId): each beam started once: \(starts.map(\.beam))")
        }
        #expect(try await store.gpus().allSatisfy { $0.status == .free })
        #expect(try await store.deadLetters().isEmpty)
    }
}
