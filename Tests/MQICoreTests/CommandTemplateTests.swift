import Foundation
import Testing
@testable import MQICore

/// Runs `command` with `/bin/sh -c` in `directory`; returns stdout and the exit status.
func runShell(_ command: String, in directory: URL) throws -> (output: String, status: Int32) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/sh")
    process.arguments = ["-c", command]
    process.currentDirectoryURL = directory
    let stdout = Pipe()
    process.standardOutput = stdout
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = stdout.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (String(decoding: data, as: UTF8.self), process.terminationStatus)
}

/// A fresh empty directory, removed by the caller.
func makeTemporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("mqi-core-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

@Suite("CommandTemplate")
struct CommandTemplateTests {
    @Test("placeholders and literal text are split into pieces")
    func parsesPieces() throws {
        let template = try CommandTemplate("run --case {case_id} --gpu {gpu_id}")
        #expect(template.pieces == [.literal("run --case "), .placeholder("case_id"), .literal(" --gpu "), .placeholder("gpu_id")])
        #expect(template.placeholders == ["case_id", "gpu_id"])
        #expect(template.source == "run --case {case_id} --gpu {gpu_id}")
        #expect(template.description == template.source)
    }

    @Test("rendering substitutes every placeholder, shell-quoted")
    func renders() throws {
        let template = try CommandTemplate("{case_id}:{gpu_ids} in {case_dir}")
        let out = template.render(["case_id": "P1", "gpu_ids": "0,1", "case_dir": "/up/P1"])
        #expect(out == "'P1':'0,1' in '/up/P1'")
    }

    @Test("a placeholder without a value renders as an empty quoted word")
    func missingValue() throws {
        #expect(try CommandTemplate("x {gpu_id} y").render([:]) == "x '' y")
    }

    @Test("shell syntax and escaped braces stay literal", arguments: [
        ("echo ${HOME}", "echo ${HOME}"),
        ("echo {{case_id}}", "echo {case_id}"),
        ("a {{ b }} c", "a { b } c"),
        ("awk '{print $1}' file", "awk '{print $1}' file"),
        ("{ a; b; }", "{ a; b; }"),
        ("f() {}", "f() {}"),
        ("echo ${HOME}/{case_id}", "echo ${HOME}/'C'"),
        ("awk '{print $1}' {case_dir}/x", "awk '{print $1}' '/u/C'/x"),
        ("unclosed {case_id", "unclosed {case_id"),
    ])
    func literalBraces(template: String, rendered: String) throws {
        let parsed = try CommandTemplate(template)
        #expect(parsed.render(["case_id": "C", "case_dir": "/u/C"]) == rendered)
    }

    @Test("`${HOME}` and `{{…}}` are not placeholders")
    func notPlaceholders() throws {
        #expect(try CommandTemplate("echo ${HOME} {{case_id}} awk '{print $1}'").placeholders.isEmpty)
    }

    @Test("an unknown placeholder throws, naming it and the known ones")
    func unknownPlaceholder() {
        #expect(throws: TemplateError.self) { try CommandTemplate("x --case {case_idd}") }
        do {
            _ = try CommandTemplate("x --case {case_idd} --gpu {gpuid}")
            Issue.record("expected a TemplateError")
        } catch {
            #expect(error.placeholder == "case_idd")
            #expect(error.description.hasPrefix("unknown placeholder {case_idd}"))
            #expect(error.description.contains("{case_id}"))
            #expect(error.description.contains("{gpu_id}"))
        }
    }

    @Test("a custom set of known placeholders is honoured")
    func customKnown() throws {
        #expect(try CommandTemplate("{a} {b}", known: ["a", "b"]).placeholders == ["a", "b"])
        #expect(throws: TemplateError.self) { try CommandTemplate("{case_id}", known: ["a"]) }
    }

    @Test("ShellQuote wraps in single quotes and escapes embedded quotes")
    func quoting() {
        #expect(ShellQuote.quote("") == "''")
        #expect(ShellQuote.quote("abc") == "'abc'")
        #expect(ShellQuote.quote("it's") == #"'it'\''s'"#)
    }

    @Test("an injected case id runs nothing: only the echo runs", .timeLimit(.minutes(3)))
    func injectionDoesNotRun() throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let marker = directory.appendingPathComponent("pwned")
        let caseId = "x'; touch \(marker.path); '"

        // The harness can see an injection: pasting the raw value into the same command creates the marker.
        _ = try runShell("echo '\(caseId)'", in: directory)
        #expect(FileManager.default.fileExists(atPath: marker.path), "control: unquoted substitution must inject")
        try FileManager.default.removeItem(at: marker)

        let rendered = try CommandTemplate("echo {case_id}").render(["case_id": caseId])
        let (output, status) = try runShell(rendered, in: directory)
        #expect(status == 0)
        #expect(output == caseId + "\n")
        #expect(!FileManager.default.fileExists(atPath: marker.path), "the injected touch ran")
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).isEmpty)
    }

    @Test("nasty values round-trip exactly through sh -c printf", .timeLimit(.minutes(3)), arguments: [
        "$(touch pwned)",
        "`touch pwned`",
        "a; touch pwned",
        "a && touch pwned || true",
        "line1\nline2\n",
        "  leading and  inner  spaces ",
        "tab\there",
        "héllo wörld ✓ 日本語 🚀",
        #""double quoted""#,
        "it's",
        "'",
        "''",
        "'\\''",
        #"back\slash\\ and \n literal"#,
        "$HOME ${HOME} $1 $@ $$",
        "*",
        "~",
        "-n",
        "%s %d %%",
        "a|b>c<d&e",
        "!history",
        "#comment",
        "",
    ])
    func roundTrip(value: String) throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let rendered = try CommandTemplate("printf %s {case_id}").render(["case_id": value])
        let (output, status) = try runShell(rendered, in: directory)
        #expect(status == 0)
        #expect(output == value)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).isEmpty, "the value ran a command")
    }
}
