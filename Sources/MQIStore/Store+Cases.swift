import Foundation
import MQICore

/// A decision the store applied, with the case it was for.
public struct AppliedDecision: Sendable, Equatable {
    public var event: ConductorEvent
    public var decision: Decision
    public var previousStatus: CaseStatus
    /// Not a decision but something an operator must hear (logged as a WARNING): a waiting case
    /// that the GPUs usable now can never serve. `decision.note` says why.
    public var warning = false
}

extension Store {
    /// Registers a case found by the scanner: inserts it as NEW and publishes `new_case_found`,
    /// in one transaction, only if the case id is not in the database yet. Returns whether it was new.
    /// `patientId`, `beamNumbers` (delivered) and `planBeams` (the RT plan's treatment beams)
    /// come from the case's files when the layout is validated.
    @discardableResult
    public func registerCase(_ caseId: String, workflow: String, patientId: String? = nil, beamNumbers: [Int] = [],
                             planBeams: [RTPlan.Beam] = []) async throws -> Bool {
        let now = now()
        let inserted = try await pool.write { db -> Bool in
            try db.execute(sql: """
                INSERT INTO cases (case_id, status, workflow, created_at, updated_at, patient_id, beam_numbers) VALUES (?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(case_id) DO NOTHING
                """, arguments: [caseId, CaseStatus.new.rawValue, workflow, now, now, patientId, Self.encodeGPUs(beamNumbers)])
            guard db.changesCount == 1 else { return false }
            try Self.insertPlanBeams(planBeams, caseId: caseId, db: db)
            try Self.insert(OutgoingMessage(kind: .newCaseFound, body: MessageBody(caseId: caseId)), db: db, now: now)
            try Self.history(db, caseId: caseId, at: now, event: "registered", status: .new, step: nil, attempt: nil,
                             message: "case found by the scanner; workflow \(workflow)")
            try Self.recordEvent(db, .caseReceived, caseId: caseId, status: CaseStatus.new.rawValue, error: nil, detail: ["workflow": workflow], at: now)
            return true
        }
        if inserted { bell.ring(.conductor) }
        return inserted
    }

    /// Records a case refused at registration (its files do not have the required layout) as
    /// FAILED, so nothing is uploaded and the operator sees why. Returns whether it was new.
    @discardableResult
    public func registerRejectedCase(_ caseId: String, workflow: String, reason: String) async throws -> Bool {
        let now = now()
        return try await pool.write { db -> Bool in
            try db.execute(sql: """
                INSERT INTO cases (case_id, status, workflow, error, failure_class, created_at, updated_at, finished_at)
                VALUES (?, 'FAILED', ?, ?, 'permanent', ?, ?, ?) ON CONFLICT(case_id) DO NOTHING
                """, arguments: [caseId, workflow, reason, now, now, now])
            guard db.changesCount == 1 else { return false }
            try Self.history(db, caseId: caseId, at: now, event: "rejected", status: .failed, step: nil, attempt: nil, message: reason)
            try Self.recordEvent(db, .caseFailed, caseId: caseId, status: CaseStatus.failed.rawValue, error: reason, detail: ["workflow": workflow], at: now)
            return true
        }
    }

    /// Raises a running step's progress (never lowers it); only while the case is still at that
    /// step and attempt.
    public func updateProgress(_ caseId: String, stepIndex: Int, attempt: Int, progress: Int) async throws {
        let now = now()
        try await pool.write { db in
            try db.execute(sql: """
                UPDATE cases SET progress = ?, updated_at = ?
                WHERE case_id = ? AND status = 'PROCESSING' AND step_index = ? AND attempt = ? AND progress < ?
                """, arguments: [progress, now, caseId, stepIndex, attempt, progress])
        }
    }

    /// Runs the Conductor on one event for one case and persists its decision — the case row, the
    /// history line, GPU reservations and published commands — together with the acknowledgement
    /// of `message` (if the event came from the queue), in ONE transaction. If GPUs were released,
    /// cases waiting for them are started in the same transaction, first come first served.
    /// `audit`: who asked, recorded as an `operator` line of the case's history in the same
    /// transaction when the decision applies (`retry by alice from 10.1.2.3`).
    public func conduct(_ event: ConductorEvent, caseId: String, conductor: Conductor, acknowledging message: ClaimedMessage? = nil,
                        audit: String? = nil) async throws -> [AppliedDecision] {
        let now = now()
        let applied = try await pool.write { db -> [AppliedDecision] in
            try Self.conduct(event, caseId: caseId, conductor: conductor, acknowledging: message, audit: audit, db: db, now: now)
        }
        ring(applied.flatMap(\.decision.commands))
        return applied
    }

