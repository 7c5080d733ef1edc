import Foundation
import MQICore

/// Which kinds of a queue's messages a worker claims.
public enum KindFilter: Sendable {
    case all
    case only(MessageKind)
    case except(MessageKind)
}

extension Store {
    /// Publishes messages in one transaction (used by tests and tools; the Conductor publishes
    /// through `conduct`, workers through `complete`).
    public func publish(_ messages: [OutgoingMessage]) async throws {
        let now = now()
        try await pool.write { db in
            for message in messages { try Self.insert(message, db: db, now: now) }
        }
        ring(messages)
    }

    static func insert(_ message: OutgoingMessage, db: any SQLConnection, now: Date, availableAt: Date? = nil) throws {
        try db.execute(
            sql: """
                INSERT INTO messages (queue, kind, case_id, body, created_at, available_at)
                VALUES (?, ?, ?, ?, ?, ?)
                """,
            arguments: [message.queue.rawValue, message.kind.rawValue, message.body.caseId, try encode(message.body), now,
                        availableAt ?? now.addingTimeInterval(message.delaySec ?? 0)])
        try notifyConsumers(message.queue, db: db)
    }

    /// Wakes the queue's consumers in every communicator sharing a PostgreSQL state, when this
    /// transaction commits (`NOTIFY`; the store's own doorbell covers this process and SQLite).
    static func notifyConsumers(_ queue: QueueName, db: any SQLConnection) throws {
        guard db.dialect == .postgres else { return }
        _ = try SQLRow.fetchAll(db, sql: "SELECT pg_notify('\(PostgresBackend.channel)', ?)", arguments: [queue.rawValue])
    }

    func ring(_ messages: [OutgoingMessage]) {
        for queue in Set(messages.map(\.queue)) { bell.ring(queue) }
    }

    /// Claims the oldest available message of `queue` for `owner` for `leaseSec` seconds.
    /// A message whose lease expired is available again; one that was delivered
    /// `maxDeliveries` times already goes to the dead letters instead.
    public func claim(_ queue: QueueName, kinds: KindFilter = .all, owner: String, leaseSec: Double) async throws -> ClaimedMessage? {
        try await claim(queue, kinds: kinds, owner: owner, leaseSec: leaseSec, limit: 1).first
    }

    /// Claims up to `limit` of the oldest available messages of `queue` in one transaction, in
    /// the order they are to be handled (each as `claim` would take it).
    public func claim(_ queue: QueueName, kinds: KindFilter = .all, owner: String, leaseSec: Double, limit: Int) async throws -> [ClaimedMessage] {
        let now = now()
        let (kindClause, kindArgument): (String, String?) = switch kinds {
        case .all: ("", nil)
        case .only(let kind): ("AND kind = ?", kind.rawValue)
        case .except(let kind): ("AND kind != ?", kind.rawValue)
        }
        let arguments: SQLArguments = kindArgument.map { [queue.rawValue, now, now, $0] } ?? [queue.rawValue, now, now]
        let maxDeliveries = maxDeliveries
        // PostgreSQL: each claim locks the row it takes and skips rows other claims hold, beside the
        // serialized writes (SQLite serializes it anyway).
        let skipLocked = pool.dialect == .postgres ? " FOR UPDATE SKIP LOCKED" : ""
        let (claimed, published) = try await pool.write(.rowLocks) { db -> ([ClaimedMessage], [OutgoingMessage]) in
            var published: [OutgoingMessage] = []
            var claimed: [ClaimedMessage] = []
            // Results of running steps go before new cases: a burst of new cases must not hold
            // up the next step of cases already on a GPU. (Each case's own events cannot be
            // reordered by this: its first command only exists after its new_case_found.)
            while claimed.count < limit, let row = try SQLRow.fetchOne(db, sql: """
                SELECT * FROM messages
                WHERE queue = ? AND available_at <= ? AND (lease_owner IS NULL OR lease_expires_at <= ?) \(kindClause)
                ORDER BY kind = 'new_case_found', available_at, id LIMIT 1\(skipLocked)
                """, arguments: arguments) {
                let id: Int64 = row["id"]
                let deliveries: Int = row["deliveries"]
                if deliveries >= maxDeliveries {
                    let lastError: String? = row["last_error"]
                    let reason = "gave up after \(deliveries) deliveries: \(lastError ?? "the worker's lease expired (worker died or hung)")"
                    if let failure = try Self.deadLetter(row, error: reason, db: db, now: now) { published.append(failure) }
                    continue
                }
                // A row this daemon cannot read (written by hand, by a newer version, or damaged)
                // goes to the dead letters instead of stopping the queue or being misread.
                let kindName: String = row["kind"]
                guard let kind = MessageKind(rawValue: kindName) else {
                    _ = try Self.deadLetter(row, error: "unknown message kind '\(kindName)'", db: db, now: now)
                    continue
                }
                let body: MessageBody
                do {
                    body = try Self.decode(row["body"])
                } catch {
                    _ = try Self.deadLetter(row, error: "undecodable body: \(String(describing: error).prefix(300))", db: db, now: now)
                    continue
                }
                try db.execute(sql: """
                    UPDATE messages SET lease_owner = ?, lease_expires_at = ?, deliveries = deliveries + 1 WHERE id = ?
                    """, arguments: [owner, now.addingTimeInterval(leaseSec), id])
                claimed.append(ClaimedMessage(id: id, queue: queue, kind: kind, body: body,
                                              deliveries: deliveries + 1, leaseOwner: owner))
            }
            return (claimed, published)
        }
        ring(published)
        return claimed
    }

