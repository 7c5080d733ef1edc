import Foundation
import MQICore

/// One event of the outbox (`notifications.webhooks`): recorded in the transaction of the change
/// that caused it, numbered in commit order, delivered to each webhook in that order.
public struct OutboxEvent: Sendable, Equatable {
    /// Increasing in commit order, never reused (the receiver's dedupe key).
    public var id: Int64
    /// `case_completed`, `hpc_unreachable`, ... (a `NotificationEvent`'s raw value).
    public var event: String
    public var caseId: String?
    /// The case's status (`COMPLETED`), or the host's or GPU's (`unreachable`, `missing`).
    public var status: String?
    public var error: String?
    public var at: Date
    /// Fields of the payload besides the common ones (`host`, `gpu_id`, `queue`, `kind`), a JSON object.
    public var detail: String?

    public init(id: Int64, event: String, caseId: String?, status: String?, error: String?, at: Date, detail: String?) {
        self.id = id
        self.event = event
        self.caseId = caseId
        self.status = status
        self.error = error
        self.at = at
        self.detail = detail
    }
}

/// Where a webhook's delivery stands: the last event it got, and who delivers it now.
public struct WebhookCursor: Sendable, Equatable {
    public var url: String
    /// The id of the last event delivered (or skipped as not subscribed); the next is above it.
    public var deliveredId: Int64
    /// Failed tries of the event after `deliveredId` since it last succeeded.
    public var attempts: Int
    public var lastError: String?
    public var failingSince: Date?
    public var leaseOwner: String?
    public var leaseExpiresAt: Date?
}

/// Where a configured webhook stands, for `mqi status`: its cursor and the events waiting for it.
public struct WebhookBacklog: Sendable, Equatable {
    public var url: String
    /// nil while the webhook has no cursor: no communicator has started with it yet.
    public var cursor: WebhookCursor?
    /// Events of its subscription recorded after its cursor (0 without a cursor).
    public var pending: Int
    /// When the last failed try was, while the cursor's event keeps failing (`attempts` > 0): a
    /// failing cursor is written by its tries only (a communicator starting up refreshes it too).
    public var lastFailedTryAt: Date?
}

/// What claiming a webhook's delivery gave.
public enum WebhookClaim: Sendable, Equatable {
    /// This communicator delivers the webhook until its lease expires: the next events, in order.
    case claimed(deliveredId: Int64, events: [OutboxEvent])
    /// Another communicator delivers it now.
    case heldBy(String)
    /// The webhook has no cursor (never registered, or removed by hand).
    case unknown
}

extension Store {
    /// Records an event for the webhooks in the caller's transaction: it commits, or rolls back,
    /// with its cause. On PostgreSQL the transaction first takes the write lock every serialized
    /// write holds (a no-op when it holds it already): ids are then handed out and committed in
    /// one order, so a delivery that read up to id N never misses a later commit below N.
    static func recordEvent(_ db: any SQLConnection, _ event: NotificationEvent, caseId: String?, status: String?, error: String?,
                            detail: [String: any Sendable] = [:], at: Date) throws {
        if db.dialect == .postgres {
            _ = try SQLRow.fetchAll(db, sql: "SELECT pg_advisory_xact_lock(\(PostgresBackend.writeLockKey))")
        }
        var detailText: String?
        if !detail.isEmpty, let data = try? JSONSerialization.data(withJSONObject: detail, options: [.sortedKeys, .withoutEscapingSlashes]) {
            detailText = String(decoding: data, as: UTF8.self)
        }
        try db.execute(sql: "INSERT INTO outbox (event, case_id, status, error, detail, at) VALUES (?, ?, ?, ?, ?, ?)",
                       arguments: [event.rawValue, caseId, status, error, detailText, at])
    }

    /// The event a case entering `status` is told as, if any.
    static func caseEvent(for status: CaseStatus) -> NotificationEvent? {
        switch status {
        case .completed: .caseCompleted
        case .failed: .caseFailed
        case .cancelled: .caseCancelled
        default: nil
        }
    }

    static func outboxEvent(_ row: SQLRow) -> OutboxEvent {
        OutboxEvent(id: row["id"], event: row["event"], caseId: row["case_id"], status: row["status"], error: row["error"],
                    at: row["at"], detail: row["detail"])
    }

    static func eventFilter(_ events: [NotificationEvent]) -> (clause: String, arguments: [(any SQLBindable)?]) {
        let names = Array(Set(events.map(\.rawValue))).sorted()
        guard !names.isEmpty else { return ("1 = 0", []) }
        return ("event IN (" + names.map { _ in "?" }.joined(separator: ", ") + ")", names.map { $0 })
    }

