import Foundation
import Hummingbird
import Logging
import MQICore
import MQIMetrics
import MQIStore
import MQITransport

/// What the JSON API and the dashboard need from the daemon.
public struct APIContext: Sendable {
    public var store: Store
    /// Retry and cancel go through the Conductor, like the CLI.
    public var conductor: Conductor
    public var config: Config
    public var logger: Logger
    /// The GPU monitor's readings of the last hour (`MQIMetrics.gpuHistory`): the GPU panel's
    /// charts and `GET /api/gpus/{id}/history`. Nil: no history is shown.
    public var gpuHistory: GPUHistory?

    public init(store: Store, conductor: Conductor, config: Config, logger: Logger, gpuHistory: GPUHistory? = nil) {
        self.store = store
        self.conductor = conductor
        self.config = config
        self.logger = logger
        self.gpuHistory = gpuHistory
    }
}

/// The JSON API (`/api/...`) and the dashboard pages. Reads are open; retry, cancel and replay
/// need the bearer token from `http.token_file` (see `APIAuthorization`). No CORS headers: the
/// dashboard is served from the same origin.
public enum APIRoutes {
    public static func register(on router: Router<MQIRequestContext>, _ context: APIContext) {
        let auth = APIAuthorization(context.config.http)

        router.get("/api/cases") { request, _ -> Response in
            await APIResponses.guarded(context) {
                let filter = try CaseListFilter(request)
                var limit = 50
                if let text = request.queryParameter("limit") {
                    guard let value = Int(text), (1...500).contains(value) else {
                        throw APIError.badRequest("limit must be a whole number from 1 to 500, not '\(text)'")
                    }
                    limit = value
                }
                let page = try await context.store.casesPage(status: filter.status, query: filter.query, receivedFrom: filter.receivedFrom,
                                                             receivedTo: filter.receivedTo, limit: limit, cursor: request.queryParameter("cursor"))
                return APIResponses.json(CaseListResponse(cases: page.cases, nextCursor: page.nextCursor))
            }
        }

        router.get("/api/cases/:id") { request, requestContext -> Response in
            await APIResponses.guarded(context) {
                let caseId = try request.pathParameter("id", requestContext)
                guard let detail = try await context.caseDetail(caseId) else { throw APIError.notFound("no case '\(caseId)'") }
                return APIResponses.json(detail)
            }
        }

        router.get("/api/cases/:id/results.zip") { request, requestContext -> Response in
            await APIResponses.guarded(context) {
                let caseId = try request.pathParameter("id", requestContext)
                guard let summary = try await context.store.caseSummary(caseId) else { throw APIError.notFound("no case '\(caseId)'") }
                guard summary.status == .completed else {
                    throw APIError.conflict("case '\(caseId)' is \(summary.status.rawValue): results are offered once it is COMPLETED")
                }
                let directory = (context.config.conductor.resultsDir as NSString).appendingPathComponent(caseId)
                guard FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent(ResultManifest.fileName)) else {
                    throw APIError.notFound("case '\(caseId)' has no verified results in \(directory) (no \(ResultManifest.fileName); removed, or kept elsewhere)")
                }
                let root = caseId.replacingOccurrences(of: "/", with: "_")
                let entries = try ResultsZip.entries(of: directory, root: root)
                return Response(status: .ok, headers: [
                    .contentType: "application/zip",
                    .contentDisposition: "attachment; filename=\"\(root.filter { $0 != "\"" && $0 != "\\" })-results.zip\"",
                    .cacheControl: "no-store",
                ], body: ResultsZip.body(entries))
            }
        }

        router.get("/api/cases/:id/logs/:step/:attempt") { request, requestContext -> Response in
            await APIResponses.guarded(context) {
                let caseId = try request.pathParameter("id", requestContext)
                let step = try request.pathParameter("step", requestContext)
                let attemptText = try request.pathParameter("attempt", requestContext)
                guard let attempt = Int(attemptText), attempt >= 0 else {
                    throw APIError.badRequest("attempt must be a whole number, not '\(attemptText)'")
                }
                let path = try StepLogs(logsDir: context.config.state.logsDir).path(caseId: caseId, step: step, attempt: attempt)
                guard try await context.store.caseExists(caseId) else { throw APIError.notFound("no case '\(caseId)'") }
                guard let handle = FileHandle(forReadingAtPath: path) else {
                    throw APIError.notFound("case '\(caseId)' has no log for step \(step) attempt \(attempt)")
                }
                return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: ResponseBody { writer in
                    defer { try? handle.close() }
                    while let chunk = try handle.read(upToCount: 64 * 1024), !chunk.isEmpty {
                        try await writer.write(ByteBuffer(bytes: chunk))
                    }
                    try await writer.finish(nil)
                })
            }
        }

        router.get("/api/cases/:id/logs/:step/:attempt/stream") { request, requestContext -> Response in
            await APIResponses.guarded(context) {
                let caseId = try request.pathParameter("id", requestContext)
                let step = try request.pathParameter("step", requestContext)
                let attemptText = try request.pathParameter("attempt", requestContext)
                guard let attempt = Int(attemptText), attempt >= 0 else {
                    throw APIError.badRequest("attempt must be a whole number, not '\(attemptText)'")
                }
                // `from`, or the offset a reconnecting EventSource sends back (the last event's id).
                // Each one sent must be 1 to 19 digits (any such number fits), even beside the other (`from` wins).
                var from: UInt64?
                for (name, text) in [("from", request.queryParameter("from")), ("Last-Event-ID", request.headers[.init("Last-Event-ID")!])] {
                    guard let text else { continue }
                    guard text.utf8.count <= 19, text.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }), let value = UInt64(text) else {
                        throw APIError.badRequest("\(name) must be a byte offset (a whole number), not '\(text)'")
                    }
                    from = from ?? value
                }
                return try await LogFollowStream(context: context).response(caseId: caseId, step: step, attempt: attempt, from: from)
            }
        }

        router.post("/api/cases/:id/retry") { request, requestContext -> Response in
            await APIResponses.guarded(context) {
                let caller = try auth.check(request, requestContext)
                return try await conduct(.retry, caseId: try request.pathParameter("id", requestContext), context, caller: caller)
            }
        }

        router.post("/api/cases/:id/cancel") { request, requestContext -> Response in
            await APIResponses.guarded(context) {
                let caller = try auth.check(request, requestContext)
                return try await conduct(.cancel(reason: "by \(caller.name ?? "an operator") (dashboard/API)"), caseId: try request.pathParameter("id", requestContext),
                                         context, caller: caller)
            }
        }

        router.get("/api/gpus") { _, _ -> Response in
            await APIResponses.guarded(context) {
                APIResponses.json(["gpus": try await context.store.gpus()])
            }
        }

        router.get("/api/gpus/:id/history") { request, requestContext -> Response in
            await APIResponses.guarded(context) {
                let text = try request.pathParameter("id", requestContext)
                guard let gpuId = Int(text) else { throw APIError.badRequest("GPU id must be a number, not '\(text)'") }
                guard try await context.store.gpus().contains(where: { $0.gpuId == gpuId }) else { throw APIError.notFound("no GPU \(gpuId)") }
                // `points`: averaged into at most that many (what a chart draws), else every reading.
                var points: Int?
                if let text = request.queryParameter("points") {
                    guard let value = Int(text), (1...3600).contains(value) else {
                        throw APIError.badRequest("points must be a whole number from 1 to 3600, not '\(text)'")
                    }
                    points = value
                }
                let samples = points.map { context.gpuHistory?.summary(gpuId: gpuId, points: $0) } ?? context.gpuHistory?.samples(gpuId: gpuId)
                return APIResponses.json(GPUHistoryResponse(gpuId: gpuId, windowSec: Int(context.gpuHistory?.window ?? 3600), samples: samples ?? []))
            }
        }

        router.get("/api/openapi.json") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/json; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(bytes: PackageResources.openapi_json)))
        }

        router.get("/api/communicators") { _, _ -> Response in
            await APIResponses.guarded(context) {
                APIResponses.json(CommunicatorsResponse(shared: context.store.isShared, communicators: try await context.store.instances()))
            }
        }

        router.get("/api/queues") { _, _ -> Response in
            await APIResponses.guarded(context) {
                let depths = try await context.store.queueDepths()
                return APIResponses.json(QueuesResponse(
                    queues: Dictionary(uniqueKeysWithValues: depths.map { ($0.key.rawValue, $0.value) }),
                    deadLetters: try await context.store.deadLetters(limit: 200),
                    deadLetterCount: try await context.store.deadLetterCount()))
            }
        }

        router.post("/api/dead-letters/:id/replay") { request, requestContext -> Response in
            await APIResponses.guarded(context) {
                let caller = try auth.check(request, requestContext)
                let text = try request.pathParameter("id", requestContext)
                guard let id = Int64(text) else { throw APIError.badRequest("dead letter id must be a number, not '\(text)'") }
                guard try await context.store.deadLetterExists(id) else { throw APIError.notFound("no dead letter with id \(id)") }
                try await context.store.replayDeadLetter(id, audit: "dead letter \(id) replayed by \(caller.description)")
                context.logger.notice("dead letter replayed through the API by \(caller.description)", metadata: ["dead_letter.id": "\(id)"])
                return APIResponses.json(["replayed": id])
            }
        }

        router.get("/api/summary") { _, _ -> Response in
            await APIResponses.guarded(context) {
                APIResponses.json(try await context.overviewSummary())
            }
        }

        router.get("/api/events") { request, _ -> Response in
            await APIResponses.guarded(context) {
                // Any ISO-8601 time, as the case list's filters take them (with or without fractions).
                let since = try request.queryParameter("since").map { try CaseListFilter.parseTime($0, name: "since", endOfDay: false) }
                return EventStream(context: context).response(since: since)
            }
        }

        Dashboard.register(on: router, context, tokenConfigured: auth.isConfigured)

        // Last: the router's not-found responder runs every middleware, wherever it was added,
        // so this one sees each request no route took, and knows every route of the API.
        router.add(middleware: APIFallback(routes: router.routes.map { (path: "\($0.path)", method: $0.method) }))
    }

    /// Retry or cancel through the Conductor: 404 for an unknown case, 409 when the Conductor
    /// ignores the request in the case's status.
    static func conduct(_ event: ConductorEvent, caseId: String, _ context: APIContext, caller: APIAuthorization.Caller) async throws -> Response {
        let applied = try await context.store.conduct(event, caseId: caseId, conductor: context.conductor,
                                                      audit: "\(event.name) by \(caller.description)")
        guard let first = applied.first else { throw APIError.notFound("no case '\(caseId)'") }
        guard first.decision.outcome == .applied else {
            throw APIError.conflict("\(event.name) does not apply to case '\(caseId)' in status \(first.previousStatus.rawValue): \(first.decision.note)")
        }
        context.logger.notice("\(event.name) through the API by \(caller.description)", metadata: ["case_id": "\(caseId)", "status": "\(first.decision.state.status.rawValue)"])
        return APIResponses.json(ConductResponse(caseId: caseId, previousStatus: first.previousStatus.rawValue,
                                                 status: first.decision.state.status.rawValue, note: first.decision.note))
    }
}

