import Foundation
import MQICore
@testable import MQIStore
import Testing

@Suite("Doorbell and QueueBell")
struct DoorbellTests {
    static func elapsed(_ body: () async -> Void) async -> Duration {
        let clock = ContinuousClock()
        let start = clock.now
        await body()
        return clock.now - start
    }

    @Test("a ring before wait is remembered: wait returns at once")
    func ringBeforeWait() async {
        let doorbell = Doorbell()
        doorbell.ring()
        let took = await Self.elapsed { await doorbell.wait(upTo: 120) }
        #expect(took < .seconds(100))
    }

    @Test("wait without a ring returns after about the timeout")
    func waitTimesOut() async {
        let doorbell = Doorbell()
        let took = await Self.elapsed { await doorbell.wait(upTo: 0.05) }
        #expect(took >= .milliseconds(40))
        // Bounds well under the 120 s wait, not tight: at the whole suite's start every cooperative thread
        // was once held 20 s (PostgresServer.shared() starts PostgreSQL under a lock, synchronously).
        #expect(took < .seconds(100))
    }

    @Test("several rings before a wait wake only one wait")
    func ringsCoalesce() async {
        let doorbell = Doorbell()
        doorbell.ring()
        doorbell.ring()
        let first = await Self.elapsed { await doorbell.wait(upTo: 120) }
        #expect(first < .seconds(100))
        let second = await Self.elapsed { await doorbell.wait(upTo: 0.2) }
        #expect(second >= .milliseconds(150))
    }

    @Test("a ring wakes a waiter that is already waiting")
    func ringWakesAWaiter() async throws {
        let doorbell = Doorbell()
        let clock = ContinuousClock()
        let start = clock.now
        let waiter = Task { await doorbell.wait(upTo: 120) }
        try await Task.sleep(for: .milliseconds(100))
        doorbell.ring()
        await waiter.value
        #expect(clock.now - start < .seconds(100))
        // The ring was consumed by the waiter, not left over.
        let next = await Self.elapsed { await doorbell.wait(upTo: 0.1) }
        #expect(next >= .milliseconds(80))
    }

    @Test("cancelling a waiting task ends its wait")
    func cancellationEndsTheWait() async throws {
        let doorbell = Doorbell()
        let clock = ContinuousClock()
        let start = clock.now
        let waiter = Task { await doorbell.wait(upTo: 120) }
        try await Task.sleep(for: .milliseconds(50))
        waiter.cancel()
        await waiter.value
        #expect(clock.now - start < .seconds(100))
    }

    @Test("QueueBell rings every doorbell of a queue and only that queue")
    func queueBellRingsItsQueue() async {
        let bell = QueueBell()
        let first = bell.doorbell(for: .remoteExecutor)
        let second = bell.doorbell(for: .remoteExecutor)
        let other = bell.doorbell(for: .fileTransfer)
        bell.ring(.remoteExecutor)
        #expect(await Self.elapsed { await first.wait(upTo: 120) } < .seconds(100))
        #expect(await Self.elapsed { await second.wait(upTo: 120) } < .seconds(100))
        #expect(await Self.elapsed { await other.wait(upTo: 0.1) } >= .milliseconds(80))
    }
}
