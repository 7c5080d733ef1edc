import Foundation
import Logging
import MQICore
import MQIMetrics
import MQIStore
import MQITransport
import ServiceLifecycle

/// Every `gpu_monitor.interval_sec`, runs nvidia-smi through the transport and records what the
/// hardware says: telemetry for the metrics and `mqi gpus`, and GPUs that are busy with a
/// foreign process or have vanished, which are then not reserved; each reading also goes into the
/// last hour's history the dashboard draws (`MQIMetrics.gpuHistory`). Never crashes on bad output.
public struct GPUMonitor: Service {
    let config: GPUMonitorConfig
    let runner: any CommandRunner
    let store: Store
    let conductor: Conductor
    let metrics: MQIMetrics
    let logger: Logger

    public init(config: GPUMonitorConfig, runner: any CommandRunner, store: Store, conductor: Conductor, metrics: MQIMetrics, logger: Logger) {
        self.config = config
        self.runner = runner
        self.store = store
        self.conductor = conductor
        self.metrics = metrics
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            // The daemon takes the first reading before it starts; then one every interval.
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(config.intervalSec))
                if Task.isCancelled { break }
                await poll()
            }
        }
    }

    /// One reading. Returns the samples it recorded (nil when nvidia-smi could not be read).
    @discardableResult
    public func poll() async -> [GPUSample]? {
        guard let samples = await Self.read(config.command, runner: runner, logger: logger) else { return nil }
        do {
            let before = Dictionary(uniqueKeysWithValues: try await store.gpus().map { ($0.gpuId, $0.health) })
            let recovered = try await store.recordGPUTelemetry(samples, busyMemoryMB: config.busyMemoryMB)
            var healthChanged = false
            let now = Date()
            for gpu in try await store.gpus() where gpu.status != .retired {
                if gpu.health != .missing {
                    metrics.gpuHistory.record(gpuId: gpu.gpuId, GPUHistorySample(
                        at: now, utilizationPercent: gpu.utilizationPercent, memoryUsedMB: gpu.memoryUsedMB, memoryTotalMB: gpu.memoryTotalMB))
                }
                if let utilization = gpu.utilizationPercent { metrics.gpuUtilization(gpu.gpuId).set(to: utilization) }
                if let used = gpu.memoryUsedMB { metrics.gpuMemoryUsed(gpu.gpuId).set(to: used * 1_048_576) }
                if gpu.health != before[gpu.gpuId] {
                    healthChanged = true
                    switch gpu.health {
                    case .busy: logger.warning("GPU \(gpu.gpuId) is free here but busy on the hardware (\(Int(gpu.memoryUsedMB ?? 0)) MiB used by another process); not reserving it until it frees up", metadata: ["gpu_id": "\(gpu.gpuId)"])
                    case .missing: logger.warning("GPU \(gpu.gpuId) is not listed by nvidia-smi; marked unavailable", metadata: ["gpu_id": "\(gpu.gpuId)"])
                    case .ok: logger.info("GPU \(gpu.gpuId) is available again", metadata: ["gpu_id": "\(gpu.gpuId)"])
                    }
                }
            }
            // A GPU back may start a waiting case; a GPU lost may leave a waiting case that can
            // never be served, which then no longer holds up the cases behind it.
            if !recovered.isEmpty || healthChanged {
                ConductorService.log(try await store.dispatchPending(conductor: conductor), logger: logger)
            }
        } catch {
            logger.error("cannot record GPU telemetry: \(error)")
        }
        return samples
    }

    /// Runs nvidia-smi and parses it; problems become WARNINGs.
    public static func read(_ command: String, runner: any CommandRunner, logger: Logger) async -> [GPUSample]? {
        let result: CommandResult
        do {
            result = try await runner.capture(command, timeoutSec: 30)
        } catch {
            logger.warning("cannot run nvidia-smi: \(error)")
            return nil
        }
        guard result.status == 0 else {
            logger.warning("nvidia-smi exited with status \(result.status): \(String(result.output.prefix(300)))")
            return nil
        }
        let parsed = NvidiaSMI.parse(result.output)
        for warning in parsed.warnings { logger.warning("\(warning)") }
        return parsed.gpus
    }
}
