import Foundation
import Testing
@testable import MQICore

/// `http.tls` and `notifications.webhooks`: parsed, paths resolved, mistakes named by key and line.
@Suite("Config: http.tls and notifications")
struct ConsoleConfigTests {
    static let base = """
        scanner:
          local_logdata: /data/logs
        workflows:
          default_qa:
            - { name: up, type: upload }

        """

    @Test("tls and webhooks parse, with paths against the config's directory and the defaults")
    func valid() throws {
        let yaml = Self.base + """
            http:
              tls: { cert_file: tls/cert.pem, key_file: /etc/mqi/key.pem }
            notifications:
              timeout_sec: 5
              webhooks:
                - url: https://chat.example.org/hook
                  events: [case_failed, hpc_unreachable]
                  token_file: hook.token
                - { url: "http://127.0.0.1:9000/mqi", events: [case_completed] }
            """
        let config = try ConfigLoader.parse(yaml, file: "c.yaml", baseDirectory: "/srv/mqi")
        #expect(config.http.tls == TLSFiles(certFile: "/srv/mqi/tls/cert.pem", keyFile: "/etc/mqi/key.pem"))
        #expect(config.notifications == NotificationsConfig(webhooks: [
            WebhookConfig(url: "https://chat.example.org/hook", events: [.caseFailed, .hpcUnreachable], tokenFile: "/srv/mqi/hook.token"),
            WebhookConfig(url: "http://127.0.0.1:9000/mqi", events: [.caseCompleted]),
        ], timeoutSec: 5, maxBackoffSec: 300))
        let plain = try ConfigLoader.parse(Self.base, file: "c.yaml", baseDirectory: "/srv/mqi")
        #expect(plain.http.tls == nil)
        #expect(plain.notifications.webhooks.isEmpty)
    }

    @Test("mistakes name the key and its line", arguments: [
        ("http:\n  tls: { cert_file: c.pem }", "http.tls.key_file", 7),
        ("http:\n  tls: { cert_file: c.pem, key_file: k.pem, ca: x }", "http.tls.ca", 7),
        ("notifications:\n  webhooks:\n    - { url: ftp://x/y, events: [case_failed] }", "notifications.webhooks[0].url", 8),
        ("notifications:\n  webhooks:\n    - { url: 'http://h/x', events: [case_exploded] }", "notifications.webhooks[0].events[0]", 8),
        ("notifications:\n  webhooks:\n    - { url: 'http://h/x', events: [] }", "notifications.webhooks[0].events", 8),
        ("notifications:\n  webhooks:\n    - { url: 'http://h/x' }", "notifications.webhooks[0].events", 8),
        ("notifications:\n  webhooks: http://h/x", "notifications.webhooks", 7),
        ("notifications:\n  timeout_sec: 0", "notifications.timeout_sec", 7),
    ])
    func mistakes(_ tail: String, _ key: String, _ line: Int) {
        let errors = configErrors(Self.base + tail)
        #expect(errors.contains(where: { $0.keyPath == key && $0.line == line }), "\(errors)")
    }

    /// A webhook is known by its URL without credentials, query or fragment (its metrics label and
    /// log name): a second entry with that URL is rejected, naming the first, not merged.
    @Test("a webhook listed twice is rejected at the second entry's url, naming the first", arguments: [
        ("http://127.0.0.1:9000/mqi", "http://127.0.0.1:9000/mqi"),
        ("https://hooks.example.org/mqi?token=a", "https://hooks.example.org/mqi?token=b"),
        ("https://alice:pw@hooks.example.org/mqi", "HTTPS://Hooks.Example.org/mqi#frag"),
    ])
    func duplicateWebhook(_ first: String, _ second: String) throws {
        let yaml = Self.base + """
            notifications:
              webhooks:
                - url: "\(first)"
                  events: [case_failed]
                - { url: "https://other.example.org/mqi", events: [case_failed] }
                - url: "\(second)"
                  events: [case_completed]
            """
        let errors = configErrors(yaml, file: "/etc/mqi/config.yaml")
        #expect(errors.count == 1, "\(errors)")
        let error = try #require(errors.first)
        #expect(error.keyPath == "notifications.webhooks[2].url")
        #expect((error.line, error.column) == (11, 12), "\(error)")
        #expect(error.description.hasPrefix("/etc/mqi/config.yaml:11:12: notifications.webhooks[2].url: the same webhook as notifications.webhooks[0] (line 8): both post to "),
                "\(error)")
        #expect(error.message.contains(WebhookConfig.label(first)) && !error.message.contains("token=") && !error.message.contains("pw@"), "\(error)")
    }

    @Test("webhooks that differ in scheme, host, port or path are different webhooks")
    func distinctWebhooks() throws {
        let urls = ["http://h.example.org/mqi", "https://h.example.org/mqi", "https://h.example.org:8443/mqi",
                    "https://h2.example.org/mqi", "https://h.example.org/mqi/failures"]
        let yaml = Self.base + "notifications:\n  webhooks:\n" + urls.map { "    - { url: \"\($0)\", events: [case_failed] }\n" }.joined()
        let config = try ConfigLoader.parse(yaml, file: "c.yaml", baseDirectory: "/srv/mqi")
        #expect(config.notifications.webhooks.map(\.url) == urls)
    }
}
