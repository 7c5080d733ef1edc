import Foundation
import Hummingbird
import MQICore
import MQIStore

/// The operators' dashboard: server-rendered pages (they show the data without JavaScript) that
/// `/assets/dashboard.js` keeps live from `/api/events`. Every value from the data is HTML-escaped.
/// The CSP forbids inline scripts and styles, so they are the files in `Resources/`, served from
/// `DashboardAssets`.
enum Dashboard {
    static let recentCount = 15
    static let pageSize = 50

    static func register(on router: Router<BasicRequestContext>, _ context: APIContext, tokenConfigured: Bool) {
        router.get("/assets/dashboard.css") { _, _ -> Response in
            APIResponses.text(DashboardAssets.css, contentType: "text/css; charset=utf-8")
        }
        router.get("/assets/dashboard.js") { _, _ -> Response in
            APIResponses.text(DashboardAssets.javascript, contentType: "text/javascript; charset=utf-8")
        }
        router.get("/favicon.ico") { _, _ -> Response in
            APIResponses.text(DashboardAssets.favicon, contentType: "image/svg+xml")
        }
        router.get("/") { _, _ -> Response in
            await page(context) { try await overview(context, tokenConfigured: tokenConfigured) }
        }
        router.get("/cases") { request, _ -> Response in
            await page(context) { try await caseList(context, request: request, tokenConfigured: tokenConfigured) }
        }
        router.get("/cases/:id") { request, requestContext -> Response in
            await page(context) {
                let caseId = try request.pathParameter("id", requestContext)
                return try await caseDetail(context, caseId: caseId, tokenConfigured: tokenConfigured)
            }
        }
    }

    static func page(_ context: APIContext, _ body: () async throws -> (HTTPResponse.Status, String)) async -> Response {
        do {
            let (status, html) = try await body()
            return APIResponses.text(html, status: status, contentType: "text/html; charset=utf-8")
        } catch let error as APIError {
            return APIResponses.text(layout(title: "Error", page: "error", tokenConfigured: false, renderedAt: Date(), body: PageTemplate.error.render([
                "heading": "\(error.status.code) \(escape(error.status.reasonPhrase))", "message": escape(error.detail),
            ])), status: error.status, contentType: "text/html; charset=utf-8")
        } catch {
            context.logger.error("dashboard page failed: \(error)")
            return APIResponses.text(layout(title: "Error", page: "error", tokenConfigured: false, renderedAt: Date(), body: PageTemplate.error.render([
                "heading": "Internal error", "message": escape("\(error)"),
            ])), status: .internalServerError, contentType: "text/html; charset=utf-8")
        }
    }

    // MARK: pages

    static func overview(_ context: APIContext, tokenConfigured: Bool) async throws -> (HTTPResponse.Status, String) {
        let renderedAt = Date()
        let summary = try await context.overviewSummary(now: renderedAt)
        let gpus = try await context.store.gpus().filter { $0.status != .retired }
        let recent = try await context.store.casesPage(limit: recentCount).cases
        let deadLetters = try await context.store.deadLetters(limit: 20)
        let tiles = CaseStatus.allCases.map { status in
            PageTemplate.statusTile.render(["status": status.rawValue, "count": "\(summary.counts[status.rawValue] ?? 0)", "label": label(status)])
        }.joined(separator: "\n")
        let body = PageTemplate.overview.render([
            "hostBanners": hostBanner(summary.hosts, now: renderedAt), "tiles": tiles,
            "throughput": throughputChart(summary.throughput), "queues": queuesTable(summary),
            "deadLetterCount": "\(summary.deadLetters)", "deadLetters": deadLetterList(deadLetters, tokenConfigured: tokenConfigured),
            "gpus": gpus.isEmpty ? "<p class=\"muted\">No GPU configured.</p>" : gpus.map(gpuCard).joined(separator: "\n"),
            "recentCases": caseTable(recent, id: "recent-cases", empty: "No case yet: cases appear here when the scanner finds them."),
        ])
        return (.ok, layout(title: "Overview", page: "overview", tokenConfigured: tokenConfigured, renderedAt: renderedAt, body: body))
    }