    /// One event of a batch for `conduct(_:conductor:)`: the event, its case and its message.
    public struct ConductorDelivery: Sendable {
        public var event: ConductorEvent
        public var caseId: String
        public var message: ClaimedMessage

        public init(event: ConductorEvent, caseId: String, message: ClaimedMessage) {
            self.event = event
            self.caseId = caseId
            self.message = message
        }
    }

    /// Runs the Conductor on several events, in order, and persists all their decisions with the
    /// acknowledgements of their messages in ONE transaction: each event's decision set is
    /// persisted as `conduct` does it (and sees the ones before it), and either all of them
    /// commit or none does (then every message is still queued, leased to its claimer).
    /// Returns each event's applied decisions, in order.
    public func conduct(_ deliveries: [ConductorDelivery], conductor: Conductor) async throws -> [[AppliedDecision]] {
        let now = now()
        let applied = try await pool.write { db -> [[AppliedDecision]] in
            try deliveries.map { delivery in
                try Self.conduct(delivery.event, caseId: delivery.caseId, conductor: conductor, acknowledging: delivery.message,
                                 audit: nil, db: db, now: now)
            }
        }
        ring(applied.joined().flatMap(\.decision.commands))
        return applied
    }

    static func conduct(_ event: ConductorEvent, caseId: String, conductor: Conductor, acknowledging message: ClaimedMessage?,
                        audit: String?, db: any SQLConnection, now: Date) throws -> [AppliedDecision] {
        if let message { try db.execute(sql: "DELETE FROM messages WHERE id = ?", arguments: [message.id]) }
        guard let state = try caseState(db, caseId) else { return [] }
        let free = try freeGPUs(db)
        let usable = try usableGPUCount(db)
        // Most decisions do not depend on who waits for GPUs (a step that keeps its GPU, a case
        // that completes): the line, every waiting case read, is read only when the decision
        // would differ with others waiting.
        let unhindered = conductor.decide(state, event, gpus: GPUAvailability(free: free, othersWaiting: false, usable: usable))
        let decision: Decision
        if conductor.decide(state, event, gpus: GPUAvailability(free: free, othersWaiting: true, usable: usable)) == unhindered {
            decision = unhindered
        } else {
            // Only cases ahead of this one in the line (all of them when it does not wait itself).
            let line = try waitingCases(db)
            let waiting = Array(line.prefix { $0.caseId != caseId })
            let othersWaiting = conductor.othersWaiting(waiting, usable: usable)
            decision = othersWaiting
                ? conductor.decide(state, event, gpus: GPUAvailability(free: free, othersWaiting: true, usable: usable))
                : unhindered
        }
        try apply(decision, event: event, previous: state, conductor: conductor, db: db, now: now)
        if let audit, decision.outcome == .applied {
            try history(db, caseId: caseId, at: now, event: "operator", status: decision.state.status, step: nil, attempt: nil, message: audit)
        }
        var applied = [AppliedDecision(event: event, decision: decision, previousStatus: state.status)]
        // GPUs freed, or the head of the wait left it: the cases behind may start now.
        if !decision.release.isEmpty || (state.status == .pendingResource && decision.state.status != .pendingResource) {
            applied += try dispatchPending(conductor: conductor, db: db, now: now)
        } else if decision.outcome == .applied, decision.state.status == .pendingResource {
            applied += try warnUnservable(conductor: conductor, db: db, now: now)
        }
        return applied
    }

    /// Starts cases waiting for GPUs while there are free GPUs (e.g. at start-up).
    public func dispatchPending(conductor: Conductor) async throws -> [AppliedDecision] {
        let now = now()
        let applied = try await pool.write { db in try Self.dispatchPending(conductor: conductor, db: db, now: now) }
        ring(applied.flatMap(\.decision.commands))
        return applied
    }

