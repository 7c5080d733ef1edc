import Foundation
import MQICore
import MQIStore
import MQITestSupport
import Testing
@testable import MQIServices

/// https webhooks as a clinic runs them: the receiver's certificate (for 127.0.0.1) is issued by
/// the hospital's own CA, made here with the openssl CLI.
///
/// On Linux, URLSession (FoundationNetworking over libcurl) trusts only the system store: libcurl's
/// built-in CA file, /etc/ssl/certs/ca-certificates.crt, which update-ca-certificates writes; its
/// `URLSessionCertificateAuthorityInfoFile` variable is read on Android only, and libcurl ignores
/// SSL_CERT_FILE and CURL_CA_BUNDLE. So a daemon that trusts the CA runs in a mount namespace
/// of its own where that file is the system bundle plus the CA: the machine's trust store, and
/// every other process's view of it, stay as they are.
@Suite(.serialized)
struct HTTPSWebhookTests {
    static let systemBundle = "/etc/ssl/certs/ca-certificates.crt"

    /// Needs the openssl CLI, python3, the system bundle, and the right to make a mount namespace.
    static let canRun: Bool = {
        let tools = ["/usr/bin/openssl", "/usr/bin/python3", "/usr/bin/unshare", "/bin/sh"].allSatisfy { FileManager.default.isExecutableFile(atPath: $0) }
        guard tools, FileManager.default.fileExists(atPath: systemBundle) else { return false }
        return (try? runProcess("/usr/bin/unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c",
                                                     "mount --bind \(systemBundle) \(systemBundle)"]).status) == 0
    }()

    /// WebhookTests' receiver, serving TLS with `server.pem`/`server.key` from the script's directory.
    static let receiverScript = """
        import http.server, os, ssl, sys
        _here = os.path.dirname(os.path.abspath(sys.argv[0]))
        class _TLSServer(http.server.ThreadingHTTPServer):
            def server_bind(self):
                super().server_bind()
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(os.path.join(_here, 'server.pem'), os.path.join(_here, 'server.key'))
                self.socket = context.wrap_socket(self.socket, server_side=True)
        http.server.ThreadingHTTPServer = _TLSServer

        """ + WebhookTests.receiverScript

    static let subscribed: [NotificationEvent] = [.caseCompleted, .caseFailed]

    /// A site with an https webhook, its CA, the receiver (not started) and two cases to run.
    struct Site {
        let temp: TemporaryDirectory
        let config: String
        let receiver: WebhookTests.Receiver
        let store: Store
        /// The system bundle plus the CA.
        let trustedBundle: String
        var url: String { "https://127.0.0.1:\(receiver.port)/hook" }

        init(_ name: String) throws {
            temp = try TemporaryDirectory(name)
            func openssl(_ arguments: [String]) throws {
                let result = try runProcess("/usr/bin/openssl", arguments)
                try #require(result.status == 0, "openssl \(arguments.joined(separator: " ")): \(result.output)")
            }
            // The hospital's CA, and a server certificate for 127.0.0.1 (IP SAN) it signs.
            try openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=MQI Test Hospital CA",
                         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                         "-keyout", temp.file("ca.key"), "-out", temp.file("ca.pem")])
            try openssl(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                         "-keyout", temp.file("server.key"), "-out", temp.file("server.csr")])
            try "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                .write(toFile: temp.file("server.ext"), atomically: true, encoding: .utf8)
            try openssl(["x509", "-req", "-in", temp.file("server.csr"), "-CA", temp.file("ca.pem"), "-CAkey", temp.file("ca.key"),
                         "-CAcreateserial", "-days", "2", "-extfile", temp.file("server.ext"), "-out", temp.file("server.pem")])
            trustedBundle = temp.file("trusted-bundle.crt")
            let system = FileManager.default.contents(atPath: HTTPSWebhookTests.systemBundle) ?? Data()
            let ca = try #require(FileManager.default.contents(atPath: temp.file("ca.pem")))
            try (system + Data("\n".utf8) + ca).write(to: URL(fileURLWithPath: trustedBundle))

            let script = temp.file("receiver.py")
            try HTTPSWebhookTests.receiverScript.write(toFile: script, atomically: true, encoding: .utf8)
            receiver = WebhookTests.Receiver(port: try WebhookTests.freePort(), log: temp.file("hook.jsonl"), script: script)

            let step = temp.file("step.sh")
            try """
                #!/bin/sh
                # step.sh CASE_DIR [OUT]: fails for FAIL-* cases.
                case "$(basename "$1")" in
                  FAIL-*) echo "FATAL ERROR: no beam data"; exit 3 ;;
                esac
                if [ -n "$2" ]; then mkdir -p "$2" && echo dose > "$2/dose.txt"; fi
                """.write(toFile: step, atomically: true, encoding: .utf8)
            config = temp.file("config.yaml")
            try SampleConfigs.localSite(simCommand: "/bin/sh \(ShellQuote.quote(step)) {case_dir} {result_dir}", simKeys: "timeout_sec: 120",
                                        scanner: "rescan_interval_sec: 1", gpus: [0, 1], retryAttempts: 3, extra: """
                notifications:
                  timeout_sec: 5
                  max_backoff_sec: 1
                  webhooks:
                    - url: https://127.0.0.1:\(receiver.port)/hook
                      events: [case_completed, case_failed]
                """).write(toFile: config, atomically: true, encoding: .utf8)
            let data = temp.file("data")
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            for name in ["OK-1", "FAIL-1"] { try DemoSite.writeCase(named: name, in: data, beams: 1) }
            store = try Daemon.openStore(try ConfigLoader.load(path: config))
        }

        /// `mqi run`, trusting the CA (in its own mount namespace) or not (the system store as it is).
        func daemon(trustingCA: Bool, log: String) throws -> MQIProcess {
            let arguments = ["run", "--config", config, "--log-format", "text"]
            guard trustingCA else { return try MQIProcess(arguments, output: temp.file(log)) }
            let bind = "mount --bind \(ShellQuote.quote(trustedBundle)) \(HTTPSWebhookTests.systemBundle) && exec \"$0\" \"$@\""
            return try MQIProcess(arguments, output: temp.file(log),
                                  launcher: ["/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", bind])
        }

        func finished() async -> Bool {
            guard let cases = try? await store.cases() else { return false }
            return ["OK-1", "FAIL-1"].allSatisfy { id in cases.contains { $0.caseId == id && $0.status.isFinal } }
        }

        func expected() async throws -> [OutboxEvent] { try await store.outboxEvents(events: HTTPSWebhookTests.subscribed) }

        /// Every subscribed event arrived once, in order, with WebhookTests' body.
        func expectDelivered(_ events: [OutboxEvent]) throws {
            #expect(receiver.accepted == events.map(\.id), "every event once, in order")
            for (request, event) in zip(receiver.requests, events) {
                try WebhookTests.expectPost(request, of: event, auth: nil)
            }
        }

        func status(_ name: String) async throws -> String {
            let process = try MQIProcess(["status", "--config", config], output: temp.file(name))
            #expect(await process.wait(upTo: 60) == 0, "\(process.output)")
            return process.output
        }
    }

    @Test(.timeLimit(.minutes(3)), .enabled(if: canRun, "needs openssl, python3, \(systemBundle) and unshare --mount"))
    func aDaemonTrustingTheHospitalCADeliversEveryEvent() async throws {
        let site = try Site("mqi-https-webhook")
        defer { site.temp.remove() }
        defer { if let pid = site.receiver.process?.processIdentifier { kill(pid, SIGKILL) } }
        try await site.receiver.start()
        let daemon = try site.daemon(trustingCA: true, log: "daemon.log")
        defer { daemon.signal(SIGKILL) }
        #expect(await eventually(within: 60) { await site.finished() }, "\(daemon.output.suffix(3000))")
        let events = try await site.expected()
        #expect(events.map(\.event).sorted() == ["case_completed", "case_failed"], "\(events)")
        #expect(await eventually(within: 30) { site.receiver.accepted.count >= events.count }, "\(site.receiver.requests.map(\.id)) \(daemon.output.suffix(2000))")
        try site.expectDelivered(events)
        #expect(await eventually(within: 30) { (try? await site.status("status.txt"))?.contains("webhook: \(site.url)  0 events pending, all delivered\n") == true })
        #expect(!daemon.output.contains("webhook \(site.url) failed"), "\(daemon.output.suffix(3000))")
        daemon.signal(SIGTERM)
        #expect(await daemon.wait(upTo: 30) == 0, "\(daemon.output.suffix(2000))")
    }

    @Test(.timeLimit(.minutes(3)), .enabled(if: canRun, "needs openssl, python3, \(systemBundle) and unshare --mount"))
    func untrustedEventsWaitWithAPlainReasonAndArriveOnceTheCAIsTrusted() async throws {
        let site = try Site("mqi-https-untrusted")
        defer { site.temp.remove() }
        defer { if let pid = site.receiver.process?.processIdentifier { kill(pid, SIGKILL) } }
        try await site.receiver.start()

        // The system store as it is: the handshake fails, nothing is delivered, the events wait.
        var daemon = try site.daemon(trustingCA: false, log: "daemon-1.log")
        defer { daemon.signal(SIGKILL) }
        #expect(await eventually(within: 60) { await site.finished() }, "\(daemon.output.suffix(3000))")
        #expect(await eventually(within: 30) { ((try? await site.store.webhookCursor(url: site.url))?.attempts ?? 0) >= 3 })
        let events = try await site.expected()
        #expect(events.count == 2, "\(events)")
        #expect(site.receiver.requests.isEmpty, "no POST got through: \(site.receiver.requests.map(\.id))")
        let cursor = try #require(try await site.store.webhookCursor(url: site.url))
        let untrusted = "TLS: the receiver's certificate is not trusted: its CA is not in this machine's system trust store"
        #expect(cursor.lastError?.hasPrefix(untrusted) == true, "\(cursor)")
        #expect(cursor.lastError?.contains("unable to get local issuer certificate") == true, "libcurl's own words follow: \(cursor)")
        let status = try await site.status("status-1.txt")
        let line = status.split(separator: "\n").first { $0.hasPrefix("webhook: \(site.url)  ") }.map(String.init) ?? ""
        #expect(line.contains("  2 events pending, FAILING since ") && line.contains(" failed tries, last: \(untrusted)"), "\(status)")
        print("mqi status, CA not trusted: \(line)")
        let warnings = daemon.output.split(separator: "\n").filter { $0.contains("webhook \(site.url) failed") }
        #expect(warnings.count == 1 && warnings.first?.contains(untrusted) == true, "\(warnings)")

        // Restarted trusting the CA: every waiting event arrives, once each, in order.
        daemon.signal(SIGTERM)
        #expect(await daemon.wait(upTo: 30) == 0, "\(daemon.output.suffix(2000))")
        #expect(site.receiver.requests.isEmpty)
        daemon = try site.daemon(trustingCA: true, log: "daemon-2.log")
        #expect(await eventually(within: 30) { site.receiver.accepted.count >= events.count }, "\(site.receiver.requests.map(\.id)) \(daemon.output.suffix(2000))")
        #expect(await eventually(within: 30) { (try? await site.status("status-2.txt"))?.contains("webhook: \(site.url)  0 events pending, all delivered\n") == true })
        try site.expectDelivered(events)
        #expect(!daemon.output.contains("webhook \(site.url) failed"), "its first try gets through: \(daemon.output.suffix(2000))")
        daemon.signal(SIGTERM)
        #expect(await daemon.wait(upTo: 30) == 0, "\(daemon.output.suffix(2000))")
        #expect(site.receiver.accepted == events.map(\.id), "nothing sent twice")
    }

    /// libcurl's TLS messages (FoundationNetworking reports them as URLError -1) in an operator's words.
    @Test(arguments: [
        ("SSL certificate problem: unable to get local issuer certificate", "TLS: the receiver's certificate is not trusted: its CA is not in this machine's system trust store"),
        ("SSL certificate problem: self-signed certificate", "TLS: the receiver's certificate is not trusted"),
        ("SSL certificate problem: certificate has expired", "TLS: the receiver's certificate has expired"),
        ("SSL certificate problem: certificate is not yet valid", "TLS: the receiver's certificate is not valid yet"),
        ("SSL: no alternative certificate subject name matches target host name 'hooks.example.org'", "TLS: the receiver's certificate is not for this host name"),
        ("OpenSSL SSL_connect: SSL_ERROR_SYSCALL in connection to 127.0.0.1:8443", "TLS failed (OpenSSL SSL_connect"),
        ("Failure when receiving data from the peer", "Failure when receiving data from the peer (URLError -1)"),
    ])
    func tlsFailuresAreNamed(message: String, expected: String) {
        let error = URLError(.unknown, userInfo: [NSLocalizedDescriptionKey: message])
        let text = Notifier.describe(error, timeout: 10)
        #expect(text.hasPrefix(expected), "\(text)")
        if expected.hasPrefix("TLS") { #expect(text.hasSuffix("(\(message))"), "libcurl's words kept: \(text)") }
    }
}
