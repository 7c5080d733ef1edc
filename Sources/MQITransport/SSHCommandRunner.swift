import Foundation
import MQICore

/// Runs short commands (nvidia-smi, readiness checks) on the HPC through the shared master.
public struct SSHCommandRunner: CommandRunner {
    public let connection: SSHConnection

    public init(connection: SSHConnection) {
        self.connection = connection
    }

    public func capture(_ command: String, timeoutSec: Double) async throws -> CommandResult {
        // The remote login shell runs `/bin/sh -c COMMAND 2>&1`: stdout and stderr together.
        let output = try await connection.run("/bin/sh -c \(ShellQuote.quote(command)) 2>&1", timeoutSec: timeoutSec)
        return CommandResult(status: output.status, output: output.stdoutText)
    }
}
