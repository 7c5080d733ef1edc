import Foundation

/// Moves files when the "HPC" is a directory tree on this machine. Each copy goes into a
/// staging directory first and is renamed into place, so a reader never sees half a case.
///
/// Copies take content, permission bits and modification times, never ownership (`TreeCopy`):
/// the daemon runs as its own account and the case files belong to whoever wrote them. The
/// copying and hashing run on a thread of their own, never on the cooperative pool.
public struct LocalFileMover: FileMover {
    public var uploadDir: String
    public var downloadDir: String

    public init(uploadDir: String, downloadDir: String) {
        self.uploadDir = uploadDir
        self.downloadDir = downloadDir
    }

    /// Idempotent: when the final copy already holds every file of the case with its content (a
    /// redelivered upload, a retry after the rename), nothing is copied and that copy stays.
    /// An upload starts a case's life (no execute of it can have run yet): run directories of a
    /// previous life (before its database was rebuilt, say) are moved aside first
    /// (`RunDirectories.supersedeLocally`), so that its attempts are not adopted as this one's.
    public func upload(caseId: String, from localCase: String) async throws -> TransferReport {
        let uploadDir = self.uploadDir
        return try await BlockingWork.run("mqi-upload") { cancellation in
            _ = try RunDirectories(uploadDir: uploadDir).supersedeLocally(caseId: caseId)
            if Self.holdsCopy(of: localCase, at: (uploadDir as NSString).appendingPathComponent(caseId)) { return try Self.measure(localCase) }
            return try Self.copyAtomically(from: localCase, toDirectory: uploadDir, name: caseId, what: "case", cancellation: cancellation)
        }
    }

    /// The results carry a SHA-256 manifest (`.mqi-manifest.sha256`): computed from the source,
    /// written into the staging copy and checked there before it is renamed into place.
    public func download(caseId: String, into resultsDir: String) async throws -> TransferReport {
        let source = (downloadDir as NSString).appendingPathComponent(caseId)
        return try await BlockingWork.run("mqi-download") { cancellation in
            try Self.requireResultFiles(in: source)
            var manifest = ""
            return try Self.copyAtomically(from: source, toDirectory: resultsDir, name: caseId, what: "results", cancellation: cancellation,
                                           beforeCopy: { manifest = try ResultManifest.listing(of: source) },
                                           beforeRename: { staging in
                try ResultManifest.write(manifest, in: staging)
                if let problem = ResultManifest.verify(staging) {
                    throw TransportError("the results of case \(caseId) changed or were damaged while they were copied (the retry copies them again): \(problem)",
                                         transient: true)
                }
            })
        }
    }

    /// Copies `source` to `directory/name` through `directory/.mqi-partial/name`. The staging
    /// directory keeps the final name, so a 255-byte case id still fits; a nested case id
    /// (`G1/5506119/1.2…`) nests in both, parents created. Blocking.
    static func copyAtomically(from source: String, toDirectory directory: String, name: String, what: String,
                               cancellation: BlockingWork.Cancellation? = nil,
                               beforeCopy: () throws -> Void = {},
                               beforeRename: (String) throws -> Void = { _ in }) throws -> TransferReport {
        let files = FileManager.default
        var isDirectory: ObjCBool = false
        guard files.fileExists(atPath: source, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw TransportError("no \(what) directory at \(source)")
        }
        let staging = (directory as NSString).appendingPathComponent(".mqi-partial")
        let partial = (staging as NSString).appendingPathComponent(name)
        let final = (directory as NSString).appendingPathComponent(name)
        do {
            try files.createDirectory(atPath: (partial as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            if files.fileExists(atPath: partial) { try files.removeItem(atPath: partial) }
            try beforeCopy()
            try TreeCopy.copy(source, to: partial, cancellation: cancellation)
            let report = try measure(partial)
            try beforeRename(partial)
            if files.fileExists(atPath: final) { try files.removeItem(atPath: final) }
            try files.createDirectory(atPath: (final as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try files.moveItem(atPath: partial, toPath: final)
            return report
        } catch {
            try? files.removeItem(atPath: partial)
            if error is TransportError || error is CancellationError { throw error }
            throw TransportError("copying \(what) \(source) to \(final) failed: \(Self.describe(error))")
        }
    }

    /// True when `final` holds every file of `source` with the same SHA-256 (more files are fine:
    /// steps write into the uploaded case). Blocking.
    static func holdsCopy(of source: String, at final: String) -> Bool {
        guard FileManager.default.fileExists(atPath: final), let wanted = try? ResultManifest.listing(of: source), !wanted.isEmpty,
              let present = try? ResultManifest.listing(of: final) else { return false }
        let have = Set(present.split(separator: "\n"))
        return wanted.split(separator: "\n").allSatisfy(have.contains)
    }

    /// Throws "no result files in <dir>" when `directory` is missing or holds no regular file.
    static func requireResultFiles(in directory: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw TransportError("no result files in \(directory) (the directory does not exist)")
        }
        if try measure(directory).files == 0 { throw TransportError("no result files in \(directory)") }
    }

    static func describe(_ error: any Error) -> String {
        (error as? TreeCopy.Failure)?.description ?? error.localizedDescription
    }

    static func measure(_ directory: String) throws -> TransferReport {
        var report = TransferReport(files: 0, bytes: 0)
        guard let walker = FileManager.default.enumerator(atPath: directory) else { return report }
        while let relative = walker.nextObject() as? String {
            let attributes = try FileManager.default.attributesOfItem(atPath: (directory as NSString).appendingPathComponent(relative))
            if attributes[.type] as? FileAttributeType == .typeRegular {
                report.files += 1
                report.bytes += (attributes[.size] as? NSNumber)?.int64Value ?? 0
            }
        }
        return report
    }
}

/// Refuses case directories that must not be uploaded: empty ones, and ones holding symlinks
/// that point outside the case (nothing outside the case is ever read).
public enum CaseInspection {
    /// `ignoring`: names that do not count as case data (the ready marker).
    public static func check(_ caseDir: String, ignoring: Set<String> = []) throws {
        let files = FileManager.default
        let root = (caseDir as NSString).resolvingSymlinksInPath
        guard let walker = files.enumerator(atPath: caseDir) else {
            throw TransportError("cannot read the case directory \(caseDir)")
        }
        var regularFiles = 0
        while let relative = walker.nextObject() as? String {
            let path = (caseDir as NSString).appendingPathComponent(relative)
            let attributes = try? files.attributesOfItem(atPath: path)
            switch attributes?[.type] as? FileAttributeType {
            case .typeSymbolicLink?:
                let target = (try? files.destinationOfSymbolicLink(atPath: path)) ?? "?"
                let absolute = target.hasPrefix("/") ? target : ((path as NSString).deletingLastPathComponent as NSString).appendingPathComponent(target)
                let resolved = (absolute as NSString).resolvingSymlinksInPath
                if resolved != root && !resolved.hasPrefix(root + "/") {
                    throw TransportError("refusing the case: \(relative) is a symlink to \(target), outside the case directory")
                }
            case .typeRegular?:
                if !ignoring.contains(relative) { regularFiles += 1 }
            default:
                break
            }
        }
        if regularFiles == 0 {
            throw TransportError("the case directory \(caseDir) holds no files" + (ignoring.isEmpty ? "" : " besides \(ignoring.sorted().joined(separator: ", "))"))
        }
    }
}
