import Foundation
#if canImport(Glibc)
import Glibc
#endif
import GRDB
import MQICore

/// The communicator's durable state in one SQLite file (WAL): cases, their history, GPU
/// reservations and the durable queues. Every method is one transaction; callers never see SQL.
public struct Store: Sendable {
    /// Where the transactions run (SQLite or PostgreSQL).
    package let pool: any SQLBackend
    let now: @Sendable () -> Date
    /// Deliveries after which a message moves to the dead letters.
    public let maxDeliveries: Int
    public let bell: QueueBell
    /// This communicator's name (`state.instance_name`): it prefixes the owners of the leases it
    /// takes and names its heartbeat row.
    public var instance: String = StateConfig.defaultInstanceName
    /// How long the leases this communicator's workers take hold without renewal (`state.lease_sec`).
    public var leaseSec: Double = 30

    public init(path: String, maxDeliveries: Int = 5, bell: QueueBell = QueueBell(), now: @escaping @Sendable () -> Date = { Date() }) throws {
        let directory = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        // Two processes opening a new (or older) database at once (the daemon starting, the CLI
        // beside it) would race on switching a new file to WAL ("database is locked") and on the
        // migrations (both see one missing; the second fails with "duplicate column"): one opens
        // and migrates at a time, the other then finds nothing to do.
        let lock = Self.lockDirectory(directory)
        defer { Self.unlock(lock) }
        var configuration = Configuration()
        // Writers from other processes (the CLI next to the daemon) wait instead of failing with
        // "database is locked".
        configuration.busyMode = .timeout(30)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        let database = try DatabasePool(path: path, configuration: configuration)
        try Self.refuseNewerSchema(database, path: path)
        try Self.migrator.migrate(database)
        self.init(backend: SQLiteBackend(pool: database), maxDeliveries: maxDeliveries, bell: bell, now: now)
    }

    /// A store on an open, migrated backend.
    package init(backend: any SQLBackend, maxDeliveries: Int, bell: QueueBell, now: @escaping @Sendable () -> Date) {
        pool = backend
        self.now = now
        self.maxDeliveries = max(1, maxDeliveries)
        self.bell = bell
    }