    static func dispatchPending(conductor: Conductor, db: any SQLConnection, now: Date) throws -> [AppliedDecision] {
        var applied: [AppliedDecision] = []
        let usable = try usableGPUCount(db)
        let line = try waitingCases(db)
        for state in line {
            // A case the usable GPUs can never serve waits for the hardware, not for its turn:
            // it does not hold up the cases behind it.
            guard conductor.canBeServed(state, usable: usable) else { continue }
            let free = try freeGPUs(db)
            guard !free.isEmpty else { break }
            let decision = conductor.decide(state, .gpusFreed, gpus: GPUAvailability(free: free, usable: usable))
            // First come, first served: a case that still cannot start blocks those behind it.
            guard decision.outcome == .applied else { break }
            try apply(decision, event: .gpusFreed, previous: state, conductor: conductor, db: db, now: now)
            applied.append(AppliedDecision(event: .gpusFreed, decision: decision, previousStatus: state.status))
            // A case whose beams still wait keeps its place: later cases do not overtake it.
            if decision.state.beams.contains(where: { $0.status == .waiting }) { break }
        }
        // Only cases that can be served were started: the others still wait as read.
        let started = Set(applied.map(\.decision.state.caseId))
        return applied + (try warnUnservable(conductor: conductor, db: db, now: now, waiting: line.filter { !started.contains($0.caseId) }))
    }

    /// Cases waiting for GPUs, first come first served.
    static func waitingCases(_ db: any SQLConnection) throws -> [CaseState] {
        // Two queries whatever the number of waiting cases (on PostgreSQL each query is a round
        // trip, made while the write lock is held).
        let waiting = "status = ? OR (status = ? AND pending_since IS NOT NULL)"
        let arguments: SQLArguments = [CaseStatus.pendingResource.rawValue, CaseStatus.processing.rawValue]
        let rows = try SQLRow.fetchAll(db, sql: "SELECT * FROM cases WHERE \(waiting) ORDER BY pending_since, created_at, rowid", arguments: arguments)
        var beams: [String: [BeamRun]] = [:]
        for row in try SQLRow.fetchAll(db, sql: """
            SELECT b.* FROM beam_runs b JOIN cases c ON c.case_id = b.case_id AND c.step_index = b.step_index
            WHERE \(waiting.replacingOccurrences(of: "status", with: "c.status").replacingOccurrences(of: "pending_since", with: "c.pending_since"))
            ORDER BY b.case_id, b.beam
            """, arguments: arguments) {
            beams[row["case_id"], default: []].append(beamRun(row))
        }
        return rows.map { row in
            var state = caseState(row)
            state.beams = beams[state.caseId] ?? []
            return state
        }
    }

    /// Configured GPUs usable at all now: not retired and healthy, whether free, reserved or draining.
    static func usableGPUCount(_ db: any SQLConnection) throws -> Int {
        try Int.fetchOne(db, sql: "SELECT count(*) FROM gpu_resources WHERE status != 'retired' AND health = 'ok'") ?? 0
    }

    /// One warning per case and wait: a waiting case whose step needs more GPUs than are usable
    /// now says so once (in its history and, through the returned item, in the log).
    /// `waiting`: the waiting cases when the caller has just read them.
    static func warnUnservable(conductor: Conductor, db: any SQLConnection, now: Date, waiting: [CaseState]? = nil) throws -> [AppliedDecision] {
        let usable = try usableGPUCount(db)
        var warnings: [AppliedDecision] = []
        for state in try waiting ?? waitingCases(db) where !conductor.canBeServed(state, usable: usable) {
            let warned = try Bool.fetchOne(db, sql: """
                SELECT EXISTS(SELECT 1 FROM case_events e JOIN cases c ON c.case_id = e.case_id
                              WHERE e.case_id = ? AND e.event = 'waits_for_hardware' AND e.at >= coalesce(c.pending_since, ''))
                """, arguments: [state.caseId]) ?? false
            if warned { continue }
            let rows = try SQLRow.fetchAll(db, sql: "SELECT gpu_id, status, health FROM gpu_resources WHERE status != 'retired' ORDER BY gpu_id")
            let unhealthy = rows.filter { ($0["health"] as String) != "ok" }.map { row -> String in "GPU \(row["gpu_id"] as Int) \(row["health"] as String)" }
            let needed = conductor.gpuMinimum(state)
            let step = state.stepIndex.flatMap { conductor.workflows[state.workflow]?.steps[$0].name } ?? "?"
            let verb = usable == 1 ? "is" : "are"
            let note = "case \(state.caseId) waits for \(needed) GPUs (step \(step)) but only \(usable) of the \(rows.count) configured GPUs \(verb) healthy"
                + (unhealthy.isEmpty ? "" : " (\(unhealthy.joined(separator: ", ")))")
                + "; cases behind it may start meanwhile"
            try history(db, caseId: state.caseId, at: now, event: "waits_for_hardware", status: state.status,
                        step: step, attempt: state.attempt, message: note)
            warnings.append(AppliedDecision(event: .gpusFreed, decision: Decision(outcome: .ignored, state: state, note: note),
                                            previousStatus: state.status, warning: true))
        }
        return warnings
    }