    static func caseList(_ context: APIContext, request: Request, tokenConfigured: Bool) async throws -> (HTTPResponse.Status, String) {
        let renderedAt = Date()
        let status = try request.queryParameter("status").map(CaseStatus.parseQuery)
        let query = request.queryParameter("q")
        let cursor = request.queryParameter("cursor")
        let page = try await context.store.casesPage(status: status, query: query, limit: pageSize, cursor: cursor)
        let options = (["<option value=\"\">All statuses</option>"] + CaseStatus.allCases.map { s in
            "<option value=\"\(s.rawValue)\"\(s == status ? " selected" : "")>\(label(s))</option>"
        }).joined()
        var links: [String] = []
        if cursor != nil { links.append("<a class=\"button secondary\" href=\"\(listURL(status: status, query: query, cursor: nil))\">← Newest</a>") }
        if let next = page.nextCursor { links.append("<a class=\"button secondary\" id=\"older\" href=\"\(listURL(status: status, query: query, cursor: next))\">Older →</a>") }
        let body = PageTemplate.cases.render([
            "statusOptions": options, "query": escape(query ?? ""), "statusFilter": status?.rawValue ?? "", "firstPage": "\(cursor == nil)",
            "clearLink": status != nil || query != nil ? "<a class=\"button secondary\" href=\"/cases\">Clear</a>" : "",
            "caseTable": caseTable(page.cases, id: "cases", empty: status == nil && query == nil ? "No case yet." : "No case matches these filters."),
            "pager": links.joined(separator: " "),
        ])
        return (.ok, layout(title: "Cases", page: "cases", tokenConfigured: tokenConfigured, renderedAt: renderedAt, body: body))
    }

    static func caseDetail(_ context: APIContext, caseId: String, tokenConfigured: Bool) async throws -> (HTTPResponse.Status, String) {
        let renderedAt = Date()
        guard let detail = try await context.caseDetail(caseId) else { throw APIError.notFound("There is no case '\(caseId)'.") }
        let c = detail.case
        let actions = tokenConfigured
            ? PageTemplate.caseActions.render([
                "caseId": escape(c.caseId), "cancelHidden": c.status.isFinal ? " hidden" : "",
                "retryHidden": c.status == .failed || c.status == .cancelled ? "" : " hidden",
            ])
            : PageTemplate.caseActionsDisabled.render([:])
        let body = PageTemplate.caseDetail.render([
            "caseId": escape(c.caseId), "status": c.status.rawValue, "badge": badge(c.status),
            "detailHidden": c.detail == nil ? " hidden" : "", "detail": escape(c.detail ?? ""),
            "progress": progressBar(c.progress, status: c.status),
            "workflow": escape(c.workflow), "step": escape(c.workflowStep ?? "–"), "attempt": "\(c.attempt)",
            "gpus": c.gpuIds.isEmpty ? "–" : c.gpuIds.map(String.init).joined(separator: ", "),
            "patient": escape(c.patientId ?? "–"),
            "beams": c.beamNumbers.isEmpty ? "–" : c.beamNumbers.map(String.init).joined(separator: ", "),
            "received": time(c.createdAt), "started": c.startedAt.map(time) ?? "–", "finished": c.finishedAt.map(time) ?? "–",
            "errorHidden": c.error == nil ? " hidden" : "", "error": escape(c.error ?? ""),
            "failureClass": c.failureClass.map { "<strong>\(escape($0.rawValue)) failure:</strong> " } ?? "",
            "actions": actions, "planBeams": planBeamsPanel(detail.planBeams),
            "beamRunsHidden": c.beams.isEmpty ? " hidden" : "", "beamRuns": beamRunsTable(c.beams),
            "slurmJobsHidden": detail.jobs.isEmpty ? " hidden" : "", "slurmJobs": schedulerJobsTable(detail.jobs),
            "steps": stepper(detail), "timeline": timelineTable(detail.timeline),
            "logName": detail.log.map { "\(escape($0.step)) · attempt \($0.attempt)" } ?? "",
            "logTail": escape((detail.log?.lines ?? []).joined(separator: "\n")) + (detail.log == nil ? "<span class=\"muted\">No step log yet.</span>" : ""),
            "logLinks": logLinks(detail.logs), "historyCount": "\(detail.history.count)", "history": historyTable(detail.history),
        ])
        return (.ok, layout(title: c.caseId, page: "case", tokenConfigured: tokenConfigured, renderedAt: renderedAt, body: body))
    }

