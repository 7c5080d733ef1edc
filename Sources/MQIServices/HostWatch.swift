import Foundation
import Logging
import MQIStore
import MQITransport
import ServiceLifecycle

/// Makes an HPC outage visible and ends it as soon as possible: records every change of the
/// host's reachability in the database (for `mqi status`, `/readyz`, the dashboard and
/// `mqi_hpc_reachable`), logs one WARNING when the host goes away and one INFO when it is back,
/// and while it is away probes it (one `true` through the transport, spaced by the backoff) so
/// that the paused workers resume within seconds of its return. Meanwhile every draining GPU
/// says why its stop is not confirmed (no stop is tried while the host is away).
struct HostWatch: Service {
    let reachability: HostReachability
    let runner: any CommandRunner
    let store: Store
    let logger: Logger
    var checkSec: Double = 0.25
    var maxProbeIntervalSec: Double = 5

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await watch() }
                group.addTask { await explainDrains() }
            }
        }
    }

    /// While the host is away, once a second: every draining GPU says why its stop is not
    /// confirmed (a case cancelled during the outage drains one too). Its own loop: a probe
    /// can wait for the connection's reconnect patience.
    func explainDrains() async {
        var written: String?
        while !Task.isCancelled {
            let state = reachability.current
            if !state.reachable {
                let reason = "stop not confirmed yet: the HPC host \(reachability.host) is unreachable since \(state.since.formatted(.iso8601)) "
                    + "(\(state.reason ?? "no answer")); the stop is tried when it answers"
                do {
                    try await store.noteDrainsBlocked(reason: reason)
                    written = reason
                } catch {
                    logger.error("cannot record why draining GPUs wait: \(error)")
                }
            } else if let stale = written {
                try? await store.noteDrainsBlocked(reason: nil, replacing: stale)
                written = nil
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    func watch() async {
        var recorded: HostReachability.State?
        var probeInterval = 0.5
        var nextProbe = Date()
        while !Task.isCancelled {
            let state = reachability.current
            if state != recorded {
                if let recorded {
                    if state.reachable {
                        let seconds = Int(state.since.timeIntervalSince(recorded.since).rounded())
                        logger.info("the HPC host \(reachability.host) is reachable again after \(seconds) s; resuming the work that needed it",
                                    metadata: ["ssh.host": "\(reachability.host)"])
                    } else if recorded.reachable {
                        logger.warning("the HPC host \(reachability.host) is unreachable: \(state.reason ?? "no answer"); work that needs it is paused, running steps keep running there",
                                       metadata: ["ssh.host": "\(reachability.host)"])
                    }
                }
                do {
                    try await store.recordHost(HostState(host: reachability.host, reachable: state.reachable, since: state.since, reason: state.reason))
                } catch {
                    logger.error("cannot record the HPC host's state: \(error)")
                }
                let flipped = state.reachable != recorded?.reachable
                recorded = state
                if flipped {
                    probeInterval = 0.5
                    nextProbe = Date().addingTimeInterval(probeInterval)
                }
            }
            if !state.reachable, Date() >= nextProbe {
                // Goes through the connection, which marks the host reachable when it answers.
                _ = try? await runner.capture("true", timeoutSec: 10)
                probeInterval = min(maxProbeIntervalSec, probeInterval * 2)
                nextProbe = Date().addingTimeInterval(probeInterval)
            }
            try? await Task.sleep(for: .seconds(checkSec))
        }
    }
}
