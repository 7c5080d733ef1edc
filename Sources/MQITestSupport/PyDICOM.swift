import Foundation

/// RT plans and RT doses written by a real DICOM toolkit (pydicom), for testing the communicator's
/// reader and the hand-over of results to a DICOM node.
/// pydicom comes from the system's python3 when it has it (Debian `python3-pydicom`), else from
/// a venv made once in the temporary directory with `pip install pydicom` (PyPI).
public enum PyDICOM {
    /// One plan to write.
    public struct Plan: Encodable, Sendable {
        public struct Beam: Encodable, Sendable {
            public var number: Int
            public var name: String
            /// TreatmentDeliveryType: TREATMENT, SETUP, ...
            public var type: String
            public init(_ number: Int, _ name: String, _ type: String = "TREATMENT") {
                self.number = number
                self.name = name
                self.type = type
            }
        }

        public var path: String
        public var patientId: String
        public var beams: [Beam]
        /// Implicit VR little endian instead of explicit.
        public var implicit = false
        /// `IonBeamSequence` (ion plans) or `BeamSequence` (photon-style plans).
        public var sequence = "IonBeamSequence"
        /// The beam sequence and its items written with undefined length (delimiters).
        public var undefinedLength = false
        /// Control-point sequences in each beam and a 100 KB OB attribute, as real plans have.
        public var bulky = false

        public init(path: String, patientId: String, beams: [Beam], implicit: Bool = false, sequence: String = "IonBeamSequence",
                    undefinedLength: Bool = false, bulky: Bool = false) {
            self.path = path
            self.patientId = patientId
            self.beams = beams
            self.implicit = implicit
            self.sequence = sequence
            self.undefinedLength = undefinedLength
            self.bulky = bulky
        }

        enum CodingKeys: String, CodingKey {
            case path, patientId = "patient_id", beams, implicit, sequence, undefinedLength = "undefined_length", bulky
        }
    }

    /// One RT Dose object to write: a small dose grid of 32-bit unsigned values (no numpy
    /// needed) with `DoseGridScaling`, referencing an ion plan; explicit VR little endian with a
    /// file meta header, so DCMTK's `storescu` sends it as RT Dose Storage.
    public struct Dose: Encodable, Sendable {
        /// Relative to the directory the script is given, or absolute.
        public var path: String
        public var patientId: String
        /// DoseSummationType: PLAN, or BEAM (then `beamNumber` is referenced).
        public var summation: String
        public var beamNumber: Int?
        public var rows: Int
        public var columns: Int
        public var frames: Int
        /// Seeds the pixel values, so two doses differ.
        public var seed: Int

        public init(path: String, patientId: String, summation: String = "PLAN", beamNumber: Int? = nil,
                    rows: Int = 8, columns: Int = 6, frames: Int = 4, seed: Int = 1) {
            self.path = path
            self.patientId = patientId
            self.summation = summation
            self.beamNumber = beamNumber
            self.rows = rows
            self.columns = columns
            self.frames = frames
            self.seed = seed
        }

        enum CodingKeys: String, CodingKey {
            case path, patientId = "patient_id", summation, beamNumber = "beam_number", rows, columns, frames, seed
        }
    }

    /// A python3 that imports pydicom, or why there is none.
    public static let python: Result<String, TestSupportError> = setUp()

    public static var isAvailable: Bool { (try? python.get()) != nil }

    /// For `.enabled(PyDICOM.skipReason) { PyDICOM.shouldRun }`: run when pydicom can be had,
    /// and always under CI (`CI` set), where its absence fails the test instead of skipping it.
    public static let skipReason = "needs pydicom (Debian python3-pydicom, or python3-venv and PyPI for pip install pydicom)"
    public static var shouldRun: Bool { isAvailable || ProcessInfo.processInfo.environment["CI"] != nil }

    /// Writes the plans with pydicom.
    public static func write(_ plans: [Plan]) throws {
        let python = try python.get()
        let work = try TemporaryDirectory("mqi-pydicom")
        defer { work.remove() }
        try JSONEncoder().encode(plans).write(to: URL(fileURLWithPath: work.file("plans.json")))
        try script.write(toFile: work.file("write_plans.py"), atomically: true, encoding: .utf8)
        let (status, output) = try run([python, work.file("write_plans.py"), work.file("plans.json")], timeout: 120)
        guard status == 0 else { throw TestSupportError("pydicom could not write the plans (exit \(status)):\n\(output)") }
    }

