import Foundation

/// Removes a completed case's directories on the compute side (`hpc.cleanup: after_download`):
/// `{upload_dir}/{case_id}`, `{download_dir}/{case_id}` and its run directories
/// `{upload_dir}/.mqi-runs/{case_id}`. Run directories of previous lives moved aside by an
/// upload (`….superseded-<time>`) stay.
public protocol CaseCleaner: Sendable {
    /// Removes what is there of the case's directories and returns the paths it removed.
    /// Idempotent. The caller makes sure no attempt of the case may still run.
    func removeCase(_ caseId: String) async throws -> [String]
}

extension CaseCleaner {
    /// The directories of `caseId` to remove, or an error for an id that is not one path
    /// component chain below the directories (empty, `.`, `..`).
    static func targets(_ caseId: String, uploadDir: String, downloadDir: String) throws -> [String] {
        let parts = caseId.split(separator: "/", omittingEmptySubsequences: false)
        guard !caseId.isEmpty, !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
            throw TransportError("refusing to remove the directories of case '\(caseId)': not a plain case id")
        }
        let runs = RunDirectories(uploadDir: uploadDir)
        return [runs.caseDirectory(caseId), (downloadDir as NSString).appendingPathComponent(caseId), runs.caseRuns(caseId)]
    }
}

/// `CaseCleaner` for the local transport.
public struct LocalCaseCleaner: CaseCleaner {
    public var uploadDir: String
    public var downloadDir: String

    public init(uploadDir: String, downloadDir: String) {
        self.uploadDir = uploadDir
        self.downloadDir = downloadDir
    }

    public func removeCase(_ caseId: String) async throws -> [String] {
        let targets = try Self.targets(caseId, uploadDir: uploadDir, downloadDir: downloadDir)
        return try await BlockingWork.run("mqi-cleanup") { _ in
            var removed: [String] = []
            for path in targets where (try? FileManager.default.attributesOfItem(atPath: path)) != nil {
                // Another communicator on the same state may remove it at the same time: a file
                // gone under our feet is not a failure; what is gone in the end was removed.
                for attempt in 1...3 {
                    do {
                        try FileManager.default.removeItem(atPath: path)
                        break
                    } catch where (try? FileManager.default.attributesOfItem(atPath: path)) == nil {
                        break
                    } catch where attempt < 3 {
                        continue
                    } catch {
                        throw TransportError("cannot remove \(path): \(error.localizedDescription)")
                    }
                }
                removed.append(path)
            }
            return removed
        }
    }
}

/// `CaseCleaner` over ssh: one script through `SSHConnection.runScript` (any login shell).
public struct SSHCaseCleaner: CaseCleaner {
    public let connection: SSHConnection
    public var uploadDir: String
    public var downloadDir: String

    public init(connection: SSHConnection, uploadDir: String, downloadDir: String) {
        self.connection = connection
        self.uploadDir = uploadDir
        self.downloadDir = downloadDir
    }

    /// The paths as arguments; answers `MQI-REMOVED <n>` per removed path (1-based), then
    /// `MQI-END`, or `MQI-FAIL <n>` when one cannot be removed.
    static let removeScript = #"""
        i=0
        for p in "$@"; do
          i=$((i + 1))
          if [ -e "$p" ] || [ -L "$p" ]; then
            rm -rf -- "$p" 2>&1 || { echo "MQI-FAIL $i"; exit 0; }
            echo "MQI-REMOVED $i"
          fi
        done
        echo MQI-END
        """#

    public func removeCase(_ caseId: String) async throws -> [String] {
        let targets = try Self.targets(caseId, uploadDir: uploadDir, downloadDir: downloadDir)
        let output = try await connection.runScript(Self.removeScript, arguments: targets, timeoutSec: 600)
        let lines = output.stdoutText.split(separator: "\n")
        if let failed = lines.first(where: { $0.hasPrefix("MQI-FAIL ") }), let index = Int(failed.dropFirst("MQI-FAIL ".count)), targets.indices.contains(index - 1) {
            throw TransportError("cannot remove \(targets[index - 1]) on \(connection.destination): \(output.stdoutText)\(output.stderrText)")
        }
        guard lines.contains("MQI-END") else {
            throw TransportError("cannot remove the directories of case \(caseId) on \(connection.destination) (exit \(output.status)): \(output.stderrText)",
                                 transient: output.status == 255)
        }
        return lines.compactMap { line in
            guard line.hasPrefix("MQI-REMOVED "), let index = Int(line.dropFirst("MQI-REMOVED ".count)), targets.indices.contains(index - 1) else { return nil }
            return targets[index - 1]
        }
    }
}
