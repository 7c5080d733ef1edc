import Foundation

/// RT plans written by a real DICOM toolkit (pydicom), for testing the communicator's reader.
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
}
