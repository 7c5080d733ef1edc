import Foundation
import Logging
import MQICore
import MQIMetrics
import MQIStore
import MQITransport
import ServiceLifecycle

/// Consumes `file_transfer_queue`: uploads cases and downloads results, reporting
/// `case_upload_completed` / `results_download_completed` or `file_transfer_failed`.
public struct FileTransferService: Service {
    let store: Store
    let mover: any FileMover
    let localLogdata: String
    let readyMarker: String?
    let resultsDir: String
    /// Where the scanner puts follow-up jobs' uploads together (nil: no follow-ups).
    var followupsDir: String?
    /// Told of each finished download (the HPC cleanup of the case follows its completion).
    var cleanupCue: CleanupCue?
    let concurrency: Int
    let retry: RetryPolicy
    let logger: Logger
    let metrics: MQIMetrics
    /// The HPC host's reachability: no transfer is claimed while it is away.
    let reachability: HostReachability?

    public init(store: Store, mover: any FileMover, localLogdata: String, readyMarker: String? = nil, resultsDir: String, concurrency: Int, retry: RetryPolicy, logger: Logger, metrics: MQIMetrics,
                reachability: HostReachability? = nil) {
        self.metrics = metrics
        self.reachability = reachability
        self.store = store
        self.mover = mover
        self.localLogdata = localLogdata
        self.readyMarker = readyMarker
        self.resultsDir = resultsDir
        self.concurrency = concurrency
        self.retry = retry
        self.logger = logger
    }

    public func run() async throws {
        var worker = QueueWorker(store: store, queue: .fileTransfer, name: "transfer", concurrency: concurrency, retry: retry, logger: logger, metrics: metrics)
        worker.gate = reachability
        let transfers = worker
        await cancelWhenGracefulShutdown {
            await transfers.run { message in try await handle(message) }
        }
    }

    /// The upload of a follow-up job (`<case_id>#<delivery>`), put together by the scanner; nil
    /// for a case.
    func followupDirectory(_ caseId: String) -> String? {
        guard let followupsDir, caseId.contains("#") else { return nil }
        let path = (followupsDir as NSString).appendingPathComponent(caseId)
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }

    /// Moves a follow-up job's downloaded results to `results_dir/<case_id>/deliveries/<delivery>`
    /// (replacing an earlier copy), beside the case's own results, which stay as they are.
    func placeFollowupResults(_ jobId: String) throws {
        guard let hash = jobId.lastIndex(of: "#") else { return }
        let files = FileManager.default
        let downloaded = (resultsDir as NSString).appendingPathComponent(jobId)
        let deliveries = ((resultsDir as NSString).appendingPathComponent(String(jobId[..<hash])) as NSString).appendingPathComponent("deliveries")
        let target = (deliveries as NSString).appendingPathComponent(String(jobId[jobId.index(after: hash)...]))
        do {
            try files.createDirectory(atPath: deliveries, withIntermediateDirectories: true)
            if files.fileExists(atPath: target) { try files.removeItem(atPath: target) }
            try files.moveItem(atPath: downloaded, toPath: target)
        } catch {
            throw TransportError("cannot move the results of follow-up \(jobId) to \(target): \(error.localizedDescription)", transient: true)
        }
    }

    func handle(_ message: ClaimedMessage) async throws -> OutgoingMessage? {
        let body = message.body
        guard let state = try await store.caseState(body.caseId), state.status == .processing,
              state.stepIndex == body.stepIndex, state.attempt == body.attempt else {
            logger.info("skipping \(message.kind.rawValue): the case is no longer at this step", metadata: ["case_id": "\(body.caseId)"])
            return nil
        }
        let started = Date()
        metrics.activeJobs.increment()
        defer {
            metrics.activeJobs.decrement()
            let type: StepType = message.kind == .uploadCase ? .upload : .download
            metrics.taskDuration(type: type, step: body.step ?? message.kind.rawValue).record(Date().timeIntervalSince(started))
        }
        do {
            let report: TransferReport
            let done: MessageKind
            switch message.kind {
            case .uploadCase:
                // A follow-up job uploads what the scanner put together for it (plan + delivery).
                let caseDir = followupDirectory(body.caseId) ?? (localLogdata as NSString).appendingPathComponent(body.caseId)
                // Refuse empty cases and symlinks out of the case before anything is sent.
                try CaseInspection.check(caseDir, ignoring: Set([readyMarker].compactMap { $0 }))
                report = try await mover.upload(caseId: body.caseId, from: caseDir)
                done = .caseUploadCompleted
            case .downloadResults:
                try FileManager.default.createDirectory(atPath: resultsDir, withIntermediateDirectories: true)
                report = try await mover.download(caseId: body.caseId, into: resultsDir)
                if followupDirectory(body.caseId) != nil { try placeFollowupResults(body.caseId) }
                done = .resultsDownloadCompleted
                cleanupCue?.downloadFinished(caseId: body.caseId, stepIndex: body.stepIndex, attempt: body.attempt)
            default:
                return body.result(.fileTransferFailed, reason: "\(message.kind.rawValue) is not a file transfer")
            }
            metrics.transferBytes(direction: done == .caseUploadCompleted ? "upload" : "download").increment(by: report.bytes)
            logger.info("\(message.kind.rawValue): \(report.files) files, \(report.bytes) bytes in \(String(format: "%.2f", Date().timeIntervalSince(started))) s",
                        metadata: ["case_id": "\(body.caseId)"])
            return body.result(done)
        } catch let error as TransportError where !error.isTransient {
            logger.warning("\(message.kind.rawValue) failed: \(error)", metadata: ["case_id": "\(body.caseId)"])
            return body.result(.fileTransferFailed, reason: error.description)
        }
    }
}