    static func apply(_ decision: Decision, event: ConductorEvent, previous: CaseState, conductor: Conductor, db: any SQLConnection, now: Date) throws {
        let state = decision.state
        let stepName = state.stepIndex.flatMap { index in
            conductor.workflows[state.workflow]?.steps.indices.contains(index) == true
                ? conductor.workflows[state.workflow]?.steps[index].name : nil
        }
        guard decision.outcome == .applied else {
            try history(db, caseId: state.caseId, at: now, event: "ignored", status: state.status, step: stepName,
                        attempt: state.stepIndex == nil ? nil : state.attempt, message: decision.note)
            return
        }
        for gpu in decision.release {
            try db.execute(sql: """
                UPDATE gpu_resources SET status = CASE WHEN status = 'retired' THEN 'retired' ELSE 'free' END,
                    reserved_by = NULL, reserved_at = NULL
                WHERE gpu_id = ? AND reserved_by = ?
                """, arguments: [gpu, state.caseId])
        }
        for gpu in decision.drain {
            // The attempt it waits for: the stop that names it (a beam's run has its own attempt).
            let stop = decision.commands.first { $0.kind == .stopAttempt && $0.body.gpuIds?.contains(gpu) == true }?.body
            try db.execute(sql: """
                UPDATE gpu_resources SET status = CASE WHEN status = 'retired' THEN 'retired' ELSE 'draining' END,
                    reserved_by = NULL, reserved_at = NULL, drain_case = ?, drain_step_index = ?, drain_attempt = ?, drain_beam = ?,
                    drain_since = ?, drain_reason = NULL
                WHERE gpu_id = ? AND reserved_by = ?
                """, arguments: [previous.caseId, stop?.stepIndex ?? previous.stepIndex, stop?.attempt ?? previous.attempt, stop?.beam,
                                 now, gpu, previous.caseId])
        }
        for gpu in decision.reserve {
            try db.execute(sql: """
                UPDATE gpu_resources SET status = 'reserved', reserved_by = ?, reserved_at = ? WHERE gpu_id = ? AND status = 'free'
                """, arguments: [state.caseId, now, gpu])
            // Never double-book: a GPU that is not free rolls back the whole transaction.
            guard db.changesCount == 1 else { throw StoreError("GPU \(gpu) is not free; refusing to reserve it for \(state.caseId)") }
        }
        // A case waits while it is PENDING_RESOURCE or has beams waiting for GPUs; it keeps its
        // place in the line (pending_since) until it waits no more.
        let waits = state.status == .pendingResource || state.beams.contains { $0.status == .waiting }
        let waited = previous.status == .pendingResource || previous.beams.contains { $0.status == .waiting }
        let entersWait = waits && !waited
        if let index = previous.stepIndex, !decision.finishedBeams.isEmpty {
            try saveBeams(db, caseId: state.caseId, stepIndex: index, beams: decision.finishedBeams, now: now)
        }
        if let index = state.stepIndex, !state.beams.isEmpty {
            try saveBeams(db, caseId: state.caseId, stepIndex: index, beams: state.beams, now: now)
        }
        try db.execute(sql: """
            UPDATE cases SET status = ?, workflow_step = ?, step_index = ?, attempt = ?, progress = ?, gpu_ids = ?,
                error = ?, failure_class = ?, updated_at = ?,
                started_at = CASE WHEN started_at IS NULL AND ? = 'PROCESSING' THEN ? ELSE started_at END,
                finished_at = CASE WHEN ? IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN ? ELSE NULL END,
                pending_since = CASE WHEN ? = 1 THEN (CASE WHEN ? = 1 THEN ? ELSE pending_since END) ELSE NULL END,
                detail = CASE WHEN ? IN ('COMPLETED', 'FAILED', 'CANCELLED') OR step_index IS DISTINCT FROM ? OR attempt IS DISTINCT FROM ? THEN NULL ELSE detail END
            WHERE case_id = ?
            """, arguments: [
                state.status.rawValue, stepName, state.stepIndex, state.attempt, state.progress, encodeGPUs(state.gpuIds),
                state.error, state.failureClass?.rawValue, now,
                state.status.rawValue, now,
                state.status.rawValue, now,
                waits, entersWait, now,
                // A finished case, another step or another attempt: what the scheduler said no longer holds.
                state.status.rawValue, state.stepIndex, state.attempt,
                state.caseId,
            ])
        for command in decision.commands { try insert(command, db: db, now: now) }
        try history(db, caseId: state.caseId, at: now, event: event.name, status: state.status, step: stepName,
                    attempt: state.stepIndex == nil ? nil : state.attempt, message: decision.note)
        if state.status != previous.status, let told = caseEvent(for: state.status) {
            try recordEvent(db, told, caseId: state.caseId, status: state.status.rawValue, error: state.error,
                            detail: ["workflow": state.workflow], at: now)
        }
    }

