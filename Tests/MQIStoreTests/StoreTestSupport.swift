import Foundation
import MQICore
@testable import MQIStore
import Synchronization
import MQITestSupport
import Testing

/// A clock the test moves by hand, so leases expire without sleeping.
final class ManualClock: Sendable {
    private let current: Mutex<Date>

    /// Starts on a whole second, so millisecond rounding in the database never matters.
    init(_ start: Date = Date(timeIntervalSince1970: 1_750_000_000)) {
        current = Mutex(start)
    }

    var now: Date { current.withLock { $0 } }

    func advance(by seconds: TimeInterval) {
        current.withLock { $0 = $0.addingTimeInterval(seconds) }
    }
}

/// A Store with a manual clock on a real SQLite file in a fresh temporary directory, or on a
/// fresh database of the test process's PostgreSQL server: the store contract holds on both.
struct StoreFixture {
    let backend: StoreBackendKind
    let directory: URL
    let clock: ManualClock
    let store: Store
    /// The PostgreSQL database's URL.
    let url: String?

    var databasePath: String { directory.appendingPathComponent("state.sqlite").path }

    init(backend: StoreBackendKind = .sqlite, maxDeliveries: Int = 5, clock: ManualClock = ManualClock()) throws {
        self.backend = backend
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("mqi-store-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        self.clock = clock
        switch backend {
        case .sqlite:
            url = nil
            store = try Store(path: directory.appendingPathComponent("state.sqlite").path, maxDeliveries: maxDeliveries,
                              now: { clock.now })
        case .postgres:
            let url = try PostgresServer.shared().freshDatabase()
            self.url = url
            store = try Store(postgres: PostgresLocation(url: url), maxDeliveries: maxDeliveries, now: { clock.now })
        }
    }

    /// A second Store on the same database (the CLI beside the daemon, or another communicator).
    func openAnother(maxDeliveries: Int = 5) throws -> Store {
        let clock = clock
        if let url {
            return try Store(postgres: PostgresLocation(url: url), maxDeliveries: maxDeliveries, now: { clock.now })
        }
        return try Store(path: databasePath, maxDeliveries: maxDeliveries, now: { clock.now })
    }

    func remove() {
        try? FileManager.default.removeItem(at: directory)
    }
}

enum Fixtures {
    static let workflowName = "qa"

    /// upload → simulate (1 GPU) → download.
    static func conductor() throws -> Conductor {
        let workflow = Workflow(name: workflowName, steps: [
            WorkflowStep(name: "upload", type: .upload, progress: 10, gpuCount: 0),
            WorkflowStep(name: "simulate", type: .execute, progress: 50, timeoutSec: 3600, gpuCount: 1,
                         command: try CommandTemplate("run --case {case_id} --gpu {gpu_id}")),
            WorkflowStep(name: "download", type: .download, progress: 90, gpuCount: 0),
        ])
        return Conductor(workflows: [workflowName: workflow], uploadDir: "/hpc/upload", downloadDir: "/hpc/download")
    }

    /// The original design's config: upload, two GPU steps (interpreter, MOQUI), download; GPUs 0 and 1.
    static let configYAML = SampleConfigs.issueExample

    static func config() throws -> Config {
        try ConfigLoader.parse(configYAML, file: "config.yaml", baseDirectory: "/srv/mqi")
    }

    /// The event a worker publishes when it succeeds with `command`.
    static func success(for command: ClaimedMessage) -> OutgoingMessage {
        switch command.kind {
        case .uploadCase: command.body.result(.caseUploadCompleted)
        case .executeCommand: command.body.result(.executionSucceeded)
        case .downloadResults: command.body.result(.resultsDownloadCompleted)
        default: fatalError("\(command.kind) is not a worker command")
        }
    }
}

/// Drives a Store the way the services do: the Conductor consumes conductor_queue, workers
/// consume their queues and publish their result with the acknowledgement.
struct Driver {
    let store: Store
    let conductor: Conductor
    var leaseSec: Double = 60

    /// Claims the oldest conductor_queue message and conducts it, acknowledging it in the same transaction.
    @discardableResult
    func conductNext(sourceLocation: SourceLocation = #_sourceLocation) async throws -> [AppliedDecision] {
        let message = try #require(try await store.claim(.conductor, owner: "conductor", leaseSec: leaseSec),
                                   "conductor_queue is empty", sourceLocation: sourceLocation)
        let event = try #require(ConductorEvent(message.kind, message.body), sourceLocation: sourceLocation)
        return try await store.conduct(event, caseId: message.body.caseId, conductor: conductor, acknowledging: message)
    }

    /// Claims the oldest message of a worker queue, checks it is for `caseId`, and completes it successfully.
    @discardableResult
    func work(_ queue: QueueName, expecting caseId: String, sourceLocation: SourceLocation = #_sourceLocation) async throws -> ClaimedMessage {
        let message = try #require(try await store.claim(queue, owner: "worker", leaseSec: leaseSec),
                                   "\(queue.rawValue) is empty", sourceLocation: sourceLocation)
        #expect(message.body.caseId == caseId, sourceLocation: sourceLocation)
        try await store.complete(message, publishing: Fixtures.success(for: message))
        return message
    }

    /// Registers a case and has the Conductor start it (its upload_case is then queued).
    func registerAndStart(_ caseId: String, workflow: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        #expect(try await store.registerCase(caseId, workflow: workflow), sourceLocation: sourceLocation)
        try await conductNext(sourceLocation: sourceLocation)
    }
}

/// Checks that GPU reservations are consistent: every GPU is held by at most one case, every
/// GPU a live case holds is reserved by it, and every reserved GPU is held by the case named.
func expectGPUInvariants(_ store: Store, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let gpus = try await store.gpus()
    let live = try await store.cases().filter { !$0.status.isFinal }
    var holder: [Int: String] = [:]
    for summary in live {
        for gpu in summary.gpuIds {
            #expect(holder[gpu] == nil, "GPU \(gpu) held by both \(holder[gpu] ?? "") and \(summary.caseId)", sourceLocation: sourceLocation)
            holder[gpu] = summary.caseId
        }
    }
    for gpu in gpus {
        #expect(gpu.reservedBy == holder[gpu.gpuId], "GPU \(gpu.gpuId) reserved_by \(gpu.reservedBy ?? "nil") but held by \(holder[gpu.gpuId] ?? "nil")",
                sourceLocation: sourceLocation)
        if gpu.status != .retired {
            #expect((gpu.status == .reserved) == (gpu.reservedBy != nil), "GPU \(gpu.gpuId): \(gpu)", sourceLocation: sourceLocation)
        }
    }
    for summary in try await store.cases() where summary.status.isFinal {
        #expect(summary.gpuIds.isEmpty, "final case \(summary.caseId) still holds \(summary.gpuIds)", sourceLocation: sourceLocation)
    }
}
