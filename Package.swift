// swift-tools-version:6.2
import PackageDescription

let package = Package(
    name: "mqi-communicator",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "mqi", targets: ["mqi"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
    ],
    targets: [
        // Pure values and logic: config, workflow, the Conductor's decisions, templates. No I/O
        // beyond reading the config file's text.
        .target(name: "MQICore", dependencies: [
            .product(name: "Yams", package: "Yams"),
        ]),
        // The durable state: cases, GPU reservations, queues, dead letters (SQLite via GRDB, or a
        // PostgreSQL database shared by several communicators via postgres-nio).
        .target(name: "MQIStore", dependencies: [
            "MQICore",
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Running step commands and moving case files.
        .target(name: "MQITransport", dependencies: [
            "MQICore",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Every metric the communicator exports, on one Prometheus registry passed to whoever
        // updates or serves it (the services, the HTTP endpoint).
        .target(name: "MQIMetrics", dependencies: [
            "MQICore", "MQIStore",
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        // Long-running services and their wiring (the daemon also starts the HTTP endpoint).
        .target(name: "MQIServices", dependencies: [
            "MQICore", "MQIStore", "MQITransport", "MQIMetrics", "MQIHTTP",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ], resources: [
            // The demo site's stand-in scripts and MOQUI template, embedded in the code at build time.
            .embedInCode("Resources/demo"),
        ]),
        // The HTTP endpoint: /metrics, health probes, the API and the dashboard. The dashboard's
        // static files (Resources/) are embedded in the code at build time, so the installed
        // binary needs no resource bundle beside it.
        .target(name: "MQIHTTP", dependencies: [
            "MQICore", "MQIStore", "MQITransport", "MQIMetrics",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
        ], resources: [
            .embedInCode("Resources/dashboard.css"),
            .embedInCode("Resources/dashboard.js"),
            .embedInCode("Resources/favicon.svg"),
            // The pages' markup: `{{name}}` placeholders filled by PageTemplate.
            .embedInCode("Resources/templates"),
            // The JSON API's OpenAPI 3.1 document, served at /api/openapi.json.
            .embedInCode("Resources/api/openapi.json"),
        ]),
        // `swift run -c release mqi-bench [--quick] [--json FILE]`: the performance figures.
        .executableTarget(name: "mqi-bench", dependencies: [
            "MQIServices", "MQIStore", "MQICore", "MQITransport", "MQIHTTP", "MQITestSupport",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "GRDB", package: "GRDB.swift"),
        ]),
        .executableTarget(name: "mqi", dependencies: [
            "MQIServices",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // Fixtures, fakes and timing helpers shared by the tests (and mqi-bench).
        .target(name: "MQITestSupport", dependencies: [
            "MQICore", "MQIStore", "MQIServices", "MQITransport", "MQIHTTP", "MQIMetrics",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Hummingbird", package: "hummingbird"),
        ]),
        .testTarget(name: "MQICoreTests", dependencies: ["MQICore", "MQITestSupport"]),
        .testTarget(name: "MQITransportTests", dependencies: ["MQITransport", "MQICore", "MQITestSupport"]),
        .testTarget(name: "MQIHTTPTests", dependencies: [
            "MQIHTTP", "MQIMetrics", "MQIStore", "MQICore", "MQITestSupport",
            .product(name: "HummingbirdTesting", package: "hummingbird"),
        ]),
        .testTarget(name: "MQIStoreTests", dependencies: ["MQIStore", "MQITestSupport"]),
        .testTarget(name: "MQIServicesTests", dependencies: [
            "MQIServices", "MQIStore", "MQICore", "MQITransport", "MQIHTTP", "MQIMetrics", "MQITestSupport", "mqi",
            .product(name: "Logging", package: "swift-log"),
        ]),
    ]
)
