import Foundation
import Hummingbird
import Logging
import MQICore
import MQIStore
import MQITransport

/// What the JSON API and the dashboard need from the daemon.
public struct APIContext: Sendable {
    public var store: Store
    /// Retry and cancel go through the Conductor, like the CLI.
    public var conductor: Conductor
    public var config: Config
    public var logger: Logger

    public init(store: Store, conductor: Conductor, config: Config, logger: Logger) {
        self.store = store
        self.conductor = conductor
        self.config = config
        self.logger = logger
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
                var since: Date?
                if let text = request.queryParameter("since") {
                    guard let date = try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)) else {
                        throw APIError.badRequest("since must be an ISO-8601 time with milliseconds, like 2025-04-24T01:50:14.000Z")
                    }
                    since = date
                }
                return EventStream(context: context).response(since: since)
            }
        }

        Dashboard.register(on: router, context, tokenConfigured: auth.isConfigured)
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
