import Foundation

// MARK: - 5. SSH transport figures
//
// The SSH transport is being built separately (issue: SSH transport). Once
// `Sources/MQITransport/SSHBenchmark.swift` exists with a public API, call it from `run()` to
// report: per-command latency ratio vs raw `ssh`, transfer ratio vs raw `rsync`, and SSH
// connections opened per run. Until then every figure is printed as "n/a".
enum SSHFigures {
    static let section = "5. SSH transport"

    static func run() -> [Figure] {
        let note = "n/a (ssh transport not available)"
        return [
            .notAvailable(section, "per-command latency vs raw ssh", unit: "x", goal: "", note: note),
            .notAvailable(section, "transfer time vs raw rsync", unit: "x", goal: "", note: note),
            .notAvailable(section, "SSH connections per run", unit: "connections", goal: "", note: note),
        ]
    }
}
