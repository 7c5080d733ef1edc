import Foundation
import MQICore
import MQIStore

extension Reports {
    /// `mqi status`: cases per status, the daemon, HPC hosts, GPUs, queues, the webhooks' backlog,
    /// cases waiting for their ready marker and the active cases; JSON with `json`.
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
        let webhooks = try await store.webhookBacklogs(config.notifications.webhooks)
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
                "webhooks": zip(config.notifications.webhooks, webhooks).map { webhook, backlog in
                    let next = nextTry(backlog, config: config.notifications)
                    return ["url": webhook.label, "events": webhook.events.map(\.rawValue), "registered": backlog.cursor != nil,
                            "pending": backlog.pending, "failed_tries": backlog.cursor?.attempts ?? 0,
                            "failing_since": backlog.cursor?.failingSince.map(isoDate) as Any, "last_error": backlog.cursor?.lastError as Any,
                            "last_try_at": backlog.lastFailedTryAt.map(isoDate) as Any, "next_try_by": next.map(isoDate) as Any] as [String: Any]
                },
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
        for (webhook, backlog) in zip(config.notifications.webhooks, webhooks) {
            lines.append("webhook: \(webhook.label)  " + webhookState(backlog, config: config.notifications, daemonRunning: daemon.running || store.isShared, now: now))
        }
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

    /// One webhook's line of `mqi status`: the events waiting, and while its next event keeps
    /// failing, since when, how many tries, the last error and when the next try is due.
    static func webhookState(_ backlog: WebhookBacklog, config: NotificationsConfig, daemonRunning: Bool, now: Date) -> String {
        guard let cursor = backlog.cursor else { return "not started yet (the daemon starts its delivery when it starts with it)" }
        let pending = "\(backlog.pending) event\(backlog.pending == 1 ? "" : "s") pending"
        guard cursor.attempts > 0 else { return pending + (backlog.pending > 0 ? ", delivering" : ", all delivered") }
        var text = pending + ", FAILING"
        if let since = cursor.failingSince {
            text += " since \(isoDate(since)) (\(duration(now.timeIntervalSince(since))))"
        }
        text += ": \(cursor.attempts) failed tr\(cursor.attempts == 1 ? "y" : "ies"), last: \(cursor.lastError ?? "no error recorded")"
        if let next = nextTry(backlog, config: config) {
            text += daemonRunning ? "; next try by \(isoDate(max(next, now)))" : "; next try when the daemon runs"
        }
        return text
    }

    /// When the next try of a failing webhook's event is due at the latest: its last failed try
    /// plus the backoff the notifier waits after that many tries (it waits up to a fifth less).
    static func nextTry(_ backlog: WebhookBacklog, config: NotificationsConfig) -> Date? {
        guard let cursor = backlog.cursor, cursor.attempts > 0, let last = backlog.lastFailedTryAt else { return nil }
        return last.addingTimeInterval(Notifier.backoff(afterTries: cursor.attempts, config: config))
    }

    /// `45 s`, `12 min`, `3 h 5 min`.
    static func duration(_ seconds: Double) -> String {
        let seconds = max(0, Int(seconds))
        if seconds < 120 { return "\(seconds) s" }
        if seconds < 2 * 3600 { return "\(seconds / 60) min" }
        return "\(seconds / 3600) h \(seconds % 3600 / 60) min"
    }
}
