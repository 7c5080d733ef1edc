import Foundation
import MQICore
import MQIStore
import Prometheus

/// Every metric the communicator exports, on one registry (passed in, never global). Counters
/// and histograms are updated by the services as things happen; gauges that describe the state
/// (`mqi_cases{status}`, queue depths, GPU reservations) are read from the database at scrape
/// time, so they are right after a restart.
public final class MQIMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    public let casesReceived: Counter
    public let casesCompleted: Counter
    public let casesFailed: Counter
    public let activeJobs: Gauge
    public let deadLetters: Gauge
    public let sshConnectionsOpened: Counter

    static let durationBuckets: [Double] = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        casesReceived = registry.makeCounter(name: "mqi_cases_received_total", help: "Cases registered by the case scanner.")
        casesCompleted = registry.makeCounter(name: "mqi_cases_completed_total", help: "Cases that reached COMPLETED.")
        casesFailed = registry.makeCounter(name: "mqi_cases_failed_total", help: "Cases that reached FAILED.")
        activeJobs = registry.makeGauge(name: "mqi_active_jobs", help: "Steps (executions and transfers) running in this daemon now.")
        deadLetters = registry.makeGauge(name: "mqi_dead_letters", help: "Messages set aside in the dead letters.")
        sshConnectionsOpened = registry.makeCounter(name: "mqi_ssh_connections_opened_total", help: "New SSH connections (ControlMaster) opened to the HPC.")
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

    /// Reads the state gauges from the database.
    public func refresh(from store: Store) async throws {
        let counts = try await store.statusCounts()
        for (status, count) in counts { cases(status).set(to: Double(count)) }
        let depths = try await store.queueDepths()
        for (queue, depth) in depths { queueDepth(queue).set(to: Double(depth)) }
        deadLetters.set(to: Double(try await store.deadLetterCount()))
        for gpu in try await store.gpus() where gpu.status != .retired {
            gpuReserved(gpu.gpuId).set(to: gpu.status == .reserved ? 1.0 : 0.0)
            gpuDraining(gpu.gpuId).set(to: gpu.status == .draining ? 1.0 : 0.0)
        }
        for host in try await store.hosts() {
            hpcReachable(host.host).set(to: host.reachable ? 1.0 : 0.0)
        }
    }

    /// The exposition text.
    public func render(from store: Store) async throws -> String {
        try await refresh(from: store)
        return registry.emitToString()
    }
}