    static func history(_ db: any SQLConnection, caseId: String, at: Date, event: String, status: CaseStatus, step: String?, attempt: Int?, message: String) throws {
        try db.execute(sql: """
            INSERT INTO case_events (case_id, at, event, status, step, attempt, message) VALUES (?, ?, ?, ?, ?, ?, ?)
            """, arguments: [caseId, at, event, status.rawValue, step, attempt, message])
    }

    static func caseState(_ db: any SQLConnection, _ caseId: String) throws -> CaseState? {
        guard let row = try SQLRow.fetchOne(db, sql: "SELECT * FROM cases WHERE case_id = ?", arguments: [caseId]) else { return nil }
        var state = caseState(row)
        state.beams = try loadBeams(db, caseId: state.caseId, stepIndex: state.stepIndex)
        return state
    }

    /// A case row's state, without its beam runs.
    static func caseState(_ row: SQLRow) -> CaseState {
        CaseState(caseId: row["case_id"], status: CaseStatus(rawValue: row["status"]) ?? .failed, workflow: row["workflow"],
                         stepIndex: row["step_index"], attempt: row["attempt"], gpuIds: decodeGPUs(row["gpu_ids"]),
                         progress: row["progress"], error: row["error"],
                         failureClass: (row["failure_class"] as String?).flatMap(FailureClass.init(rawValue:)),
                         patientId: row["patient_id"], beamNumbers: decodeGPUs(row["beam_numbers"] ?? ""))
    }

    static func freeGPUs(_ db: any SQLConnection) throws -> [Int] {
        try Int.fetchAll(db, sql: "SELECT gpu_id FROM gpu_resources WHERE status = 'free' AND health = 'ok' ORDER BY gpu_id")
    }

    // MARK: GPUs

