import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import MQICore
import MQIMetrics
import MQIStore
import ServiceLifecycle

/// Delivers the outbox (events the store records with their cause) to `notifications.webhooks`:
/// per webhook, one JSON POST per subscribed event, strictly in the events' order, each retried
/// with exponential backoff (capped at `max_backoff_sec`) until the receiver answers 2xx. The
/// webhook's cursor (the last event delivered) is in the database, so a receiver that was down,
/// or a communicator that was killed, gets or sends every event afterwards. Delivery is at least
/// once: a communicator killed between the receiver's 2xx and moving the cursor sends that one
/// event again (the payload's `id` lets the receiver drop it). Communicators sharing a
/// PostgreSQL state take turns through a lease on the cursor: one delivers a webhook at a time.
struct Notifier: Service {
    let config: NotificationsConfig
    let store: Store
    /// The payload's `instance` and the cursor lease's owner.
    let instance: String
    let logger: Logger
    let metrics: MQIMetrics?
    /// How often an idle webhook looks for new events.
    var pollSec: Double = 0.5
    /// The first wait after a failed try; it doubles up to `config.maxBackoffSec`.
    var initialBackoffSec: Double = Self.initialBackoffSec
    static let initialBackoffSec: Double = 1

    /// The lease on a webhook's cursor: longer than two tries, so it only lapses when its holder died or hangs.
    var leaseSec: Double { max(store.leaseSec, config.timeoutSec * 2 + 5) }

    /// The configured webhooks: each once (the config loader rejects a second entry with the same label).
    var webhooks: [WebhookConfig] { config.webhooks }

    /// The longest wait after the `tries`-th failed try in a row of an event (before jitter,
    /// which shortens it by up to a fifth): the wait doubles from `initial` up to
    /// `notifications.max_backoff_sec`. Counted from the cursor's tries, so a communicator
    /// restarted during an outage goes on waiting as long as before.
    static func backoff(afterTries tries: Int, initial: Double = initialBackoffSec, config: NotificationsConfig) -> Double {
        min(config.maxBackoffSec, initial * pow(2, Double(min(30, max(1, tries) - 1))))
    }

    /// Gives every configured webhook its cursor (a new one starts after the events recorded so
    /// far): called at start, before the scanner can record anything.
    func registerWebhooks() async throws {
        for webhook in webhooks {
            try await store.registerWebhook(url: webhook.url, events: webhook.events, owner: instance)
        }
    }

