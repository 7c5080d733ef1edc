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
        let template = perBeam ? moquiTemplate.replacingOccurrences(of: "BeamNumbers {beam_numbers}", with: "BeamNumbers {beam_number}") : moquiTemplate
        try Data(template.utf8).write(to: URL(fileURLWithPath: site.path("moqui_tps.in.tmpl")), options: .atomic)
        let nvidiaSMI = site.path("bin/nvidia-smi.sh")
        try writeScript(nvidiaSMIScript(gpus: gpus), to: nvidiaSMI)
        try Data(configText(interpreter: interpreter, simulator: simulator, nvidiaSMI: nvidiaSMI, gpus: gpus, perBeam: perBeam).utf8)
            .write(to: URL(fileURLWithPath: site.configPath), options: .atomic)
        return site
    }

    /// The id of the `number`-th demo case: `DEMO-001_1.2.840.113619.2.55.3.1`, zero-padded so ids sort.
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
        }
        if let marker {
            try Data().write(to: URL(fileURLWithPath: (caseDir as NSString).appendingPathComponent(marker)))
        }
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
        # Stand-ins for the real log interpreter and MOQUI (see the comments at the top of each script).
        remote_commands:
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

    /// MOQUI's input file, rendered for each attempt after the GPU is reserved.
    static let moquiTemplate = """
        # moqui_tps.in, rendered by the MQI Communicator for each attempt (template: moqui_tps.in.tmpl)
        GPUID {gpu_id}
        RandomSeed -1932780356
        UseAbsolutePath true
        Verbosity 0
        ParentDir {case_dir}
        DicomDir {case_dir}
        logFilePath {case_dir}/interpreted
        OutputDir {result_dir}
        OutputFormat dcm
        SimulationType perBeam
        BeamNumbers {beam_numbers}
        ParticlesPerHistory 1
        TotalParticles 100000

        """

    /// A stand-in for `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`: idle-looking GPUs.
    static func nvidiaSMIScript(gpus: [Int]) -> String {
        let lines = gpus.map { id in
            "echo \"\(id), GPU-00000000-0000-0000-0000-00000000000\(id % 10), DEMO STAND-IN GPU (not real), $(( $(od -An -N1 -tu1 /dev/urandom) % 40 )), $(( 100 + $(od -An -N1 -tu1 /dev/urandom) )), 81559, $(( 30 + $(od -An -N1 -tu1 /dev/urandom) % 15 ))\""
        }
        return """
            #!/bin/sh
            # STAND-IN for nvidia-smi, written by `mqi demo`: prints made-up telemetry for the demo's
            # GPUs in the format of `nvidia-smi --query-gpu=index,uuid,name,utilization.gpu,memory.used,
            # memory.total,temperature.gpu --format=csv,noheader,nounits`. No GPU is involved.
            \(lines.joined(separator: "\n"))

            """
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
    static func yamlEscaped(_ text: String) -> String {
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

/// The demo's stand-ins for the log interpreter and MOQUI: POSIX sh (they run under dash), no
/// python, no bash. They print what the real programs print and write files where they would.
enum DemoScripts {
    static let interpreter = #"""
        #!/bin/sh
        # =============================================================================
        #  STAND-IN for the real MOQUI log interpreter -- written by `mqi demo`.
        #  It interprets nothing: it walks the case layout (beam folders holding
        #  PlanInfo.txt and NN_*.ptn layer logs), prints the lines the real
        #  interpreter prints, writes small CSV files into <case-dir>/interpreted/
        #  and exits 0 after about half a second.
        #  Fails with exit status 2 and an "ERROR:" line when the case has no beam
        #  folder with a PlanInfo.txt.
        #  Usage: interpreter.sh --case-dir DIR [--gpu N]
        # =============================================================================
        set -u

        # printf, not echo: dash's echo would mangle backslashes in case names and paths.
        say() { printf '%s\n' "$*"; }

        usage() {
            say "ERROR: $1" >&2
            say "usage: interpreter.sh --case-dir DIR [--gpu N]" >&2
            exit 2
        }

        case_dir=
        gpu=0
        while [ $# -gt 0 ]; do
            case $1 in
                --case-dir) [ $# -ge 2 ] || usage "--case-dir needs a value"; case_dir=$2; shift 2 ;;
                --case-dir=*) case_dir=${1#--case-dir=}; shift ;;
                --gpu) [ $# -ge 2 ] || usage "--gpu needs a value"; gpu=$2; shift 2 ;;
                --gpu=*) gpu=${1#--gpu=}; shift ;;
                *) usage "unknown argument: $1" ;;
            esac
        done
        [ -n "$case_dir" ] || usage "--case-dir is required"
        [ -d "$case_dir" ] || { say "ERROR: case directory not found: $case_dir" >&2; exit 2; }

        say "MQI log interpreter (demo stand-in) 1.0"
        say "Case directory: $case_dir"
        say "Using GPU $gpu${CUDA_VISIBLE_DEVICES:+ (CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES)}"
        for plan in "$case_dir"/RP*.dcm; do
            [ -f "$plan" ] && say "Reading RT plan ${plan##*/}"
        done
        sleep 0.2

        beams=0
        for beam_dir in "$case_dir"/*/; do
            [ -f "${beam_dir}PlanInfo.txt" ] && beams=$((beams + 1))
        done
        if [ "$beams" -eq 0 ]; then
            say "ERROR: no PlanInfo.txt found in any beam folder of $case_dir" >&2
            exit 2
        fi
        say "Found $beams beam folder(s)"

        out="$case_dir/interpreted"
        mkdir -p "$out" || { say "ERROR: cannot create $out" >&2; exit 2; }
        summary="$out/beams.csv"
        say "beam_number,field_number,beam_name,layers,spots,source_folder" > "$summary"
        total_layers=0
        for beam_dir in "$case_dir"/*/; do
            info="${beam_dir}PlanInfo.txt"
            [ -f "$info" ] || continue
            folder=${beam_dir%/}
            folder=${folder##*/}
            beam=$(sed -n 's/^DICOM_BEAM_NUMBER,//p' "$info" | head -n 1 | tr -cd '0-9')
            [ -n "$beam" ] || { say "ERROR: $info has no DICOM_BEAM_NUMBER" >&2; exit 2; }
            field=$(sed -n 's/^TCSC_FIELD_NUMBER,//p' "$info" | head -n 1 | tr -d '\r,')
            name=$(sed -n 's/^BEAM_NAME,//p' "$info" | head -n 1 | tr -d '\r,')
            say "Reading PlanInfo.txt for beam $beam ($name, TCSC field $field, folder $folder)"
            csv="$out/beam${beam}_spots.csv"
            say "layer,time_us,x_mm,y_mm,mu,energy_mev" > "$csv"
            layers=0
            for ptn in "${beam_dir}"*.ptn; do
                [ -f "$ptn" ] || continue
                layers=$((layers + 1))
                grep -v '^#' "$ptn" | sed "s/^/$layers,/" >> "$csv"
            done
            spots=$(($(wc -l < "$csv") - 1))
            say "Parsed $layers layers ($spots spots)"
            say "Writing CSV $csv"
            say "$beam,$field,$name,$layers,$spots,$folder" >> "$summary"
            total_layers=$((total_layers + layers))
            sleep 0.1
        done
        say "Writing CSV $summary"
        sleep 0.1
        say "Interpretation finished: $beams beam(s), $total_layers layers"
        exit 0

        """#

    static let simulator = #"""
        #!/bin/sh
        # =============================================================================
        #  STAND-IN for MOQUI, the GPU Monte Carlo dose engine -- written by `mqi demo`.
        #  It simulates nothing: it prints MOQUI-like progress (GPUID, particle
        #  upload, batch generation, "Total execution time:"), takes 1-3 s, and
        #  writes one stand-in OUTDIR/RTDOSE_beam<n>.dcm per beam folder plus
        #  OUTDIR/moqui_tps.in and OUTDIR/moqui_summary.txt.
        #  Usage: moquisim.sh --case-dir DIR --out OUTDIR [--gpu N]
        #  Environment, for tests:
        #    MQI_DEMO_LEDGER=FILE     append "<case_dir> <gpu> <start_ns> <end_ns>" per run
        #    MQI_DEMO_FAIL_CASE=NAME  fail with "FATAL ERROR" (exit 3) for the case dir NAME
        # =============================================================================
        set -u

        # printf, not echo: dash's echo would mangle backslashes in case names and paths.
        say() { printf '%s\n' "$*"; }

        usage() {
            say "ERROR: $1" >&2
            say "usage: moquisim.sh --case-dir DIR --out OUTDIR [--gpu N] [--beam N]" >&2
            exit 2
        }

        case_dir=
        out=
        gpu=0
        only_beam=
        while [ $# -gt 0 ]; do
            case $1 in
                --case-dir) [ $# -ge 2 ] || usage "--case-dir needs a value"; case_dir=$2; shift 2 ;;
                --case-dir=*) case_dir=${1#--case-dir=}; shift ;;
                --out) [ $# -ge 2 ] || usage "--out needs a value"; out=$2; shift 2 ;;
                --out=*) out=${1#--out=}; shift ;;
                --gpu) [ $# -ge 2 ] || usage "--gpu needs a value"; gpu=$2; shift 2 ;;
                --gpu=*) gpu=${1#--gpu=}; shift ;;
                --beam) [ $# -ge 2 ] || usage "--beam needs a value"; only_beam=$2; shift 2 ;;
                --beam=*) only_beam=${1#--beam=}; shift ;;
                *) usage "unknown argument: $1" ;;
            esac
        done
        [ -n "$case_dir" ] || usage "--case-dir is required"
        [ -n "$out" ] || usage "--out is required"
        case $gpu in
            ''|*[!0-9]*) usage "--gpu must be a GPU number, not '$gpu'" ;;
        esac
        case $only_beam in
            *[!0-9]*) usage "--beam must be a beam number, not '$only_beam'" ;;
        esac
        [ -d "$case_dir" ] || { say "ERROR: case directory not found: $case_dir" >&2; exit 2; }

        start_ns=$(date +%s%N)
        case_name=${case_dir%/}
        case_name=${case_name##*/}

        # One ledger line per run (tests count runs per case and how many overlapped).
        record_run() {
            if [ -n "${MQI_DEMO_LEDGER:-}" ]; then
                printf '%s %s %s %s\n' "$case_dir" "$gpu" "$start_ns" "$(date +%s%N)" >> "$MQI_DEMO_LEDGER"
            fi
        }

        beam_numbers=
        beams=0
        for beam_dir in "$case_dir"/*/; do
            info="${beam_dir}PlanInfo.txt"
            [ -f "$info" ] || continue
            beam=$(sed -n 's/^DICOM_BEAM_NUMBER,//p' "$info" | head -n 1 | tr -cd '0-9')
            [ -n "$beam" ] || beam=$((beams + 1))
            [ -z "$only_beam" ] || [ "$beam" = "$only_beam" ] || continue
            beams=$((beams + 1))
            beam_numbers="${beam_numbers:+$beam_numbers,}$beam"
        done
        if [ "$beams" -eq 0 ]; then
            say "ERROR: no beam folder with PlanInfo.txt${only_beam:+ for beam $only_beam} in $case_dir" >&2
            exit 2
        fi
        mkdir -p "$out" || { say "ERROR: cannot create output directory $out" >&2; exit 2; }

        particles=100000
        batches=10
        # The communicator renders moqui_tps.in into the case dir after reserving the GPU (the
        # step's input_files). Like MOQUI, refuse to run on a GPU we were not given.
        # (With --beam: one run per beam, its input file moqui_tps_<beam>.in.)
        tps="$case_dir/moqui_tps${only_beam:+_$only_beam}.in"
        if [ -f "$tps" ]; then
            tps_gpu=$(sed -n 's/^GPUID *//p' "$tps" | head -n 1 | tr -d '\r ')
            case ",${CUDA_VISIBLE_DEVICES:-$gpu}," in
                *",$tps_gpu,"*) ;;
                *) say "FATAL ERROR: moqui_tps.in asks for GPUID '$tps_gpu', but this run was given GPU(s) ${CUDA_VISIBLE_DEVICES:-$gpu}" >&2
                   record_run
                   exit 4 ;;
            esac
            say "Reading input parameters from $tps (GPUID $tps_gpu)"
        fi
        cat > "$out/moqui_tps${only_beam:+_$only_beam}.in" <<EOF
        GPUID $gpu
        RandomSeed -1932780356
        UseAbsolutePath true
        Verbosity 0
        ParentDir $case_dir
        DicomDir $case_dir
        logFilePath $case_dir/interpreted
        OutputDir $out
        OutputFormat dcm
        SimulationType perBeam
        BeamNumbers $beam_numbers
        ParticlesPerHistory 1
        TotalParticles $particles
        EOF

        say "MOQUI Monte Carlo dose engine (demo STAND-IN: no physics is simulated)"
        say "GPUID $gpu"
        say "ParentDir $case_dir"
        say "OutputDir $out"
        say "BeamNumbers $beam_numbers"
        if [ -d "$case_dir/interpreted" ]; then
            say "Reading machine log data from $case_dir/interpreted"
        else
            say "WARNING: no interpreted log data in $case_dir/interpreted; using the plan only"
        fi
        sleep 0.1

        # About 1.5 s of "simulation" per case, whatever the number of beams; 0.75 s per beam run.
        total_ms=1500
        [ -z "$only_beam" ] || total_ms=750
        pause_ms=$((total_ms / (beams * batches)))
        [ "$pause_ms" -ge 1 ] || pause_ms=1
        pause=$(printf '%d.%03d' $((pause_ms / 1000)) $((pause_ms % 1000)))
        done_batches=0

        for beam_dir in "$case_dir"/*/; do
            info="${beam_dir}PlanInfo.txt"
            [ -f "$info" ] || continue
            beam=$(sed -n 's/^DICOM_BEAM_NUMBER,//p' "$info" | head -n 1 | tr -cd '0-9')
            [ -n "$beam" ] || beam=1
            [ -z "$only_beam" ] || [ "$beam" = "$only_beam" ] || continue
            name=$(sed -n 's/^BEAM_NAME,//p' "$info" | head -n 1 | tr -d '\r')
            gantry=$(sed -n 's/^GANTRY_ANGLE,//p' "$info" | head -n 1 | tr -d '\r')
            say "Beam $beam ($name, gantry $gantry deg)"
            say "Uploading particles with batch.. : Particle count --> $particles with $batches batches"
            if [ "${MQI_DEMO_FAIL_CASE:-}" = "$case_name" ]; then
                say "FATAL ERROR: CUDA error: an illegal memory access was encountered (beam $beam, GPU $gpu) [demo fault injected by MQI_DEMO_FAIL_CASE]" >&2
                record_run
                exit 3
            fi
            # Batches are numbered across all beams of the case (a simplification of MOQUI,
            # which counts per beam), so progress_pattern gives the case's progress.
            k=1
            while [ "$k" -le "$batches" ]; do
                say "Generating particles for ($((done_batches + k)) of $((batches * beams)) batches)"
                sleep "$pause"
                k=$((k + 1))
            done
            done_batches=$((done_batches + batches))
            dose="$out/RTDOSE_beam$beam.dcm"
            {
                dd if=/dev/zero bs=128 count=1 2>/dev/null
                printf 'DICM'
                printf 'MQI demo stand-in RTDOSE: beam %s, GPU %s, %s particles, not a real dose\n' "$beam" "$gpu" "$particles"
            } > "$dose" || { say "ERROR: cannot write $dose" >&2; exit 2; }
            say "Writing dose to $dose"
        done

        end_ns=$(date +%s%N)
        elapsed_ms=$(((end_ns - start_ns) / 1000000))
        elapsed=$(printf '%d.%03d' $((elapsed_ms / 1000)) $((elapsed_ms % 1000)))
        {
            say "MOQUI demo stand-in summary"
            say "case_dir $case_dir"
            say "gpu $gpu"
            say "beams $beam_numbers"
            say "particles_per_beam $particles"
            say "batches_per_beam $batches"
            say "total_execution_time_s $elapsed"
        } > "$out/moqui_summary${only_beam:+_beam$only_beam}.txt"
        record_run
        say "Total execution time: $elapsed s"
        exit 0

        """#
}
