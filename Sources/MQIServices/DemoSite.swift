import Foundation
import MQICore

/// A self-contained demo site: sample cases, a local "HPC" tree, stand-in scripts and a config.
///
/// Layout of `directory`:
/// ```
/// .mqi-demo                      marks the directory as a demo site (so it may be reset)
/// config.yaml                    the daemon's config (relative paths, absolute script paths)
/// data/local_logdata/<case_id>/  sample cases in the clinic layout, `_CASE_READY` written last
/// hpc/upload/ hpc/download/      the local "HPC"
/// bin/interpreter.sh bin/moquisim.sh   stand-ins for the log interpreter and MOQUI (POSIX sh)
/// var/                           database, PID file, logs and results (created by the daemon)
/// ```
public struct DemoSite: Sendable {
    public let directory: String     // absolute
    public var configPath: String    // directory/config.yaml

    /// The file whose presence makes a directory a demo site that `create` may reset.
    public static let markerName = ".mqi-demo"
    /// What `create` removes and writes anew in a previous demo site; nothing else is touched.
    public static let generatedEntries = ["var", "hpc", "data", "bin", "config.yaml", "moqui_tps.in.tmpl"]

    init(directory: String) {
        self.directory = directory
        self.configPath = (directory as NSString).appendingPathComponent("config.yaml")
    }

    /// Creates (or re-creates) the site. If `directory` exists it must be empty or a previous demo
    /// site (it contains the file `.mqi-demo`); a previous site's generated state (var/, hpc/,
    /// data/, bin/, config.yaml) is removed and written anew, so running the demo twice in the
    /// same dir works. Anything else throws, and nothing is deleted.
    /// `perBeam`: the simulation runs once per delivered beam (`for_each: beam`), each run on a GPU
    /// of its own, and the interpreter runs without a GPU (what `mqi demo` shows); otherwise one
    /// simulation covers the whole case on one GPU.
    public static func create(at directory: String, cases: Int, gpus: [Int] = [0, 1], perBeam: Bool = false) throws -> DemoSite {
        let fm = FileManager.default
        let root = PathResolver.absolute(directory, relativeTo: fm.currentDirectoryPath)
        guard cases >= 0 else { throw DemoSiteError(directory: root, message: "the number of cases must be 0 or more, not \(cases)") }
        guard !gpus.isEmpty else { throw DemoSiteError(directory: root, message: "at least one GPU id is needed") }
        guard gpus.allSatisfy({ $0 >= 0 }), Set(gpus).count == gpus.count else {
            throw DemoSiteError(directory: root, message: "GPU ids must be distinct and not negative: \(gpus)")
        }
        let site = DemoSite(directory: root)
        let marker = site.path(markerName)

        var isDirectory: ObjCBool = false
        if fm.fileExists(atPath: root, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw DemoSiteError(directory: root, message: "it exists and is not a directory; choose another --dir")
            }
            let entries = try fm.contentsOfDirectory(atPath: root)
            if !entries.isEmpty {
                var markerIsDirectory: ObjCBool = false
                guard fm.fileExists(atPath: marker, isDirectory: &markerIsDirectory), !markerIsDirectory.boolValue else {
                    throw DemoSiteError(directory: root, message:
                        "the directory is not empty and is not a demo site (it has no \(markerName) file); nothing was changed. Choose an empty or new --dir")
                }
                let pidFile = site.path("var/mqi.pid")
                let holder = PIDLock.holder(of: pidFile)
                if holder.running {
                    throw DemoSiteError(directory: root, message:
                        "an mqi daemon\(holder.pid.map { " (PID \($0))" } ?? "") is running on this demo site; stop it before resetting the site")
                }
                for entry in generatedEntries where fm.fileExists(atPath: site.path(entry)) || site.isSymbolicLink(entry) {
                    do {
                        try fm.removeItem(atPath: site.path(entry))
                    } catch {
                        throw DemoSiteError(directory: root, message: "cannot remove the previous demo state \(entry): \(error.localizedDescription)")
                    }
                }
            }
        } else {
            try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
        }

        // The marker goes first, so a site whose creation was interrupted can still be reset.
        try Data("""
            This directory is an MQI Communicator demo site, created by `mqi demo`.
            Running `mqi demo` here again removes and re-creates \(generatedEntries.joined(separator: ", ")).

            """.utf8).write(to: URL(fileURLWithPath: marker))