    func run() async throws {
        let session = URLSession(configuration: {
            let configuration = URLSessionConfiguration.ephemeral
            configuration.timeoutIntervalForRequest = config.timeoutSec
            configuration.timeoutIntervalForResource = config.timeoutSec
            configuration.httpMaximumConnectionsPerHost = 1
            return configuration
        }())
        defer { session.finishTasksAndInvalidate() }
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                for webhook in webhooks {
                    group.addTask { await deliver(webhook, session: session) }
                }
            }
        }
    }

    /// One webhook's delivery loop, until shutdown.
    func deliver(_ webhook: WebhookConfig, session: URLSession) async {
        let label = webhook.label
        // The failures counter exists from the start (0), so rate() and increase() see the first failure.
        _ = metrics?.webhookFailures(label)
        let logger = {
            var logger = self.logger
            logger[metadataKey: "webhook.url"] = "\(label)"
            return logger
        }()
        var outage: (since: Date, tries: Int)?
        var storeProblem = false
        var lastRegistration = Date.distantPast
        defer {
            do { try store.releaseWebhook(url: webhook.url, owner: instance) } catch {
                logger.warning("cannot give up the delivery of webhook \(label) at shutdown (another communicator takes it when the lease expires): \(error)")
            }
        }
        while !Task.isCancelled {
            do {
                // At start, then hourly: the cursor says the webhook is still configured (retention).
                if Date().timeIntervalSince(lastRegistration) > 3600 {
                    try await store.registerWebhook(url: webhook.url, events: webhook.events, owner: instance)
                    lastRegistration = Date()
                }
                let pending = try await store.pendingWebhookEvents(url: webhook.url, events: webhook.events)
                metrics?.webhookPendingEvents(label).set(to: Double(pending))
                if storeProblem {
                    logger.info("webhook \(label): the state database answers again")
                    storeProblem = false
                }
                if pending == 0 {
                    try await Task.sleep(for: .seconds(pollSec))
                    continue
                }
                let events: [OutboxEvent]
                switch try await store.claimWebhook(url: webhook.url, owner: instance, leaseSec: leaseSec, events: webhook.events) {
                case .claimed(_, let claimed):
                    events = claimed
                case .heldBy:
                    // Another communicator delivers it; look again when its lease could have lapsed.
                    try await Task.sleep(for: .seconds(max(pollSec, 1)))
                    continue
                case .unknown:
                    lastRegistration = .distantPast
                    continue
                }
                for event in events {
                    try Task.checkCancellation()
                    // A POST in flight at shutdown finishes (within timeout_sec) and its outcome
                    // is recorded: cut between the receiver's 2xx and the cursor, the event would
                    // be sent again by the next holder. Hence its own task, which shutdown's
                    // cancellation does not reach.
                    let attempt = Task { () async throws -> (failure: String?, kept: Bool) in
                        if let reason = await post(event, to: webhook, session: session) { return (reason, true) }
                        return (nil, try await store.markWebhookDelivered(url: webhook.url, owner: instance, through: event.id, leaseSec: leaseSec))
                    }
                    let (outcome, kept) = try await attempt.value
                    if let reason = outcome {
                        metrics?.webhookFailures(label).increment()
                        let tries = try await store.markWebhookFailed(url: webhook.url, owner: instance, error: reason)
                        let since = outage?.since ?? Date()
                        outage = (since, (outage?.tries ?? 0) + 1)
                        if outage?.tries == 1 {
                            logger.warning("webhook \(label) failed: \(reason); event \(event.id) (\(event.event)) and the \(max(0, pending - 1)) after it are kept and retried with backoff up to \(Int(config.maxBackoffSec)) s",
                                           metadata: ["webhook.event_id": "\(event.id)", "webhook.tries": "\(tries)"])
                        }
                        let backoff = Self.backoff(afterTries: tries, initial: initialBackoffSec, config: config)
                        try await Task.sleep(for: .seconds(backoff * Double.random(in: 0.8...1.0)))
                        break
                    }
                    if let current = outage {
                        let seconds = Date().timeIntervalSince(current.since)
                        logger.info("webhook \(label) delivers again after \(String(format: "%.1f", seconds)) s and \(current.tries) failed tries",
                                    metadata: ["webhook.event_id": "\(event.id)"])
                        outage = nil
                    }
                    guard kept else {
                        // The lease lapsed (this process stalled): whoever holds it now goes on from the cursor.
                        logger.warning("webhook \(label): lost the delivery lease after event \(event.id); another communicator may send it again (same id)")
                        break
                    }
                }
            } catch is CancellationError {
                return
            } catch {
                if Task.isCancelled { return }
                if !storeProblem {
                    logger.warning("webhook \(label): cannot read or update its outbox cursor: \(error); retrying")
                    storeProblem = true
                }
                try? await Task.sleep(for: .seconds(2))
            }
        }
    }

    /// POSTs one event; nil when the receiver answered 2xx, else why not.
    func post(_ event: OutboxEvent, to webhook: WebhookConfig, session: URLSession) async -> String? {
        guard let url = URL(string: webhook.url) else { return "not a URL: \(webhook.label)" }
        var request = URLRequest(url: url, cachePolicy: .reloadIgnoringLocalCacheData, timeoutInterval: config.timeoutSec)
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue("mqi-communicator", forHTTPHeaderField: "User-Agent")
        if let tokenFile = webhook.tokenFile {
            // Read at every try: a rotated token is used without a restart.
            guard let text = try? String(contentsOfFile: tokenFile, encoding: .utf8),
                  let token = text.split(whereSeparator: \.isNewline).first.map({ $0.trimmingCharacters(in: .whitespaces) }), !token.isEmpty else {
                return "cannot read a token from token_file \(tokenFile)"
            }
            request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization")
        }
        request.httpBody = Self.payload(event, instance: instance)
        do {
            let (data, response) = try await session.data(for: request)
            guard let http = response as? HTTPURLResponse else { return "no HTTP answer" }
            if (200..<300).contains(http.statusCode) { return nil }
            let body = String(decoding: data.prefix(200), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            return "HTTP \(http.statusCode)" + (body.isEmpty ? "" : ": \(body)")
        } catch let error as URLError {
            return Self.describe(error, timeout: config.timeoutSec)
        } catch {
            return "\(error)"
        }
    }

    /// The JSON body: `id`, `event`, `case_id`, `status`, `error`, `at` (ISO-8601 UTC), `instance`,
    /// and the event's own fields (`workflow`, `host`, `gpu_id`, `queue`, `kind`, `followup_of`).
    static func payload(_ event: OutboxEvent, instance: String) -> Data {
        var object: [String: Any] = [:]
        if let detail = event.detail, let extra = try? JSONSerialization.jsonObject(with: Data(detail.utf8)) as? [String: Any] {
            object = extra
        }
        object["id"] = event.id
        object["event"] = event.event
        object["case_id"] = event.caseId ?? NSNull()
        object["status"] = event.status ?? NSNull()
        object["error"] = event.error ?? NSNull()
        object["at"] = event.at.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
        object["instance"] = instance
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    }

    /// Why a POST failed, in words an operator acts on. On Linux, FoundationNetworking reports
    /// every TLS failure as URLError -1 (unknown) with libcurl's message, so TLS failures are
    /// told apart by that message.
    static func describe(_ error: URLError, timeout: Double) -> String {
        switch error.code {
        case .cannotConnectToHost: return "connection refused (nothing listens there, or a firewall rejects it)"
        case .timedOut: return "no answer within \(String(format: "%g", timeout)) s (notifications.timeout_sec)"
        case .cannotFindHost, .dnsLookupFailed: return "cannot resolve the host name"
        case .networkConnectionLost: return "the connection was closed before an answer"
        case .secureConnectionFailed, .serverCertificateUntrusted, .serverCertificateHasBadDate, .serverCertificateNotYetValid,
             .serverCertificateHasUnknownRoot: return describeTLS(error.localizedDescription) ?? "TLS failed (\(error.localizedDescription))"
        default: return describeTLS(error.localizedDescription) ?? "\(error.localizedDescription) (URLError \(error.code.rawValue))"
        }
    }

    /// A TLS failure from libcurl's message (OpenSSL's words), or nil if the message is not one.
    static func describeTLS(_ message: String) -> String? {
        let text = message.lowercased()
        let detail = " (\(message))"
        if text.contains("unable to get local issuer certificate") || text.contains("unable to get issuer certificate")
            || text.contains("self-signed certificate") || text.contains("self signed certificate") || text.contains("unable to verify the first certificate") {
            return "TLS: the receiver's certificate is not trusted: its CA is not in this machine's system trust store "
                + "(copy the CA certificate, PEM, as a .crt file into /usr/local/share/ca-certificates/, run update-ca-certificates, restart mqi)" + detail
        }
        if text.contains("certificate has expired") {
            return "TLS: the receiver's certificate has expired (renew it on the receiver, or check this machine's clock)" + detail
        }
        if text.contains("certificate is not yet valid") {
            return "TLS: the receiver's certificate is not valid yet (check the clocks of this machine and the receiver)" + detail
        }
        if text.contains("subject name") {
            return "TLS: the receiver's certificate is not for this host name (the webhook's URL must use a name or IP address the certificate lists)" + detail
        }
        if text.contains("ssl") || text.contains("tls") || text.contains("certificate") {
            return "TLS failed" + detail
        }
        return nil
    }
}
