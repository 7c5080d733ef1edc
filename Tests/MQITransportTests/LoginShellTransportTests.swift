import Foundation
import Logging
import MQICore
import MQITestSupport
import Testing
@testable import MQITransport

/// Everything the ssh transport runs remotely runs under /bin/sh, whatever the account's login
/// shell: the same scripts, arguments and stdin give the same output through a bash, tcsh, zsh
/// and dash account (those installed; scripts/test installs tcsh).
@Suite(.serialized, .enabled(if: SSHServer.isAvailable, "needs sshd, ssh and rsync"))
struct LoginShellTransportTests {
    /// Words a login shell would mangle if it ever parsed them: quotes, `$`, backquotes, csh's
    /// history `!`, a newline, a backslash, an empty word, a glob.
    static let awkward = ["it's", #"say "hi""#, "$HOME and `id` and $(id)", "wow!", "!!", "two\nlines", #"back\slash\n"#, "", " lead", "*", "a\tb"]

    static let quiet = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

    @Test(.timeLimit(.minutes(4)), arguments: SSHServer.installedShells())
    func scriptsCommandsTransfersAndStepsBehaveAlikeUnderEveryLoginShell(shell: String) async throws {
        let server = try SSHServer(loginShell: shell)
        defer { server.remove() }
        try await server.start()
        let temp = try TemporaryDirectory("mqi-shell")
        defer { temp.remove() }
        let connection = try SSHConnection(config: server.sshConfig(), retry: RetryPolicy(maxAttempts: 3, initialDelaySec: 0.2, maxDelaySec: 1),
                                           logger: Self.quiet, reconnectPatienceSec: 5)

        // The account really has that login shell.
        let login = try await connection.runScript(#"getent passwd "$(id -un)" | cut -d: -f7"#, timeoutSec: 20)
        #expect(login.stdoutText == shell + "\n", "\(login.stdoutText) \(login.stderrText)")

        // A script with awkward arguments and stdin.
        let script = #"""
            printf 'n=%s\n' "$#"
            for a in "$@"; do printf '[%s]\n' "$a"; done
            printf 'stdin: '; cat
            """#
        let output = try await connection.runScript(script, arguments: Self.awkward, stdin: Data("in put!\n".utf8), timeoutSec: 20)
        let expected = "n=\(Self.awkward.count)\n" + Self.awkward.map { "[\($0)]\n" }.joined() + "stdin: in put!\n"
        #expect(output.status == 0)
        #expect(output.stdoutText == expected, "\(shell): \(output.stdoutText) \(output.stderrText)")
        #expect(output.stderrText.isEmpty, "\(shell): \(output.stderrText)")
        // No arguments: `$#` is 0, and the exit status is the script's.
        let bare = try await connection.runScript("echo \"$#\"; exit 5", timeoutSec: 20)
        #expect(bare.status == 5 && bare.stdoutText == "0\n", "\(bare.stdoutText) \(bare.stderrText)")

        // A command (nvidia-smi, a readiness check): sh syntax, stdout and stderr together.
        let runner = SSHCommandRunner(connection: connection)
        let captured = try await runner.capture("for w in a b; do echo \"$w\"; done; echo 'it''s' >&2; exit 3", timeoutSec: 20)
        #expect(captured.status == 3 && captured.output == "a\nb\nits\n", "\(shell): \(captured.output)")

        // Upload (mkdir, rsync's remote side, the verify-and-rename script) and download.
        let remote = temp.file("remote")
        try FileManager.default.createDirectory(atPath: remote + "/download/CASE 1", withIntermediateDirectories: true)
        try Data("dose".utf8).write(to: URL(fileURLWithPath: remote + "/download/CASE 1/RTDOSE it's.dcm"))
        try server.giveToUser(remote)
        let local = temp.file("local/CASE 1")
        try FileManager.default.createDirectory(atPath: local + "/beam 1", withIntermediateDirectories: true)
        try Data("layer".utf8).write(to: URL(fileURLWithPath: local + "/beam 1/01 it's!.ptn"))
        try Data("plan".utf8).write(to: URL(fileURLWithPath: local + "/RP.1.dcm"))
        let mover = SSHFileMover(connection: connection, uploadDir: remote + "/upload", downloadDir: remote + "/download")
        #expect(try await mover.upload(caseId: "CASE 1", from: local).files == 2)
        #expect(FileManager.default.contentsEqual(atPath: local, andPath: remote + "/upload/CASE 1"))
        #expect(try await mover.download(caseId: "CASE 1", into: temp.file("results")) == TransferReport(files: 1, bytes: 4))

        // A step: started (input file, detached wrapper), polled, its log fetched; then one
        // cancelled (the kill script).
        let executor = SSHStepExecutor(connection: connection, uploadDir: remote + "/upload", pollInterval: 0.3, killGraceSec: 1, logger: Self.quiet)
        func step(_ command: String, attempt: Int) -> StepRun {
            StepRun(caseId: "CASE 1", step: "sim", attempt: attempt, command: command, gpuIds: [1], timeoutSec: nil,
                    logPath: temp.file("logs/sim.\(attempt).log"),
                    inputFiles: [RenderedFile(path: remote + "/upload/CASE 1/in.txt", content: "GPUID 1\nit's!\n")])
        }
        let run = step("cat in.txt; echo \"gpu=$CUDA_VISIBLE_DEVICES\"; ls 'beam 1'", attempt: 1)
        #expect(try await executor.execute(run) { false } == .succeeded)
        #expect(try String(contentsOfFile: run.logPath, encoding: .utf8) == "GPUID 1\nit's!\ngpu=1\n01 it's!.ptn\n")
        let cancelAt = Date().addingTimeInterval(1)
        #expect(try await executor.execute(step("sleep 60", attempt: 2)) { Date() > cancelAt } == .cancelled)
        await connection.closeMaster()
    }

    /// The one command line sent for a script: one line, single quotes only around the fixed
    /// loader, the script and its arguments only as base64 words.
    @Test func theRemoteCommandLineIsOneLineOfInertWords() throws {
        let command = try SSHConnection.scriptCommand("echo 'a'\nexit 0", arguments: Self.awkward)
        #expect(!command.contains("\n"))
        #expect(!command.contains("!"))
        let words = command.split(separator: " ", omittingEmptySubsequences: false)
        #expect(command.hasPrefix("/bin/sh -c " + ShellQuote.quote(SSHConnection.scriptLoader) + " mqi-script "))
        let payload = command.dropFirst(("/bin/sh -c " + ShellQuote.quote(SSHConnection.scriptLoader) + " mqi-script ").count)
        #expect(payload.allSatisfy { $0.isLetter || $0.isNumber || "+/= ".contains($0) })
        #expect(words.count >= 5)
        // Too long for one argument of the remote login shell: a clear error, not a mystery.
        #expect(throws: TransportError.self) { try SSHConnection.scriptCommand(String(repeating: "x", count: 200_000), arguments: []) }
    }
}
