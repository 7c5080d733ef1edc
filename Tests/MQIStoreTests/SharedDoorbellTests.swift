import Foundation
import MQICore
@testable import MQIStore
import MQITestSupport
import Testing

/// Communicators sharing a PostgreSQL state wake each other through LISTEN/NOTIFY: a message one
/// of them publishes rings the other's doorbell at once, not at its next poll.
@Suite(.serialized)
struct SharedDoorbellTests {
    @Test(.timeLimit(.minutes(3)))
    func aMessagePublishedByOneCommunicatorWakesTheOther() async throws {
        let fixture = try StoreFixture(backend: .postgres)
        defer { fixture.remove() }
        // The second communicator: its own connections and its own doorbells.
        let other = try fixture.openAnother()
        other.listenForOtherCommunicators()
        defer { try? other.pool.close() }
        let conductor = other.bell.doorbell(for: .conductor)
        let transfer = other.bell.doorbell(for: .fileTransfer)
        // The listener rings every queue once it is connected (it may have missed notifications):
        // wait for that first, so the rings below are the publications'.
        await conductor.wait(upTo: 10)
        await transfer.wait(upTo: 0.3)

        let clock = ContinuousClock()
        var latencies: [Duration] = []
        for index in 0..<20 {
            try await fixture.store.registerCase("case-\(index)", workflow: "qa")
            // From the commit (register returned) to the other communicator's wake-up; a ring
            // that came first is remembered, so that counts as no wait.
            let committed = clock.now
            // 60 s: under CI's load one wake-up came 6.5 s after the commit (1.5 s of that the
            // test's own scheduling); without the notification every wait runs to its end.
            await conductor.wait(upTo: 60)
            latencies.append(clock.now - committed)
        }
        latencies.sort()
        let median = latencies[latencies.count / 2]
        print("NOTIFY wake-up across communicators: median \(median), max \(latencies.last!) (commit -> the other's doorbell), 20 publications")
        // Without the notification every wait would run to its 60 s end (the other communicator's
        // fallback poll is its own business): a wait that ended before is a notification's. How
        // fast is a figure (printed), not a bound: CI's load once made the median 1.02 s.
        #expect(latencies.filter { $0 >= .seconds(60) }.isEmpty, "a publication woke nobody: \(latencies)")
        // Only the queue that got a message rang.
        let quiet = clock.now
        await transfer.wait(upTo: 0.3)
        #expect(clock.now - quiet >= .milliseconds(250))
    }

    @Test(.timeLimit(.minutes(3)))
    func twoCommunicatorsNeverClaimTheSameMessage() async throws {
        let fixture = try StoreFixture(backend: .postgres)
        defer { fixture.remove() }
        let other = try fixture.openAnother()
        defer { try? other.pool.close() }
        for index in 0..<60 { try await fixture.store.registerCase("case-\(index)", workflow: "qa") }
        let stores = [fixture.store, other]
        // Six claimers, three per communicator, racing for 60 messages.
        let claimed = try await withThrowingTaskGroup(of: [Int64].self) { group in
            for worker in 0..<6 {
                let store = stores[worker % 2]
                group.addTask {
                    var ids: [Int64] = []
                    while let message = try await store.claim(.conductor, owner: "c\(worker % 2)/w\(worker)", leaseSec: 60) {
                        ids.append(message.id)
                    }
                    return ids
                }
            }
            return try await group.reduce(into: [Int64]()) { $0 += $1 }
        }
        #expect(claimed.count == 60)
        #expect(Set(claimed).count == 60)
    }
}
