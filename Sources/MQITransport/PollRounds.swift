import Foundation

/// Polls many running attempts with one call per round: each attempt's supervisor asks for the
/// next round that covers it (`next`), and a single loop runs a round every `interval` while
/// any attempt is watched, over all of them at once (`round` gets every watched key with its
/// latest request). The Slurm executor's rounds are one `squeue`; the ssh executor's one ssh
/// session per host, whatever the number of steps.
actor PollRounds<Request: Sendable, Answer: Sendable> {
    let interval: Double
    let round: @Sendable ([String: Request]) async throws -> [String: Answer]?
    var watched: [String: Request] = [:]
    /// The latest round's answers (nil: the round failed as a whole), the keys it covered, and
    /// its number.
    var latest: [String: Answer]?
    var covered: Set<String> = []
    var generation = 0
    var polling: Task<Void, Never>?
    /// Rounds run so far (for tests and the benchmark).
    private(set) var rounds = 0

    init(interval: Double, round: @escaping @Sendable ([String: Request]) async throws -> [String: Answer]?) {
        self.interval = interval
        self.round = round
    }

    /// Watches `key` with `request` and waits for the first round after round `after` that
    /// covers it: its answer (nil when that round failed, or said nothing of the key) and the
    /// round's number, to pass as `after` next time.
    func next(_ key: String, _ request: Request, after wanted: Int) async throws -> (answer: Answer?, generation: Int) {
        watched[key] = request
        start()
        while generation <= wanted || !covered.contains(key) {
            try await Task.sleep(for: .milliseconds(20))
            start()
        }
        return (latest?[key], generation)
    }

    /// Whether the latest round failed as a whole.
    var lastRoundFailed: Bool { latest == nil }

    func unwatch(_ key: String) {
        watched[key] = nil
    }

    func start() {
        guard polling == nil, !watched.isEmpty else { return }
        polling = Task { await self.loop() }
    }

    func loop() async {
        var last = Date.distantPast
        while !watched.isEmpty {
            let wait = interval - Date().timeIntervalSince(last)
            if wait > 0 { try? await Task.sleep(for: .seconds(wait)) }
            last = Date()
            let requests = watched
            let answers = (try? await round(requests)) ?? nil
            rounds += 1
            latest = answers
            covered = Set(requests.keys)
            generation += 1
        }
        polling = nil
    }
}