struct CaseListResponse: Encodable {
    var cases: [CaseSummary]
    var nextCursor: String?

    enum CodingKeys: String, CodingKey { case cases, nextCursor = "next_cursor" }

    func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(cases, forKey: .cases)
        try container.encode(nextCursor, forKey: .nextCursor)
    }
}

/// `GET /api/gpus/{id}/history`: the GPU monitor's readings of the last hour, oldest first.
struct GPUHistoryResponse: Encodable {
    var gpuId: Int
    var windowSec: Int
    var samples: [GPUHistorySample]

    enum CodingKeys: String, CodingKey { case gpuId = "gpu_id", windowSec = "window_sec", samples }
}

struct QueuesResponse: Encodable {
    var queues: [String: Int]
    var deadLetters: [DeadLetter]
    var deadLetterCount: Int

    enum CodingKeys: String, CodingKey { case queues, deadLetters = "dead_letters", deadLetterCount = "dead_letter_count" }
}

/// `GET /api/communicators`: the communicators working on this state (heartbeat rows); on a
/// SQLite state (`shared: false`) the one daemon.
struct CommunicatorsResponse: Encodable {
    var shared: Bool
    var communicators: [InstanceRecord]
}

struct ConductResponse: Encodable {
    var caseId: String
    var previousStatus: String
    var status: String
    var note: String

