import Foundation
import MQICore
import MQIStore

extension Reports {
    /// `mqi status`: cases per status, the daemon, HPC hosts, GPUs, queues, cases waiting for
    /// their ready marker and the active cases; JSON with `json`.
    public static func status(config: Config, store: Store, json: Bool) async throws -> String {
        let counts = try await store.statusCounts()
        let gpus = try await store.gpus()
        let depths = try await store.queueDepths()
        let dead = try await store.deadLetters()
        let daemon = PIDLock.holder(of: config.state.pidFile)
        let hosts = try await store.hosts()
        // Written by the daemon's scanner (`MarkerWaitList`); only with a ready marker.
        let waitList = config.scanner.readyMarker == nil ? nil : MarkerWaitList.read(from: MarkerWaitList.path(state: config.state))
        let waiting = waitList?.cases ?? []
        let now = Date()
        // A shared PostgreSQL state: the communicators working on it (heartbeat rows).
        let communicators = store.isShared ? try await store.instances() : []
        if json {
            var object: [String: Any] = [
                "daemon_running": daemon.running,
                "daemon_pid": daemon.running ? daemon.pid.map { Int($0) } as Any : NSNull(),
                "cases": Dictionary(uniqueKeysWithValues: counts.map { ($0.key.rawValue, $0.value) }),
                "gpus": gpus.map { ["gpu_id": $0.gpuId, "status": $0.status.rawValue, "reserved_by": $0.reservedBy as Any,
                                    "draining_for": $0.drain?.caseId as Any, "drain_reason": $0.drain?.reason as Any] },
                "hosts": hosts.map { ["host": $0.host, "reachable": $0.reachable, "since": isoDate($0.since), "reason": $0.reason as Any] },
                "queues": Dictionary(uniqueKeysWithValues: depths.map { ($0.key.rawValue, $0.value) }),
                "dead_letters": dead.count,
                "waiting_for_marker": waiting.map { entry in
                    ["case_id": entry.caseId, "since": isoDate(entry.since), "waited_min": Int(now.timeIntervalSince(entry.since) / 60),
                     "overdue": waitList?.isOverdue(entry, now: now) ?? false] as [String: Any]
                },
            ]
            if store.isShared {
                object["communicators"] = communicators.map { instance in
                    ["name": instance.name, "host": instance.host, "pid": instance.pid, "alive": instance.alive,
                     "heartbeat_at": isoDate(instance.heartbeatAt), "started_at": isoDate(instance.startedAt),
                     "leases": instance.leases.map { ["kind": $0.kind, "case_id": $0.caseId] }] as [String: Any]
                }
            }
            return try jsonObjectText(object)
        }
        var lines: [String] = []
        lines.append("daemon: " + (daemon.running ? "running (PID \(daemon.pid.map(String.init) ?? "?"))" : "not running"))
        if store.isShared {
            let alive = communicators.filter(\.alive)
            lines.append("communicators: \(alive.count) alive" + (alive.isEmpty ? "" : ":"))
            for instance in communicators {
                let age = Int(now.timeIntervalSince(instance.heartbeatAt))
                let holds = instance.leases.isEmpty ? "holds nothing"
                    : "holds \(instance.leases.count): " + instance.leases.prefix(6).map { "\($0.kind) \($0.caseId)" }.joined(separator: ", ") + (instance.leases.count > 6 ? ", …" : "")
                lines.append("  \(instance.name)  \(instance.alive ? "alive" : "GONE (no heartbeat)")  \(instance.host) PID \(instance.pid)  heartbeat \(age) s ago  \(holds)")
            }
        }
        lines.append("cases:  " + CaseStatus.allCases.map { "\($0.rawValue) \(counts[$0] ?? 0)" }.joined(separator: "  "))
        for host in hosts {
            let seconds = Int(Date().timeIntervalSince(host.since))
            lines.append("hpc:    " + (host.reachable ? "\(host.host) reachable"
                                                      : "\(host.host) UNREACHABLE since \(isoDate(host.since)) (\(seconds) s): \(host.reason ?? "no answer"); work that needs it is paused"))
        }
        lines.append("gpus:   " + (gpus.isEmpty ? "none" : gpus.map { gpu in
            let holder = gpu.status == .draining ? " (\(gpu.holder ?? ""))" : gpu.reservedBy.map { " by \($0)" } ?? ""
            return "\(gpu.gpuId): \(gpu.status.rawValue)\(holder)"
        }.joined(separator: "  ")))
        lines.append("queues: " + QueueName.allCases.map { "\($0.rawValue) \(depths[$0] ?? 0)" }.joined(separator: "  ") + "  dead_letters \(dead.count)")
        if let waitList, !waiting.isEmpty {
            let asOf = daemon.running ? "" : " (as the daemon last saw it, \(isoDate(waitList.updatedAt)); it is not running)"
            lines.append("waiting for \(waitList.marker)\(asOf):")
            for entry in waiting {
                let minutes = Int(now.timeIntervalSince(entry.since) / 60)
                let overdue = waitList.isOverdue(entry, now: now) ? "  OVER scanner.marker_timeout_min (\(MarkerWaitList.formatMinutes(waitList.timeoutMin)))" : ""
                lines.append("  \(entry.caseId)  since \(isoDate(entry.since)) (\(minutes) min)\(overdue)")
            }
        }
        let active = try await store.cases(status: .processing, limit: 50) + (try await store.cases(status: .pendingResource, limit: 50))
        if !active.isEmpty {
            lines.append("active:")
            for summary in active {
                let filled = summary.progress / 5
                let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: 20 - filled)
                let gpus = summary.gpuIds.isEmpty ? "" : " GPU \(summary.gpuIds.map(String.init).joined(separator: ","))"
                lines.append("  [\(bar)] \(String(format: "%3d", summary.progress))%  \(summary.caseId)  \(summary.status.rawValue) \(summary.workflowStep ?? "-")\(gpus)")
            }
        }
        return lines.joined(separator: "\n")
    }
}
