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
}