    // MARK: pieces

    static func layout(title: String, page: String, tokenConfigured: Bool, renderedAt: Date, body: String) -> String {
        PageTemplate.layout.render([
            "title": escape(title), "page": page, "tokenConfigured": "\(tokenConfigured)",
            "renderedAtISO": APIResponses.isoDate(renderedAt), "renderedAt": time(renderedAt), "body": body,
            "overviewCurrent": page == "overview" ? " aria-current=\"page\"" : "",
            "casesCurrent": page == "cases" ? " aria-current=\"page\"" : "",
        ])
    }

    static func caseTable(_ cases: [CaseSummary], id: String, empty: String) -> String {
        PageTemplate.caseTable.render([
            "id": id, "rows": cases.map(caseRow).joined(separator: "\n"),
            "emptyHidden": cases.isEmpty ? "" : " hidden", "empty": escape(empty),
        ])
    }

    static func caseRow(_ c: CaseSummary) -> String {
        let end = c.finishedAt ?? Date()
        return PageTemplate.caseRow.render([
            "caseId": escape(c.caseId), "casePath": StepLogs.pathEscaped(c.caseId), "status": c.status.rawValue,
            "createdAtISO": APIResponses.isoDate(c.createdAt), "badge": badge(c.status), "step": escape(c.workflowStep ?? "–"),
            "error": c.error.map { "<div class=\"row-error\" title=\"\(escape($0))\">\(escape(String($0.prefix(120))))</div>" } ?? "",
            "detail": c.detail.map { "<div class=\"row-detail\" data-field=\"detail\" title=\"\(escape($0))\">\(escape($0))</div>" } ?? "",
            "progress": progressBar(c.progress, status: c.status),
            "gpus": c.gpuIds.isEmpty ? "–" : c.gpuIds.map(String.init).joined(separator: ","),
            "created": time(c.createdAt), "duration": duration(end.timeIntervalSince(c.createdAt)),
        ])
    }

    static func badge(_ status: CaseStatus) -> String {
        "<span class=\"badge status-\(status.rawValue)\" data-role=\"badge\">\(label(status))</span>"
    }

    static func progressBar(_ progress: Int, status: CaseStatus) -> String {
        let value = min(100, max(0, progress))
        return "<span class=\"progress status-\(status.rawValue)\"><progress max=\"100\" value=\"\(value)\">\(value)%</progress><span class=\"pct\">\(value)%</span></span>"
    }

    static func gpuCard(_ gpu: GPUResource) -> String {
        let state: (String, String) = switch (gpu.status, gpu.health) {
        case (.draining, _): ("draining", "Draining")
        case (_, .missing): ("missing", "Not detected")
        case (.free, .busy): ("busy", "Busy (other process)")
        case (.reserved, _): ("reserved", "In use")
        default: ("free", "Free")
        }
        let utilization = gpu.utilizationPercent.map { Int($0.rounded()) }
        let memory = gpu.memoryUsedMB.map { used in
            "\(Int(used)) / \(gpu.memoryTotalMB.map { String(Int($0)) } ?? "?") MiB"
        } ?? "–"
        let memoryPercent = gpu.memoryUsedMB.flatMap { used in gpu.memoryTotalMB.map { $0 > 0 ? Int((used / $0 * 100).rounded()) : 0 } }
        return PageTemplate.gpuCard.render([
            "gpuId": "\(gpu.gpuId)", "state": state.0, "stateLabel": state.1, "name": escape(gpu.name ?? "no telemetry yet"),
            "utilizationValue": "\(utilization ?? 0)", "utilization": utilization.map { "\($0)%" } ?? "–",
            "memoryValue": "\(memoryPercent ?? 0)", "memory": memory,
            "temperature": gpu.temperatureC.map { "\(Int($0)) °C" } ?? "", "holder": holderHTML(gpu),
        ])
    }

