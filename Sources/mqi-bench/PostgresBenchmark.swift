import Foundation
import MQITestSupport

extension DaemonBenchmarks {
    /// `--only postgres`: the orchestration figures on a shared PostgreSQL state, with one and
    /// with two communicators, beside the same run on SQLite. The server is a private one
    /// (scripts/pg-server, 127.0.0.1) started for the run.
    static func postgres(cases: Int, keep: Bool) async throws -> [Figure] {
        progress("postgres: starting a private PostgreSQL server")
        let server = try PostgresServer.shared()
        var figures: [Figure] = []
        figures += try await orchestration(cases: cases, keep: keep,
                                           section: "9a. Orchestration on SQLite, 1 communicator (\(cases) cases, 4 steps, 4 GPUs, no-op commands)")
        figures += try await orchestration(cases: cases, keep: keep,
                                           section: "9b. Orchestration on PostgreSQL, 1 communicator (same work)",
                                           database: try server.freshDatabase(prefix: "bench"))
        figures += try await orchestration(cases: cases, keep: keep,
                                           section: "9c. Orchestration on PostgreSQL, 2 communicators sharing it (same work)",
                                           database: try server.freshDatabase(prefix: "bench"), communicators: 2)
        try? server.stop()
        return figures
    }
}