    /// The recorded events after `id`, oldest first (of `events` only, when given).
    public func outboxEvents(after id: Int64 = 0, events: [NotificationEvent]? = nil, limit: Int = 1000) async throws -> [OutboxEvent] {
        try await pool.read { db in
            var arguments = SQLArguments([id])
            var clause = ""
            if let events {
                let filter = Self.eventFilter(events)
                clause = " AND " + filter.clause
                for name in filter.arguments { arguments.append(name) }
            }
            arguments.append(limit)
            return try SQLRow.fetchAll(db, sql: "SELECT * FROM outbox WHERE id > ?\(clause) ORDER BY id LIMIT ?", arguments: arguments)
                .map(Self.outboxEvent)
        }
    }

    /// Makes sure the webhook at `url` has a cursor: a new one starts after the events recorded
    /// so far (a webhook added to the config is not sent the whole history). An existing one is
    /// kept and marked in use (`updated_at`), so retention knows it is still configured; when
    /// none of its `events` waits and no other communicator delivers it, it moves past the
    /// events it does not subscribe to (so they do not wait for it to be pruned).
    @discardableResult
    public func registerWebhook(url: String, events: [NotificationEvent], owner: String) async throws -> WebhookCursor {
        let now = now()
        return try await pool.write { db in
            let last = try Int64.fetchOne(db, sql: "SELECT max(id) FROM outbox") ?? 0
            try db.execute(sql: """
                INSERT INTO webhook_cursors (url, delivered_id, attempts, created_at, updated_at) VALUES (?, ?, 0, ?, ?)
                ON CONFLICT (url) DO UPDATE SET updated_at = excluded.updated_at
                """, arguments: [url, last, now, now])
            let filter = Self.eventFilter(events)
            try db.execute(sql: """
                UPDATE webhook_cursors SET delivered_id = ? WHERE url = ? AND delivered_id < ?
                  AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires_at <= ?)
                  AND NOT EXISTS (SELECT 1 FROM outbox WHERE id > webhook_cursors.delivered_id AND \(filter.clause))
                """, arguments: SQLArguments([last, url, last, owner, now] as [(any SQLBindable)?] + filter.arguments))
            guard let cursor = try Self.webhookCursor(db, url: url) else { throw StoreError("the cursor of webhook \(url) vanished") }
            return cursor
        }
    }

    static func webhookCursor(_ db: any SQLConnection, url: String) throws -> WebhookCursor? {
        try SQLRow.fetchOne(db, sql: "SELECT * FROM webhook_cursors WHERE url = ?", arguments: [url]).map(webhookCursor)
    }

    static func webhookCursor(_ row: SQLRow) -> WebhookCursor {
        WebhookCursor(url: row["url"], deliveredId: row["delivered_id"], attempts: row["attempts"], lastError: row["last_error"],
                      failingSince: row["failing_since"], leaseOwner: row["lease_owner"], leaseExpiresAt: row["lease_expires_at"])
    }

    public func webhookCursor(url: String) async throws -> WebhookCursor? {
        try await pool.read { db in try Self.webhookCursor(db, url: url) }
    }

    public func webhookCursors() async throws -> [WebhookCursor] {
        try await pool.read { db in
            try String.fetchAll(db, sql: "SELECT url FROM webhook_cursors ORDER BY url").compactMap { try Self.webhookCursor(db, url: $0) }
        }
    }

    /// How many of `events` wait for the webhook at `url` (0 without a cursor).
    public func pendingWebhookEvents(url: String, events: [NotificationEvent]) async throws -> Int {
        try await pool.read { db in
            guard let cursor = try Self.webhookCursor(db, url: url) else { return 0 }
            return try Self.pendingCount(db, after: cursor.deliveredId, events: events)
        }
    }

    /// How many of `events` were recorded after the event `id`.
    static func pendingCount(_ db: any SQLConnection, after id: Int64, events: [NotificationEvent]) throws -> Int {
        let filter = Self.eventFilter(events)
        return try Int.fetchOne(db, sql: "SELECT count(*) FROM outbox WHERE id > ? AND \(filter.clause)",
                                arguments: SQLArguments([id as (any SQLBindable)?] + filter.arguments)) ?? 0
    }

    /// Where each of `webhooks` stands (cursor, events waiting, last failed try), read in one
    /// transaction, in the order given.
    public func webhookBacklogs(_ webhooks: [WebhookConfig]) async throws -> [WebhookBacklog] {
        try await pool.read { db in
            try webhooks.map { webhook in
                guard let row = try SQLRow.fetchOne(db, sql: "SELECT * FROM webhook_cursors WHERE url = ?", arguments: [webhook.url]) else {
                    return WebhookBacklog(url: webhook.url, cursor: nil, pending: 0, lastFailedTryAt: nil)
                }
                let cursor = Self.webhookCursor(row)
                let pending = try Self.pendingCount(db, after: cursor.deliveredId, events: webhook.events)
                let updatedAt: Date = row["updated_at"]
                return WebhookBacklog(url: webhook.url, cursor: cursor, pending: pending, lastFailedTryAt: cursor.attempts > 0 ? updatedAt : nil)
            }
        }
    }