    /// A warning for each HPC host that does not answer, saying since when.
    static func hostBanner(_ hosts: [HostState], now: Date) -> String {
        hosts.filter { !$0.reachable }.map { host in
            PageTemplate.hostBanner.render([
                "host": escape(host.host), "since": host.since.formatted(.iso8601),
                "seconds": "\(Int(now.timeIntervalSince(host.since)))", "reason": escape(host.reason ?? "no answer"),
            ])
        }.joined(separator: "\n")
    }

    /// The case holding the GPU, or the attempt a draining GPU waits for (and why, if stuck).
    static func holderHTML(_ gpu: GPUResource) -> String {
        func link(_ caseId: String) -> String { "<a href=\"/cases/\(StepLogs.pathEscaped(caseId))\">\(escape(caseId))</a>" }
        if let drain = gpu.drain {
            return "Waits for \(link(drain.caseId))\(drain.attempt.map { " attempt \($0)" } ?? "") to stop"
                + (drain.reason.map { " <span class=\"drain-reason\" data-field=\"drain-reason\">\(escape($0))</span>" } ?? "")
        }
        return gpu.reservedBy.map { "Case \(link($0))" } ?? "<span class=\"muted\">no case</span>"
    }

    static func queuesTable(_ summary: OverviewSummary) -> String {
        let rows = QueueName.allCases.map { queue in
            "<tr data-queue=\"\(queue.rawValue)\"><td><code>\(queue.rawValue)</code></td><td class=\"num\" data-field=\"depth\">\(summary.queues[queue.rawValue] ?? 0)</td></tr>"
        }.joined()
        return "<table class=\"queues\" id=\"queues\"><thead><tr><th>Queue</th><th class=\"num\">Messages</th></tr></thead><tbody>\(rows)</tbody></table>"
    }

    static func deadLetterList(_ letters: [DeadLetter], tokenConfigured: Bool) -> String {
        guard !letters.isEmpty else { return "<p class=\"muted small\">None: every message was delivered.</p>" }
        return "<ul class=\"dead-letters\">" + letters.map { letter in
            PageTemplate.deadLetter.render([
                "id": "\(letter.id)", "kind": letter.kind.rawValue, "queue": letter.queue.rawValue,
                "caseId": escape(letter.caseId), "casePath": StepLogs.pathEscaped(letter.caseId),
                "deliveries": "\(letter.deliveries)", "deadAt": time(letter.deadAt), "error": escape(letter.error),
                "replayButton": tokenConfigured ? " <button type=\"button\" class=\"small-button\" data-action=\"replay\" data-dead-letter-id=\"\(letter.id)\">Replay</button>" : "",
            ])
        }.joined() + "</ul>"
    }