    /// Gives a message back after a transient failure (the HPC host unreachable, say) without
    /// counting the delivery: an outage delays work, it never uses up a message's attempts.
    public func postpone(_ message: ClaimedMessage, error: String, retryAfter: Double) async throws {
        let availableAt = now().addingTimeInterval(retryAfter)
        try await pool.write { db in try Self.giveBackUncounted(message, error: error, availableAt: availableAt, db: db) }
        bell.ring(message.queue)
    }

    /// Gives a message back uncounted at a graceful shutdown (the work, e.g. a running step, is
    /// adopted by the next daemon). Synchronous on purpose: it runs while the worker's task is
    /// being cancelled, which must not cancel this write.
    public func release(_ message: ClaimedMessage) throws {
        try pool.writeBlocking { db in try Self.giveBackUncounted(message, error: nil, availableAt: nil, db: db) }
    }

    /// Clears the lease of `message` (if this holder still has it) and takes back its delivery.
    static func giveBackUncounted(_ message: ClaimedMessage, error: String?, availableAt: Date?, db: any SQLConnection) throws {
        try db.execute(sql: """
            UPDATE messages SET lease_owner = NULL, lease_expires_at = NULL, last_error = coalesce(?, last_error),
                available_at = coalesce(?, available_at), deliveries = CASE WHEN deliveries > 0 THEN deliveries - 1 ELSE 0 END
            WHERE id = ? AND lease_owner = ? AND deliveries = ?
            """, arguments: [error, availableAt, message.id, message.leaseOwner, message.deliveries])
    }

    /// Extends the lease of a message the worker still works on. False if the lease was lost.
    public func renew(_ message: ClaimedMessage, leaseSec: Double) async throws -> Bool {
        let now = now()
        return try await pool.write { db in
            try db.execute(sql: "UPDATE messages SET lease_expires_at = ? WHERE id = ? AND lease_owner = ?",
                           arguments: [now.addingTimeInterval(leaseSec), message.id, message.leaseOwner])
            return db.changesCount == 1
        }
    }

