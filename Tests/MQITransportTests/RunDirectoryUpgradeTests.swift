import Foundation
import MQICore
import MQITestSupport
import MQITransport
import Testing

/// Run directories moved from `{upload_dir}/{case_id}/.mqi/` to `{upload_dir}/.mqi-runs/{case_id}/`:
/// an attempt an older version started at the old location is adopted and stopped there, never
/// started a second time.
struct RunDirectoryUpgradeTests {
    /// Starts, as the previous version did, a detached process group recorded in `runDir/pid`
    /// that runs `body` and then records its exit code.
    static func startOldAttempt(_ runDir: String, caseDir: String, body: String) throws {
        try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
        process.arguments = ["/bin/sh", "-c", #"echo $$ > "$1/pid"; /bin/sh -c "$2"; echo $? > "$1/exit_code""#, "old-mqi", runDir, body]
        process.currentDirectoryURL = URL(fileURLWithPath: caseDir)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    static func run(_ temp: TemporaryDirectory, attempt: Int, command: String) -> StepRun {
        StepRun(caseId: "CASE-1", step: "sim", attempt: attempt, command: command, gpuIds: [0], timeoutSec: nil,
                logPath: temp.file("logs/CASE-1/sim.\(attempt).log"))
    }

    @Test(.timeLimit(.minutes(3)))
    func anAttemptRunningAtTheOldLocationIsAdoptedAndStoppedThereNotStartedAgain() async throws {
        let temp = try TemporaryDirectory("mqi-upgrade")
        defer { temp.remove() }
        let upload = temp.file("upload"), caseDir = temp.file("upload/CASE-1")
        try FileManager.default.createDirectory(atPath: caseDir, withIntermediateDirectories: true)
        let layout = RunDirectories(uploadDir: upload)
        let executor = LocalStepExecutor(uploadDir: upload, pollInterval: 0.05, killGraceSec: 1)
        let again = temp.file("started-again")
        let command = "touch \(ShellQuote.quote(again))"

        // Attempt 1 runs for a moment under the old location: the new code waits for it and reads its exit code.
        let old1 = layout.legacyRunDirectory(caseId: "CASE-1", step: "sim", attempt: 1)
        try Self.startOldAttempt(old1, caseDir: caseDir, body: "sleep 1; exit 0")
        #expect(await eventually(within: 30) { FileManager.default.fileExists(atPath: old1 + "/pid") })
        let outcome = try await executor.execute(Self.run(temp, attempt: 1, command: command)) { false }
        #expect(outcome == .succeeded)
        #expect(!FileManager.default.fileExists(atPath: again), "the attempt was adopted, not started again")
        #expect(!FileManager.default.fileExists(atPath: layout.runDirectory(caseId: "CASE-1", step: "sim", attempt: 1)))

        // Attempt 2 runs on under the old location: a stop finds it there and kills its group.
        let old2 = layout.legacyRunDirectory(caseId: "CASE-1", step: "sim", attempt: 2)
        try Self.startOldAttempt(old2, caseDir: caseDir, body: "sleep 60")
        #expect(await eventually(within: 30) { FileManager.default.fileExists(atPath: old2 + "/pid") })
        let pgid = try #require(Int32(try String(contentsOfFile: old2 + "/pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(LocalStepExecutor.groupAlive(pgid))
        try await executor.stop(.stopping(caseId: "CASE-1", step: "sim", attempt: 2))
        #expect(!LocalStepExecutor.groupAlive(pgid))
        #expect(FileManager.default.fileExists(atPath: old2 + "/stopped"))
        #expect(!FileManager.default.fileExists(atPath: layout.runDirectory(caseId: "CASE-1", step: "sim", attempt: 2)))
        // A redelivered start of the stopped attempt does not run the command.
        #expect(try await executor.execute(Self.run(temp, attempt: 2, command: command)) { false } == .cancelled)
        #expect(!FileManager.default.fileExists(atPath: again))
    }

    @Test(.timeLimit(.minutes(3)))
    func aStopDecidesOnTheRunDirectoryNotTheCaseDirectory() async throws {
        let temp = try TemporaryDirectory("mqi-upgrade")
        defer { temp.remove() }
        let upload = temp.file("upload")
        let layout = RunDirectories(uploadDir: upload)
        let executor = LocalStepExecutor(uploadDir: upload, pollInterval: 0.05, killGraceSec: 1)
        // Neither a case nor a run directory: nothing can run, nothing is created.
        try await executor.stop(.stopping(caseId: "CASE-1", step: "sim", attempt: 1))
        #expect(!FileManager.default.fileExists(atPath: layout.root))
        // A running attempt whose case directory was removed is still found and killed.
        let runDir = layout.runDirectory(caseId: "CASE-1", step: "sim", attempt: 1)
        try FileManager.default.createDirectory(atPath: layout.caseDirectory("CASE-1"), withIntermediateDirectories: true)
        try Self.startOldAttempt(runDir, caseDir: layout.caseDirectory("CASE-1"), body: "sleep 60")
        #expect(await eventually(within: 30) { FileManager.default.fileExists(atPath: runDir + "/pid") })
        let pgid = try #require(Int32(try String(contentsOfFile: runDir + "/pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        try FileManager.default.removeItem(atPath: layout.caseDirectory("CASE-1"))
        try await executor.stop(.stopping(caseId: "CASE-1", step: "sim", attempt: 1))
        #expect(!LocalStepExecutor.groupAlive(pgid))
        // With the case there but no run directory, the stop leaves `stopped` for a late start.
        try FileManager.default.createDirectory(atPath: layout.caseDirectory("CASE-1"), withIntermediateDirectories: true)
        try await executor.stop(.stopping(caseId: "CASE-1", step: "sim", attempt: 2))
        #expect(FileManager.default.fileExists(atPath: layout.runDirectory(caseId: "CASE-1", step: "sim", attempt: 2) + "/stopped"))
    }
}
