import Foundation

/// The linters the tests run over the dashboard's and the demo's files when they are installed
/// (Debian packages `shellcheck`, `nodejs`, `eslint`; scripts/test installs them as optional);
/// a test that needs one is skipped with the reason when it is missing.
public enum LintTools {
    public static let shellcheck = installed("shellcheck")
    public static let node = installed("node")
    public static let eslint = installed("eslint")

    static func installed(_ name: String) -> String? {
        ["/usr/bin", "/usr/local/bin", "/bin"].map { "\($0)/\(name)" }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Runs `tool arguments...` with stdout and stderr together. `NODE_PATH` names Debian's
    /// module directories, so Debian's eslint also runs under a nodejs from another source
    /// (NodeSource's does not look there by itself).
    public static func run(_ tool: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let nodePath = (ProcessInfo.processInfo.environment["NODE_PATH"].map { [$0] } ?? []) + ["/usr/share/nodejs", "/usr/lib/nodejs"]
        return try runProcess(tool, arguments, environment: ["NODE_PATH": nodePath.joined(separator: ":")])
    }
}