    /// An exclusive flock on the database's directory (a lock no SQLite lock touches, and no
    /// new file whose owner could lock another account out); -1 when it cannot be had.
    static func lockDirectory(_ directory: String) -> Int32 {
        let fd = Glibc.open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return -1 }
        while flock(fd, LOCK_EX) != 0 {
            if errno != EINTR {
                close(fd)
                return -1
            }
        }
        return fd
    }

    static func unlock(_ fd: Int32) {
        guard fd >= 0 else { return }
        _ = flock(fd, LOCK_UN)
        close(fd)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE cases (
                    case_id TEXT PRIMARY KEY NOT NULL,
                    status TEXT NOT NULL,
                    workflow TEXT NOT NULL,
                    workflow_step TEXT,
                    step_index INTEGER,
                    attempt INTEGER NOT NULL DEFAULT 0,
                    progress INTEGER NOT NULL DEFAULT 0,
                    gpu_ids TEXT NOT NULL DEFAULT '',
                    error TEXT,
                    created_at DATETIME NOT NULL,
                    updated_at DATETIME NOT NULL,
                    started_at DATETIME,
                    finished_at DATETIME,
                    pending_since DATETIME
                );
                CREATE INDEX cases_status ON cases(status, created_at);
                CREATE INDEX cases_created ON cases(created_at);
                CREATE TABLE case_events (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    case_id TEXT NOT NULL,
                    at DATETIME NOT NULL,
                    event TEXT NOT NULL,
                    status TEXT NOT NULL,
                    step TEXT,
                    attempt INTEGER,
                    message TEXT NOT NULL
                );
                CREATE INDEX case_events_case ON case_events(case_id, id);
                CREATE TABLE gpu_resources (
                    gpu_id INTEGER PRIMARY KEY NOT NULL,
                    status TEXT NOT NULL,
                    reserved_by TEXT,
                    reserved_at DATETIME
                );
                CREATE TABLE messages (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    queue TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    case_id TEXT NOT NULL,
                    body TEXT NOT NULL,
                    created_at DATETIME NOT NULL,
                    available_at DATETIME NOT NULL,
                    deliveries INTEGER NOT NULL DEFAULT 0,
                    lease_owner TEXT,
                    lease_expires_at DATETIME,
                    last_error TEXT
                );
                CREATE INDEX messages_queue ON messages(queue, available_at, id);
                CREATE TABLE dead_letters (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    message_id INTEGER NOT NULL,
                    queue TEXT NOT NULL,
                    kind TEXT NOT NULL,
                    case_id TEXT NOT NULL,
                    body TEXT NOT NULL,
                    deliveries INTEGER NOT NULL,
                    error TEXT NOT NULL,
                    created_at DATETIME NOT NULL,
                    dead_at DATETIME NOT NULL
                );
                """)
        }
        migrator.registerMigration("v2-gpu-telemetry") { db in
            try db.execute(sql: """
                ALTER TABLE gpu_resources ADD COLUMN name TEXT;
                ALTER TABLE gpu_resources ADD COLUMN uuid TEXT;
                ALTER TABLE gpu_resources ADD COLUMN utilization REAL;
                ALTER TABLE gpu_resources ADD COLUMN memory_used_mb REAL;
                ALTER TABLE gpu_resources ADD COLUMN memory_total_mb REAL;
                ALTER TABLE gpu_resources ADD COLUMN temperature REAL;
                ALTER TABLE gpu_resources ADD COLUMN last_seen DATETIME;
                ALTER TABLE gpu_resources ADD COLUMN health TEXT NOT NULL DEFAULT 'ok';
                """)
        }
        migrator.registerMigration("v3-case-details") { db in
            try db.execute(sql: """
                ALTER TABLE cases ADD COLUMN patient_id TEXT;
                ALTER TABLE cases ADD COLUMN beam_numbers TEXT;
                ALTER TABLE cases ADD COLUMN failure_class TEXT;
                """)
        }
        migrator.registerMigration("v4-api-indexes") { db in
            // The operators' API: changes since the last server-sent event, and the 24 h throughput.
            try db.execute(sql: """
                CREATE INDEX cases_updated ON cases(updated_at);
                CREATE INDEX cases_finished ON cases(finished_at);
                """)
        }
        migrator.registerMigration("v5-readiness-probe") { db in
            try db.execute(sql: "CREATE TABLE readiness_probe (id INTEGER PRIMARY KEY, at DATETIME NOT NULL)")
        }
        migrator.registerMigration("v6-draining-gpus-and-hosts") { db in
            // A GPU whose previous holder may still run is 'draining' until its stop is confirmed.
            try db.execute(sql: """
                ALTER TABLE gpu_resources ADD COLUMN drain_case TEXT;
                ALTER TABLE gpu_resources ADD COLUMN drain_step_index INTEGER;
                ALTER TABLE gpu_resources ADD COLUMN drain_attempt INTEGER;
                ALTER TABLE gpu_resources ADD COLUMN drain_since DATETIME;
                ALTER TABLE gpu_resources ADD COLUMN drain_reason TEXT;
                CREATE TABLE hosts (
                    host TEXT PRIMARY KEY NOT NULL,
                    reachable BOOLEAN NOT NULL,
                    since DATETIME NOT NULL,
                    reason TEXT,
                    updated_at DATETIME NOT NULL
                );
                """)
        }
        migrator.registerMigration("v7-remote-cleanup") { db in
            // When a completed case's directories on the HPC were removed (hpc.cleanup). Cases
            // finished before this version are taken as handled: an upgrade removes nothing old.
            try db.execute(sql: """
                ALTER TABLE cases ADD COLUMN remote_cleaned_at DATETIME;
                UPDATE cases SET remote_cleaned_at = finished_at WHERE status = 'COMPLETED';
                """)
        }
        migrator.registerMigration("v8-plan-beams") { db in
            // The RT plan's treatment beams of a case (scanner.case_layout: moqui), read from its
            // RP*.dcm at registration.
            try db.execute(sql: """
                CREATE TABLE case_plan_beams (
                    case_id TEXT NOT NULL REFERENCES cases(case_id) ON DELETE CASCADE,
                    beam_number INTEGER NOT NULL,
                    beam_name TEXT NOT NULL,
                    PRIMARY KEY (case_id, beam_number)
                );
                """)
        }
        migrator.registerMigration("v9-beam-runs") { db in
            // One row per beam run of a `for_each: beam` step: its own attempt, GPUs, progress, outcome.
            try db.execute(sql: """
                CREATE TABLE beam_runs (
                    case_id TEXT NOT NULL,
                    step_index INTEGER NOT NULL,
                    beam INTEGER NOT NULL,
                    status TEXT NOT NULL,
                    attempt INTEGER NOT NULL,
                    gpu_ids TEXT NOT NULL DEFAULT '',
                    progress INTEGER NOT NULL DEFAULT 0,
                    error TEXT,
                    started_at DATETIME,
                    finished_at DATETIME,
                    PRIMARY KEY (case_id, step_index, beam)
                );
                ALTER TABLE gpu_resources ADD COLUMN drain_beam INTEGER;
                """)
        }
        migrator.registerMigration("v10-scheduler-jobs") { db in
            // The Slurm jobs of step attempts (hpc.executor: slurm), and what the case waits for
            // there ("queued in Slurm: Resources"). beam -1: a whole-case step.
            try db.execute(sql: """
                ALTER TABLE cases ADD COLUMN detail TEXT;
                CREATE TABLE scheduler_jobs (
                    case_id TEXT NOT NULL,
                    step TEXT NOT NULL,
                    beam INTEGER NOT NULL DEFAULT -1,
                    attempt INTEGER NOT NULL,
                    job_id TEXT NOT NULL,
                    state TEXT NOT NULL,
                    reason TEXT,
                    gpus TEXT,
                    node TEXT,
                    submitted_at DATETIME,
                    started_at DATETIME,
                    ended_at DATETIME,
                    updated_at DATETIME NOT NULL,
                    PRIMARY KEY (case_id, step, beam, attempt)
                );
                """)
        }
        migrator.registerMigration("v11-deliveries") { db in
            // Each delivery folder of a registered case (scanner.fraction_window_min groups them
            // into fractions): those found at registration are the case's own; later ones are
            // follow-ups, each run once by scanner.followup_workflow as the job `job_id`.
            try db.execute(sql: """
                CREATE TABLE deliveries (
                    case_id TEXT NOT NULL,
                    folder TEXT NOT NULL,
                    started_at DATETIME NOT NULL,
                    beam INTEGER,
                    followup BOOLEAN NOT NULL,
                    job_id TEXT,
                    recorded_at DATETIME NOT NULL,
                    PRIMARY KEY (case_id, folder)
                );
                CREATE INDEX deliveries_due ON deliveries(followup, job_id);
                """)
        }
        migrator.registerMigration("v12-instances") { db in
            // The communicators sharing this state, each with its heartbeat (on SQLite: the one).
            try db.execute(sql: """
                CREATE TABLE instances (
                    name TEXT PRIMARY KEY NOT NULL,
                    host TEXT NOT NULL,
                    pid INTEGER NOT NULL,
                    version TEXT,
                    started_at DATETIME NOT NULL,
                    heartbeat_at DATETIME NOT NULL
                );
                """)
        }
        migrator.registerMigration("v13-outbox") { db in
            // Events for the webhooks (notifications.webhooks), recorded with their cause;
            // AUTOINCREMENT: an id is never reused, even after the newest rows were pruned. Ids
            // start at the creation time in milliseconds, so a database rebuilt after damage
            // numbers above the one set aside (receivers dedupe by id). Each webhook's cursor:
            // the last event it got, and which communicator delivers it now.
            try db.execute(sql: """
                CREATE TABLE outbox (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    event TEXT NOT NULL,
                    case_id TEXT,
                    status TEXT,
                    error TEXT,
                    detail TEXT,
                    at DATETIME NOT NULL
                );
                CREATE INDEX outbox_at ON outbox(at);
                INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
                CREATE TABLE webhook_cursors (
                    url TEXT PRIMARY KEY NOT NULL,
                    delivered_id INTEGER NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    last_error TEXT,
                    failing_since DATETIME,
                    lease_owner TEXT,
                    lease_expires_at DATETIME,
                    created_at DATETIME NOT NULL,
                    updated_at DATETIME NOT NULL
                );
                """)
        }
        return migrator
    }

    /// Checks that the database file can be written (for readiness probes): writes a row of
    /// the main database, so a full disk or a damaged file shows.
    public func checkWritable() async throws {
        let now = now()
        try await pool.write { db in
            try db.execute(sql: "INSERT INTO readiness_probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = excluded.at", arguments: [now])
        }
    }

    // MARK: encoding

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }()

    static func encode(_ body: MessageBody) throws -> String {
        String(decoding: try encoder.encode(body), as: UTF8.self)
    }

    static func decode(_ text: String) throws -> MessageBody {
        try JSONDecoder().decode(MessageBody.self, from: Data(text.utf8))
    }

    static func encodeGPUs(_ ids: [Int]) -> String {
        ids.map(String.init).joined(separator: ",")
    }

    static func decodeGPUs(_ text: String) -> [Int] {
        text.split(separator: ",").compactMap { Int($0) }
    }
}
