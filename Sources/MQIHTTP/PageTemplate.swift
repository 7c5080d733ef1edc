/// An HTML template from `Resources/templates/` (embedded in the code at build time) whose
/// `{{name}}` placeholders are replaced by values the caller has already escaped. One pass: a
/// value that contains `{{…}}` is not expanded again.
struct PageTemplate: Sendable {
    let text: String

    /// The file's text without its final newline (the pages are joined without it).
    init(_ bytes: [UInt8]) {
        var text = String(decoding: bytes, as: UTF8.self)
        if text.hasSuffix("\n") { text.removeLast() }
        self.text = text
    }

    /// The text with each `{{name}}` replaced by `values[name]`; a missing name is a bug in the page.
    func render(_ values: [String: String]) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count * 2)
        var rest = text[...]
        while let open = rest.range(of: "{{") {
            out += rest[..<open.lowerBound]
            guard let close = rest[open.upperBound...].range(of: "}}") else { break }
            let name = String(rest[open.upperBound..<close.lowerBound])
            assert(values[name] != nil, "no value for {{\(name)}}")
            out += values[name] ?? ""
            rest = rest[close.upperBound...]
        }
        out += rest
        return out
    }

    static let layout = PageTemplate(PackageResources.layout_html)
    static let error = PageTemplate(PackageResources.error_html)
    static let overview = PageTemplate(PackageResources.overview_html)
    static let communicators = PageTemplate(PackageResources.communicators_html)
    static let resultsDownload = PageTemplate(PackageResources.results_download_html)
    static let communicatorRow = PageTemplate(PackageResources.communicator_row_html)
    static let statusTile = PageTemplate(PackageResources.status_tile_html)
    static let cases = PageTemplate(PackageResources.cases_html)
    static let caseDetail = PageTemplate(PackageResources.case_html)
    static let caseActions = PageTemplate(PackageResources.case_actions_html)
    static let caseActionsDisabled = PageTemplate(PackageResources.case_actions_disabled_html)
    static let caseTable = PageTemplate(PackageResources.case_table_html)
    static let caseRow = PageTemplate(PackageResources.case_row_html)
    static let gpuCard = PageTemplate(PackageResources.gpu_card_html)
    static let hostBanner = PageTemplate(PackageResources.host_banner_html)
    static let deadLetter = PageTemplate(PackageResources.dead_letter_html)
    static let throughput = PageTemplate(PackageResources.throughput_html)
    static let planBeams = PageTemplate(PackageResources.plan_beams_html)

    // Snippets inside the pages and partials above.
    static let navCurrent = PageTemplate(PackageResources.nav_current_html)
    static let badge = PageTemplate(PackageResources.badge_html)
    static let progress = PageTemplate(PackageResources.progress_html)
    static let statusOptionAll = PageTemplate(PackageResources.status_option_all_html)
    static let statusOption = PageTemplate(PackageResources.status_option_html)
    static let pagerNewest = PageTemplate(PackageResources.pager_newest_html)
    static let pagerOlder = PageTemplate(PackageResources.pager_older_html)
    static let clearFilters = PageTemplate(PackageResources.clear_filters_html)
    static let rowError = PageTemplate(PackageResources.row_error_html)
    static let rowDetail = PageTemplate(PackageResources.row_detail_html)
    static let failureClass = PageTemplate(PackageResources.failure_class_html)
    static let logEmpty = PageTemplate(PackageResources.log_empty_html)
    static let logLinks = PageTemplate(PackageResources.log_links_html)
    static let logLink = PageTemplate(PackageResources.log_link_html)
    static let logLineFailure = PageTemplate(PackageResources.log_line_failure_html)
    static let gpuHistory = PageTemplate(PackageResources.gpu_history_html)
    static let gpuHistoryEmpty = PageTemplate(PackageResources.gpu_history_empty_html)
    static let gpusEmpty = PageTemplate(PackageResources.gpus_empty_html)
    static let gpuHolderCase = PageTemplate(PackageResources.gpu_holder_case_html)
    static let gpuHolderDrain = PageTemplate(PackageResources.gpu_holder_drain_html)
    static let gpuDrainReason = PageTemplate(PackageResources.gpu_drain_reason_html)
    static let gpuHolderNone = PageTemplate(PackageResources.gpu_holder_none_html)
    static let deadLetters = PageTemplate(PackageResources.dead_letters_html)
    static let deadLettersEmpty = PageTemplate(PackageResources.dead_letters_empty_html)
    static let deadLetterReplay = PageTemplate(PackageResources.dead_letter_replay_html)
    static let throughputBar = PageTemplate(PackageResources.throughput_bar_html)
    static let throughputAxis = PageTemplate(PackageResources.throughput_axis_html)
    static let step = PageTemplate(PackageResources.step_html)
    static let timelineEmpty = PageTemplate(PackageResources.timeline_empty_html)
    static let planBeamRow = PageTemplate(PackageResources.plan_beam_row_html)
    static let planBeamUnnamed = PageTemplate(PackageResources.plan_beam_unnamed_html)

    // Tables: the table, and one row.
    static let queuesTable = PageTemplate(PackageResources.queues_table_html)
    static let queueRow = PageTemplate(PackageResources.queue_row_html)
    static let timelineTable = PageTemplate(PackageResources.timeline_table_html)
    static let timelineRow = PageTemplate(PackageResources.timeline_row_html)
    static let beamRunsTable = PageTemplate(PackageResources.beam_runs_table_html)
    static let beamRunRow = PageTemplate(PackageResources.beam_run_row_html)
    static let slurmJobsTable = PageTemplate(PackageResources.slurm_jobs_table_html)
    static let slurmJobRow = PageTemplate(PackageResources.slurm_job_row_html)
    static let historyTable = PageTemplate(PackageResources.history_table_html)
    static let historyRow = PageTemplate(PackageResources.history_row_html)
    static let fractionsTable = PageTemplate(PackageResources.fractions_table_html)
    static let fractionRow = PageTemplate(PackageResources.fraction_row_html)
    static let fractionAnomaly = PageTemplate(PackageResources.fraction_anomaly_html)
    static let deliveryRow = PageTemplate(PackageResources.delivery_row_html)
    static let deliveryJob = PageTemplate(PackageResources.delivery_job_html)
    static let deliveryJobNone = PageTemplate(PackageResources.delivery_job_none_html)
}
