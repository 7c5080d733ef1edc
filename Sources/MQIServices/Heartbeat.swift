import Foundation
import Logging
import MQICore
import MQIStore
import ServiceLifecycle

/// Keeps this communicator's row in `instances` fresh (every `intervalSec`), so `mqi status`,
/// the API and the dashboard list the communicators alive on a shared state and what each
/// holds; removes it at a graceful stop.
struct Heartbeat: Service {
    let store: Store
    let logger: Logger
    var intervalSec: Double = 5

    func run() async throws {
        let started = Date()
        let host = StateConfig.localHostName
        let pid = Int(ProcessInfo.processInfo.processIdentifier)
        await cancelWhenGracefulShutdown {
            var failing = false
            while !Task.isCancelled {
                do {
                    try await store.heartbeat(host: host, pid: pid, version: nil, startedAt: started)
                    if failing { logger.info("heartbeat recorded again") }
                    failing = false
                } catch is CancellationError {
                    break
                } catch {
                    if !failing { logger.warning("cannot record this communicator's heartbeat: \(error)") }
                    failing = true
                }
                try? await Task.sleep(for: .seconds(intervalSec))
            }
        }
        do {
            try store.removeHeartbeat()
        } catch {
            logger.warning("cannot remove this communicator's heartbeat at shutdown: \(error)")
        }
    }
}
