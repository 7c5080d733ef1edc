import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Runs blocking work (copying a tree, hashing it, waiting for a child process) on a thread of
/// its own and resumes the caller when it is done, so the cooperative thread pool (which serves
/// the HTTP endpoint, the queues and lease renewals, with one thread per core) never waits on
/// a disk or a child.
enum BlockingWork {
    /// Set when the awaiting task is cancelled; long work checks it between chunks.
    final class Cancellation: Sendable {
        private let flag = Atomic<Bool>(false)
        var isCancelled: Bool { flag.load(ordering: .relaxed) }
        func cancel() { flag.store(true, ordering: .relaxed) }

        func check() throws {
            if isCancelled { throw CancellationError() }
        }
    }

    static func run<T: Sendable>(_ name: String, _ body: @escaping @Sendable (Cancellation) throws -> T) async throws -> T {
        let cancellation = Cancellation()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                let thread = Thread {
                    continuation.resume(with: Result { try body(cancellation) })
                }
                thread.name = name
                thread.start()
            }
        } onCancel: {
            cancellation.cancel()
        }
    }
}