    /// Makes `gpu_resources` match the configured GPU ids and repairs reservations: a GPU reserved
    /// by a case that does not hold it (a crash between steps, an edited database) is freed; a GPU
    /// a running case holds is marked reserved. Returns the ids it freed.
    @discardableResult
    public func reconcileGPUs(configured ids: [Int]) async throws -> [Int] {
        let now = now()
        return try await pool.write { db in
            for id in ids {
                try db.execute(sql: "INSERT INTO gpu_resources (gpu_id, status) VALUES (?, 'free') ON CONFLICT(gpu_id) DO NOTHING", arguments: [id])
            }
            let known = try Int.fetchAll(db, sql: "SELECT gpu_id FROM gpu_resources")
            for id in known where !ids.contains(id) {
                try db.execute(sql: "UPDATE gpu_resources SET status = 'retired' WHERE gpu_id = ?", arguments: [id])
            }
            for id in ids {
                try db.execute(sql: "UPDATE gpu_resources SET status = CASE WHEN reserved_by IS NULL THEN 'free' ELSE 'reserved' END WHERE gpu_id = ? AND status = 'retired'", arguments: [id])
            }
            // Who really holds each GPU: cases that are running or about to, by their gpu_ids.
            var holders: [Int: String] = [:]
            for row in try SQLRow.fetchAll(db, sql: "SELECT case_id, gpu_ids FROM cases WHERE status = 'PROCESSING' AND gpu_ids != ''") {
                for gpu in Self.decodeGPUs(row["gpu_ids"]) { holders[gpu] = row["case_id"] }
            }
            var freed: [Int] = []
            for row in try SQLRow.fetchAll(db, sql: "SELECT gpu_id, reserved_by FROM gpu_resources") {
                let gpu: Int = row["gpu_id"]
                let reservedBy: String? = row["reserved_by"]
                if let holder = holders[gpu] {
                    if reservedBy != holder {
                        try db.execute(sql: "UPDATE gpu_resources SET reserved_by = ?, reserved_at = coalesce(reserved_at, ?), status = CASE WHEN status = 'retired' THEN 'retired' ELSE 'reserved' END WHERE gpu_id = ?",
                                       arguments: [holder, now, gpu])
                    }
                } else if reservedBy != nil {
                    try db.execute(sql: "UPDATE gpu_resources SET reserved_by = NULL, reserved_at = NULL, status = CASE WHEN status = 'retired' THEN 'retired' ELSE 'free' END WHERE gpu_id = ?", arguments: [gpu])
                    freed.append(gpu)
                }
            }
            return freed
        }
    }

    public func gpus() async throws -> [GPUResource] {
        try await pool.read { db in
            try SQLRow.fetchAll(db, sql: "SELECT * FROM gpu_resources ORDER BY gpu_id").map { row in
                GPUResource(gpuId: row["gpu_id"], status: GPUResource.Status(rawValue: row["status"]) ?? .retired,
                            reservedBy: row["reserved_by"], reservedAt: row["reserved_at"],
                            health: GPUResource.Health(rawValue: row["health"]) ?? .ok, name: row["name"], uuid: row["uuid"],
                            utilizationPercent: row["utilization"], memoryUsedMB: row["memory_used_mb"],
                            memoryTotalMB: row["memory_total_mb"], temperatureC: row["temperature"], lastSeen: row["last_seen"],
                            drain: (row["status"] as String) == "draining" ? GPUResource.Drain(
                                caseId: row["drain_case"] ?? "", stepIndex: row["drain_step_index"], attempt: row["drain_attempt"], beam: row["drain_beam"],
                                since: row["drain_since"], reason: row["drain_reason"]) : nil)
            }
        }
    }

    /// Records what nvidia-smi reports. A free GPU whose memory use is above `busyMemoryMB` is
    /// marked busy (a foreign process) and a configured GPU missing from the list is marked
    /// missing; neither is reserved until it is back. Returns the GPUs that became usable again.
    @discardableResult
    public func recordGPUTelemetry(_ samples: [GPUSample], busyMemoryMB: Double) async throws -> [Int] {
        let now = now()
        return try await pool.write { db in
            var recovered: [Int] = []
            for row in try SQLRow.fetchAll(db, sql: "SELECT gpu_id, status, health FROM gpu_resources WHERE status != 'retired'") {
                let id: Int = row["gpu_id"]
                let status: String = row["status"]
                let before = GPUResource.Health(rawValue: row["health"]) ?? .ok
                guard let sample = samples.first(where: { $0.index == id }) else {
                    try db.execute(sql: "UPDATE gpu_resources SET health = 'missing' WHERE gpu_id = ?", arguments: [id])
                    if before != .missing {
                        try Self.recordEvent(db, .gpuMissing, caseId: nil, status: GPUResource.Health.missing.rawValue,
                                             error: "GPU \(id) is not listed by nvidia-smi (gpu_monitor.command); it is not reserved until it is back",
                                             detail: ["gpu_id": id], at: now)
                    }
                    continue
                }
                let foreign = status == "free" && (sample.memoryUsedMB ?? 0) > busyMemoryMB
                let health: GPUResource.Health = foreign ? .busy : .ok
                if health == .ok, before != .ok { recovered.append(id) }
                try db.execute(sql: """
                    UPDATE gpu_resources SET health = ?, name = ?, uuid = ?, utilization = ?, memory_used_mb = ?, memory_total_mb = ?,
                        temperature = ?, last_seen = ? WHERE gpu_id = ?
                    """, arguments: [health.rawValue, sample.name, sample.uuid, sample.utilizationPercent, sample.memoryUsedMB,
                                     sample.memoryTotalMB, sample.temperatureC, now, id])
            }
            return recovered
        }
    }

