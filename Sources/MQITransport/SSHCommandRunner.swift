import Foundation
import MQICore

/// Runs short commands (nvidia-smi, readiness checks) on the HPC through the shared master.
public struct SSHCommandRunner: CommandRunner {
    public let connection: SSHConnection

    public init(connection: SSHConnection) {
        self.connection = connection
    }

    public func capture(_ command: String, timeoutSec: Double) async throws -> CommandResult {
        // `/bin/sh -c COMMAND 2>&1`, whatever the login shell: stdout and stderr together.
        let output = try await connection.runScript(#"exec /bin/sh -c "$1" mqi-command 2>&1"#, arguments: [command], timeoutSec: timeoutSec)
        return CommandResult(status: output.status, output: output.stdoutText)
    }
}
