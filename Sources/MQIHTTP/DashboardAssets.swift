/// The dashboard's stylesheet, script and icon, served by the binary (no CDN: the clinic network
/// is closed). The texts are the files in `Resources/` (`dashboard.css`, `dashboard.js`,
/// `favicon.svg`), embedded in the code at build time (`.embedInCode` in Package.swift), so the
/// binary needs no resource bundle beside it. The script only uses DOM APIs that treat data as
/// text (`textContent`, `setAttribute`), never `innerHTML` with data.
enum DashboardAssets {
    static let favicon = String(decoding: PackageResources.favicon_svg, as: UTF8.self)
    static let css = String(decoding: PackageResources.dashboard_css, as: UTF8.self)
    static let javascript = String(decoding: PackageResources.dashboard_js, as: UTF8.self)
}