    enum CodingKeys: String, CodingKey { case caseId = "case_id", previousStatus = "previous_status", status, note }
}

/// A request no route took, under `/api`: a path of the API with a method it does not have is a
/// 405 with `Allow` (RFC 9110), any other path a 404; both as the API's JSON error.
struct APIFallback<Context: RequestContext>: RouterMiddleware {
    /// Each API path's segments (`{name}` or `:name` matches any one segment) and its methods.
    var routes: [(segments: [Substring], methods: Set<HTTPRequest.Method>)]

    init(routes: [(path: String, method: HTTPRequest.Method)]) {
        var byPath: [String: Set<HTTPRequest.Method>] = [:]
        for route in routes {
            let path = route.path.hasPrefix("/") ? route.path : "/" + route.path
            guard path.hasPrefix("/api/") else { continue }
            byPath[path, default: []].insert(route.method)
        }
        self.routes = byPath.map { (segments: $0.key.split(separator: "/"), methods: $0.value) }
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            let path = request.uri.path
            guard path == "/api" || path.hasPrefix("/api/") else { throw error }
            let segments = path.split(separator: "/")
            var allowed = routes.filter { Self.matches($0.segments, segments) }.reduce(into: Set<HTTPRequest.Method>()) { $0.formUnion($1.methods) }
            // Every GET also answers HEAD (HeadRequests).
            if allowed.contains(.get) { allowed.insert(.head) }
            guard !allowed.isEmpty else {
                return APIError.notFound("no operation of the API at \(path) (the API is described at /api/openapi.json)").response
            }
            let allow = allowed.map(\.rawValue).sorted().joined(separator: ", ")
            var response = APIError(status: .methodNotAllowed, error: "method_not_allowed",
                                    detail: "\(request.method.rawValue) is not an operation of \(path): it takes \(allow)").response
            response.headers[.allow] = allow
            return response
        }
    }

    static func matches(_ template: [Substring], _ segments: [Substring]) -> Bool {
        template.count == segments.count && zip(template, segments).allSatisfy { pattern, segment in
            pattern.hasPrefix(":") || (pattern.hasPrefix("{") && pattern.hasSuffix("}")) || pattern == segment
        }
    }
}