    /// Acknowledges a message and publishes its result in one transaction. The result is
    /// published even if the lease was lost: the Conductor drops duplicates.
    public func complete(_ message: ClaimedMessage, publishing result: OutgoingMessage?) async throws {
        let now = now()
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM messages WHERE id = ?", arguments: [message.id])
            if let result { try Self.insert(result, db: db, now: now) }
        }
        if let result { ring([result]) }
    }

    /// Gives a message back after a failed delivery; it becomes available again after `retryAfter`
    /// seconds, or goes to the dead letters once it was delivered `maxDeliveries` times.
    /// Returns true if it was dead-lettered.
    @discardableResult
    public func fail(_ message: ClaimedMessage, error: String, retryAfter: Double) async throws -> Bool {
        let now = now()
        let maxDeliveries = maxDeliveries
        let (dead, published) = try await pool.write { db -> (Bool, [OutgoingMessage]) in
            // Only the lease holder may give the message back: after a lost lease another worker
            // owns it now, and its lease must not be cleared.
            guard let row = try SQLRow.fetchOne(db, sql: "SELECT * FROM messages WHERE id = ? AND lease_owner = ? AND deliveries = ?",
                                             arguments: [message.id, message.leaseOwner, message.deliveries]) else {
                return (false, [])
            }
            let deliveries: Int = row["deliveries"]
            if deliveries >= maxDeliveries {
                let failure = try Self.deadLetter(row, error: "gave up after \(deliveries) deliveries: \(error)", db: db, now: now)
                return (true, failure.map { [$0] } ?? [])
            }
            try db.execute(sql: """
                UPDATE messages SET lease_owner = NULL, lease_expires_at = NULL, last_error = ?, available_at = ? WHERE id = ?
                """, arguments: [error, now.addingTimeInterval(retryAfter), message.id])
            return (false, [])
        }
        ring(published)
        if !dead { bell.ring(message.queue) }
        return dead
    }

    /// Moves a message to the dead letters. A worker command that dies this way fails its step,
    /// so the case does not wait forever: the returned event is published in the same transaction.
    static func deadLetter(_ row: SQLRow, error: String, db: any SQLConnection, now: Date) throws -> OutgoingMessage? {
        let id: Int64 = row["id"]
        try db.execute(sql: """
            INSERT INTO dead_letters (message_id, queue, kind, case_id, body, deliveries, error, created_at, dead_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [id, row["queue"] as String, row["kind"] as String, row["case_id"] as String, row["body"] as String,
                             row["deliveries"] as Int, error, row["created_at"] as Date, now])
        try db.execute(sql: "DELETE FROM messages WHERE id = ?", arguments: [id])
        let caseId: String = row["case_id"]
        let caseStatus = try String.fetchOne(db, sql: "SELECT status FROM cases WHERE case_id = ?", arguments: [caseId])
        try recordEvent(db, .deadLetter, caseId: caseId, status: caseStatus, error: error,
                        detail: ["queue": row["queue"] as String, "kind": row["kind"] as String], at: now)
        guard let kind = MessageKind(rawValue: row["kind"]), let body = try? decode(row["body"]) else { return nil }
        let failure: MessageKind
        switch kind {
        case .executeCommand: failure = .executionFailed
        case .uploadCase, .downloadResults: failure = .fileTransferFailed
        default: return nil
        }
        let event = body.result(failure, reason: error)
        try insert(event, db: db, now: now)
        return event
    }

    /// Makes every leased message available again at once. Only for start-up: one daemon runs
    /// per SQLite database (the database lock), so every lease found then belongs to a daemon that
    /// died without shutting down; on a shared PostgreSQL state only this communicator's own. The interrupted delivery counts: a message whose handling crashes
    /// the daemon reaches the dead letters after `maxDeliveries` restarts instead of crash-looping
    /// (a graceful shutdown gives its messages back uncounted, see `release`).
    @discardableResult
    public func reclaimLeases() async throws -> Int {
        // Communicators sharing a PostgreSQL state each take back only their own leases (they
        // start with `<instance>/`): another one's are its live work, or expire if it died.
        let shared = isShared
        let prefix = Self.likeEscaped(instance + "/") + "%"
        let count = try await pool.write { db in
            if shared {
                try db.execute(sql: """
                    UPDATE messages SET lease_owner = NULL, lease_expires_at = NULL
                    WHERE lease_owner LIKE ? ESCAPE '\\'
                    """, arguments: [prefix])
            } else {
                try db.execute(sql: """
                    UPDATE messages SET lease_owner = NULL, lease_expires_at = NULL
                    WHERE lease_owner IS NOT NULL
                    """)
            }
            return db.changesCount
        }
        for queue in QueueName.allCases { bell.ring(queue) }
        return count
    }

    /// Messages per queue (queued or leased).
    public func queueDepths() async throws -> [QueueName: Int] {
        try await pool.read { db in
            var depths = Dictionary(uniqueKeysWithValues: QueueName.allCases.map { ($0, 0) })
            for row in try SQLRow.fetchAll(db, sql: "SELECT queue, count(*) AS n FROM messages GROUP BY queue") {
                if let queue = QueueName(rawValue: row["queue"]) { depths[queue] = row["n"] }
            }
            return depths
        }
    }

    public func deadLetters(limit: Int = 100) async throws -> [DeadLetter] {
        try await pool.read { db in
            try SQLRow.fetchAll(db, sql: "SELECT * FROM dead_letters ORDER BY id DESC LIMIT ?", arguments: [limit]).map { row in
                DeadLetter(id: row["id"], queue: QueueName(rawValue: row["queue"]) ?? .conductor,
                           kind: MessageKind(rawValue: row["kind"]) ?? .newCaseFound, caseId: row["case_id"],
                           deliveries: row["deliveries"], error: row["error"], deadAt: row["dead_at"])
            }
        }
    }

    /// Puts a dead letter back on its queue with a fresh delivery count.
    /// `audit`: who asked, recorded in the history of the dead letter's case.
    public func replayDeadLetter(_ id: Int64, audit: String? = nil) async throws {
        let now = now()
        let queue = try await pool.write { db -> QueueName in
            guard let row = try SQLRow.fetchOne(db, sql: "SELECT * FROM dead_letters WHERE id = ?", arguments: [id]) else {
                throw StoreError("no dead letter with id \(id)")
            }
            try db.execute(sql: """
                INSERT INTO messages (queue, kind, case_id, body, created_at, available_at) VALUES (?, ?, ?, ?, ?, ?)
                """, arguments: [row["queue"] as String, row["kind"] as String, row["case_id"] as String, row["body"] as String, now, now])
            try Self.notifyConsumers(QueueName(rawValue: row["queue"]) ?? .conductor, db: db)
            try db.execute(sql: "DELETE FROM dead_letters WHERE id = ?", arguments: [id])
            if let audit, let status = try String.fetchOne(db, sql: "SELECT status FROM cases WHERE case_id = ?", arguments: [row["case_id"] as String]) {
                try Self.history(db, caseId: row["case_id"], at: now, event: "operator", status: CaseStatus(rawValue: status) ?? .new,
                                 step: nil, attempt: nil, message: audit)
            }
            return QueueName(rawValue: row["queue"]) ?? .conductor
        }
        bell.ring(queue)
    }
}

extension Store {
    /// Messages queued or leased, oldest first (for operators and tests).
    public func queuedMessages() async throws -> [QueuedMessage] {
        try await pool.read { db in
            try SQLRow.fetchAll(db, sql: "SELECT id, queue, kind, case_id, deliveries, lease_owner, last_error FROM messages ORDER BY id").map {
                QueuedMessage(id: $0["id"], queue: QueueName(rawValue: $0["queue"]), kind: MessageKind(rawValue: $0["kind"]), kindName: $0["kind"],
                              caseId: $0["case_id"], deliveries: $0["deliveries"], leaseOwner: $0["lease_owner"], lastError: $0["last_error"])
            }
        }
    }

    public func deadLetterCount() async throws -> Int {
        try await pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM dead_letters") ?? 0 }
    }
}
