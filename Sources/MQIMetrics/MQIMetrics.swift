import Foundation
#if canImport(Glibc)
import Glibc
#endif
import MQICore
import MQIStore
import Prometheus
import Synchronization

/// Every metric the communicator exports, on one registry (passed in, never global). Counters
/// and histograms are updated by the services as things happen; gauges that describe the state
/// (`mqi_cases{status}`, queue depths, GPU reservations, how long the oldest case has waited)
/// are read from the database at scrape time, so they are right after a restart; so is the free
/// space under the state directory.
public final class MQIMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    public let casesReceived: Counter
    public let casesCompleted: Counter
    public let casesFailed: Counter
    public let activeJobs: Gauge
    public let deadLetters: Gauge
    public let sshConnectionsOpened: Counter
    public let oldestPendingResource: Gauge
    public let oldestMarkerWait: Gauge
    public let casesWaitingForMarker: Gauge
    /// Each GPU's utilization and memory over the last hour (the GPU monitor records, the
    /// dashboard draws it).
    public let gpuHistory = GPUHistory()
    /// When each case directory the scanner sees without its ready marker was first seen.
    let markerWaitsSince = Mutex<[Date]>([])
    /// When each PENDING_RESOURCE case entered that status, read from its history once per
    /// change of the case (keyed by case id, with the `updated_at` it was read at).
    let pendingSince = Mutex<[String: (updatedAt: Date, since: Date)]>([:])

    static let durationBuckets: [Double] = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        casesReceived = registry.makeCounter(name: "mqi_cases_received_total", help: "Cases registered by the case scanner.")
        casesCompleted = registry.makeCounter(name: "mqi_cases_completed_total", help: "Cases that reached COMPLETED.")
        casesFailed = registry.makeCounter(name: "mqi_cases_failed_total", help: "Cases that reached FAILED.")
        activeJobs = registry.makeGauge(name: "mqi_active_jobs", help: "Steps (executions and transfers) running in this daemon now.")
        deadLetters = registry.makeGauge(name: "mqi_dead_letters", help: "Messages set aside in the dead letters.")
        sshConnectionsOpened = registry.makeCounter(name: "mqi_ssh_connections_opened_total", help: "New SSH connections (ControlMaster) opened to the HPC.")
        oldestPendingResource = registry.makeGauge(
            name: "mqi_oldest_pending_resource_seconds",
            help: "Seconds the longest-waiting PENDING_RESOURCE case has waited for GPUs since it entered that status; 0 when none waits.")
        oldestMarkerWait = registry.makeGauge(
            name: "mqi_oldest_marker_wait_seconds",
            help: "Seconds the longest-waiting case directory in local_logdata has waited for its ready marker; 0 when none waits.")
        casesWaitingForMarker = registry.makeGauge(
            name: "mqi_cases_waiting_for_marker", help: "Case directories in local_logdata seen without their ready marker (not registered yet).")
        for queue in QueueName.allCases { _ = queueDepth(queue) }
        for status in CaseStatus.allCases { _ = cases(status) }
    }

    public func taskDuration(type: StepType, step: String) -> ValueHistogram {
        registry.makeValueHistogram(name: "mqi_task_execution_duration_seconds", labels: [("task_type", "\(type.rawValue):\(step)")],
                                    buckets: Self.durationBuckets, help: "How long each step attempt took, by step type and name.")
    }

    public func stepRetries(step: String) -> Counter {
        registry.makeCounter(name: "mqi_step_retries_total", labels: [("step", step)], help: "Step deliveries given back for a retry after a transient failure.")
    }

    public func transferBytes(direction: String) -> Counter {
        registry.makeCounter(name: "mqi_transfer_bytes_total", labels: [("direction", direction)], help: "Bytes of case files uploaded and results downloaded.")
    }

    public func cases(_ status: CaseStatus) -> Gauge {
        registry.makeGauge(name: "mqi_cases", labels: [("status", status.rawValue)], help: "Cases per status, from the database.")
    }

    public func queueDepth(_ queue: QueueName) -> Gauge {
        registry.makeGauge(name: "mqi_queue_depth", labels: [("queue", queue.rawValue)], help: "Messages queued or leased per queue.")
    }

    public func gpuUtilization(_ id: Int) -> Gauge {
        registry.makeGauge(name: "mqi_gpu_utilization_percent", labels: [("gpu_id", String(id))], help: "GPU utilization reported by nvidia-smi.")
    }

    public func gpuMemoryUsed(_ id: Int) -> Gauge {
        registry.makeGauge(name: "mqi_gpu_memory_used_bytes", labels: [("gpu_id", String(id))], help: "GPU memory in use reported by nvidia-smi.")
    }

    public func gpuReserved(_ id: Int) -> Gauge {
        registry.makeGauge(name: "mqi_gpu_reserved", labels: [("gpu_id", String(id))], help: "1 if the GPU is reserved by a case, else 0.")
    }

    public func gpuDraining(_ id: Int) -> Gauge {
        registry.makeGauge(name: "mqi_gpu_draining", labels: [("gpu_id", String(id))],
                           help: "1 while the GPU waits for its previous holder's attempt to be confirmed stopped, else 0.")
    }

    public func hpcReachable(_ host: String) -> Gauge {
        registry.makeGauge(name: "mqi_hpc_reachable", labels: [("host", host)], help: "1 if the HPC host answers over SSH, 0 while it is unreachable.")
    }

    /// Outbox events a webhook (`notifications.webhooks`, labelled `WebhookConfig.label`: its URL without credentials or query) has not got yet.
    public func webhookPendingEvents(_ url: String) -> Gauge {
        registry.makeGauge(name: "mqi_webhook_pending_events", labels: [("url", url)],
                           help: "Events recorded for the webhook and not delivered yet (it is down or refusing when this grows).")
    }

    /// Failed tries (an answer other than 2xx, no connection, a timeout) to deliver an event to a webhook.
    public func webhookFailures(_ url: String) -> Counter {
        registry.makeCounter(name: "mqi_webhook_failures_total", labels: [("url", url)],
                             help: "Failed tries to deliver an event to the webhook (non-2xx answer, refused connection, timeout); each is retried.")
    }

    /// 1 for the GPU's current health (`ok`, `busy`: in use by a foreign process, `missing`: not
    /// listed by nvidia-smi), 0 for the others.
    public func gpuHealth(_ id: Int, _ health: GPUResource.Health) -> Gauge {
        registry.makeGauge(name: "mqi_gpu_health", labels: [("gpu_id", String(id)), ("health", health.rawValue)],
                           help: "1 for the GPU's current health as nvidia-smi shows it (ok; busy: used by a foreign process; missing: not listed), else 0.")
    }

    static let gpuHealthStates: [GPUResource.Health] = [.ok, .busy, .missing]

    public func stateDiskFreeBytes(_ path: String) -> Gauge {
        registry.makeGauge(name: "mqi_state_disk_free_bytes", labels: [("path", path)],
                           help: "Bytes available to the daemon on the file system holding the state directory (the SQLite database, or the PID file with PostgreSQL).")
    }

    public func stateDiskFreeRatio(_ path: String) -> Gauge {
        registry.makeGauge(name: "mqi_state_disk_free_ratio", labels: [("path", path)],
                           help: "Fraction (0 to 1) of the file system holding the state directory that is available to the daemon.")
    }

    /// The scanner's cases waiting for their ready marker: when each was first seen without it.
    public func recordMarkerWaits(since: [Date]) {
        markerWaitsSince.withLock { $0 = since }
    }

    /// Reads the state gauges from the database (and the free space under `stateDirectory`, the
    /// directory holding the state: `StateConfig.localDirectory`).
    public func refresh(from store: Store, stateDirectory: String? = nil, now: Date = Date()) async throws {
        let counts = try await store.statusCounts()
        for (status, count) in counts { cases(status).set(to: Double(count)) }
        oldestPendingResource.set(to: try await oldestPendingSince(store, waiting: counts[.pendingResource] ?? 0).map { max(0, now.timeIntervalSince($0)) } ?? 0)
        let markerWaits = markerWaitsSince.withLock { $0 }
        casesWaitingForMarker.set(to: Double(markerWaits.count))
        oldestMarkerWait.set(to: markerWaits.min().map { max(0, now.timeIntervalSince($0)) } ?? 0)
        if let stateDirectory, let space = Self.freeSpace(stateDirectory) {
            stateDiskFreeBytes(stateDirectory).set(to: space.bytes)
            stateDiskFreeRatio(stateDirectory).set(to: space.ratio)
        }
        let depths = try await store.queueDepths()
        for (queue, depth) in depths { queueDepth(queue).set(to: Double(depth)) }
        deadLetters.set(to: Double(try await store.deadLetterCount()))
        for gpu in try await store.gpus() where gpu.status != .retired {
            gpuReserved(gpu.gpuId).set(to: gpu.status == .reserved ? 1.0 : 0.0)
            gpuDraining(gpu.gpuId).set(to: gpu.status == .draining ? 1.0 : 0.0)
            for health in Set(Self.gpuHealthStates + [gpu.health]) {
                gpuHealth(gpu.gpuId, health).set(to: gpu.health == health ? 1.0 : 0.0)
            }
        }
        for host in try await store.hosts() {
            hpcReachable(host.host).set(to: host.reachable ? 1.0 : 0.0)
        }
    }

    /// The exposition text.
    public func render(from store: Store, stateDirectory: String? = nil) async throws -> String {
        try await refresh(from: store, stateDirectory: stateDirectory)
        return registry.emitToString()
    }

    /// When the longest-waiting PENDING_RESOURCE case entered that status (the first entry of the
    /// last run of PENDING_RESOURCE entries in its history); nil when none waits. A case's history
    /// is read again only when its `updated_at` changed, so a scrape costs one query while the
    /// same cases wait.
    func oldestPendingSince(_ store: Store, waiting: Int) async throws -> Date? {
        guard waiting > 0 else {
            pendingSince.withLock { $0 = [:] }
            return nil
        }
        let pending = try await store.cases(status: .pendingResource)
        let known = pendingSince.withLock { $0 }
        var current: [String: (updatedAt: Date, since: Date)] = [:]
        for summary in pending {
            if let entry = known[summary.caseId], entry.updatedAt == summary.updatedAt {
                current[summary.caseId] = entry
                continue
            }
            let history = try await store.history(summary.caseId)
            let since = history.reversed().prefix { $0.status == .pendingResource }.last?.at ?? summary.updatedAt
            current[summary.caseId] = (summary.updatedAt, since)
        }
        pendingSince.withLock { $0 = current }
        return current.values.map(\.since).min()
    }

    /// Bytes available to an unprivileged process under `path`, and that as a fraction of the
    /// file system's size; nil when `statvfs` fails (the directory is gone).
    static func freeSpace(_ path: String) -> (bytes: Double, ratio: Double)? {
        var stats = statvfs()
        guard statvfs(path, &stats) == 0, stats.f_blocks > 0 else { return nil }
        let blockSize = Double(stats.f_frsize)
        let available = Double(stats.f_bavail) * blockSize
        return (available, Double(stats.f_bavail) / Double(stats.f_blocks))
    }
}
