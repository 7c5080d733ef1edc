import Foundation
import Logging
import MQICore
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

struct CaseScannerTests {
    struct Fixture {
        let temp: TemporaryDirectory
        let store: Store
        let logs = CapturedLogs()
        var root: String { temp.file("logdata") }

        init() throws {
            temp = try TemporaryDirectory("mqi-scan")
            store = try Store(path: temp.file("state.sqlite"))
            try FileManager.default.createDirectory(atPath: temp.file("logdata"), withIntermediateDirectories: true)
        }

        func scanner(marker: String? = "_CASE_READY", quiet: Double = 0, rescan: Double = 30) -> CaseScanner {
            CaseScanner(config: ScannerConfig(localLogdata: root, readyMarker: marker, quietPeriodSec: quiet, rescanIntervalSec: rescan, workflow: "default_qa"),
                        store: store, logger: logs.logger())
        }

        func write(_ relative: String, _ text: String = "data\n") throws {
            let path = (root as NSString).appendingPathComponent(relative)
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: path, atomically: false, encoding: .utf8)
        }

        func newCaseMessages() async throws -> Int {
            var count = 0
            while let message = try await store.claim(.conductor, owner: "test", leaseSec: 60) {
                #expect(message.kind == .newCaseFound)
                try await store.complete(message, publishing: nil)
                count += 1
            }
            return count
        }
    }

    @Test func caseIsTakenOnlyOnceItsReadyMarkerExists() async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        let scanner = fixture.scanner()
        try fixture.write("CASE-1/RP.1.dcm")
        try fixture.write("CASE-1/2025042401501400/PlanInfo.txt", "DICOM_BEAM_NUMBER,1\n")
        #expect(await scanner.scan().registered == 0)
        #expect(try await fixture.store.caseExists("CASE-1") == false)
        try fixture.write("CASE-1/_CASE_READY", "")
        #expect(await scanner.scan().registered == 1)
        #expect(try await fixture.store.caseState("CASE-1")?.status == .new)
    }

    @Test(.timeLimit(.minutes(3)))
    func quietPeriodWaitsWhileTheCaseIsStillBeingWritten() async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        let scanner = fixture.scanner(marker: nil, quiet: 0.6)
        try fixture.write("CASE-Q/01_layer.ptn")
        var result = await scanner.scan()
        #expect(result.registered == 0 && result.settling == 1)
        // Keep writing: every change restarts the quiet period.
        for index in 2...4 {
            try await Task.sleep(for: .milliseconds(300))
            try fixture.write("CASE-Q/0\(index)_layer.ptn")
            result = await scanner.scan()
            #expect(result.registered == 0, "taken while still being written (file \(index))")
        }
        // Once nothing changes for the quiet period, it is taken.
        let taken = try await eventually(within: 30) {
            _ = await scanner.scan()
            return try await fixture.store.caseExists("CASE-Q")
        }
        #expect(taken)
    }

    @Test func copyWithOldTimestampsStillWaitsForAQuietPeriod() async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        let scanner = fixture.scanner(marker: nil, quiet: 5)
        try fixture.write("CASE-OLD/01.ptn")
        let old = Date(timeIntervalSinceNow: -3600)
        let path = (fixture.root as NSString).appendingPathComponent("CASE-OLD/01.ptn")
        try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: path)
        try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: (fixture.root as NSString).appendingPathComponent("CASE-OLD"))
        // First sighting: the signature has not been stable for the quiet period yet.
        #expect(await scanner.scan().registered == 0)
    }

    @Test func duplicateEventsAndRestartsRegisterACaseOnce() async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        for name in ["A", "B"] { try fixture.write("\(name)/_CASE_READY", "") }
        let first = fixture.scanner()
        #expect(await first.scan().registered == 2)
        #expect(await first.scan().registered == 0)
        first.wake.ring()
        #expect(await first.scan().registered == 0)
        // A restarted daemon (new scanner, same database) does not register them again.
        let restarted = fixture.scanner()
        #expect(await restarted.scan().registered == 0)
        #expect(try await fixture.newCaseMessages() == 2)
        // Even a finished case whose directory is touched again is not re-queued.
        try fixture.write("A/extra.txt")
        #expect(await restarted.scan().registered == 0)
        #expect(try await fixture.newCaseMessages() == 0)
    }

    @Test func invalidNamesAreSkippedWithOneWarningEach() async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        try fixture.write(".hidden-case/_CASE_READY", "")
        try fixture.write("not-a-directory.txt")
        try fixture.write("name with spaces 'and' quotes ünïcode/_CASE_READY", "")
        let scanner = fixture.scanner()
        #expect(await scanner.scan().registered == 1)
        #expect(await scanner.scan().registered == 0)
        #expect(try await fixture.store.caseExists("name with spaces 'and' quotes ünïcode"))
        let warnings = fixture.logs.messages(at: .warning)
        #expect(warnings.filter { $0.contains(".hidden-case") }.count == 1)
        #expect(warnings.filter { $0.contains("not-a-directory.txt") }.count == 1)
    }

    @Test(.timeLimit(.minutes(3)))
    func inotifyDetectsANewCaseWithoutWaitingForTheRescan() async throws {
        let fixture = try Fixture()
        defer { fixture.temp.remove() }
        let scanner = fixture.scanner(rescan: 3600)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await scanner.run() }
            try await Task.sleep(for: .milliseconds(300))
            try fixture.write("LIVE-1/RP.dcm")
            try await Task.sleep(for: .milliseconds(200))
            #expect(try await fixture.store.caseExists("LIVE-1") == false)
            let written = Date()
            try fixture.write("LIVE-1/_CASE_READY", "")
            let found = try await eventually(within: 90) { try await fixture.store.caseExists("LIVE-1") }
            #expect(found)
            // The rescan is hourly: anything well under that is inotify (a full suite on 2 cores has
            // held a test up for over 2 s).
            #expect(Date().timeIntervalSince(written) < 60, "detected by inotify, not the hourly rescan")
            group.cancelAll()
        }
    }
}
