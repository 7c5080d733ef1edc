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
}