    /// Takes (or renews) the delivery of the webhook at `url` for `owner` for `leaseSec` seconds,
    /// unless another owner's lease still runs, and returns the next `limit` events of `events`
    /// after its cursor, read in the same transaction. Communicators sharing a PostgreSQL state
    /// thus deliver each webhook one at a time: only the lease holder posts, and it advances the
    /// cursor only while it holds the lease (`markWebhookDelivered`).
    public func claimWebhook(url: String, owner: String, leaseSec: Double, events: [NotificationEvent], limit: Int = 50) async throws -> WebhookClaim {
        let now = now()
        return try await pool.write { db in
            try db.execute(sql: """
                UPDATE webhook_cursors SET lease_owner = ?, lease_expires_at = ?, updated_at = ?
                WHERE url = ? AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires_at <= ?)
                """, arguments: [owner, now.addingTimeInterval(leaseSec), now, url, owner, now])
            guard db.changesCount == 1 else {
                if let holder = try String.fetchOne(db, sql: "SELECT lease_owner FROM webhook_cursors WHERE url = ?", arguments: [url]) {
                    return .heldBy(holder)
                }
                return .unknown
            }
            guard let cursor = try Self.webhookCursor(db, url: url) else { return .unknown }
            let filter = Self.eventFilter(events)
            let rows = try SQLRow.fetchAll(db, sql: "SELECT * FROM outbox WHERE id > ? AND \(filter.clause) ORDER BY id LIMIT ?",
                                           arguments: SQLArguments([cursor.deliveredId as (any SQLBindable)?] + filter.arguments + [limit as (any SQLBindable)?]))
            return .claimed(deliveredId: cursor.deliveredId, events: rows.map(Self.outboxEvent))
        }
    }

    /// Moves the webhook's cursor to `id` (delivered) and extends the lease, only while `owner`
    /// holds it and the cursor is below `id`. False when the lease was lost: stop delivering.
    public func markWebhookDelivered(url: String, owner: String, through id: Int64, leaseSec: Double) async throws -> Bool {
        let now = now()
        return try await pool.write { db in
            try db.execute(sql: """
                UPDATE webhook_cursors SET delivered_id = ?, attempts = 0, last_error = NULL, failing_since = NULL,
                    lease_expires_at = ?, updated_at = ?
                WHERE url = ? AND lease_owner = ? AND delivered_id < ?
                """, arguments: [id, now.addingTimeInterval(leaseSec), now, url, owner, id])
            return db.changesCount == 1
        }
    }

    /// Records a failed try of the webhook's next event (while `owner` holds it). Returns the
    /// failed tries since the last success.
    @discardableResult
    public func markWebhookFailed(url: String, owner: String, error: String) async throws -> Int {
        let now = now()
        return try await pool.write { db in
            try db.execute(sql: """
                UPDATE webhook_cursors SET attempts = attempts + 1, last_error = ?, failing_since = coalesce(failing_since, ?), updated_at = ?
                WHERE url = ? AND lease_owner = ?
                """, arguments: [String(error.prefix(500)), now, now, url, owner])
            return try Int.fetchOne(db, sql: "SELECT attempts FROM webhook_cursors WHERE url = ?", arguments: [url]) ?? 0
        }
    }

    /// Gives up the delivery of the webhook (a graceful shutdown): another communicator may take
    /// it at once. Synchronous: it runs while the notifier's task is being cancelled.
    public func releaseWebhook(url: String, owner: String) throws {
        try pool.writeBlocking { db in
            try db.execute(sql: "UPDATE webhook_cursors SET lease_owner = NULL, lease_expires_at = NULL WHERE url = ? AND lease_owner = ?",
                           arguments: [url, owner])
        }
    }

    /// Deletes the outbox events recorded before `date` that every webhook in use got: a
    /// webhook whose cursor nothing touched since `date` (removed from the config) no longer
    /// holds them back; one still configured keeps its undelivered events, however old. With
    /// `dryRun` nothing is deleted. Returns how many events were (or would be) deleted.
    public func pruneOutbox(before date: Date, dryRun: Bool) async throws -> Int {
        let condition = """
            at < ? AND id <= coalesce((SELECT min(delivered_id) FROM webhook_cursors WHERE updated_at >= ?), (SELECT max(id) FROM outbox))
            """
        if dryRun {
            return try await pool.read { db in
                try Int.fetchOne(db, sql: "SELECT count(*) FROM outbox WHERE \(condition)", arguments: [date, date]) ?? 0
            }
        }
        return try await pool.write { db in
            try db.execute(sql: "DELETE FROM outbox WHERE \(condition)", arguments: [date, date])
            return db.changesCount
        }
    }
}
