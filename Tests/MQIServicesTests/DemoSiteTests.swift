import Foundation
import MQICore
import MQITestSupport
import Testing
@testable import MQIServices

struct DemoSiteTests {
    /// Runs `/bin/sh args...` with stdout and stderr together, as the RemoteExecutor does.
    static func sh(_ arguments: [String], environment extra: [String: String] = [:]) throws -> (status: Int32, output: String) {
        try runProcess("/bin/sh", arguments, environment: extra)
    }

    static func contents(_ path: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
    }

    static func isDirectory(_ path: String) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue
    }

    /// Copies one case to the "HPC" the way upload_case does; returns (case dir, result dir).
    static func upload(_ caseID: String, site: DemoSite) throws -> (caseDir: String, resultDir: String) {
        let source = (site.directory as NSString).appendingPathComponent("data/local_logdata/\(caseID)")
        let caseDir = (site.directory as NSString).appendingPathComponent("hpc/upload/\(caseID)")
        try FileManager.default.copyItem(atPath: source, toPath: caseDir)
        return (caseDir, (site.directory as NSString).appendingPathComponent("hpc/download/\(caseID)"))
    }

    @Test func layoutFollowsTheClinic() throws {
        let temp = try TemporaryDirectory("mqi-demo")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 4)
        #expect(site.directory == temp.file("site"))
        #expect(site.configPath == temp.file("site/config.yaml"))
        #expect(FileManager.default.fileExists(atPath: temp.file("site/.mqi-demo")))
        #expect(Self.isDirectory(temp.file("site/hpc/upload")) && Self.contents(temp.file("site/hpc/upload")).isEmpty)
        #expect(Self.isDirectory(temp.file("site/hpc/download")) && Self.contents(temp.file("site/hpc/download")).isEmpty)
        #expect(Self.isDirectory(temp.file("site/var")))

        let localLogdata = temp.file("site/data/local_logdata")
        let cases = Self.contents(localLogdata)
        #expect(cases == (1...4).map { DemoSite.caseID($0) })
        #expect(cases.first == "DEMO-001_1.2.840.113619.2.55.3.1")
        for caseID in cases {
            let caseDir = (localLogdata as NSString).appendingPathComponent(caseID)
            let entries = Self.contents(caseDir)
            #expect(entries.contains("_CASE_READY"), "\(caseID): \(entries)")
            let plans = entries.filter { $0.hasPrefix("RP.") && $0.hasSuffix(".dcm") }
            #expect(plans.count == 1, "\(caseID): \(entries)")
            if let plan = plans.first {
                let data = try Data(contentsOf: URL(fileURLWithPath: (caseDir as NSString).appendingPathComponent(plan)))
                #expect(data.count > 132 && data.prefix(128).allSatisfy { $0 == 0 })
                #expect(String(decoding: data[128..<132], as: UTF8.self) == "DICM")
            }
            let beams = entries.filter { Self.isDirectory((caseDir as NSString).appendingPathComponent($0)) }
            #expect((2...3).contains(beams.count), "\(caseID): \(entries)")
            for beam in beams {
                #expect(beam.count == 16 && beam.allSatisfy(\.isNumber), "beam folder named by timestamp: \(beam)")
                let beamDir = (caseDir as NSString).appendingPathComponent(beam)
                let planInfo = try String(contentsOfFile: (beamDir as NSString).appendingPathComponent("PlanInfo.txt"), encoding: .utf8)
                let keys = Set(planInfo.split(separator: "\n").compactMap { $0.split(separator: ",", maxSplits: 1).first.map(String.init) })
                #expect(keys.isSuperset(of: ["DICOM_BEAM_NUMBER", "TCSC_FIELD_NUMBER", "BEAM_NAME", "GANTRY_ANGLE"]))
                let layers = Self.contents(beamDir).filter { $0.hasSuffix(".ptn") }
                #expect((5...8).contains(layers.count), "\(beamDir): \(layers)")
                #expect(layers.allSatisfy { $0.prefix(3).dropLast().allSatisfy(\.isNumber) && $0.dropFirst(2).hasPrefix("_") })
            }
        }
        // Same input, same site: the content is stable.
        let again = try DemoSite.create(at: temp.file("site2"), cases: 4)
        #expect(Self.contents(temp.file("site2/data/local_logdata/\(cases[0])")) == Self.contents((localLogdata as NSString).appendingPathComponent(cases[0])))
        #expect(again.directory == temp.file("site2"))
    }

    @Test func configParsesWithTheDefaultWorkflow() throws {
        let temp = try TemporaryDirectory("mqi-demo")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 1, gpus: [0, 1, 3])
        let config = try ConfigLoader.load(path: site.configPath)
        #expect(config.hpc.transport == .local)
        #expect(config.hpc.gpus == [0, 1, 3])
        #expect(config.scanner.localLogdata == temp.file("site/data/local_logdata"))
        #expect(config.scanner.readyMarker == "_CASE_READY")
        #expect(config.scanner.workflow == "default_qa")
        #expect(config.state.database == temp.file("site/var/mqi.sqlite"))
        #expect(config.conductor.uploadDir == temp.file("site/hpc/upload"))
        #expect(config.conductor.downloadDir == temp.file("site/hpc/download"))
        #expect(config.conductor.resultsDir == temp.file("site/var/results"))
        let steps = try #require(config.workflows["default_qa"]).steps
        #expect(steps.map(\.name) == ["upload_case_files", "run_interpreter", "run_moqui_sim", "download_results"])
        #expect(steps.map(\.type) == [.upload, .execute, .execute, .download])
        #expect(steps.map(\.progress) == [10, 30, 40, 90])
        #expect(steps[2].rules?.progressPattern?.contains("(?<done>") == true)
        #expect(steps[2].inputFiles.count == 1)
        #expect(config.scanner.caseLayout == .moqui)
        #expect(steps[2].timeoutSec == 600)
        #expect(steps[1].command?.source.contains(temp.file("site/bin/interpreter.sh")) == true)
        #expect(steps[2].command?.source.contains(temp.file("site/bin/moquisim.sh")) == true)
        #expect(steps[2].command?.placeholders == ["case_dir", "result_dir", "gpu_id"])
        let text = try String(contentsOfFile: site.configPath, encoding: .utf8)
        #expect(text.contains("gpus: [0, 1, 3]"))
        #expect(text.contains("run_moqui_sim:   \""), "the end-to-end tests insert an environment variable here")
    }

    @Test(.timeLimit(.minutes(3)))
    func standInScriptsBehaveLikeTheRealOnes() throws {
        let temp = try TemporaryDirectory("mqi-demo")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 2)
        let interpreter = temp.file("site/bin/interpreter.sh")
        let simulator = temp.file("site/bin/moquisim.sh")
        for script in [interpreter, simulator] {
            let permissions = try FileManager.default.attributesOfItem(atPath: script)[.posixPermissions] as? Int
            #expect(permissions == 0o755)
            let text = try String(contentsOfFile: script, encoding: .utf8)
            #expect(text.hasPrefix("#!/bin/sh\n"))
            #expect(text.contains("STAND-IN"))
            #expect(!text.contains("python") && !text.contains("[[") && !text.contains("bash"))
        }
        let caseID = DemoSite.caseID(2)
        let (caseDir, resultDir) = try Self.upload(caseID, site: site)

        let interpreted = try Self.sh([interpreter, "--case-dir", caseDir, "--gpu", "1"])
        #expect(interpreted.status == 0, "\(interpreted.output)")
        #expect(interpreted.output.contains("Reading PlanInfo.txt for beam 1"))
        #expect(interpreted.output.contains("Parsed "))
        #expect(interpreted.output.contains("Writing CSV "))
        let csvs = Self.contents((caseDir as NSString).appendingPathComponent("interpreted")).filter { $0.hasSuffix(".csv") }
        #expect(csvs.contains("beam1_spots.csv") && csvs.contains("beams.csv"), "\(csvs)")

        let ledger = temp.file("ledger.txt")
        let started = Date()
        let simulated = try Self.sh([simulator, "--case-dir", caseDir, "--out", resultDir, "--gpu", "1"], environment: ["MQI_DEMO_LEDGER": ledger])
        let elapsed = Date().timeIntervalSince(started)
        #expect(simulated.status == 0, "\(simulated.output)")
        #expect(simulated.output.contains("GPUID 1"))
        #expect(simulated.output.contains("Uploading particles with batch.. : Particle count --> 100000 with 10 batches"))
        // Batches are numbered across the case's 3 beams.
        #expect(simulated.output.contains("Generating particles for (30 of 30 batches)"))
        #expect(simulated.output.contains("Total execution time:"))
        #expect(elapsed >= 1.0 && elapsed < 30, "the stand-in simulation sleeps 1-3 s (more under load), took \(elapsed)")
        let beamFolders = Self.contents((site.directory as NSString).appendingPathComponent("data/local_logdata/\(caseID)"))
            .filter { $0.allSatisfy(\.isNumber) }
        let results = Self.contents(resultDir)
        #expect(results.contains("moqui_summary.txt") && results.contains("moqui_tps.in"), "\(results)")
        #expect(results.filter { $0.hasPrefix("RTDOSE_beam") && $0.hasSuffix(".dcm") }.count == beamFolders.count, "\(results)")
        let tps = try String(contentsOfFile: (resultDir as NSString).appendingPathComponent("moqui_tps.in"), encoding: .utf8)
        #expect(tps.contains("GPUID 1\n") && tps.contains("OutputDir \(resultDir)\n"))

        let lines = try String(contentsOfFile: ledger, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 1)
        let fields = lines.first?.split(separator: " ").map(String.init) ?? []
        #expect(fields.count == 4 && fields[0] == caseDir && fields[1] == "1", "\(fields)")
        if fields.count == 4, let start = Int64(fields[2]), let end = Int64(fields[3]) {
            #expect(end - start >= 1_000_000_000 && end - start < 5_000_000_000)
        } else {
            Issue.record("ledger line is not `<case_dir> <gpu> <start_ns> <end_ns>`: \(lines)")
        }
    }

    @Test(.timeLimit(.minutes(3)))
    func standInScriptsFailLikeTheRealOnes() throws {
        let temp = try TemporaryDirectory("mqi-demo")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 1)
        let interpreter = temp.file("site/bin/interpreter.sh")
        let simulator = temp.file("site/bin/moquisim.sh")

        // A case without PlanInfo.txt: the interpreter says so and exits 2.
        try DemoSite.writeCase(named: "no-beams", in: temp.file("site/hpc/upload"), beams: 0)
        let empty = try Self.sh([interpreter, "--case-dir", temp.file("site/hpc/upload/no-beams"), "--gpu", "0"])
        #expect(empty.status == 2)
        #expect(empty.output.contains("ERROR:"), "\(empty.output)")

        // An injected fault: FATAL ERROR, exit 3, and the run is still in the ledger.
        let (caseDir, resultDir) = try Self.upload(DemoSite.caseID(1), site: site)
        let ledger = temp.file("ledger.txt")
        let failed = try Self.sh([simulator, "--case-dir", caseDir, "--out", resultDir, "--gpu", "0"],
                                 environment: ["MQI_DEMO_FAIL_CASE": DemoSite.caseID(1), "MQI_DEMO_LEDGER": ledger])
        #expect(failed.status == 3)
        #expect(failed.output.contains("FATAL ERROR"), "\(failed.output)")
        #expect(!failed.output.contains("Total execution time:"))
        #expect(try String(contentsOfFile: ledger, encoding: .utf8).split(separator: "\n").count == 1)

        let usage = try Self.sh([simulator, "--case-dir", caseDir])
        #expect(usage.status == 2 && usage.output.contains("ERROR:"))
    }

    /// The rendered commands run even when the site's path has spaces, quotes and braces.
    @Test(.timeLimit(.minutes(3)))
    func commandsWorkInAnAwkwardDirectory() throws {
        let temp = try TemporaryDirectory("mqi-demo")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("it's a \"demo\" {case_id} $HOME \\t"), cases: 1, gpus: [0])
        let config = try ConfigLoader.load(path: site.configPath)
        let steps = try #require(config.workflows["default_qa"]).steps
        let (caseDir, resultDir) = try Self.upload(DemoSite.caseID(1), site: site)
        let values = ["case_id": DemoSite.caseID(1), "gpu_id": "0", "case_dir": caseDir, "result_dir": resultDir]
        for step in steps where step.type == .execute {
            let command = try #require(step.command).render(values)
            let run = try Self.sh(["-c", command])
            #expect(run.status == 0, "\(command)\n\(run.output)")
        }
        #expect(Self.contents(resultDir).contains("moqui_summary.txt"))
        let tps = try String(contentsOfFile: (resultDir as NSString).appendingPathComponent("moqui_tps.in"), encoding: .utf8)
        #expect(tps.contains("OutputDir \(resultDir)\n"), "\(tps)")
    }

    @Test func createTwiceResetsTheSite() throws {
        let temp = try TemporaryDirectory("mqi-demo")
        defer { temp.remove() }
        let first = try DemoSite.create(at: temp.file("site"), cases: 3)
        // State a run leaves behind, and a file of the user's own.
        try Data("db".utf8).write(to: URL(fileURLWithPath: temp.file("site/var/mqi.sqlite")))
        try FileManager.default.createDirectory(atPath: temp.file("site/hpc/upload/old-case"), withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: temp.file("site/data/local_logdata/extra"), withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: temp.file("site/notes.txt")))

        let second = try DemoSite.create(at: temp.file("site"), cases: 2)
        #expect(second.directory == first.directory)
        #expect(!FileManager.default.fileExists(atPath: temp.file("site/var/mqi.sqlite")))
        #expect(Self.contents(temp.file("site/hpc/upload")).isEmpty)
        #expect(Self.contents(temp.file("site/data/local_logdata")) == [DemoSite.caseID(1), DemoSite.caseID(2)])
        #expect(FileManager.default.fileExists(atPath: temp.file("site/notes.txt")))
        #expect(throws: Never.self) { try ConfigLoader.load(path: second.configPath) }
    }

    @Test func refusesADirectoryThatIsNotADemoSite() throws {
        let temp = try TemporaryDirectory("mqi-demo")
        defer { temp.remove() }
        let precious = temp.file("precious")
        try FileManager.default.createDirectory(atPath: (precious as NSString).appendingPathComponent("data/local_logdata"), withIntermediateDirectories: true)
        try Data("keep".utf8).write(to: URL(fileURLWithPath: (precious as NSString).appendingPathComponent("config.yaml")))
        try Data("keep".utf8).write(to: URL(fileURLWithPath: (precious as NSString).appendingPathComponent("data/local_logdata/file")))
        let before = try FileManager.default.subpathsOfDirectory(atPath: precious).sorted()

        let error = try #require(throws: DemoSiteError.self) { try DemoSite.create(at: precious, cases: 2) }
        #expect(error.description.contains("not a demo site"))
        #expect(try FileManager.default.subpathsOfDirectory(atPath: precious).sorted() == before)
        #expect(try String(contentsOfFile: (precious as NSString).appendingPathComponent("config.yaml"), encoding: .utf8) == "keep")

        // A plain file is refused too.
        try Data().write(to: URL(fileURLWithPath: temp.file("file")))
        #expect(throws: DemoSiteError.self) { try DemoSite.create(at: temp.file("file"), cases: 1) }
        // An empty directory is fine.
        try FileManager.default.createDirectory(atPath: temp.file("empty"), withIntermediateDirectories: true)
        #expect(throws: Never.self) { try DemoSite.create(at: temp.file("empty"), cases: 1) }
    }

    @Test func refusesToResetASiteWhileItsDaemonRuns() throws {
        let temp = try TemporaryDirectory("mqi-demo")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 1)
        let lock = try PIDLock(path: temp.file("site/var/mqi.pid"))
        defer { lock.release() }
        let error = try #require(throws: DemoSiteError.self) { try DemoSite.create(at: site.directory, cases: 1) }
        #expect(error.description.contains("running"))
        #expect(Self.contents(temp.file("site/data/local_logdata")) == [DemoSite.caseID(1)])
    }

    @Test func writeCaseWritesTheMarkerLastOrNotAtAll() throws {
        let temp = try TemporaryDirectory("mqi-demo")
        defer { temp.remove() }
        try DemoSite.writeCase(named: "patient 7 'x'", in: temp.path, beams: 3, marker: nil)
        let entries = Self.contents(temp.file("patient 7 'x'"))
        #expect(!entries.contains("_CASE_READY"))
        #expect(entries.filter { $0.allSatisfy(\.isNumber) }.count == 3)
        try DemoSite.writeCase(named: "ready", in: temp.path, marker: "DONE")
        #expect(Self.contents(temp.file("ready")).contains("DONE"))
        #expect(throws: DemoSiteError.self) { try DemoSite.writeCase(named: "a/b", in: temp.path) }
        #expect(throws: DemoSiteError.self) { try DemoSite.writeCase(named: "", in: temp.path) }
    }
}