        let localLogdata = site.path("data/local_logdata")
        for relative in ["data/local_logdata", "hpc/upload", "hpc/download", "bin", "var/logs", "var/results"] {
            try fm.createDirectory(atPath: site.path(relative), withIntermediateDirectories: true)
        }
        let width = max(3, String(cases).count)
        for index in 0..<cases {
            if perBeam {
                // The treatment rooms' layout: <room>/<patient>/<study> (scanner.case_depth: 3), two rooms, 3-beam plans.
                let id = caseID(index + 1, width: width)
                let parts = id.split(separator: "_", maxSplits: 1).map(String.init)
                let patientFolder = "\(localLogdata)/G\(index % 2 + 1)/\(parts[0])"
                try fm.createDirectory(atPath: patientFolder, withIntermediateDirectories: true)
                try writeCase(named: parts[1], in: patientFolder, beams: 3, patientID: parts[0])
            } else {
                try writeCase(named: caseID(index + 1, width: width), in: localLogdata, beams: 2 + index % 2)
            }
        }

        let interpreter = site.path("bin/interpreter.sh")
        let simulator = site.path("bin/moquisim.sh")
        try writeScript(DemoScripts.interpreter, to: interpreter)
        try writeScript(DemoScripts.simulator, to: simulator)
        let template = perBeam ? DemoScripts.moquiTemplate.replacingOccurrences(of: "BeamNumbers {beam_numbers}", with: "BeamNumbers {beam_number}") : DemoScripts.moquiTemplate
        try Data(template.utf8).write(to: URL(fileURLWithPath: site.path("moqui_tps.in.tmpl")), options: .atomic)
        let nvidiaSMI = site.path("bin/nvidia-smi.sh")
        try writeScript(nvidiaSMIScript(gpus: gpus), to: nvidiaSMI)
        try Data(configText(interpreter: interpreter, simulator: simulator, nvidiaSMI: nvidiaSMI, gpus: gpus, perBeam: perBeam).utf8)
            .write(to: URL(fileURLWithPath: site.configPath), options: .atomic)
        return site
    }

    /// The id of the `number`-th demo case: `DEMO-001_1.2.840.113619.2.55.3.1`, zero-padded so ids sort.
    /// The case ids of a local_logdata tree `depth` levels deep, sorted.
    public static func caseIDs(in localLogdata: String, depth: Int) throws -> [String] {
        var ids: [String] = [""]
        for _ in 0..<depth {
            ids = try ids.flatMap { prefix -> [String] in
                let directory = prefix.isEmpty ? localLogdata : (localLogdata as NSString).appendingPathComponent(prefix)
                return try FileManager.default.contentsOfDirectory(atPath: directory).filter { !$0.hasPrefix(".") }.compactMap { name in
                    var isDirectory: ObjCBool = false
                    let path = (directory as NSString).appendingPathComponent(name)
                    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else { return nil }
                    return prefix.isEmpty ? name : prefix + "/" + name
                }
            }
        }
        return ids.sorted()
    }

    public static func caseID(_ number: Int, width: Int = 3) -> String {
        let padded = String(repeating: "0", count: max(0, width - String(number).count)) + String(number)
        return "DEMO-\(padded)_1.2.840.113619.2.55.3.\(number)"
    }

    /// The demo's RT Ion Plan: treatment beams 1...max(3, delivered) named `Field N`, then a SETUP beam.
    public static func demoPlan(patientID: String, planUID: String, deliveredBeams: Int) -> RTPlan {
        let treatment = max(3, deliveredBeams)
        return RTPlan(patientId: patientID, planUID: planUID,
                      beams: (1...treatment).map { RTPlan.Beam(number: $0, name: "Field \($0)") }
                          + [RTPlan.Beam(number: treatment + 1, name: "SETUP", deliveryType: "SETUP")])
    }

    /// Writes one sample case in the clinic layout into `localLogdata/named/`: the RT plan
    /// `RP.<uid>.dcm` (real DICOM, see `demoPlan`), `beams` beam folders named by timestamp, each with `PlanInfo.txt`
    /// and 5–8 `NN_*.ptn` layer logs, and `marker` (if not nil) written last.
    public static func writeCase(named name: String, in localLogdata: String, beams: Int = 2, marker: String? = "_CASE_READY",
                                 patientID givenPatientID: String? = nil) throws {
        guard !name.isEmpty, name != ".", name != "..", !name.contains("/"), !name.contains("\0") else {
            throw DemoSiteError(directory: localLogdata, message: "\(String(reflecting: name)) cannot be a case directory name")
        }
        guard beams >= 0 else { throw DemoSiteError(directory: localLogdata, message: "a case cannot have \(beams) beams") }
        let fm = FileManager.default
        let caseDir = (localLogdata as NSString).appendingPathComponent(name)
        try fm.createDirectory(atPath: caseDir, withIntermediateDirectories: true)
        let seed = stableSeed(name)
        // PlanInfo.txt holds KEY,value lines: keep the patient id to one line without commas, and
        // to the 64 characters a DICOM PatientID (LO) holds.
        let patientID = String(String((givenPatientID ?? name.split(separator: "_").first.map(String.init) ?? name)
            .map { $0.isNewline || $0 == "," ? "-" : $0 }).prefix(64))

        let planUID = "1.2.840.113854.\(seed).1"
        try Data(demoPlan(patientID: patientID, planUID: planUID, deliveredBeams: beams).encoded())
            .write(to: URL(fileURLWithPath: (caseDir as NSString).appendingPathComponent("RP.\(planUID).dcm")))

        // 2025-04-24 01:50:14 UTC, shifted per case so different cases have different beam times.
        let firstBeamTime = Date(timeIntervalSince1970: 1_745_459_414 + Double(seed % 2_592_000))
        for beam in stride(from: 1, through: beams, by: 1) {
            let time = firstBeamTime.addingTimeInterval(Double((beam - 1) * 420 + Int(seed % 97)))
            try writeDelivery(in: caseDir, beam: beam, at: time, patientID: patientID, planUID: planUID, seed: seed)
        }
        if let marker {
            try Data().write(to: URL(fileURLWithPath: (caseDir as NSString).appendingPathComponent(marker)))
        }
    }

    /// One delivery folder (named by its start `time`) of beam `beam` in `caseDir`: `PlanInfo.txt`
    /// and 5–8 `NN_*.ptn` layer logs. Returns the folder's name.
    @discardableResult
    public static func writeDelivery(in caseDir: String, beam: Int, at time: Date, patientID: String, planUID: String, seed: UInt32) throws -> String {
        let fm = FileManager.default
        let beamDir = (caseDir as NSString).appendingPathComponent(beamFolderName(time))
        try fm.createDirectory(atPath: beamDir, withIntermediateDirectories: true)
        let layers = 5 + Int((seed &+ UInt32(beam) &* 3) % 4)
        let gantry = [0, 45, 90, 135, 180, 225, 270, 315][Int((seed &+ UInt32(beam) &* 2) % 8)]
        let topEnergy = 150.0 + Double(seed % 40) + Double(beam) * 2.5
        let planInfo = """
            DICOM_PATIENT_ID,\(patientID)
            DICOM_PLAN_UID,\(planUID)
            DICOM_BEAM_NUMBER,\(beam)
            TCSC_FIELD_NUMBER,\(beam)
            BEAM_NAME,Field \(beam)
            TREATMENT_MACHINE,G1
            GANTRY_ANGLE,\(gantry).0
            COUCH_ANGLE,0.0
            SNOUT_POSITION,\(String(format: "%.1f", 300.0 + Double(seed % 120)))
            RANGE_SHIFTER,NONE
            NUMBER_OF_ENERGY_LAYERS,\(layers)
            DELIVERY_START,\(beamFolderName(time))

            """
        try Data(planInfo.utf8).write(to: URL(fileURLWithPath: (beamDir as NSString).appendingPathComponent("PlanInfo.txt")))
        for layer in 1...layers {
            let energy = topEnergy - Double(layer - 1) * 4.5
            let file = String(format: "%02d_%.2fMeV.ptn", layer, energy)
            try Data(layerLog(layer: layer, energy: energy, seed: seed &+ UInt32(beam * 31 + layer)).utf8)
                .write(to: URL(fileURLWithPath: (beamDir as NSString).appendingPathComponent(file)))
        }
        return beamFolderName(time)
    }

    /// Writes a later fraction into a demo case: each of its delivery folders again, `days`
    /// later (same beams, plan and patient). Returns the new folders' names.
    @discardableResult
    public static func addFraction(toCase caseDir: String, daysLater days: Int = 1) throws -> [String] {
        let files = FileManager.default
        var written: [String] = []
        for folder in try files.contentsOfDirectory(atPath: caseDir).sorted() {
            guard let delivery = Delivery.read(folder: folder, in: caseDir), let beam = delivery.beam,
                  let text = try? String(contentsOfFile: "\(caseDir)/\(folder)/PlanInfo.txt", encoding: .utf8) else { continue }
            var values: [String: String] = [:]
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: ",", maxSplits: 1).map(String.init)
                if parts.count == 2 { values[parts[0]] = parts[1] }
            }
            let time = delivery.start.addingTimeInterval(Double(days) * 86_400)
            guard !files.fileExists(atPath: (caseDir as NSString).appendingPathComponent(beamFolderName(time))) else { continue }
            written.append(try writeDelivery(in: caseDir, beam: beam, at: time, patientID: values["DICOM_PATIENT_ID"] ?? "",
                                             planUID: values["DICOM_PLAN_UID"] ?? "", seed: stableSeed(folder)))
        }
        return written
    }

    // MARK: - pieces

    func path(_ relative: String) -> String {
        (directory as NSString).appendingPathComponent(relative)
    }

    func isSymbolicLink(_ relative: String) -> Bool {
        (try? FileManager.default.attributesOfItem(atPath: path(relative))[.type] as? FileAttributeType) == .typeSymbolicLink
    }

    /// The config, with absolute script paths in the commands and every other path relative to it.
    static func configText(interpreter: String, simulator: String, nvidiaSMI: String, gpus: [Int], perBeam: Bool = false) -> String {
        let interpreterCommand = "\(yamlEscaped(templateEscaped("/bin/sh " + shellWord(interpreter)))) --case-dir {case_dir}" + (perBeam ? "" : " --gpu {gpu_id}")
        let simulatorCommand = "\(yamlEscaped(templateEscaped("/bin/sh " + shellWord(simulator)))) --case-dir {case_dir} --out {result_dir} --gpu {gpu_id}"
            + (perBeam ? " --beam {beam_number}" : "")
        return """
        # MQI Communicator demo site, generated by `mqi demo` (re-created on each run).
        # Relative paths resolve against this file's directory.
        scanner:
          local_logdata: ./data/local_logdata
          ready_marker: _CASE_READY
          quiet_period_sec: 2
          rescan_interval_sec: 30
          workflow: default_qa
          followup_workflow: delivery_check   # runs once per delivery folder that arrives later (a later fraction)
          case_layout: moqui          # refuse cases without RP*.dcm, PlanInfo.txt and *.ptn before upload\(perBeam ? "\n  case_depth: 3               # <room>/<patient>/<study>: G1/DEMO-001/1.2.840.113619.2.55.3.1" : "")
        state:
          database: ./var/mqi.sqlite
          pid_file: ./var/mqi.pid
          logs_dir: ./var/logs
        hpc:
          transport: local
          gpus: [\(gpus.map(String.init).joined(separator: ", "))]
        conductor:
          monitor_interval_sec: 60
          remote_paths: { upload_dir: ./hpc/upload, download_dir: ./hpc/download }
          results_dir: ./var/results
        workflows:
          default_qa:
            - { name: upload_case_files, type: upload,   progress: 10 }
            - { name: run_interpreter,   type: execute,  progress: 30\(perBeam ? ", gpu: false" : "") }
            - name: run_moqui_sim
              type: execute\(perBeam ? "\n      for_each: beam              # one run per delivered beam, each on a GPU of its own" : "")
              progress: 40
              timeout_sec: 600
              # MOQUI profile: live progress, failures recognised from the log, GPU id rendered into the input file.
              progress_pattern: 'Generating particles for \\((?<done>\\d+) of (?<total>\\d+) batches\\)'
              failure_patterns: ['FATAL ERROR', '^ERROR:', 'Segmentation fault']
              success_pattern: 'Total execution time:'
              retryable_patterns: ['No free GPU remains']
              max_step_retries: 2
              input_files:
                - { path: "{case_dir}/moqui_tps\(perBeam ? "_{beam_number}" : "").in", template: moqui_tps.in.tmpl }
            - { name: download_results,  type: download, progress: 90 }
          # A later fraction's delivery: a stand-in for a log-vs-plan check, once per delivery folder.
          delivery_check:
            - { name: upload_delivery,   type: upload,   progress: 10 }
            - { name: check_delivery,    type: execute,  progress: 50, gpu: false }
            - { name: download_check,    type: download, progress: 90 }
        # Stand-ins for the real log interpreter and MOQUI (see the comments at the top of each script).
        remote_commands:
          check_delivery:  "mkdir -p {result_dir} && ls {case_dir}/{delivery} > {result_dir}/delivery_check.txt"
          run_interpreter: "\(interpreterCommand)"
          run_moqui_sim:   "\(simulatorCommand)"
        retry: { max_attempts: 3, initial_delay_sec: 1, max_delay_sec: 60, multiplier: 2 }
        logging: { level: info }
        # port 0: any free port (the demo prints it); a real site uses a fixed one, 8000 by default.
        metrics: { host: 127.0.0.1, port: 0 }
        # A stand-in for nvidia-smi (this machine may have no GPU).
        gpu_monitor:
          interval_sec: 2
          command: "\(yamlEscaped(templateEscaped("/bin/sh " + shellWord(nvidiaSMI))))"

        """
    }

    /// A stand-in for `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`: idle-looking GPUs
    /// (`Resources/demo/nvidia-smi.sh` with the demo's GPU ids in its `GPUS=` line).
    static func nvidiaSMIScript(gpus: [Int]) -> String {
        DemoScripts.nvidiaSMI.replacingOccurrences(of: "\nGPUS=\"0 1\"\n", with: "\nGPUS=\"\(gpus.map(String.init).joined(separator: " "))\"\n")
    }

    /// `path` as one shell word: as is when it has only `[A-Za-z0-9_./-]`, else single-quoted.
    static func shellWord(_ path: String) -> String {
        let safe = path.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII && (CharacterSet.alphanumerics.contains(scalar) || "_./-".unicodeScalars.contains(scalar))
        }
        return safe && !path.isEmpty ? path : ShellQuote.quote(path)
    }

    /// Literal braces in a command template are written doubled.
    static func templateEscaped(_ text: String) -> String {
        text.replacingOccurrences(of: "{", with: "{{").replacingOccurrences(of: "}", with: "}}")
    }

    /// The body of a double-quoted YAML scalar.
    package static func yamlEscaped(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += String(format: "\\x%02X", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    static func writeScript(_ text: String, to path: String) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: path)
    }

    /// `2025042401501400`: the delivery time as the treatment machine names beam folders.
    static func beamFolderName(_ date: Date) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        return String(format: "%04d%02d%02d%02d%02d%02d00", c.year!, c.month!, c.day!, c.hour!, c.minute!, c.second!)
    }

    /// A few lines of spot data for one energy layer (CSV-like, as the stand-in interpreter expects).
    static func layerLog(layer: Int, energy: Double, seed: UInt32) -> String {
        var lines = [String(format: "# layer %d, nominal energy %.2f MeV (MQI demo stand-in, not machine data)", layer, energy)]
        var state = seed | 1
        func next() -> Double {
            state ^= state << 13; state ^= state >> 17; state ^= state << 5
            return Double(state % 10_000) / 10_000
        }
        let spots = 6 + Int(seed % 5)
        for spot in 0..<spots {
            let time = spot * 1_250 + Int(next() * 200)
            lines.append(String(format: "%d,%.2f,%.2f,%.4f,%.2f", time, next() * 80 - 40, next() * 80 - 40, 0.01 + next() * 0.05, energy))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// A hash of the name (FNV-1a, mixed): the same case name always gets the same sample content.
    static func stableSeed(_ name: String) -> UInt32 {
        var hash: UInt32 = 2_166_136_261
        for byte in name.utf8 {
            hash ^= UInt32(byte)
            hash = hash &* 16_777_619
        }
        // murmur3's finalizer, so names that differ in one digit get unrelated content
        hash ^= hash >> 16
        hash = hash &* 0x85EB_CA6B
        hash ^= hash >> 13
        hash = hash &* 0xC2B2_AE35
        hash ^= hash >> 16
        return hash
    }
}

/// Why a demo site could not be created; says which directory and what to do.
public struct DemoSiteError: Error, Sendable, CustomStringConvertible {
    public var directory: String
    public var message: String

    public init(directory: String, message: String) {
        self.directory = directory
        self.message = message
    }

    public var description: String { "demo site \(directory): \(message)" }
}

/// The demo's stand-ins for the log interpreter, MOQUI and nvidia-smi, and MOQUI's input template:
/// the files in `Resources/demo/`, embedded in the code at build time (`.embedInCode` in
/// Package.swift) so `mqi demo` needs no resource bundle. The scripts are POSIX sh (they run under
/// dash), no python, no bash. They print what the real programs print and write files where they
/// would.
enum DemoScripts {
    static let interpreter = String(decoding: PackageResources.interpreter_sh, as: UTF8.self)
    static let simulator = String(decoding: PackageResources.moquisim_sh, as: UTF8.self)
    static let nvidiaSMI = String(decoding: PackageResources.nvidia_smi_sh, as: UTF8.self)
    /// MOQUI's input file, rendered for each attempt after the GPU is reserved.
    static let moquiTemplate = String(decoding: PackageResources.moqui_tps_in_tmpl, as: UTF8.self)
}
