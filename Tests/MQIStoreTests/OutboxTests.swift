import Foundation
import MQICore
@testable import MQIStore
import MQITestSupport
import Testing

/// The webhooks' outbox: every event is written by the transaction of its cause, numbered in
/// commit order; each webhook's cursor starts at its first sighting, moves only under its lease,
/// and one communicator delivers a webhook at a time.
@Suite("Store: the webhooks' outbox")
struct OutboxTests {
    static let all = NotificationEvent.allCases

    @Test("a case's registration, completion, failure and cancellation are recorded by the transaction that makes them, once each", arguments: StoreBackendKind.allCases)
    func caseEventsComeWithTheirCause(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let conductor = try Fixtures.conductor()
        try await store.reconcileGPUs(configured: [0])
        let driver = Driver(store: store, conductor: conductor)

        try await driver.registerAndStart("ok", workflow: Fixtures.workflowName)
        #expect(try await store.outboxEvents().map(\.event) == ["case_received"])
        // A second sighting of the case registers nothing and tells nothing.
        #expect(try await store.registerCase("ok", workflow: Fixtures.workflowName) == false)
        try await driver.work(.fileTransfer, expecting: "ok")
        try await driver.conductNext() // simulate
        // Steps that do not finish the case tell nothing.
        #expect(try await store.outboxEvents().count == 1)
        try await driver.work(.remoteExecutor, expecting: "ok")
        try await driver.conductNext() // download
        try await driver.work(.fileTransfer, expecting: "ok")
        fixture.clock.advance(by: 5)
        try await driver.conductNext() // COMPLETED
        #expect(try await store.caseSummary("ok")?.status == .completed)

        try await driver.registerAndStart("bad", workflow: Fixtures.workflowName)
        try await driver.work(.fileTransfer, expecting: "bad")
        try await driver.conductNext()
        let command = try #require(try await store.claim(.remoteExecutor, owner: "executor", leaseSec: 30))
        try await store.complete(command, publishing: command.body.result(.executionFailed, reason: "Segmentation fault", ended: true))
        try await driver.conductNext()
        #expect(try await store.caseSummary("bad")?.status == .failed)
        // A late duplicate of the failure is ignored: no second case_failed.
        _ = try await store.conduct(.stepFailed(stepIndex: 1, attempt: 1, reason: "again", retryable: false, ended: true), caseId: "bad", conductor: conductor)

        try await driver.registerAndStart("gone", workflow: Fixtures.workflowName)
        _ = try await store.conduct(.cancel(reason: "operator"), caseId: "gone", conductor: conductor)
        #expect(try await store.registerRejectedCase("broken", workflow: Fixtures.workflowName, reason: "no RP*.dcm"))

        let events = try await store.outboxEvents()
        #expect(events.map { "\($0.event) \($0.caseId ?? "-") \($0.status ?? "-")" } == [
            "case_received ok NEW", "case_completed ok COMPLETED",
            "case_received bad NEW", "case_failed bad FAILED",
            "case_received gone NEW", "case_cancelled gone CANCELLED",
            "case_failed broken FAILED",
        ])
        #expect(events.map(\.id) == events.map(\.id).sorted() && Set(events.map(\.id)).count == events.count)
        let completed = try #require(events.first { $0.event == "case_completed" })
        #expect(completed.error == nil)
        #expect(completed.at == fixture.clock.now)
        #expect(try await store.caseSummary("ok")?.finishedAt == completed.at, "written by the same transaction as the case row")
        #expect(events.first { $0.event == "case_failed" }?.error?.contains("Segmentation fault") == true)
        #expect(events.last?.error == "no RP*.dcm")
        #expect(events[0].detail == #"{"workflow":"qa"}"#)

        // A retried case that fails again is told again.
        _ = try await store.conduct(.retry, caseId: "bad", conductor: conductor)
        let again = try #require(try await store.claim(.remoteExecutor, owner: "executor", leaseSec: 30))
        try await store.complete(again, publishing: again.body.result(.executionFailed, reason: "FATAL ERROR", ended: true))
        try await driver.conductNext()
        #expect(try await store.outboxEvents(after: events.last!.id).map(\.event) == ["case_failed"])
    }

    @Test("a dead letter, a GPU going missing and the HPC host going away and back are recorded once per change", arguments: StoreBackendKind.allCases)
    func operationalEvents(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend, maxDeliveries: 1)
        defer { fixture.remove() }
        let store = fixture.store
        try await store.reconcileGPUs(configured: [0, 1])

        try await store.publish([OutgoingMessage(kind: .uploadCase, body: MessageBody(caseId: "c", stepIndex: 0, attempt: 1, step: "upload"))])
        let upload = try #require(try await store.claim(.fileTransfer, owner: "w", leaseSec: 30))
        #expect(try await store.fail(upload, error: "rsync: connection unexpectedly closed", retryAfter: 0))

        let sample = GPUSample(index: 0, memoryUsedMB: 0)
        try await store.recordGPUTelemetry([sample], busyMemoryMB: 500)
        try await store.recordGPUTelemetry([sample], busyMemoryMB: 500) // still missing: told once
        try await store.recordGPUTelemetry([sample, GPUSample(index: 1, memoryUsedMB: 0)], busyMemoryMB: 500)
        try await store.recordGPUTelemetry([sample], busyMemoryMB: 500) // missing again: told again

        let since = fixture.clock.now
        try await store.recordHost(HostState(host: "hpc1", reachable: true, since: since)) // first sighting, up: nothing
        try await store.recordHost(HostState(host: "hpc1", reachable: false, since: since, reason: "Connection refused"))
        try await store.recordHost(HostState(host: "hpc1", reachable: false, since: since, reason: "Connection timed out")) // same outage
        try await store.recordHost(HostState(host: "hpc1", reachable: true, since: since))

        let events = try await store.outboxEvents()
        #expect(events.map(\.event) == ["dead_letter", "gpu_missing", "gpu_missing", "hpc_unreachable", "hpc_reachable"])
        #expect(events[0].caseId == "c" && events[0].error?.contains("rsync") == true)
        #expect(events[0].detail == #"{"kind":"upload_case","queue":"file_transfer_queue"}"#)
        #expect(events[1].detail == #"{"gpu_id":1}"# && events[1].status == "missing")
        #expect(events[3].error == "Connection refused" && events[3].detail == #"{"host":"hpc1"}"# && events[3].status == "unreachable")
        #expect(events[4].error == nil && events[4].status == "reachable")
    }

    @Test("a new webhook starts after the events recorded so far; its cursor moves only forward, only under its lease, past unsubscribed events", arguments: StoreBackendKind.allCases)
    func cursorAndLease(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let url = "http://127.0.0.1:9/hook"
        try await store.registerCase("before", workflow: "qa")
        let cursor = try await store.registerWebhook(url: url, events: [.caseReceived], owner: "a")
        let first = try #require(try await store.outboxEvents().first)
        #expect(cursor.deliveredId == first.id, "the history before the webhook existed is not sent")
        #expect(try await store.pendingWebhookEvents(url: url, events: [.caseReceived]) == 0)

        for name in ["one", "two", "three"] { try await store.registerCase(name, workflow: "qa") }
        #expect(try await store.registerRejectedCase("bad", workflow: "qa", reason: "no plan")) // case_failed: not subscribed
        try await store.registerCase("four", workflow: "qa")
        #expect(try await store.pendingWebhookEvents(url: url, events: [.caseReceived]) == 4)

        // Communicator a takes the webhook; b is refused while a's lease runs.
        guard case .claimed(let delivered, let events) = try await store.claimWebhook(url: url, owner: "a", leaseSec: 30, events: [.caseReceived], limit: 2) else {
            Issue.record("a could not claim")
            return
        }
        #expect(delivered == first.id)
        #expect(events.map(\.caseId) == ["one", "two"])
        #expect(try await store.claimWebhook(url: url, owner: "b", leaseSec: 30, events: [.caseReceived]) == .heldBy("a"))
        #expect(try await store.markWebhookDelivered(url: url, owner: "b", through: events[0].id, leaseSec: 30) == false, "only the holder moves the cursor")
        #expect(try await store.markWebhookDelivered(url: url, owner: "a", through: events[0].id, leaseSec: 30))
        #expect(try await store.markWebhookFailed(url: url, owner: "a", error: "HTTP 503") == 1)
        #expect(try await store.markWebhookFailed(url: url, owner: "a", error: "connection refused") == 2)
        var state = try #require(try await store.webhookCursor(url: url))
        #expect(state.deliveredId == events[0].id && state.attempts == 2 && state.lastError == "connection refused" && state.failingSince == fixture.clock.now)

        // a dies: once its lease lapses b takes over from the cursor, and a can no longer move it.
        fixture.clock.advance(by: 31)
        guard case .claimed(_, let taken) = try await store.claimWebhook(url: url, owner: "b", leaseSec: 30, events: [.caseReceived]) else {
            Issue.record("b could not take over")
            return
        }
        #expect(taken.map(\.caseId) == ["two", "three", "four"], "from the event after the cursor, in order, subscribed ones only")
        #expect(try await store.markWebhookDelivered(url: url, owner: "a", through: taken[0].id, leaseSec: 30) == false)
        for event in taken { #expect(try await store.markWebhookDelivered(url: url, owner: "b", through: event.id, leaseSec: 30)) }
        #expect(try await store.markWebhookDelivered(url: url, owner: "b", through: taken[0].id, leaseSec: 30) == false, "never backwards")
        state = try #require(try await store.webhookCursor(url: url))
        #expect(state.attempts == 0 && state.lastError == nil && state.failingSince == nil)
        #expect(try await store.pendingWebhookEvents(url: url, events: [.caseReceived]) == 0)

        // Unsubscribed events after the cursor are skipped when nothing waits and nobody else holds it.
        #expect(try await store.registerRejectedCase("bad2", workflow: "qa", reason: "no plan"))
        let last = try #require(try await store.outboxEvents().last)
        #expect(try await store.registerWebhook(url: url, events: [.caseReceived], owner: "a").deliveredId == taken[2].id, "b still holds it")
        try store.releaseWebhook(url: url, owner: "b")
        #expect(try await store.registerWebhook(url: url, events: [.caseReceived], owner: "a").deliveredId == last.id)
        #expect(try await store.claimWebhook(url: url, owner: "a", leaseSec: 30, events: [.caseReceived]) == .claimed(deliveredId: last.id, events: []))
        #expect(try await store.claimWebhook(url: "http://127.0.0.1:9/other", owner: "a", leaseSec: 30, events: [.caseReceived]) == .unknown)
    }

    @Test("a configured webhook's backlog: none without a cursor, the events waiting, its failing tries and when the last was", arguments: StoreBackendKind.allCases)
    func backlogs(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let hook = WebhookConfig(url: "http://127.0.0.1:9/hook?token=x", events: [.caseReceived])
        let unstarted = WebhookConfig(url: "http://127.0.0.1:9/new", events: [.caseFailed])
        try await store.registerWebhook(url: hook.url, events: hook.events, owner: "a")
        for name in ["one", "two"] { try await store.registerCase(name, workflow: "qa") }
        #expect(try await store.registerRejectedCase("bad", workflow: "qa", reason: "no plan")) // case_failed: not subscribed
        var backlogs = try await store.webhookBacklogs([hook, unstarted])
        #expect(backlogs.map(\.url) == [hook.url, unstarted.url])
        #expect(backlogs[0].pending == 2 && backlogs[0].cursor?.attempts == 0 && backlogs[0].lastFailedTryAt == nil, "\(backlogs[0])")
        #expect(backlogs[1] == WebhookBacklog(url: unstarted.url, cursor: nil, pending: 0, lastFailedTryAt: nil))

        // Two failed tries a minute apart: since the first, the last error, when the last was.
        guard case .claimed(_, let events) = try await store.claimWebhook(url: hook.url, owner: "a", leaseSec: 30, events: hook.events) else {
            Issue.record("a could not claim")
            return
        }
        let firstFailure = fixture.clock.now
        try await store.markWebhookFailed(url: hook.url, owner: "a", error: "HTTP 503")
        fixture.clock.advance(by: 60)
        try await store.markWebhookFailed(url: hook.url, owner: "a", error: "connection refused")
        backlogs = try await store.webhookBacklogs([hook])
        let cursor = try #require(backlogs.first?.cursor)
        #expect(backlogs[0].pending == 2 && cursor.attempts == 2 && cursor.lastError == "connection refused", "\(backlogs[0])")
        #expect(cursor.failingSince == firstFailure && backlogs[0].lastFailedTryAt == fixture.clock.now, "\(backlogs[0])")

        // Delivered: nothing waits, nothing fails.
        fixture.clock.advance(by: 5)
        #expect(try await store.markWebhookDelivered(url: hook.url, owner: "a", through: try #require(events.last).id, leaseSec: 30))
        backlogs = try await store.webhookBacklogs([hook])
        #expect(backlogs[0].pending == 0 && backlogs[0].cursor?.attempts == 0 && backlogs[0].lastFailedTryAt == nil, "\(backlogs[0])")
    }

    @Test("ids follow commit order when communicators record events at once, claims that dead-letter included", arguments: StoreBackendKind.allCases)
    func concurrentRecordingKeepsCommitOrder(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend, maxDeliveries: 1)
        defer { fixture.remove() }
        let other = try fixture.openAnother(maxDeliveries: 1)
        // 40 commands whose one delivery is used up: the next claims move them to the dead
        // letters (on PostgreSQL in claim transactions, which run beside the serialized writes).
        try await fixture.store.publish((0..<40).map { OutgoingMessage(kind: .executeCommand, body: MessageBody(caseId: "d\($0)", stepIndex: 1, attempt: 1, step: "simulate")) })
        for _ in 0..<40 { _ = try await fixture.store.claim(.remoteExecutor, owner: "dead/worker", leaseSec: 30) }
        fixture.clock.advance(by: 31)
        // One store registers cases while the other dead-letters, and a reader follows the
        // outbox the way a notifier does: it must never see an id appear below one it passed.
        let seen = try await withThrowingTaskGroup(of: [Int64].self) { group in
            group.addTask {
                for number in 0..<40 { try await fixture.store.registerCase("c\(number)", workflow: "qa") }
                return []
            }
            group.addTask {
                for _ in 0..<40 { _ = try await other.claim(.remoteExecutor, owner: "other/worker", leaseSec: 30) }
                return []
            }
            group.addTask {
                var passed: Int64 = 0
                var order: [Int64] = []
                for _ in 0..<1000 {
                    for event in try await other.outboxEvents(after: passed) {
                        order.append(event.id)
                        passed = event.id
                    }
                    if order.count == 80 { break }
                    try await Task.sleep(for: .milliseconds(2))
                }
                return order
            }
            var all: [Int64] = []
            for try await part in group { all += part }
            return all
        }
        let recorded = try await fixture.store.outboxEvents()
        #expect(recorded.filter { $0.event == "dead_letter" }.count == 40 && recorded.filter { $0.event == "case_received" }.count == 40)
        #expect(seen == recorded.map(\.id), "the follower saw every event once, in id order")
    }

    @Test("retention deletes old events every webhook in use got, and keeps those a configured webhook still waits for", arguments: StoreBackendKind.allCases)
    func pruning(_ backend: StoreBackendKind) async throws {
        let fixture = try StoreFixture(backend: backend)
        defer { fixture.remove() }
        let store = fixture.store
        let url = "http://127.0.0.1:9/hook"
        try await store.registerWebhook(url: url, events: [.caseReceived], owner: "a")
        for name in ["a", "b", "c"] { try await store.registerCase(name, workflow: "qa") }
        let events = try await store.outboxEvents()
        _ = try await store.claimWebhook(url: url, owner: "a", leaseSec: 30, events: [.caseReceived])
        #expect(try await store.markWebhookDelivered(url: url, owner: "a", through: events[0].id, leaseSec: 30))
        fixture.clock.advance(by: 40 * 86_400)
        try await store.registerWebhook(url: url, events: [.caseReceived], owner: "a") // still configured
        let cutoff = fixture.clock.now.addingTimeInterval(-30 * 86_400)
        #expect(try await store.pruneOutbox(before: cutoff, dryRun: true) == 1)
        #expect(try await store.outboxEvents().count == 3)
        #expect(try await store.pruneOutbox(before: cutoff, dryRun: false) == 1)
        #expect(try await store.outboxEvents().map(\.caseId) == ["b", "c"], "undelivered events wait for the webhook")
        // The webhook is removed from the config: nothing touches its cursor for the retention
        // window, and its events no longer hold retention back.
        fixture.clock.advance(by: 40 * 86_400)
        #expect(try await store.pruneOutbox(before: fixture.clock.now.addingTimeInterval(-30 * 86_400), dryRun: false) == 2)
        #expect(try await store.outboxEvents().isEmpty)
        // Ids are never reused after the newest rows were pruned.
        try await store.registerCase("d", workflow: "qa")
        #expect(try #require(try await store.outboxEvents().first).id > events[2].id)
    }
}