    // MARK: queries

    public func caseIds() async throws -> Set<String> {
        try await pool.read { db in Set(try String.fetchAll(db, sql: "SELECT case_id FROM cases")) }
    }

    public func caseExists(_ caseId: String) async throws -> Bool {
        try await pool.read { db in
            try Bool.fetchOne(db, sql: "SELECT EXISTS(SELECT 1 FROM cases WHERE case_id = ?)", arguments: [caseId]) ?? false
        }
    }

    public func caseState(_ caseId: String) async throws -> CaseState? {
        try await pool.read { db in try Self.caseState(db, caseId) }
    }

    public func caseSummary(_ caseId: String) async throws -> CaseSummary? {
        try await pool.read { db in
            try SQLRow.fetchOne(db, sql: "SELECT * FROM cases WHERE case_id = ?", arguments: [caseId]).map { try Self.withBeams(db, [Self.summary($0)])[0] }
        }
    }

    /// Cases newest first, optionally of one status.
    public func cases(status: CaseStatus? = nil, limit: Int = 10_000) async throws -> [CaseSummary] {
        try await pool.read { db in
            if let status {
                return try SQLRow.fetchAll(db, sql: "SELECT * FROM cases WHERE status = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
                                        arguments: [status.rawValue, limit]).map(Self.summary).withBeams(db)
            }
            return try SQLRow.fetchAll(db, sql: "SELECT * FROM cases ORDER BY created_at DESC, rowid DESC LIMIT ?", arguments: [limit]).map(Self.summary).withBeams(db)
        }
    }

    public func history(_ caseId: String) async throws -> [CaseHistoryEntry] {
        try await pool.read { db in
            try SQLRow.fetchAll(db, sql: "SELECT * FROM case_events WHERE case_id = ? ORDER BY id", arguments: [caseId]).map { row in
                CaseHistoryEntry(at: row["at"], event: row["event"], status: CaseStatus(rawValue: row["status"]) ?? .failed,
                                 step: row["step"], attempt: row["attempt"], message: row["message"])
            }
        }
    }

    /// Case counts per status.
    public func statusCounts() async throws -> [CaseStatus: Int] {
        try await pool.read { db in
            var counts = Dictionary(uniqueKeysWithValues: CaseStatus.allCases.map { ($0, 0) })
            for row in try SQLRow.fetchAll(db, sql: "SELECT status, count(*) AS n FROM cases GROUP BY status") {
                if let status = CaseStatus(rawValue: row["status"]) { counts[status] = row["n"] }
            }
            return counts
        }
    }

    /// Whether anything is left to do: active cases or queued/leased messages.
    public func activity() async throws -> ActivitySnapshot {
        try await pool.read { db in
            ActivitySnapshot(
                activeCases: try Int.fetchOne(db, sql: "SELECT count(*) FROM cases WHERE status IN ('NEW', 'PROCESSING', 'PENDING_RESOURCE')") ?? 0,
                queuedMessages: try Int.fetchOne(db, sql: "SELECT count(*) FROM messages") ?? 0)
        }
    }

    static func summary(_ row: SQLRow) -> CaseSummary {
        CaseSummary(caseId: row["case_id"], status: CaseStatus(rawValue: row["status"]) ?? .failed, workflow: row["workflow"],
                    workflowStep: row["workflow_step"], progress: row["progress"], gpuIds: decodeGPUs(row["gpu_ids"]),
                    attempt: row["attempt"], error: row["error"], createdAt: row["created_at"], updatedAt: row["updated_at"],
                    startedAt: row["started_at"], finishedAt: row["finished_at"],
                    failureClass: (row["failure_class"] as String?).flatMap(FailureClass.init(rawValue:)),
                    patientId: row["patient_id"], beamNumbers: decodeGPUs(row["beam_numbers"] ?? ""), detail: row["detail"])
    }
}

extension Array where Element == CaseSummary {
    func withBeams(_ db: any SQLConnection) throws -> [CaseSummary] { try Store.withBeams(db, self) }
}
