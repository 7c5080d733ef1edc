import Foundation
import Hummingbird
import MQICore
import MQIMetrics
import MQIStore

/// The operators' dashboard: server-rendered pages (they show the data without JavaScript) that
/// `/assets/dashboard.js` keeps live from `/api/events`. Every value from the data is HTML-escaped.
/// The CSP forbids inline scripts and styles, so they are the files in `Resources/`, served from
/// `DashboardAssets`.
enum Dashboard {
    static let recentCount = 15
    static let pageSize = 50

    static func register(on router: Router<MQIRequestContext>, _ context: APIContext, tokenConfigured: Bool) {
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
                return try await caseDetail(context, caseId: caseId, request: request, tokenConfigured: tokenConfigured)
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
            "gpus": gpus.isEmpty ? PageTemplate.gpusEmpty.render([:]) : gpus.map { gpuCard($0, history: context.gpuHistory, now: renderedAt) }.joined(separator: "\n"),
            "recentCases": caseTable(recent, id: "recent-cases", empty: "No case yet: cases appear here when the scanner finds them."),
            "communicators": context.store.isShared ? communicatorsPanel(try await context.store.instances(), now: renderedAt) : "",
        ])
        return (.ok, layout(title: "Overview", page: "overview", tokenConfigured: tokenConfigured, renderedAt: renderedAt, body: body))
    }

    static func caseList(_ context: APIContext, request: Request, tokenConfigured: Bool) async throws -> (HTTPResponse.Status, String) {
        let renderedAt = Date()
        let filter = try CaseListFilter(request)
        let cursor = request.queryParameter("cursor")
        let page = try await context.store.casesPage(status: filter.status, query: filter.query, receivedFrom: filter.receivedFrom,
                                                     receivedTo: filter.receivedTo, limit: pageSize, cursor: cursor)
        let options = PageTemplate.statusOptionAll.render([:]) + CaseStatus.allCases.map { s in
            PageTemplate.statusOption.render(["value": s.rawValue, "selected": s == filter.status ? " selected" : "", "label": label(s)])
        }.joined()
        var links: [String] = []
        if cursor != nil { links.append(PageTemplate.pagerNewest.render(["href": listURL(filter, cursor: nil)])) }
        if let next = page.nextCursor { links.append(PageTemplate.pagerOlder.render(["href": listURL(filter, cursor: next)])) }
        let body = PageTemplate.cases.render([
            "statusOptions": options, "query": escape(filter.query ?? ""), "statusFilter": filter.status?.rawValue ?? "",
            "receivedFrom": escape(filter.receivedFromText ?? ""), "receivedTo": escape(filter.receivedToText ?? ""),
            // New cases arrive now: live rows are added only to a first page that shows now.
            "firstPage": "\(cursor == nil && filter.receivedTo.map { $0 > renderedAt } ?? true)",
            "clearLink": filter.isEmpty ? "" : PageTemplate.clearFilters.render([:]),
            "caseTable": caseTable(page.cases, id: "cases", empty: filter.isEmpty ? "No case yet." : "No case matches these filters."),
            "pager": links.joined(separator: " "),
        ])
        return (.ok, layout(title: "Cases", page: "cases", tokenConfigured: tokenConfigured, renderedAt: renderedAt, body: body))
    }

    static func caseDetail(_ context: APIContext, caseId: String, request: Request? = nil, tokenConfigured: Bool) async throws -> (HTTPResponse.Status, String) {
        let renderedAt = Date()
        guard var detail = try await context.caseDetail(caseId) else { throw APIError.notFound("There is no case '\(caseId)'.") }
        let c = detail.case
        // `?log=<step>&attempt=<n>`: that log in the panel instead of the current one (the log
        // links' target without JavaScript).
        if let step = request?.queryParameter("log"), let attempt = request?.queryParameter("attempt").flatMap({ Int($0) }),
           detail.logs.contains(where: { $0.step == step && $0.attempt == attempt }) {
            detail.log = StepLogs(logsDir: context.config.state.logsDir).excerpt(caseId: caseId, step: step, attempt: attempt, lines: 200)
        }
        let matcher = detail.log.map { FailureLineMatcher(config: context.config, workflow: c.workflow, logStep: $0.step) }
        let logLines = detail.log?.lines ?? []
        let failures = Set(matcher?.failures(in: logLines) ?? [])
        let logTail = logLines.enumerated().map { index, line in
            failures.contains(index) ? PageTemplate.logLineFailure.render(["line": escape(line)]) : escape(line)
        }.joined(separator: "\n")
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
            "failureClass": c.failureClass.map { PageTemplate.failureClass.render(["failureClass": escape($0.rawValue)]) } ?? "",
            "actions": actions, "planBeams": planBeamsPanel(detail.planBeams),
            "resultsDownload": PageTemplate.resultsDownload.render(["casePath": StepLogs.pathEscaped(c.caseId),
                                                                    "hidden": c.status == .completed ? "" : " hidden"]),
            "beamRunsHidden": c.beams.isEmpty ? " hidden" : "", "beamRuns": beamRunsTable(c.beams),
            "fractionsHidden": detail.fractions.isEmpty ? " hidden" : "", "fractions": fractionsTable(detail.fractions),
            "slurmJobsHidden": detail.jobs.isEmpty ? " hidden" : "", "slurmJobs": schedulerJobsTable(detail.jobs),
            "steps": stepper(detail), "timeline": timelineTable(detail.timeline),
            "logName": detail.log.map { escape(logName($0.step, attempt: $0.attempt)) } ?? "",
            "logTail": logTail + (detail.log == nil ? PageTemplate.logEmpty.render([:]) : ""),
            "logStep": escape(detail.log?.step ?? ""), "logAttempt": detail.log.map { "\($0.attempt)" } ?? "",
            "logURL": escape(detail.log?.url ?? ""), "logFailures": "\(failures.count)",
            "logLive": "\(detail.log.map { LogFollowStream.isLive(c, logStep: $0.step, attempt: $0.attempt) } ?? false)",
            "logLinks": logLinks(detail.logs, caseId: c.caseId, shown: detail.log), "historyCount": "\(detail.history.count)",
            "history": historyTable(detail.history),
        ])
        return (.ok, layout(title: c.caseId, page: "case", tokenConfigured: tokenConfigured, renderedAt: renderedAt, body: body))
    }

    // MARK: pieces

    static func layout(title: String, page: String, tokenConfigured: Bool, renderedAt: Date, body: String) -> String {
        PageTemplate.layout.render([
            "title": escape(title), "page": page, "tokenConfigured": "\(tokenConfigured)",
            "renderedAtISO": APIResponses.isoDate(renderedAt), "renderedAt": time(renderedAt), "body": body,
            "overviewCurrent": page == "overview" ? PageTemplate.navCurrent.render([:]) : "",
            "casesCurrent": page == "cases" ? PageTemplate.navCurrent.render([:]) : "",
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
            "error": c.error.map { PageTemplate.rowError.render(["error": escape($0), "shortError": escape(String($0.prefix(120)))]) } ?? "",
            "detail": c.detail.map { PageTemplate.rowDetail.render(["detail": escape($0)]) } ?? "",
            "progress": progressBar(c.progress, status: c.status),
            "gpus": c.gpuIds.isEmpty ? "–" : c.gpuIds.map(String.init).joined(separator: ","),
            "created": time(c.createdAt), "duration": duration(end.timeIntervalSince(c.createdAt)),
        ])
    }

    static func badge(_ status: CaseStatus) -> String {
        PageTemplate.badge.render(["status": status.rawValue, "label": label(status)])
    }

    static func progressBar(_ progress: Int, status: CaseStatus) -> String {
        let value = min(100, max(0, progress))
        return PageTemplate.progress.render(["status": status.rawValue, "value": "\(value)"])
    }

    static func gpuCard(_ gpu: GPUResource, history: GPUHistory?, now: Date = Date()) -> String {
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
            "history": gpuHistoryChart(gpu.gpuId, history?.summary(gpuId: gpu.gpuId, points: 120, now: now) ?? [],
                                       window: history?.window ?? 3600, now: now),
        ])
    }

    /// Utilization and memory (as a share of the total) over the last hour, or since the first
    /// reading when that is later (a daemon just started): two polylines over a time axis ending
    /// now, as inline SVG (no chart library; the CSP allows no inline style).
    static func gpuHistoryChart(_ gpuId: Int, _ samples: [GPUHistorySample], window: TimeInterval, now: Date) -> String {
        guard let first = samples.first else { return PageTemplate.gpuHistoryEmpty.render([:]) }
        let width = 240.0, height = 48.0
        let span = max(1, min(window, now.timeIntervalSince(first.at)))
        func points(_ value: (GPUHistorySample) -> Double?) -> String {
            samples.compactMap { sample -> String? in
                guard let v = value(sample) else { return nil }
                let x = max(0, min(width, (1 - now.timeIntervalSince(sample.at) / span) * width))
                let y = height - 1 - max(0, min(100, v)) / 100 * (height - 2)
                return String(format: "%.1f,%.1f", x, y)
            }.joined(separator: " ")
        }
        let memoryPercent = { (s: GPUHistorySample) -> Double? in
            guard let used = s.memoryUsedMB, let total = s.memoryTotalMB, total > 0 else { return nil }
            return used / total * 100
        }
        func range(_ values: [Double]) -> String {
            guard let low = values.min(), let high = values.max() else { return "–" }
            return "\(Int(low.rounded()))–\(Int(high.rounded()))%"
        }
        return PageTemplate.gpuHistory.render([
            "gpuId": "\(gpuId)", "points": "\(samples.count)", "width": "\(Int(width))", "height": "\(Int(height))", "mid": "\(height / 2)",
            "utilPoints": points(\.utilizationPercent), "memPoints": points(memoryPercent),
            "utilRange": range(samples.compactMap(\.utilizationPercent)), "memRange": range(samples.compactMap(memoryPercent)),
            "span": span >= window - 30 ? "last hour" : span >= 120 ? "last \(Int(span / 60)) min" : "last \(Int(span.rounded())) s",
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
        if let drain = gpu.drain {
            return PageTemplate.gpuHolderDrain.render([
                "caseId": escape(drain.caseId), "casePath": StepLogs.pathEscaped(drain.caseId),
                "attempt": drain.attempt.map { " attempt \($0)" } ?? "",
                "reason": drain.reason.map { PageTemplate.gpuDrainReason.render(["reason": escape($0)]) } ?? "",
            ])
        }
        return gpu.reservedBy.map { PageTemplate.gpuHolderCase.render(["caseId": escape($0), "casePath": StepLogs.pathEscaped($0)]) }
            ?? PageTemplate.gpuHolderNone.render([:])
    }

    /// The communicators on a shared PostgreSQL state, alive first, with what each holds.
    static func communicatorsPanel(_ instances: [InstanceRecord], now: Date) -> String {
        let rows = instances.map { instance in
            let holds = instance.leases.isEmpty ? "nothing"
                : "\(instance.leases.count): " + instance.leases.prefix(4).map { "\($0.kind) \($0.caseId)" }.joined(separator: ", ") + (instance.leases.count > 4 ? ", …" : "")
            return PageTemplate.communicatorRow.render([
                "name": escape(instance.name), "state": instance.alive ? "alive" : "gone (no heartbeat)",
                "stateClass": instance.alive ? "alive" : "gone", "host": escape(instance.host), "pid": "\(instance.pid)",
                "heartbeatAt": instance.heartbeatAt.formatted(.iso8601), "age": "\(max(0, Int(now.timeIntervalSince(instance.heartbeatAt))))",
                "holds": escape(holds),
            ])
        }.joined(separator: "\n")
        return PageTemplate.communicators.render(["aliveCount": "\(instances.filter(\.alive).count)", "rows": rows])
    }

    static func queuesTable(_ summary: OverviewSummary) -> String {
        let rows = QueueName.allCases.map { queue in
            PageTemplate.queueRow.render(["queue": queue.rawValue, "depth": "\(summary.queues[queue.rawValue] ?? 0)"])
        }.joined()
        return PageTemplate.queuesTable.render(["rows": rows])
    }

    static func deadLetterList(_ letters: [DeadLetter], tokenConfigured: Bool) -> String {
        guard !letters.isEmpty else { return PageTemplate.deadLettersEmpty.render([:]) }
        return PageTemplate.deadLetters.render(["items": letters.map { letter in
            PageTemplate.deadLetter.render([
                "id": "\(letter.id)", "kind": letter.kind.rawValue, "queue": letter.queue.rawValue,
                "caseId": escape(letter.caseId), "casePath": StepLogs.pathEscaped(letter.caseId),
                "deliveries": "\(letter.deliveries)", "deadAt": time(letter.deadAt), "error": escape(letter.error),
                "replayButton": tokenConfigured ? PageTemplate.deadLetterReplay.render(["id": "\(letter.id)"]) : "",
            ])
        }.joined()])
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
                bars += PageTemplate.throughputBar.render([
                    "kind": kind, "x": "\(x)", "y": String(format: "%.1f", y), "height": String(format: "%.1f", h),
                    "hour": hourLabel(bucket.hour), "count": "\(count)",
                ])
            }
            if index % 6 == 0 {
                bars += PageTemplate.throughputAxis.render(["x": "\(x)", "y": "\(height - 2)", "hour": hourLabel(bucket.hour)])
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
            return PageTemplate.step.render(["state": state, "name": escape(step.name), "type": escape(step.type)])
        }.joined()
    }

    static func timelineTable(_ attempts: [StepAttempt]) -> String {
        guard !attempts.isEmpty else { return PageTemplate.timelineEmpty.render([:]) }
        let longest = max(0.001, attempts.map(\.durationSec).max() ?? 1)
        let rows = attempts.map { a in
            PageTemplate.timelineRow.render([
                "outcome": escape(a.outcome), "step": escape(a.step), "attempt": "\(a.attempt)",
                "phase": a.phase == "waiting_for_gpu" ? "Waiting for GPU" : "Run",
                "started": time(a.startedAt), "ended": a.endedAt.map(time) ?? "–", "duration": duration(a.durationSec),
                "longest": String(format: "%.3f", longest), "seconds": String(format: "%.3f", a.durationSec),
                "outcomeLabel": escape(a.outcome.replacingOccurrences(of: "_", with: " ")),
            ])
        }.joined()
        return PageTemplate.timelineTable.render(["rows": rows])
    }

    /// The RT plan's treatment beams (number, name, delivered or not); nothing when no plan was read.
    static func planBeamsPanel(_ beams: [CasePlanBeam]) -> String {
        guard !beams.isEmpty else { return "" }
        let delivered = beams.filter(\.delivered).count
        let rows = beams.map { beam in
            PageTemplate.planBeamRow.render([
                "number": "\(beam.number)", "delivered": "\(beam.delivered)",
                "name": beam.name.isEmpty ? PageTemplate.planBeamUnnamed.render([:]) : escape(beam.name),
                "deliveryClass": beam.delivered ? "delivered" : "not-delivered", "delivery": beam.delivered ? "delivered" : "not delivered",
            ])
        }.joined()
        return PageTemplate.planBeams.render(["delivered": "\(delivered)", "total": "\(beams.count)", "rows": rows])
    }

    /// The runs of a `for_each: beam` step: beam, status, attempt, progress, GPU, times, error.
    static func beamRunsTable(_ runs: [BeamRun]) -> String {
        let rows = runs.map { run in
            PageTemplate.beamRunRow.render([
                "beam": "\(run.beam)", "status": run.status.rawValue, "statusLabel": escape(run.status.rawValue),
                "attempt": "\(run.attempt)", "progress": "\(run.progress)",
                "gpus": run.gpuIds.isEmpty ? "–" : run.gpuIds.map(String.init).joined(separator: ","),
                "started": run.startedAt.map(time) ?? "", "finished": run.finishedAt.map(time) ?? "", "error": escape(run.error ?? ""),
            ])
        }.joined()
        return PageTemplate.beamRunsTable.render(["rows": rows])
    }

    /// The Slurm jobs of a case: job id, step (and beam), attempt, state, reason, node, GPUs, times.
    static func schedulerJobsTable(_ jobs: [SchedulerJob]) -> String {
        let rows = jobs.map { job in
            PageTemplate.slurmJobRow.render([
                "jobId": escape(job.jobId), "state": escape(job.state), "step": escape(job.step),
                "beam": job.beam.map { " · beam \($0)" } ?? "", "attempt": "\(job.attempt)", "reason": escape(job.reason ?? ""),
                "node": escape(job.node ?? "–"), "gpus": escape(job.gpus ?? "–"),
                "submitted": job.submittedAt.map(time) ?? "", "started": job.startedAt.map(time) ?? "", "ended": job.endedAt.map(time) ?? "",
            ])
        }.joined()
        return PageTemplate.slurmJobsTable.render(["rows": rows])
    }

    /// The case's fractions: a header row per fraction (number, complete or not, anomaly), then
    /// a row per delivery folder (folder, start, beam, follow-up job with its status).
    static func fractionsTable(_ fractions: [FractionRecord]) -> String {
        let rows = fractions.map { fraction in
            PageTemplate.fractionRow.render([
                "number": "\(fraction.number)", "complete": "\(fraction.complete)",
                "stateClass": fraction.complete ? "complete" : "incomplete", "state": fraction.complete ? "complete" : "incomplete",
                "anomaly": fraction.anomaly.map { PageTemplate.fractionAnomaly.render(["anomaly": escape($0)]) } ?? "",
            ]) + fraction.deliveries.map { delivery in
                PageTemplate.deliveryRow.render([
                    "folder": escape(delivery.folder), "start": time(delivery.start), "beam": delivery.beam.map(String.init) ?? "–",
                    "job": followupJob(delivery),
                ])
            }.joined()
        }.joined()
        return PageTemplate.fractionsTable.render(["rows": rows])
    }

    /// A delivery's follow-up job: a link to its case page with its status, "—" while a
    /// follow-up has none yet, or "case's own" for a delivery the case was registered with.
    static func followupJob(_ delivery: DeliveryRecord) -> String {
        if let jobId = delivery.jobId {
            return PageTemplate.deliveryJob.render([
                "casePath": StepLogs.pathEscaped(jobId), "jobId": escape(jobId), "badge": delivery.jobStatus.map(badge) ?? "",
            ])
        }
        return PageTemplate.deliveryJobNone.render(["label": escape(delivery.followup ? "—" : "case's own")])
    }

    static func historyTable(_ history: [CaseHistoryEntry]) -> String {
        let rows = history.map { entry in
            PageTemplate.historyRow.render([
                "at": time(entry.at), "badge": badge(entry.status), "event": escape(entry.event),
                "step": escape(entry.step ?? ""), "attempt": entry.attempt.map { " #\($0)" } ?? "", "message": escape(entry.message),
            ])
        }.joined()
        return PageTemplate.historyTable.render(["rows": rows])
    }

    /// `run_moqui_sim · beam 2 · attempt 1` for a beam's run, `run_interpreter · attempt 1` otherwise.
    static func logName(_ step: String, attempt: Int) -> String {
        LogStepName(step).map { "\($0.step) · beam \($0.beam) · attempt \(attempt)" } ?? "\(step) · attempt \(attempt)"
    }

    /// Each log of the case: a link that shows it in the log panel (the case page with `?log=`),
    /// and its whole text (`raw`).
    static func logLinks(_ logs: [LogExcerpt], caseId: String, shown: LogExcerpt?) -> String {
        guard !logs.isEmpty else { return "" }
        return PageTemplate.logLinks.render(["links": logs.map { log in
            let label = LogStepName(log.step).map { "\($0.step) · beam \($0.beam) #\(log.attempt)" } ?? "\(log.step) #\(log.attempt)"
            return PageTemplate.logLink.render([
                "url": escape(log.url), "step": escape(log.step), "attempt": "\(log.attempt)", "label": escape(label),
                "pageURL": "/cases/\(StepLogs.pathEscaped(caseId))?log=\(StepLogs.pathEscaped(log.step))&amp;attempt=\(log.attempt)#log",
                "current": shown?.step == log.step && shown?.attempt == log.attempt ? " aria-current=\"true\"" : "",
            ])
        }.joined(separator: " · ")])
    }

    /// The list's URL with every filter in it, so a link (or a bookmark) shows the same cases.
    static func listURL(_ filter: CaseListFilter, cursor: String?) -> String {
        var parts: [String] = []
        if let status = filter.status { parts.append("status=\(status.rawValue)") }
        if let query = filter.query { parts.append("q=\(StepLogs.pathEscaped(query))") }
        if let from = filter.receivedFromText { parts.append("received_from=\(StepLogs.pathEscaped(from))") }
        if let to = filter.receivedToText { parts.append("received_to=\(StepLogs.pathEscaped(to))") }
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
