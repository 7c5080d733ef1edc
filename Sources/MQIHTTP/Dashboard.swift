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
            return APIResponses.text(layout(title: "Error", page: "error", tokenConfigured: false, renderedAt: Date(), body: """
                <section class="panel"><h1>\(error.status.code) \(escape(error.status.reasonPhrase))</h1><p>\(escape(error.detail))</p>
                <p><a href="/">Back to the overview</a></p></section>
                """), status: error.status, contentType: "text/html; charset=utf-8")
        } catch {
            context.logger.error("dashboard page failed: \(error)")
            return APIResponses.text(layout(title: "Error", page: "error", tokenConfigured: false, renderedAt: Date(), body: """
                <section class="panel"><h1>Internal error</h1><p>\(escape("\(error)"))</p></section>
                """), status: .internalServerError, contentType: "text/html; charset=utf-8")
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
            """
            <a class="tile status-\(status.rawValue)" href="/cases?status=\(status.rawValue)" data-count-status="\(status.rawValue)">\
            <span class="tile-count">\(summary.counts[status.rawValue] ?? 0)</span><span class="tile-label">\(label(status))</span></a>
            """
        }.joined(separator: "\n")
        let body = """
            <div id="hpc-banner">\(hostBanner(summary.hosts, now: renderedAt))</div>
            <section class="tiles" aria-label="Cases per status">
            \(tiles)
            </section>
            <div class="grid-2">
              <section class="panel">
                <h2>Throughput, last 24 h</h2>
                <div id="throughput" class="throughput">\(throughputChart(summary.throughput))</div>
              </section>
              <section class="panel">
                <h2>Queues</h2>
                \(queuesTable(summary))
                <h3>Dead letters <span class="muted" id="dead-letter-count" data-dead-letters="\(summary.deadLetters)">(\(summary.deadLetters))</span></h3>
                <div id="dead-letters">\(deadLetterList(deadLetters, tokenConfigured: tokenConfigured))</div>
              </section>
            </div>
            <section class="panel">
              <h2>GPUs</h2>
              <div class="gpu-grid" id="gpus">\(gpus.isEmpty ? "<p class=\"muted\">No GPU configured.</p>" : gpus.map(gpuCard).joined(separator: "\n"))</div>
            </section>
            <section class="panel">
              <h2>Latest cases <a class="more" href="/cases">all cases →</a></h2>
              \(caseTable(recent, id: "recent-cases", empty: "No case yet: cases appear here when the scanner finds them."))
            </section>
            """
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
        let body = """
            <section class="panel">
              <h1>Cases</h1>
              <form class="filters" method="get" action="/cases" role="search">
                <label>Status <select name="status">\(options)</select></label>
                <label class="grow">Search case id <input type="search" name="q" value="\(escape(query ?? ""))" placeholder="part of a case id" maxlength="200"></label>
                <button type="submit">Apply</button>
                \(status != nil || query != nil ? "<a class=\"button secondary\" href=\"/cases\">Clear</a>" : "")
              </form>
              <div id="case-list" data-status-filter="\(status?.rawValue ?? "")" data-query="\(escape(query ?? ""))" data-first-page="\(cursor == nil)">
              \(caseTable(page.cases, id: "cases", empty: status == nil && query == nil ? "No case yet." : "No case matches these filters."))
              </div>
              <nav class="pager">\(links.joined(separator: " "))</nav>
            </section>
            """
        return (.ok, layout(title: "Cases", page: "cases", tokenConfigured: tokenConfigured, renderedAt: renderedAt, body: body))
    }

    static func caseDetail(_ context: APIContext, caseId: String, tokenConfigured: Bool) async throws -> (HTTPResponse.Status, String) {
        let renderedAt = Date()
        guard let detail = try await context.caseDetail(caseId) else { throw APIError.notFound("There is no case '\(caseId)'.") }
        let c = detail.case
        let actions = tokenConfigured ? """
            <div class="actions" id="actions">
              <button type="button" class="danger" data-action="cancel" data-case-id="\(escape(c.caseId))"\(c.status.isFinal ? " hidden" : "")>Cancel case</button>
              <button type="button" data-action="retry" data-case-id="\(escape(c.caseId))"\(c.status == .failed || c.status == .cancelled ? "" : " hidden")>Retry case</button>
            </div>
            """ : """
            <p class="muted small" id="actions-disabled">Retry and cancel are disabled: no API token is configured (set <code>http.token_file</code>).</p>
            """
        let facts: [(String, String)] = [
            ("Workflow", escape(c.workflow)),
            ("Step", "<span data-field=\"step\">\(escape(c.workflowStep ?? "–"))</span> <span class=\"muted\" data-field=\"attempt\">(attempt \(c.attempt))</span>"),
            ("GPUs", "<span data-field=\"gpus\">\(c.gpuIds.isEmpty ? "–" : c.gpuIds.map(String.init).joined(separator: ", "))</span>"),
            ("Patient", escape(c.patientId ?? "–")),
            ("Beams", c.beamNumbers.isEmpty ? "–" : c.beamNumbers.map(String.init).joined(separator: ", ")),
            ("Received", time(c.createdAt)),
            ("Started", "<span data-field=\"started\">\(c.startedAt.map(time) ?? "–")</span>"),
            ("Finished", "<span data-field=\"finished\">\(c.finishedAt.map(time) ?? "–")</span>"),
        ]
        let body = """
            <nav class="crumbs"><a href="/cases">Cases</a> / <span>\(escape(c.caseId))</span></nav>
            <section class="panel case-head" id="case" data-case-id="\(escape(c.caseId))" data-status="\(c.status.rawValue)" data-initial-status="\(c.status.rawValue)">
              <div class="case-title">
                <h1 class="case-id">\(escape(c.caseId))</h1>
                \(badge(c.status))
              </div>
              <p class="case-detail" id="case-detail"\(c.detail == nil ? " hidden" : "")>\(escape(c.detail ?? ""))</p>
              <div class="case-progress">\(progressBar(c.progress, status: c.status))</div>
              <dl class="facts">\(facts.map { "<div><dt>\($0.0)</dt><dd>\($0.1)</dd></div>" }.joined())</dl>
              <div class="error-box" id="case-error"\(c.error == nil ? " hidden" : "")>\(c.failureClass.map { "<strong>\(escape($0.rawValue)) failure:</strong> " } ?? "")<pre>\(escape(c.error ?? ""))</pre></div>
              \(actions)
            </section>
            \(planBeamsPanel(detail.planBeams))
            <section class="panel" id="beam-runs-panel"\(c.beams.isEmpty ? " hidden" : "")>
              <h2>Beam runs <span class="muted">one GPU run per delivered beam</span></h2>
              <div id="beam-runs">\(beamRunsTable(c.beams))</div>
            </section>
            <section class="panel" id="slurm-jobs-panel"\(detail.jobs.isEmpty ? " hidden" : "")>
              <h2>Slurm jobs <span class="muted">the jobs the scheduler ran for this case's steps</span></h2>
              <div id="slurm-jobs">\(schedulerJobsTable(detail.jobs))</div>
            </section>
            <section class="panel">
              <h2>Workflow</h2>
              <ol class="stepper" id="stepper">\(stepper(detail))</ol>
              <h2>Step timeline</h2>
              <div id="timeline">\(timelineTable(detail.timeline))</div>
            </section>
            <section class="panel">
              <h2>Log <span class="muted" id="log-name">\(detail.log.map { "\(escape($0.step)) · attempt \($0.attempt)" } ?? "")</span>
                <span class="live-dot" id="log-live" title="updates live while the step runs"></span></h2>
              <pre class="log" id="log-tail" tabindex="0">\(escape((detail.log?.lines ?? []).joined(separator: "\n")))\(detail.log == nil ? "<span class=\"muted\">No step log yet.</span>" : "")</pre>
              <p class="small" id="log-links">\(logLinks(detail.logs))</p>
            </section>
            <section class="panel">
              <details><summary>History (\(detail.history.count) events)</summary>
              <div id="history">\(historyTable(detail.history))</div></details>
            </section>
            """
        return (.ok, layout(title: c.caseId, page: "case", tokenConfigured: tokenConfigured, renderedAt: renderedAt, body: body))
    }

    // MARK: pieces

    static func layout(title: String, page: String, tokenConfigured: Bool, renderedAt: Date, body: String) -> String {
        func nav(_ href: String, _ name: String, _ key: String) -> String {
            "<a href=\"\(href)\"\(key == page ? " aria-current=\"page\"" : "")>\(name)</a>"
        }
        return """
            <!DOCTYPE html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>\(escape(title)) · MQI Communicator</title>
            <link rel="icon" href="/favicon.ico">
            <link rel="stylesheet" href="/assets/dashboard.css">
            <script src="/assets/dashboard.js" defer></script>
            </head>
            <body data-page="\(page)" data-token-configured="\(tokenConfigured)" data-rendered-at="\(APIResponses.isoDate(renderedAt))" data-live-updates="0" data-connection="connecting">
            <header class="topbar">
              <div class="brand"><span class="logo" aria-hidden="true">◆</span> MQI Communicator <span class="muted">QA dose re-calculation</span></div>
              <nav class="mainnav">\(nav("/", "Overview", "overview"))\(nav("/cases", "Cases", "cases"))</nav>
              <div class="conn" id="conn" role="status"><span class="dot"></span><span id="conn-text">Connecting…</span></div>
            </header>
            <div class="banner" id="conn-banner" role="alert" hidden>
              <strong>Disconnected from the MQI daemon.</strong> The figures on this page may be out of date. Reconnecting automatically…
            </div>
            <div class="toast" id="toast" role="status" hidden></div>
            <main>
            \(body)
            </main>
            <footer class="footer muted small">Page rendered \(time(renderedAt)) · live updates from <code>/api/events</code> · <a href="/metrics">metrics</a> · <a href="/api/summary">JSON API</a></footer>
            </body>
            </html>
            """
    }

    static func caseTable(_ cases: [CaseSummary], id: String, empty: String) -> String {
        """
        <table class="cases" id="\(id)">
        <thead><tr><th>Case</th><th>Status</th><th>Step</th><th class="progress-col">Progress</th><th>GPU</th><th>Received</th><th>Duration</th></tr></thead>
        <tbody>\(cases.map(caseRow).joined(separator: "\n"))</tbody>
        </table>
        <p class="muted empty"\(cases.isEmpty ? "" : " hidden")>\(escape(empty))</p>
        """
    }

    static func caseRow(_ c: CaseSummary) -> String {
        let end = c.finishedAt ?? Date()
        return """
            <tr data-case-id="\(escape(c.caseId))" data-status="\(c.status.rawValue)" data-initial-status="\(c.status.rawValue)" data-created-at="\(APIResponses.isoDate(c.createdAt))">\
            <td class="case-cell"><a href="/cases/\(StepLogs.pathEscaped(c.caseId))">\(escape(c.caseId))</a>\(c.error.map { "<div class=\"row-error\" title=\"\(escape($0))\">\(escape(String($0.prefix(120))))</div>" } ?? "")</td>\
            <td data-field="status">\(badge(c.status))</td>\
            <td data-field="step">\(escape(c.workflowStep ?? "–"))\(c.detail.map { "<div class=\"row-detail\" data-field=\"detail\" title=\"\(escape($0))\">\(escape($0))</div>" } ?? "")</td>\
            <td data-field="progress">\(progressBar(c.progress, status: c.status))</td>\
            <td data-field="gpus">\(c.gpuIds.isEmpty ? "–" : c.gpuIds.map(String.init).joined(separator: ","))</td>\
            <td data-field="created">\(time(c.createdAt))</td>\
            <td data-field="duration">\(duration(end.timeIntervalSince(c.createdAt)))</td></tr>
            """
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
        return """
            <article class="gpu-card gpu-\(state.0)" data-gpu-id="\(gpu.gpuId)" data-gpu-state="\(state.0)">
              <header><span class="gpu-id">GPU \(gpu.gpuId)</span><span class="pill pill-\(state.0)" data-field="state">\(state.1)</span></header>
              <div class="gpu-name muted small" data-field="name">\(escape(gpu.name ?? "no telemetry yet"))</div>
              <div class="meter-row"><span>Utilization</span><progress max="100" value="\(utilization ?? 0)" data-field="util-bar"></progress><span data-field="util">\(utilization.map { "\($0)%" } ?? "–")</span></div>
              <div class="meter-row"><span>Memory</span><progress max="100" value="\(memoryPercent ?? 0)" data-field="mem-bar"></progress><span data-field="mem">\(memory)</span></div>
              <div class="gpu-foot small"><span data-field="temp">\(gpu.temperatureC.map { "\(Int($0)) °C" } ?? "")</span>
                <span data-field="holder">\(holderHTML(gpu))</span></div>
            </article>
            """
    }

    /// A warning for each HPC host that does not answer, saying since when.
    static func hostBanner(_ hosts: [HostState], now: Date) -> String {
        hosts.filter { !$0.reachable }.map { host in
            """
            <p class="banner banner-error" data-host="\(escape(host.host))">HPC host <b>\(escape(host.host))</b> unreachable since \
            <time datetime="\(host.since.formatted(.iso8601))">\(host.since.formatted(.iso8601))</time> \
            (\(Int(now.timeIntervalSince(host.since))) s): \(escape(host.reason ?? "no answer")). Work that needs it is paused; running steps keep running there.</p>
            """
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
            """
            <li data-dead-letter-id="\(letter.id)"><div><strong>#\(letter.id)</strong> <code>\(letter.kind.rawValue)</code> → <code>\(letter.queue.rawValue)</code> \
            for <a href="/cases/\(StepLogs.pathEscaped(letter.caseId))">\(escape(letter.caseId))</a> \
            <span class="muted small">after \(letter.deliveries) deliveries, \(time(letter.deadAt))</span>\
            \(tokenConfigured ? " <button type=\"button\" class=\"small-button\" data-action=\"replay\" data-dead-letter-id=\"\(letter.id)\">Replay</button>" : "")</div>\
            <pre class="dl-error">\(escape(letter.error))</pre></li>
            """
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
        return """
            <svg viewBox="0 0 \(width) \(height)" class="chart" role="img" aria-label="cases finished per hour"><line x1="0" x2="\(width)" y1="\(height - 16)" y2="\(height - 16)" class="baseline"></line>\(bars)</svg>
            <p class="small"><span class="key key-completed"></span><strong data-field="completed-24h">\(completed)</strong> completed · <span class="key key-failed"></span><strong data-field="failed-24h">\(failed)</strong> failed in the last 24 h (max \(maxTotal)/h)</p>
            """
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
        return """
            <section class="panel">
              <h2>Plan beams <span class="muted">\(delivered) of \(beams.count) treatment beams delivered</span></h2>
              <table class="plan-beams" id="plan-beams"><thead><tr><th class="num">Beam</th><th>Name</th><th>Delivery</th></tr></thead><tbody>\(rows)</tbody></table>
            </section>
            """
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
