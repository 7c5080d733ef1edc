import Foundation
import MQITestSupport
import Testing
@testable import MQIServices

/// The demo's stand-in scripts and MOQUI template are the files in
/// `Sources/MQIServices/Resources/demo/` (embedded at build time): `mqi demo` writes exactly them.
struct DemoScriptFilesTests {
    static let resources = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Sources/MQIServices/Resources/demo")

    static func file(_ name: String) throws -> String {
        try String(contentsOf: resources.appendingPathComponent(name), encoding: .utf8)
    }

    @Test func theSiteGetsTheFiles() throws {
        let temp = try TemporaryDirectory("mqi-demo-files")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 0)
        #expect(try String(contentsOfFile: site.path("bin/interpreter.sh"), encoding: .utf8) == Self.file("interpreter.sh"))
        #expect(try String(contentsOfFile: site.path("bin/moquisim.sh"), encoding: .utf8) == Self.file("moquisim.sh"))
        #expect(try String(contentsOfFile: site.path("bin/nvidia-smi.sh"), encoding: .utf8) == Self.file("nvidia-smi.sh"))
        #expect(try String(contentsOfFile: site.path("moqui_tps.in.tmpl"), encoding: .utf8) == Self.file("moqui_tps.in.tmpl"))
    }

    @Test(.timeLimit(.minutes(3)))
    func theNvidiaSMIStandInListsTheSiteGPUs() throws {
        let temp = try TemporaryDirectory("mqi-demo-files")
        defer { temp.remove() }
        let site = try DemoSite.create(at: temp.file("site"), cases: 0, gpus: [2, 13])
        let run = try DemoSiteTests.sh([site.path("bin/nvidia-smi.sh")])
        #expect(run.status == 0)
        let lines = run.output.split(separator: "\n").map { $0.split(separator: ",").prefix(3).map { $0.trimmingCharacters(in: .whitespaces) } }
        #expect(lines == [
            ["2", "GPU-00000000-0000-0000-0000-000000000002", "DEMO STAND-IN GPU (not real)"],
            ["13", "GPU-00000000-0000-0000-0000-000000000003", "DEMO STAND-IN GPU (not real)"],
        ])
    }

    @Test(.enabled(if: LintTools.shellcheck != nil, "shellcheck is not installed (Debian package `shellcheck`); scripts/test installs it"))
    func theScriptsPassShellcheck() throws {
        let scripts = ["interpreter.sh", "moquisim.sh", "nvidia-smi.sh"].map { Self.resources.appendingPathComponent($0).path }
        let check = try LintTools.run(try #require(LintTools.shellcheck), ["--shell=sh"] + scripts)
        #expect(check.status == 0, "shellcheck:\n\(check.output)")
    }
}