    /// The command line that writes `doses` with pydicom when one more argument, the directory
    /// relative paths resolve against, is appended: for a workflow step that writes its results
    /// itself. The script and the doses' description are written into `directory`.
    public static func doseCommand(_ doses: [Dose], scriptsIn directory: String) throws -> [String] {
        let python = try python.get()
        let spec = (directory as NSString).appendingPathComponent("doses.json")
        let script = (directory as NSString).appendingPathComponent("write_doses.py")
        try JSONEncoder().encode(doses).write(to: URL(fileURLWithPath: spec))
        try doseScript.write(toFile: script, atomically: true, encoding: .utf8)
        return [python, script, spec]
    }

    /// Writes the doses with pydicom, relative paths under `directory`.
    public static func writeDoses(_ doses: [Dose], into directory: String) throws {
        let work = try TemporaryDirectory("mqi-pydicom")
        defer { work.remove() }
        let (status, output) = try run(try doseCommand(doses, scriptsIn: work.path) + [directory], timeout: 120)
        guard status == 0 else { throw TestSupportError("pydicom could not write the doses (exit \(status)):\n\(output)") }
    }

    static func setUp() -> Result<String, TestSupportError> {
        let systemPython = ["/usr/bin/python3", "/usr/local/bin/python3"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let systemPython else { return .failure(TestSupportError("no python3 (install Debian's python3 and python3-venv)")) }
        if (try? run([systemPython, "-c", "import pydicom"], timeout: 60))?.0 == 0 { return .success(systemPython) }
        let cache = (NSTemporaryDirectory() as NSString).appendingPathComponent("mqi-test-pydicom-\(getuid())")
        let venv = (cache as NSString).appendingPathComponent("venv")
        let venvPython = (venv as NSString).appendingPathComponent("bin/python")
        if (try? run([venvPython, "-c", "import pydicom"], timeout: 60))?.0 == 0 { return .success(venvPython) }
        // Build a fresh venv beside the cached one and move it in place, so a concurrent or
        // interrupted set-up never leaves a half-made venv where the next run looks.
        do {
            try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
            let fresh = (cache as NSString).appendingPathComponent("venv.\(getpid()).\(UInt32.random(in: 0...UInt32.max))")
            defer { try? FileManager.default.removeItem(atPath: fresh) }
            var (status, output) = try run([systemPython, "-m", "venv", fresh], timeout: 120)
            guard status == 0 else {
                return .failure(TestSupportError("python3 -m venv failed (install Debian's python3-venv): \(output.suffix(500))"))
            }
            (status, output) = try run([(fresh as NSString).appendingPathComponent("bin/python"), "-m", "pip", "install",
                                        "--disable-pip-version-check", "--quiet", "pydicom"], timeout: 300)
            guard status == 0 else {
                return .failure(TestSupportError("pip install pydicom failed (is PyPI reachable?): \(output.suffix(500))"))
            }
            // Only `bin/python` is used, never the scripts whose first line names the old path.
            try? FileManager.default.removeItem(atPath: venv)
            try FileManager.default.moveItem(atPath: fresh, toPath: venv)
        } catch {
            return .failure(TestSupportError("cannot set up a pydicom venv in \(cache): \(error)"))
        }
        if (try? run([venvPython, "-c", "import pydicom"], timeout: 60))?.0 == 0 { return .success(venvPython) }
        return .failure(TestSupportError("the venv in \(venv) does not import pydicom"))
    }

    /// Runs a program with its output in a file (no pipe to fill), killed after `timeout` seconds.
    static func run(_ arguments: [String], timeout: Double) throws -> (Int32, String) {
        let work = try TemporaryDirectory("mqi-run")
        defer { work.remove() }
        let outputPath = work.file("output")
        FileManager.default.createFile(atPath: outputPath, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        defer { try? handle.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            return (-1, "timed out after \(Int(timeout)) s: \(arguments.joined(separator: " "))")
        }
        return (process.terminationStatus, (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "")
    }

    static let script = #"""
        import json, sys
        import pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.sequence import Sequence
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

        major = int(pydicom.__version__.split(".")[0])
        for spec in json.load(open(sys.argv[1])):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.8"
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ImplicitVRLittleEndian if spec["implicit"] else ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            if major < 3:
                ds.is_little_endian = True
                ds.is_implicit_VR = spec["implicit"]
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.Modality = "RTPLAN"
            ds.PatientName = "Test^Patient"
            ds.PatientID = spec["patient_id"]
            ds.RTPlanLabel = "QA"
            beams = []
            for b in spec["beams"]:
                item = Dataset()
                item.BeamNumber = b["number"]
                item.BeamName = b["name"]
                item.TreatmentDeliveryType = b["type"]
                item.RadiationType = "PROTON"
                if spec["bulky"]:
                    points = []
                    for index in range(3):
                        point = Dataset()
                        point.ControlPointIndex = index
                        point.NominalBeamEnergy = 150.0 - index * 4.5
                        point.ScanSpotPositionMap = [float(x) for x in range(8)]
                        points.append(point)
                    item.IonControlPointSequence = Sequence(points)
                    if spec["undefined_length"]:
                        item["IonControlPointSequence"].is_undefined_length = True
                        for point in points:
                            point.is_undefined_length_sequence_item = True
                if spec["undefined_length"]:
                    item.is_undefined_length_sequence_item = True
                beams.append(item)
            setattr(ds, spec["sequence"], Sequence(beams))
            if spec["undefined_length"]:
                ds[spec["sequence"]].is_undefined_length = True
            if spec["bulky"]:
                ds.add_new(0x00090010, "LO", "MQI TEST")
                ds.add_new(0x00091010, "OB", bytes(range(256)) * 400)
            if major >= 3:
                ds.save_as(spec["path"], enforce_file_format=True)
            else:
                ds.save_as(spec["path"], write_like_original=False)
        """#

    static let doseScript = #"""
        import json, os, random, struct, sys
        import pydicom
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.sequence import Sequence
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        major = int(pydicom.__version__.split(".")[0])
        base = sys.argv[2] if len(sys.argv) > 2 else "."
        for spec in json.load(open(sys.argv[1])):
            path = os.path.join(base, spec["path"])
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.2"  # RT Dose Storage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            if major < 3:
                ds.is_little_endian = True
                ds.is_implicit_VR = False
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID = meta.MediaStorageSOPClassUID
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.StudyDate = "20250424"
            ds.StudyTime = "015014"
            ds.AccessionNumber = ""
            ds.Modality = "RTDOSE"
            ds.Manufacturer = "MQI test"
            ds.ReferringPhysicianName = ""
            ds.PatientName = "Test^Patient"
            ds.PatientID = spec["patient_id"]
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.StudyInstanceUID = generate_uid()
            ds.SeriesInstanceUID = generate_uid()
            ds.StudyID = "QA"
            ds.SeriesNumber = 1
            ds.InstanceNumber = 1
            ds.FrameOfReferenceUID = generate_uid()
            ds.PositionReferenceIndicator = ""
            ds.ImagePositionPatient = [-10.0, -8.0, -6.0]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing = [2.5, 2.5]
            ds.SliceThickness = 3.0
            rows, columns, frames = spec["rows"], spec["columns"], spec["frames"]
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.NumberOfFrames = frames
            ds.FrameIncrementPointer = 0x3004000C  # GridFrameOffsetVector
            ds.Rows = rows
            ds.Columns = columns
            ds.BitsAllocated = 32
            ds.BitsStored = 32
            ds.HighBit = 31
            ds.PixelRepresentation = 0
            ds.DoseUnits = "GY"
            ds.DoseType = "PHYSICAL"
            ds.DoseSummationType = spec["summation"]
            ds.GridFrameOffsetVector = [3.0 * k for k in range(frames)]
            ds.DoseGridScaling = "1.5e-05"
            plan = Dataset()
            plan.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.8"  # RT Ion Plan Storage
            plan.ReferencedSOPInstanceUID = generate_uid()
            if spec.get("beam_number") is not None:
                beam = Dataset()
                beam.ReferencedBeamNumber = spec["beam_number"]
                group = Dataset()
                group.ReferencedFractionGroupNumber = 1
                group.ReferencedBeamSequence = Sequence([beam])
                plan.ReferencedFractionGroupSequence = Sequence([group])
            ds.ReferencedRTPlanSequence = Sequence([plan])
            values = random.Random(spec["seed"])
            ds.PixelData = b"".join(struct.pack("<I", values.randrange(0, 4000000)) for _ in range(rows * columns * frames))
            if major >= 3:
                ds.save_as(path, enforce_file_format=True)
            else:
                ds.save_as(path, write_like_original=False)
        """#
}
