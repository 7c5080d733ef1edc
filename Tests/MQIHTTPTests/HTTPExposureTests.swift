import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import MQICore
@testable import MQIHTTP
import MQIMetrics
import MQIStore
import MQITestSupport
import MQITransport
import ServiceLifecycle
import Synchronization
import Testing
@testable import MQIServices

/// Who may read, and over what: beyond loopback the pages and `/api` need a token (Bearer, or
/// Basic with the token as the password); with `http.tls` the endpoint speaks HTTPS only. Every
/// server here listens on 127.0.0.1: the "beyond loopback" rule is checked by building the router
/// with `readsNeedToken: true`, and the classification of `metrics.host` on its own.
@Suite struct HTTPExposureTests {
    // MARK: which addresses are loopback

    @Test(arguments: ["127.0.0.1", "127.1.2.3", "127.255.255.254", "::1", "[::1]", "0:0:0:0:0:0:0:1", "localhost", "LOCALHOST", "::ffff:127.0.0.1"])
    func loopbackAddressesKeepReadsOpen(host: String) {
        #expect(HTTPServer.isLoopback(host))
        #expect(!HTTPServer.readsNeedToken(host: host))
    }

    @Test(arguments: ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "128.0.0.1", "::2", "::ffff:10.0.0.1", "qa-server.hospital.local",
                      "localhost.hospital.local", "127.0.0.1.example", ""])
    func anyOtherAddressOrNameNeedsTokensForReads(host: String) {
        #expect(!HTTPServer.isLoopback(host))
        #expect(HTTPServer.readsNeedToken(host: host))
    }

    @Test func theLoggedURLSaysHTTPSAndBracketsIPv6() {
        #expect(HTTPServer.baseURL(host: "127.0.0.1", port: 8443, tls: true) == "https://127.0.0.1:8443")
        #expect(HTTPServer.baseURL(host: "::1", port: 8000, tls: false) == "http://[::1]:8000")
    }

    // MARK: Authorization header parsing

    @Test func bearerAndBasicBothCarryTheToken() throws {
        let basic = "Basic " + Data("alice:s3cr:et".utf8).base64EncodedString()
        #expect(try #require(APIAuthorization.credentials(basic)) == (.basic, "s3cr:et"), "the password may hold a colon")
        #expect(try #require(APIAuthorization.credentials("bearer abc")) == (.bearer, "abc"))
        #expect(try #require(APIAuthorization.credentials("Basic " + Data(":tok".utf8).base64EncodedString())) == (.basic, "tok"))
        #expect(APIAuthorization.credentials("Basic " + Data("alice:".utf8).base64EncodedString()) == nil, "an empty password")
        #expect(APIAuthorization.credentials("Basic " + Data("no-colon".utf8).base64EncodedString()) == nil)
        #expect(APIAuthorization.credentials("Basic %%%not-base64") == nil)
        #expect(APIAuthorization.credentials("Digest username=x") == nil)
        #expect(APIAuthorization.credentials("Bearer") == nil)
    }

    @Test(arguments: [
        ([:], nil as String?),
        (["Origin": "http://127.0.0.1:8000"], nil),
        (["Origin": "https://qa.hospital.local", "Host": "qa.hospital.local:443"], nil),
        (["Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:8000"], nil),
        (["Sec-Fetch-Site": "none"], nil),
        (["Origin": "http://evil.example"], "Origin"),
        (["Origin": "http://127.0.0.1:9000"], "Origin"),
        (["Origin": "null"], "Origin"),
        (["Sec-Fetch-Site": "cross-site"], "Sec-Fetch-Site"),
        (["Sec-Fetch-Site": "same-site"], "Sec-Fetch-Site"),
    ])
    func aBasicChangeFromAnotherSitesPageIsRecognized(headers: [String: String], named: String?) {
        var fields = HTTPFields()
        for (name, value) in headers where name != "Host" { fields[HTTPField.Name(name)!] = value }
        let request = Request(head: .init(method: .post, scheme: "http", authority: headers["Host"] ?? "127.0.0.1:8000",
                                          path: "/api/cases/X/cancel", headerFields: fields),
                              body: .init(buffer: ByteBuffer()))
        let site = APIAuthorization.crossSite(request)
        if let named {
            #expect(site?.contains(named) == true, "\(headers): \(site ?? "nil")")
        } else {
            #expect(site == nil, "\(headers): \(site ?? "nil")")
        }
    }

    @Test(arguments: ["/healthz", "/readyz", "/metrics", "/favicon.ico", "/assets/dashboard.css", "/assets/dashboard.js"])
    func probesMetricsAndStaticFilesAreOpen(path: String) {
        #expect(ReadAccess.isOpen(path))
    }

    @Test(arguments: ["/", "/cases", "/cases/CASE-1", "/api/cases", "/api/openapi.json", "/api/events", "/assets/../api/cases",
                      "/assets//x", "/assets/./dashboard.js", "/assets", "/healthz/x", "/nope"])
    func everythingElseIsClosed(path: String) {
        #expect(!ReadAccess.isOpen(path))
    }

    // MARK: reads beyond loopback, over a real TCP connection

    /// A demo site with `tokens_file` (alice) and `token_file` (unnamed), one NEW case.
    struct Site {
        let temp: TemporaryDirectory
        let config: Config
        let store: Store
        let alice = "alice-\(UUID().uuidString)"
        let legacy = "legacy-\(UUID().uuidString)"

        init(extraConfig: String = "", tokens: Bool = true) async throws {
            temp = try TemporaryDirectory("mqi-exposure")
            let site = try DemoSite.create(at: temp.file("site"), cases: 0)
            var text = try String(contentsOfFile: site.configPath, encoding: .utf8)
            if tokens {
                try "alice \(alice)\n".write(toFile: temp.file("site/tokens"), atomically: true, encoding: .utf8)
                try "\(legacy)\n".write(toFile: temp.file("site/token"), atomically: true, encoding: .utf8)
                text += "http:\n  tokens_file: ./tokens\n  token_file: ./token\n" + extraConfig
            } else if !extraConfig.isEmpty {
                text += "http:\n" + extraConfig
            }
            try text.write(toFile: site.configPath, atomically: true, encoding: .utf8)
            config = try ConfigLoader.load(path: site.configPath)
            store = try Store(path: config.state.database)
            #expect(try await store.registerCase("CASE-1", workflow: "default_qa"))
        }

        func api() -> APIContext {
            APIContext(store: store, conductor: Conductor(config: config), config: config, logger: CapturedLogs().logger())
        }
    }

    static func basic(_ user: String, _ password: String) -> String {
        "Basic " + Data("\(user):\(password)".utf8).base64EncodedString()
    }

    @Test func beyondLoopbackEveryPageAndAPIReadNeedsAToken() async throws {
        let site = try await Site()
        defer { site.temp.remove() }
        let router = HTTPServer.router(store: site.store, metrics: MQIMetrics(), readiness: { [:] }, api: site.api(), readsNeedToken: true)
        let (alice, legacy) = (site.alice, site.legacy)
        try await Application(router: router).test(.live) { client in
            func get(_ path: String, _ authorization: String? = nil, accept: String? = nil) async throws -> (HTTPResponse.Status, HTTPFields, String) {
                var headers: HTTPFields = [:]
                if let authorization { headers[.authorization] = authorization }
                if let accept { headers[.accept] = accept }
                return try await client.execute(uri: path, method: .get, headers: headers) { ($0.status, $0.headers, String(buffer: $0.body)) }
            }
            // No token: the API answers its JSON error and both challenges.
            let (apiStatus, apiHeaders, apiBody) = try await get("/api/cases")
            #expect(apiStatus == .unauthorized)
            #expect(apiHeaders[.contentType]?.hasPrefix("application/json") == true)
            let error = try #require(try JSONSerialization.jsonObject(with: Data(apiBody.utf8)) as? [String: String])
            #expect(error["error"] == "unauthorized")
            #expect(error["detail"]?.contains("metrics.host") == true && error["detail"]?.contains("HTTP Basic") == true, "\(error)")
            #expect(apiHeaders[values: .wwwAuthenticate].contains("Basic realm=\"MQI Communicator\", charset=\"UTF-8\""), "\(apiHeaders)")
            #expect(apiHeaders[values: .wwwAuthenticate].contains("Bearer realm=\"MQI Communicator\""), "\(apiHeaders)")
            #expect(!apiBody.contains("CASE-1"))
            // A page: a Basic challenge, so the browser asks; no case data in the body.
            for page in ["/", "/cases", "/cases/CASE-1", "/no-such-page", "/assets/../api/cases"] {
                let (status, headers, body) = try await get(page)
                #expect(status == .unauthorized, "\(page)")
                #expect(headers[.wwwAuthenticate] == "Basic realm=\"MQI Communicator\", charset=\"UTF-8\"", "\(page): \(headers)")
                #expect(headers[.contentType]?.hasPrefix("text/html") == true, "\(page)")
                #expect(body.contains("your token as the password") && !body.contains("CASE-1"), "\(page): \(body)")
            }
            #expect(try await get("/api/events").0 == .unauthorized)
            #expect(try await get("/api/openapi.json").0 == .unauthorized)

            // Bearer, and Basic with any user name and the token as the password.
            let (listed, _, listBody) = try await get("/api/cases", "Bearer \(alice)")
            #expect(listed == .ok && listBody.contains("CASE-1"), "\(listed) \(listBody)")
            #expect(try await get("/api/cases", Self.basic("whoever", alice)).0 == .ok)
            #expect(try await get("/api/cases", Self.basic("", legacy)).0 == .ok, "the token_file token, no user name")
            let (page, _, pageBody) = try await get("/cases/CASE-1", Self.basic("alice", alice))
            #expect(page == .ok && pageBody.contains("CASE-1"))
            #expect(try await get("/", Self.basic("alice", alice)).0 == .ok)

            // Wrong tokens, a name given as the token, a token given as the user name.
            #expect(try await get("/api/cases", "Bearer wrong-\(alice)").0 == .unauthorized)
            #expect(try await get("/api/cases", "Bearer alice").0 == .unauthorized, "a name is not a token")
            #expect(try await get("/cases", Self.basic(alice, "alice")).0 == .unauthorized, "the token must be the password")
            #expect(try await get("/cases", "Digest username=\"alice\"").0 == .unauthorized)

            // Open without a token: probes, metrics (also a scrape of /), the dashboard's files.
            for path in ["/healthz", "/readyz", "/metrics", "/assets/dashboard.css", "/assets/dashboard.js", "/favicon.ico"] {
                #expect(try await get(path).0 == .ok, "\(path)")
            }
            let (scrape, _, metrics) = try await get("/", accept: "text/plain;version=0.0.4")
            #expect(scrape == .ok && metrics.contains("mqi_cases_received_total"), "\(scrape)")
        }
    }

    @Test func onLoopbackReadsStayOpen() async throws {
        let site = try await Site()
        defer { site.temp.remove() }
        #expect(site.config.metrics.host == "127.0.0.1")
        // No readsNeedToken: decided from metrics.host.
        let router = HTTPServer.router(store: site.store, metrics: MQIMetrics(), readiness: { [:] }, api: site.api())
        try await Application(router: router).test(.live) { client in
            for path in ["/api/cases", "/cases", "/"] {
                let status = try await client.execute(uri: path, method: .get) { $0.status }
                #expect(status == .ok, "\(path)")
            }
            // Changes still need the token.
            let cancel = try await client.execute(uri: "/api/cases/CASE-1/cancel", method: .post) { $0.status }
            #expect(cancel == .unauthorized)
        }
    }

    @Test func basicCredentialsNameTheOperatorInTheAuditButNotFromAnotherSite() async throws {
        let site = try await Site()
        defer { site.temp.remove() }
        let router = HTTPServer.router(store: site.store, metrics: MQIMetrics(), readiness: { [:] }, api: site.api(), readsNeedToken: true)
        let (alice, legacy) = (site.alice, site.legacy)
        try await Application(router: router).test(.live) { client in
            func post(_ path: String, _ authorization: String?, _ extra: HTTPFields = [:]) async throws -> (HTTPResponse.Status, String) {
                var headers = extra
                if let authorization { headers[.authorization] = authorization }
                return try await client.execute(uri: path, method: .post, headers: headers) { ($0.status, String(buffer: $0.body)) }
            }
            #expect(try await post("/api/cases/CASE-1/cancel", nil).0 == .unauthorized)
            // Another site's page cannot make the browser spend its Basic credentials on a change.
            let (crossOrigin, crossBody) = try await post("/api/cases/CASE-1/cancel", Self.basic("alice", alice), [.origin: "http://evil.example"])
            #expect(crossOrigin == .forbidden && crossBody.contains("evil.example"), "\(crossOrigin) \(crossBody)")
            let crossSite = try await post("/api/cases/CASE-1/cancel", Self.basic("alice", alice), [HTTPField.Name("Sec-Fetch-Site")!: "cross-site"])
            #expect(crossSite.0 == .forbidden, "\(crossSite)")
            // The typed user name is not what the audit records: the token's name is.
            #expect(try await post("/api/cases/CASE-1/cancel", Self.basic("mallory", alice)).0 == .ok)
            #expect(try await post("/api/cases/CASE-1/retry", Self.basic("x", legacy)).0 == .ok)
        }
        let audit = try await site.store.history("CASE-1").filter { $0.event == "operator" }.map(\.message)
        #expect(audit == ["cancel by alice from 127.0.0.1", "retry by the http.token_file token from 127.0.0.1"], "\(audit)")
    }

    @Test func readsFailClosedWhenTheTokenFilesGoMissing() async throws {
        let site = try await Site()
        defer { site.temp.remove() }
        let router = HTTPServer.router(store: site.store, metrics: MQIMetrics(), readiness: { [:] }, api: site.api(), readsNeedToken: true)
        try FileManager.default.removeItem(atPath: site.temp.file("site/tokens"))
        try FileManager.default.removeItem(atPath: site.temp.file("site/token"))
        let alice = site.alice
        try await Application(router: router).test(.live) { client in
            let (status, body) = try await client.execute(uri: "/api/cases", method: .get, headers: [.authorization: "Bearer \(alice)"]) {
                ($0.status, String(buffer: $0.body))
            }
            #expect(status == .forbidden && body.contains("missing, unreadable or hold no token") && !body.contains("CASE-1"), "\(status) \(body)")
            let page = try await client.execute(uri: "/cases", method: .get) { $0.status }
            #expect(page == .forbidden)
            let health = try await client.execute(uri: "/healthz", method: .get) { $0.status }
            #expect(health == .ok)
        }
    }

    // MARK: refused at start

    @Test func aNonLoopbackHostWithoutATokenIsRefusedAtStart() async throws {
        let open = try await Site(tokens: false)
        defer { open.temp.remove() }
        var config = open.config
        try HTTPServer.checkExposure(config)  // loopback, no token: reads open, changes refused
        config.metrics.host = "10.1.2.3"
        let error = try #require(throws: HTTPServerError.self) { try HTTPServer.checkExposure(config) }
        #expect(error.description.contains("metrics.host is 10.1.2.3") && error.description.contains("http.tokens_file")
                && error.description.contains("http.token_file"), "\(error)")
        config.metrics.enabled = false
        try HTTPServer.checkExposure(config)  // nothing listens

        let site = try await Site()
        defer { site.temp.remove() }
        config = site.config
        config.metrics.host = "qa-server.hospital.local"
        try HTTPServer.checkExposure(config)
        try FileManager.default.removeItem(atPath: site.temp.file("site/tokens"))
        try "\n".write(toFile: site.temp.file("site/token"), atomically: true, encoding: .utf8)
        let empty = try #require(throws: HTTPServerError.self) { try HTTPServer.checkExposure(config) }
        #expect(empty.description.contains("http.tokens_file \(site.temp.file("site/tokens"))")
                && empty.description.contains("holds no token"), "\(empty)")
    }

    @Test func theDaemonRefusesToStartBeyondLoopbackWithoutAToken() async throws {
        let site = try await Site(tokens: false)
        defer { site.temp.remove() }
        var config = site.config
        config.metrics.host = "10.1.2.3"
        let daemon = Daemon(config: config, logger: CapturedLogs().logger(level: .info))
        let error = await #expect(throws: (any Error).self) { try await daemon.run() }
        #expect("\(error.map { "\($0)" } ?? "")".contains("no token is configured"), "\(String(describing: error))")
    }

    // MARK: TLS

    static let openssl = ["/usr/bin/openssl", "/usr/local/bin/openssl"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static let curl = ["/usr/bin/curl", "/usr/local/bin/curl"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static var tools: Bool { openssl != nil && curl != nil }

    /// A self-signed certificate for 127.0.0.1 and its key, made by the openssl command.
    static func selfSigned(_ temp: TemporaryDirectory, _ name: String) async throws -> TLSFiles {
        let files = TLSFiles(certFile: temp.file("\(name)-cert.pem"), keyFile: temp.file("\(name)-key.pem"))
        let openssl = try #require(openssl)
        let result = try await offPool {
            try runProcess(openssl, ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                                     "-days", "2", "-keyout", files.keyFile, "-out", files.certFile])
        }
        try #require(result.status == 0, "openssl req failed: \(result.output)")
        return files
    }

    /// curl's exit status and output (`--max-time 20`).
    static func curl(_ arguments: [String]) async throws -> (status: Int32, output: String) {
        let curl = try #require(curl)
        return try await offPool { try runProcess(curl, ["--silent", "--show-error", "--max-time", "20"] + arguments) }
    }

    /// Runs `application` on 127.0.0.1 until `body` ends.
    static func serving<Value: Sendable>(_ application: some ApplicationProtocol, port: @escaping @Sendable () -> Int?,
                                         _ body: @Sendable (Int) async throws -> Value) async throws -> Value {
        let group = ServiceGroup(configuration: .init(services: [application], logger: Logger(label: "test")))
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            defer { tasks.cancelAll() }
            guard await eventually(within: 20, { port() != nil }), let bound = port() else {
                await group.triggerGracefulShutdown()
                throw TestSupportError("the HTTPS server did not start listening")
            }
            do {
                let value = try await body(bound)
                await group.triggerGracefulShutdown()
                return value
            } catch {
                await group.triggerGracefulShutdown()
                throw error
            }
        }
    }

    @Test(.enabled(if: tools, "openssl and curl are needed"), .timeLimit(.minutes(3)))
    func withTLSTheEndpointSpeaksHTTPSOnly() async throws {
        let temp = try TemporaryDirectory("mqi-tls")
        defer { temp.remove() }
        let files = try await Self.selfSigned(temp, "server")
        let site = try await Site(extraConfig: "  tls: { cert_file: \(files.certFile), key_file: \(files.keyFile) }\n")
        defer { site.temp.remove() }
        #expect(site.config.http.tls == files)
        try HTTPServer.checkExposure(site.config)
        let logs = CapturedLogs()
        let port = Mutex<Int?>(nil)
        let app = HTTPServer.application(config: MetricsConfig(host: "127.0.0.1", port: 0), store: site.store, metrics: MQIMetrics(),
                                         readiness: { [:] }, api: site.api(), logger: logs.logger(level: .info),
                                         onListening: { bound in port.withLock { $0 = bound } })
        let alice = site.alice
        try await Self.serving(app, port: { port.withLock { $0 } }) { bound in
            let https = "https://127.0.0.1:\(bound)"
            let health = try await Self.curl(["--cacert", files.certFile, https + "/healthz"])
            #expect(health.status == 0 && health.output.contains("\"ok\""), "\(health)")
            let cases = try await Self.curl(["--cacert", files.certFile, https + "/api/cases"])
            #expect(cases.status == 0 && cases.output.contains("CASE-1"), "\(cases)")
            let cancel = try await Self.curl(["--cacert", files.certFile, "-u", "any:\(alice)", "-X", "POST", "-o", "/dev/null", "-w", "%{http_code}",
                                              https + "/api/cases/CASE-1/cancel"])
            #expect(cancel.status == 0 && cancel.output == "200", "\(cancel)")
            // Plain HTTP on the same port gets no answer; nor does a client that does not trust the certificate.
            let plain = try await Self.curl(["http://127.0.0.1:\(bound)/healthz"])
            #expect(plain.status != 0 && !plain.output.contains("\"ok\""), "\(plain)")
            let untrusted = try await Self.curl([https + "/healthz"])
            #expect(untrusted.status == 60, "curl: certificate not trusted, got \(untrusted)")
        }
        #expect(logs.messages(at: .info).contains { $0.contains("https://127.0.0.1:") && $0.contains("HTTPS only") }, "\(logs.messages(at: .info))")
    }

    @Test(.enabled(if: tools, "openssl is needed"), .timeLimit(.minutes(3)))
    func aWrongMissingOrBrokenCertificateFileIsAClearErrorAtStart() async throws {
        let temp = try TemporaryDirectory("mqi-tls-bad")
        defer { temp.remove() }
        let server = try await Self.selfSigned(temp, "server")
        let other = try await Self.selfSigned(temp, "other")
        try HTTPSConfiguration.validate(server)

        func failure(_ files: TLSFiles) throws -> String {
            try #require(throws: HTTPServerError.self) { try HTTPSConfiguration.validate(files) }.description
        }
        // Another certificate's key.
        let wrongKey = try failure(TLSFiles(certFile: server.certFile, keyFile: other.keyFile))
        #expect(wrongKey.contains("http.tls.key_file \(other.keyFile) does not belong to the certificate in http.tls.cert_file \(server.certFile)"), "\(wrongKey)")
        // Missing files.
        let noCert = try failure(TLSFiles(certFile: temp.file("absent.pem"), keyFile: server.keyFile))
        #expect(noCert.contains("http.tls.cert_file \(temp.file("absent.pem")) does not exist"), "\(noCert)")
        let noKey = try failure(TLSFiles(certFile: server.certFile, keyFile: temp.file("absent-key.pem")))
        #expect(noKey.contains("http.tls.key_file \(temp.file("absent-key.pem")) does not exist"), "\(noKey)")
        // Not PEM; the key and the certificate swapped.
        try "not a certificate\n".write(toFile: temp.file("garbage.pem"), atomically: true, encoding: .utf8)
        let garbage = try failure(TLSFiles(certFile: temp.file("garbage.pem"), keyFile: server.keyFile))
        #expect(garbage.contains("http.tls.cert_file \(temp.file("garbage.pem"))"), "\(garbage)")
        let swapped = try failure(TLSFiles(certFile: server.keyFile, keyFile: server.certFile))
        #expect(swapped.contains("http.tls.cert_file \(server.keyFile) is not a PEM certificate"), "\(swapped)")
        let certAsKey = try failure(TLSFiles(certFile: server.certFile, keyFile: server.certFile))
        #expect(certAsKey.contains("http.tls.key_file \(server.certFile) is not an unencrypted PEM private key"), "\(certAsKey)")

        // The same check through the config, as the daemon makes it at start.
        let site = try await Site(extraConfig: "  tls: { cert_file: \(server.certFile), key_file: \(other.keyFile) }\n")
        defer { site.temp.remove() }
        let atStart = try #require(throws: HTTPServerError.self) { try HTTPServer.checkExposure(site.config) }
        #expect(atStart.description.contains("http.tls.key_file"), "\(atStart)")
        // And if the files change after that check, the server's start fails with the same words.
        let app = HTTPServer.application(config: MetricsConfig(host: "127.0.0.1", port: 0), store: site.store, metrics: MQIMetrics(),
                                         readiness: { [:] }, api: site.api(), logger: CapturedLogs().logger())
        let group = ServiceGroup(configuration: .init(services: [app], logger: Logger(label: "test")))
        let error = await #expect(throws: (any Error).self) { try await group.run() }
        #expect("\(error.map { "\($0)" } ?? "")".contains("http.tls.key_file \(other.keyFile) does not belong"), "\(String(describing: error))")
    }

    /// The real daemon with `http.tls`: HTTPS on its port, plain HTTP refused.
    @Test(.enabled(if: tools, "openssl and curl are needed"), .timeLimit(.minutes(4)))
    func theDaemonServesHTTPSWithTheConfiguredCertificate() async throws {
        let temp = try TemporaryDirectory("mqi-tls-daemon")
        defer { temp.remove() }
        let files = try await Self.selfSigned(temp, "server")
        let site = try await Site(extraConfig: "  tls: { cert_file: \(files.certFile), key_file: \(files.keyFile) }\n")
        defer { site.temp.remove() }
        let port = Mutex<Int?>(nil)
        let stop = OneShot()
        var daemon = Daemon(config: site.config, logger: CapturedLogs().logger(level: .info), onListening: { bound in port.withLock { $0 = bound } })
        daemon.shutdown = stop
        let running = Task { [daemon] in try await daemon.run() }
        var stopped = false
        defer { if !stopped { stop.fire() } }
        #expect(await eventually(within: 30) { port.withLock { $0 } != nil }, "the daemon did not start listening")
        let bound = try #require(port.withLock { $0 })
        let summary = try await Self.curl(["--cacert", files.certFile, "https://127.0.0.1:\(bound)/api/summary"])
        #expect(summary.status == 0 && summary.output.contains("\"counts\""), "\(summary)")
        let plain = try await Self.curl(["http://127.0.0.1:\(bound)/api/summary"])
        #expect(plain.status != 0, "\(plain)")
        stop.fire()
        try await running.value
        stopped = true
    }

    @Test(.enabled(if: tools, "openssl is needed"), .timeLimit(.minutes(3)))
    func theDaemonRefusesToStartWithAnotherCertificatesKey() async throws {
        let temp = try TemporaryDirectory("mqi-tls-daemon-bad")
        defer { temp.remove() }
        let server = try await Self.selfSigned(temp, "server")
        let other = try await Self.selfSigned(temp, "other")
        let site = try await Site(extraConfig: "  tls: { cert_file: \(server.certFile), key_file: \(other.keyFile) }\n")
        defer { site.temp.remove() }
        let daemon = Daemon(config: site.config, logger: CapturedLogs().logger(level: .info))
        let error = await #expect(throws: (any Error).self) { try await daemon.run() }
        #expect("\(error.map { "\($0)" } ?? "")".contains("http.tls.key_file \(other.keyFile) does not belong"), "\(String(describing: error))")
    }
}
