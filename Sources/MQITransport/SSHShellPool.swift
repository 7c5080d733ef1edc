import Foundation
import Synchronization

/// The few long-lived remote shells of one connection (`SSHShell`). A command takes an idle
/// shell, or starts one while fewer than `limit` run, or waits up to `waitSec` for one to come
/// free; otherwise (and while shells are held off after a failure) it runs in a plain session.
/// A shell is replaced after `maxAgeSec`. A shell that fails is dropped and no new one starts
/// for a while (`retryDelay`, doubling with consecutive failures, reset by the next success).
final class SSHShellPool: Sendable {
    let limit: Int
    let waitSec: Double
    /// A shell older than this is replaced when next taken: it keeps the environment its login
    /// set up, and a site's change to the account's rc files (new module versions) reaches the
    /// commands within this time.
    let maxAgeSec: Double

    private struct State {
        var idle: [SSHShell] = []
        var running = 0
        var failures = 0
        var heldOffUntil: ContinuousClock.Instant?
        var started = 0
        var nonce: UInt64 = 0
    }
    private let state = Mutex(State())

    init(limit: Int, waitSec: Double = 0.5, maxAgeSec: Double = 3600) {
        self.limit = max(0, limit)
        self.waitSec = waitSec
        self.maxAgeSec = maxAgeSec
    }

    deinit {
        closeAll()
    }

    /// Shells started so far (each one ssh session).
    var shellsStarted: Int { state.withLock { $0.started } }

    /// The live shells (idle or running a command).
    var count: Int { state.withLock { $0.running } }

    /// The local ssh processes of the idle shells (for tests: gone after `closeAll`).
    var idlePids: [pid_t] { state.withLock { $0.idle.map(\.pid) } }

    /// Whether shells are in use at all.
    var enabled: Bool { limit > 0 }

    enum Lease {
        case shell(SSHShell)
        case start
    }

    /// An idle shell, or leave to start one (the caller then calls `started` or `failed`), or nil:
    /// run the command in a plain session.
    func checkout() async -> Lease? {
        guard limit > 0 else { return nil }
        let deadline = ContinuousClock.now + .seconds(waitSec)
        while true {
            let lease = state.withLock { state -> Lease?? in
                if let held = state.heldOffUntil, ContinuousClock.now < held { return .some(nil) }
                while let shell = state.idle.popLast() {
                    if shell.isAlive, ContinuousClock.now - shell.started < .seconds(maxAgeSec) { return .some(.shell(shell)) }
                    state.running -= 1
                    shell.close()
                }
                if state.running < limit {
                    state.running += 1
                    state.started += 1
                    return .some(.start)
                }
                return nil
            }
            if let lease { return lease }
            if ContinuousClock.now >= deadline || Task.isCancelled { return nil }
            try? await Task.sleep(for: .milliseconds(2))
        }
    }

    /// A unique nonce for a request.
    func nextNonce() -> String {
        state.withLock { state in
            state.nonce += 1
            return "\(getpid())-\(state.nonce)-\(UInt32.random(in: 0...UInt32.max))"
        }
    }

    /// Gives a shell back after a good exchange.
    func checkin(_ shell: SSHShell) {
        state.withLock { state in
            state.failures = 0
            state.idle.append(shell)
        }
    }

    /// Drops a shell that failed (or could not start); `shellFault` holds shells off for a
    /// while (a timeout of the command itself does not).
    func discard(_ shell: SSHShell?, shellFault: Bool) {
        shell?.close()
        state.withLock { state in
            state.running -= 1
            guard shellFault else { return }
            state.failures += 1
            state.heldOffUntil = ContinuousClock.now + .seconds(Self.retryDelay(failures: state.failures))
        }
    }

    /// Seconds before another shell is tried after `failures` consecutive failures: 1, 2, 4 ... 300.
    static func retryDelay(failures: Int) -> Double {
        min(300, pow(2, Double(max(0, failures - 1))))
    }

    /// Closes every idle shell (one running a command ends with the master, or is kept for the
    /// next command when the master lives on). New shells start as needed afterwards.
    func closeAll() {
        let shells = state.withLock { state -> [SSHShell] in
            let shells = state.idle
            state.running -= shells.count
            state.idle = []
            return shells
        }
        for shell in shells { shell.close() }
    }
}