    /// 24 hourly bars, completed (stacked with failed and cancelled), as inline SVG.
    static func throughputChart(_ buckets: [ThroughputBucket]) -> String {
        let maxTotal = max(1, buckets.map { $0.completed + $0.failed + $0.cancelled }.max() ?? 1)
        let width = 24 * 20, height = 110
        var bars = ""
        for (index, bucket) in buckets.suffix(24).enumerated() {
            let x = index * 20 + 3
            var y = Double(height - 16)
            for (count, kind) in [(bucket.completed, "completed"), (bucket.failed, "failed"), (bucket.cancelled, "cancelled")] where count > 0 {
                let h = max(2, Double(count) / Double(maxTotal) * Double(height - 30))
                y -= h
                bars += "<rect class=\"bar-\(kind)\" x=\"\(x)\" y=\(String(format: "\"%.1f\"", y)) width=\"14\" height=\(String(format: "\"%.1f\"", h))><title>\(hourLabel(bucket.hour)): \(count) \(kind)</title></rect>"
            }
            if index % 6 == 0 {
                bars += "<text x=\"\(x)\" y=\"\(height - 2)\" class=\"axis\">\(hourLabel(bucket.hour))</text>"
            }
        }
        let completed = buckets.map(\.completed).reduce(0, +), failed = buckets.map(\.failed).reduce(0, +)
        return PageTemplate.throughput.render([
            "width": "\(width)", "height": "\(height)", "baseline": "\(height - 16)", "bars": bars,
            "completed": "\(completed)", "failed": "\(failed)", "maxTotal": "\(maxTotal)",
        ])
    }

    static func stepper(_ detail: CaseDetail) -> String {
        let c = detail.case
        let currentIndex = detail.steps.firstIndex { $0.name == c.workflowStep }
        return detail.steps.enumerated().map { index, step in
            var state = "todo"
            if c.status == .completed { state = "done" } else if let currentIndex {
                if index < currentIndex { state = "done" } else if index == currentIndex {
                    state = switch c.status {
                    case .processing: "active"
                    case .pendingResource: "waiting"
                    case .failed: "failed"
                    case .cancelled: "cancelled"
                    default: "todo"
                    }
                }
            }
            return "<li class=\"step step-\(state)\"><span class=\"step-name\">\(escape(step.name))</span><span class=\"step-type muted small\">\(escape(step.type))</span></li>"
        }.joined()
    }

    static func timelineTable(_ attempts: [StepAttempt]) -> String {
        guard !attempts.isEmpty else { return "<p class=\"muted\">No step has started yet.</p>" }
        let longest = max(0.001, attempts.map(\.durationSec).max() ?? 1)
        let rows = attempts.map { a in
            """
            <tr class="outcome-\(a.outcome)"><td>\(escape(a.step))</td><td class="num">\(a.attempt)</td><td>\(a.phase == "waiting_for_gpu" ? "Waiting for GPU" : "Run")</td>\
            <td>\(time(a.startedAt))</td><td>\(a.endedAt.map(time) ?? "–")</td>\
            <td class="num">\(duration(a.durationSec))</td>\
            <td class="bar-cell"><meter min="0" max="\(String(format: "%.3f", longest))" value="\(String(format: "%.3f", a.durationSec))"></meter></td>\
            <td><span class="outcome">\(escape(a.outcome.replacingOccurrences(of: "_", with: " ")))</span></td></tr>
            """
        }.joined()
        return "<table class=\"timeline\"><thead><tr><th>Step</th><th class=\"num\">Attempt</th><th>Phase</th><th>Started</th><th>Ended</th><th class=\"num\">Duration</th><th></th><th>Outcome</th></tr></thead><tbody>\(rows)</tbody></table>"
    }

    /// The RT plan's treatment beams (number, name, delivered or not); nothing when no plan was read.
    static func planBeamsPanel(_ beams: [CasePlanBeam]) -> String {
        guard !beams.isEmpty else { return "" }
        let delivered = beams.filter(\.delivered).count
        let rows = beams.map { beam in
            "<tr data-beam-number=\"\(beam.number)\" data-delivered=\"\(beam.delivered)\"><td class=\"num\">\(beam.number)</td><td>\(beam.name.isEmpty ? "<span class=\"muted\">–</span>" : escape(beam.name))</td>"
                + "<td><span class=\"delivery \(beam.delivered ? "delivered" : "not-delivered")\">\(beam.delivered ? "delivered" : "not delivered")</span></td></tr>"
        }.joined()
        return PageTemplate.planBeams.render(["delivered": "\(delivered)", "total": "\(beams.count)", "rows": rows])
    }

    /// The runs of a `for_each: beam` step: beam, status, attempt, progress, GPU, times, error.
    static func beamRunsTable(_ runs: [BeamRun]) -> String {
        let rows = runs.map { run in
            "<tr data-beam=\"\(run.beam)\" data-beam-status=\"\(run.status.rawValue)\"><td class=\"num\">\(run.beam)</td><td>\(escape(run.status.rawValue))</td>"
                + "<td class=\"num\">\(run.attempt)</td><td class=\"num\">\(run.progress)%</td>"
                + "<td>\(run.gpuIds.isEmpty ? "–" : run.gpuIds.map(String.init).joined(separator: ","))</td>"
                + "<td class=\"nowrap\">\(run.startedAt.map(time) ?? "")</td><td class=\"nowrap\">\(run.finishedAt.map(time) ?? "")</td>"
                + "<td>\(escape(run.error ?? ""))</td></tr>"
        }.joined()
        return "<table class=\"beam-runs\"><thead><tr><th class=\"num\">Beam</th><th>Status</th><th class=\"num\">Attempt</th><th class=\"num\">Progress</th><th>GPU</th><th>Started</th><th>Finished</th><th>Error</th></tr></thead><tbody>\(rows)</tbody></table>"
    }

    /// The Slurm jobs of a case: job id, step (and beam), attempt, state, reason, node, GPUs, times.
    static func schedulerJobsTable(_ jobs: [SchedulerJob]) -> String {
        let rows = jobs.map { job in
            "<tr data-job-id=\"\(escape(job.jobId))\" data-job-state=\"\(escape(job.state))\"><td class=\"num\">\(escape(job.jobId))</td>"
                + "<td>\(escape(job.step))\(job.beam.map { " · beam \($0)" } ?? "")</td><td class=\"num\">\(job.attempt)</td>"
                + "<td><span class=\"job-state job-\(escape(job.state))\">\(escape(job.state))</span></td><td>\(escape(job.reason ?? ""))</td>"
                + "<td>\(escape(job.node ?? "–"))</td><td>\(escape(job.gpus ?? "–"))</td>"
                + "<td class=\"nowrap\">\(job.submittedAt.map(time) ?? "")</td><td class=\"nowrap\">\(job.startedAt.map(time) ?? "")</td>"
                + "<td class=\"nowrap\">\(job.endedAt.map(time) ?? "")</td></tr>"
        }.joined()
        return "<table class=\"slurm-jobs\"><thead><tr><th class=\"num\">Job</th><th>Step</th><th class=\"num\">Attempt</th><th>State</th><th>Reason</th><th>Node</th><th>GPU</th><th>Submitted</th><th>Started</th><th>Ended</th></tr></thead><tbody>\(rows)</tbody></table>"
    }

    static func historyTable(_ history: [CaseHistoryEntry]) -> String {
        "<table class=\"history\"><tbody>" + history.map { entry in
            "<tr><td class=\"nowrap\">\(time(entry.at))</td><td>\(badge(entry.status))</td><td><code>\(escape(entry.event))</code></td><td>\(escape(entry.step ?? ""))\(entry.attempt.map { " #\($0)" } ?? "")</td><td>\(escape(entry.message))</td></tr>"
        }.joined() + "</tbody></table>"
    }

    static func logLinks(_ logs: [LogExcerpt]) -> String {
        guard !logs.isEmpty else { return "" }
        return "Whole logs: " + logs.map { "<a href=\"\(escape($0.url))\">\(escape($0.step)) #\($0.attempt)</a>" }.joined(separator: " · ")
    }

    static func listURL(status: CaseStatus?, query: String?, cursor: String?) -> String {
        var parts: [String] = []
        if let status { parts.append("status=\(status.rawValue)") }
        if let query { parts.append("q=\(StepLogs.pathEscaped(query))") }
        if let cursor { parts.append("cursor=\(StepLogs.pathEscaped(cursor))") }
        return "/cases" + (parts.isEmpty ? "" : "?" + parts.joined(separator: "&amp;"))
    }

    // MARK: text

    static func label(_ status: CaseStatus) -> String {
        switch status {
        case .new: "New"
        case .processing: "Processing"
        case .pendingResource: "Waiting for GPU"
        case .completed: "Completed"
        case .failed: "Failed"
        case .cancelled: "Cancelled"
        }
    }

    /// Escapes text for HTML content and quoted attribute values.
    static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(character)
            }
        }
        return out
    }

    /// Local time of the daemon's machine, `2025-04-24 01:50:14` (the dashboard's JavaScript uses the browser's).
    static func time(_ date: Date) -> String {
        let c = Calendar.current.dateComponents(in: TimeZone.current, from: date)
        return String(format: "%04d-%02d-%02d %02d:%02d:%02d", c.year ?? 0, c.month ?? 0, c.day ?? 0, c.hour ?? 0, c.minute ?? 0, c.second ?? 0)
    }

    static func hourLabel(_ date: Date) -> String {
        let c = Calendar.current.dateComponents(in: TimeZone.current, from: date)
        return String(format: "%02d:00", c.hour ?? 0)
    }

    static func duration(_ seconds: Double) -> String {
        let s = max(0, seconds)
        if s < 10 { return String(format: "%.1f s", s) }
        if s < 60 { return "\(Int(s)) s" }
        if s < 3600 { return "\(Int(s) / 60) min \(Int(s) % 60) s" }
        return "\(Int(s) / 3600) h \(Int(s) % 3600 / 60) min"
    }
}
