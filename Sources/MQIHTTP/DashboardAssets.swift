/// The dashboard's stylesheet, script and icon, served by the binary (no CDN: the clinic network
/// is closed). The script only uses DOM APIs that treat data as text (`textContent`,
/// `setAttribute`), never `innerHTML` with data.
enum DashboardAssets {
    static let favicon = ##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><path d="M8 1l7 7-7 7-7-7z" fill="#1f5fa8"/></svg>"##

    static let css = #"""
    :root {
      --bg: #f4f6f9; --panel: #ffffff; --ink: #1c2430; --muted: #667085; --line: #dde3ea;
      --accent: #1f5fa8; --ok: #1e7b45; --okbg: #e3f4ea; --warn: #9a6200; --warnbg: #fdf1d8;
      --err: #b42318; --errbg: #fde8e6; --run: #1f5fa8; --runbg: #e4eefa; --idle: #475467; --idlebg: #eef1f5;
    }
    * { box-sizing: border-box; }
    body { margin: 0; font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", Arial, sans-serif; color: var(--ink); background: var(--bg); }
    a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
    code, pre { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; }
    .muted { color: var(--muted); } .small { font-size: 12.5px; } .nowrap { white-space: nowrap; } .num { text-align: right; font-variant-numeric: tabular-nums; }
    .topbar { display: flex; align-items: center; gap: 24px; padding: 10px 24px; background: #12263f; color: #fff; }
    .topbar .muted { color: #9fb3c8; font-weight: normal; margin-left: 6px; }
    .brand { font-weight: 600; font-size: 16px; white-space: nowrap; } .logo { color: #6fb1ff; }
    .mainnav { display: flex; gap: 4px; flex: 1; }
    .mainnav a { color: #d5e2f0; padding: 6px 12px; border-radius: 6px; }
    .mainnav a[aria-current="page"] { background: #24416a; color: #fff; }
    .conn { display: flex; align-items: center; gap: 6px; font-size: 13px; color: #d5e2f0; white-space: nowrap; }
    .conn .dot { width: 9px; height: 9px; border-radius: 50%; background: #98a2b3; }
    body[data-connection="live"] .conn .dot { background: #3ccf7a; }
    body[data-connection="disconnected"] .conn .dot { background: #ff6b5e; }
    .banner { background: var(--err); color: #fff; padding: 10px 24px; font-size: 14px; }
    .toast { position: fixed; right: 20px; bottom: 20px; max-width: 420px; padding: 10px 14px; border-radius: 8px; background: #12263f; color: #fff; box-shadow: 0 4px 16px rgba(0,0,0,.2); z-index: 10; }
    .toast.error { background: var(--err); }
    main { max-width: 1280px; margin: 0 auto; padding: 18px 24px 8px; }
    .panel { background: var(--panel); border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px; margin-bottom: 16px; }
    h1 { font-size: 20px; margin: 0 0 12px; } h2 { font-size: 15px; margin: 0 0 10px; } h3 { font-size: 13.5px; margin: 14px 0 6px; }
    h2 .more { float: right; font-weight: normal; font-size: 13px; }
    .tiles { display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; margin-bottom: 16px; }
    .tile { display: flex; flex-direction: column; padding: 12px 14px; border-radius: 10px; background: var(--panel); border: 1px solid var(--line); border-left: 5px solid var(--idle); color: var(--ink); }
    .tile:hover { text-decoration: none; border-color: var(--accent); }
    .tile-count { font-size: 26px; font-weight: 650; font-variant-numeric: tabular-nums; } .tile-label { color: var(--muted); font-size: 13px; }
    .tile.status-PROCESSING { border-left-color: var(--run); } .tile.status-PENDING_RESOURCE { border-left-color: #d69a00; }
    .tile.status-COMPLETED { border-left-color: var(--ok); } .tile.status-FAILED { border-left-color: var(--err); } .tile.status-CANCELLED { border-left-color: #98a2b3; }
    .grid-2 { display: grid; grid-template-columns: 3fr 2fr; gap: 16px; } .grid-2 > .panel { margin-bottom: 16px; }
    table { width: 100%; border-collapse: collapse; }
    th { text-align: left; font-weight: 600; color: var(--muted); font-size: 12.5px; border-bottom: 1px solid var(--line); padding: 6px 8px; }
    td { border-bottom: 1px solid #eef1f4; padding: 6px 8px; vertical-align: middle; }
    tbody tr:hover { background: #f8fafc; }
    .case-cell a { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12.5px; word-break: break-all; }
    .row-error { color: var(--err); font-size: 12px; max-width: 520px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
    .badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600; white-space: nowrap; background: var(--idlebg); color: var(--idle); }
    .badge.status-PROCESSING { background: var(--runbg); color: var(--run); } .badge.status-PENDING_RESOURCE { background: var(--warnbg); color: var(--warn); }
    .badge.status-COMPLETED { background: var(--okbg); color: var(--ok); } .badge.status-FAILED { background: var(--errbg); color: var(--err); }
    .progress { display: inline-flex; align-items: center; gap: 8px; min-width: 150px; }
    progress { -webkit-appearance: none; appearance: none; width: 110px; height: 8px; border: none; border-radius: 4px; background: #e6eaf0; overflow: hidden; }
    progress::-webkit-progress-bar { background: #e6eaf0; border-radius: 4px; }
    progress::-webkit-progress-value { background: var(--accent); border-radius: 4px; }
    .progress.status-COMPLETED progress::-webkit-progress-value { background: var(--ok); }
    .progress.status-FAILED progress::-webkit-progress-value { background: var(--err); }
    .progress.status-CANCELLED progress::-webkit-progress-value, .progress.status-NEW progress::-webkit-progress-value { background: #98a2b3; }
    .pct { font-variant-numeric: tabular-nums; font-size: 12.5px; color: var(--muted); width: 36px; }
    .gpu-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 12px; }
    .gpu-card { border: 1px solid var(--line); border-radius: 10px; padding: 10px 12px; border-top: 4px solid #98a2b3; }
    .gpu-card.gpu-reserved { border-top-color: var(--run); } .gpu-card.gpu-free { border-top-color: var(--ok); }
    .gpu-card.gpu-busy, .gpu-card.gpu-draining { border-top-color: #d69a00; } .drain-reason { color: var(--err); }
    .banner { padding: 8px 12px; border-radius: 8px; margin: 0 0 12px; } .banner-error { background: #fdecea; border: 1px solid var(--err); } .gpu-card.gpu-missing { border-top-color: var(--err); }
    .gpu-card header { display: flex; justify-content: space-between; align-items: center; } .gpu-id { font-weight: 650; font-size: 15px; }
    .pill { font-size: 11.5px; padding: 1px 8px; border-radius: 999px; background: var(--idlebg); color: var(--idle); font-weight: 600; }
    .pill-reserved { background: var(--runbg); color: var(--run); } .pill-free { background: var(--okbg); color: var(--ok); }
    .pill-busy { background: var(--warnbg); color: var(--warn); } .pill-missing { background: var(--errbg); color: var(--err); }
    .gpu-name { margin: 2px 0 8px; }
    .meter-row { display: grid; grid-template-columns: 74px 1fr 118px; align-items: center; gap: 8px; font-size: 12.5px; margin: 4px 0; }
    .meter-row progress { width: 100%; } .meter-row span:last-child { text-align: right; font-variant-numeric: tabular-nums; }
    .gpu-foot { display: flex; justify-content: space-between; margin-top: 6px; gap: 8px; } .gpu-foot > span:first-child { white-space: nowrap; } .gpu-foot a { font-family: monospace; word-break: break-all; }
    .chart { width: 100%; height: 120px; } .chart .baseline { stroke: #c9d1db; } .chart .axis { font-size: 10px; fill: #667085; }
    .bar-completed { fill: #2e9d5b; } .bar-failed { fill: #d64535; } .bar-cancelled { fill: #98a2b3; }
    .key { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; } .key-completed { background: #2e9d5b; } .key-failed { background: #d64535; margin-left: 4px; }
    .dead-letters { list-style: none; padding: 0; margin: 0; } .dead-letters li { border-top: 1px solid #eef1f4; padding: 6px 0; }
    .dl-error { margin: 4px 0 0; white-space: pre-wrap; color: var(--err); background: #fff7f6; padding: 6px 8px; border-radius: 6px; max-height: 90px; overflow: auto; }
    .filters { display: flex; gap: 12px; align-items: flex-end; flex-wrap: wrap; margin-bottom: 12px; }
    .filters label { display: flex; flex-direction: column; font-size: 12.5px; color: var(--muted); gap: 3px; } .filters .grow { flex: 1; min-width: 220px; }
    input, select { font: inherit; padding: 6px 8px; border: 1px solid #c9d1db; border-radius: 6px; background: #fff; color: var(--ink); }
    button, .button { font: inherit; font-weight: 600; padding: 6px 14px; border-radius: 6px; border: 1px solid var(--accent); background: var(--accent); color: #fff; cursor: pointer; display: inline-block; }
    button.secondary, .button.secondary { background: #fff; color: var(--accent); } .button:hover { text-decoration: none; }
    button.danger { background: #fff; color: var(--err); border-color: var(--err); } button:disabled { opacity: .5; cursor: default; }
    .small-button { padding: 1px 8px; font-size: 12px; }
    .pager { display: flex; gap: 8px; justify-content: flex-end; margin-top: 10px; }
    .crumbs { margin-bottom: 10px; font-size: 13px; color: var(--muted); word-break: break-all; }
    .case-title { display: flex; align-items: center; gap: 12px; flex-wrap: wrap; } .case-title h1 { margin: 0; font-family: monospace; font-size: 18px; word-break: break-all; }
    .case-progress { margin: 10px 0; } .case-progress progress { width: 320px; height: 10px; }
    .facts { display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px 18px; margin: 10px 0; }
    .facts dt { font-size: 12px; color: var(--muted); } .facts dd { margin: 0; word-break: break-all; }
    .error-box { border: 1px solid #f3c1bb; background: #fff7f6; color: var(--err); padding: 8px 10px; border-radius: 8px; margin: 8px 0; }
    .error-box pre { white-space: pre-wrap; margin: 4px 0 0; color: #7a1a12; }
    .actions { display: flex; gap: 10px; margin-top: 10px; }
    .stepper { display: flex; list-style: none; padding: 0; margin: 0 0 16px; gap: 6px; flex-wrap: wrap; counter-reset: step; }
    .step { flex: 1; min-width: 150px; border: 1px solid var(--line); border-radius: 8px; padding: 6px 10px; display: flex; flex-direction: column; background: #fafbfc; }
    .step-name { font-weight: 600; font-size: 13px; } .step-done { border-color: #a6d8b9; background: var(--okbg); }
    .step-active { border-color: var(--run); background: var(--runbg); } .step-waiting { border-color: #e5b94f; background: var(--warnbg); }
    .step-failed { border-color: var(--err); background: var(--errbg); } .step-cancelled { background: var(--idlebg); }
    .timeline meter { width: 140px; height: 10px; } .bar-cell { width: 150px; }
    .plan-beams { width: auto; } .delivery { font-size: 12px; font-weight: 600; } .delivery.delivered { color: var(--ok); } .delivery.not-delivered { color: var(--muted); }
    .outcome { font-size: 12px; font-weight: 600; } .outcome-succeeded .outcome { color: var(--ok); } .outcome-failed .outcome { color: var(--err); }
    .outcome-running .outcome { color: var(--run); } .outcome-retried .outcome { color: var(--warn); } .outcome-waiting .outcome { color: var(--warn); }
    .log { background: #0f1b2a; color: #d7e3f0; padding: 10px 12px; border-radius: 8px; max-height: 420px; overflow: auto; white-space: pre-wrap; word-break: break-all; margin: 0; }
    .log .muted { color: #8aa0b8; }
    .live-dot { display: none; width: 8px; height: 8px; border-radius: 50%; background: #3ccf7a; margin-left: 6px; vertical-align: middle; }
    body[data-connection="live"] #case[data-status="PROCESSING"] ~ .panel .live-dot { display: inline-block; }
    .history td { font-size: 12.5px; } details summary { cursor: pointer; font-weight: 600; }
    .footer { text-align: center; padding: 4px 0 18px; }
    [hidden] { display: none !important; }
    @media (max-width: 1100px) { .tiles { grid-template-columns: repeat(3, 1fr); } .grid-2 { grid-template-columns: 1fr; } .facts { grid-template-columns: repeat(2, 1fr); } }
    """#

    static let javascript = #"""
    "use strict";
    (function () {
      var body = document.body;
      var page = body.dataset.page;
      var LABELS = { NEW: "New", PROCESSING: "Processing", PENDING_RESOURCE: "Waiting for GPU", COMPLETED: "Completed", FAILED: "Failed", CANCELLED: "Cancelled" };
      var FINAL = { COMPLETED: 1, FAILED: 1, CANCELLED: 1 };
      var lastChange = body.dataset.renderedAt;
      var source = null, retryDelay = 1000, everConnected = false, disconnected = false;

      function el(tag, attrs, text) {
        var node = document.createElement(tag);
        if (attrs) for (var k in attrs) node.setAttribute(k, attrs[k]);
        if (text !== undefined && text !== null) node.textContent = String(text);
        return node;
      }
      function pad(n) { return (n < 10 ? "0" : "") + n; }
      function fmtTime(iso) {
        if (!iso) return "–";
        var d = new Date(iso);
        return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
      }
      function fmtDuration(s) {
        s = Math.max(0, s);
        if (s < 10) return s.toFixed(1) + " s";
        if (s < 60) return Math.floor(s) + " s";
        if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
        return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
      }
      function caseURL(id) { return "/cases/" + encodeURIComponent(id); }
      function field(root, name) { return root.querySelector('[data-field="' + name + '"]'); }
      function badge(status) { return el("span", { "class": "badge status-" + status, "data-role": "badge" }, LABELS[status] || status); }
      function progressBar(value, status) {
        value = Math.max(0, Math.min(100, value | 0));
        var wrap = el("span", { "class": "progress status-" + status });
        var bar = el("progress", { max: "100", value: String(value) }, value + "%");
        wrap.appendChild(bar); wrap.appendChild(el("span", { "class": "pct" }, value + "%"));
        return wrap;
      }
      function replace(cell, node) { if (!cell) return; cell.textContent = ""; cell.appendChild(node); }
      function countUpdate() { body.dataset.liveUpdates = String((parseInt(body.dataset.liveUpdates, 10) || 0) + 1); }
      function toast(text, isError) {
        var t = document.getElementById("toast");
        t.textContent = text; t.className = "toast" + (isError ? " error" : ""); t.hidden = false;
        clearTimeout(toast.timer); toast.timer = setTimeout(function () { t.hidden = true; }, 6000);
      }

      // ---- case rows (overview "latest cases" and the case list) ----
      function rowFor(id) {
        var rows = document.querySelectorAll("tr[data-case-id]");
        for (var i = 0; i < rows.length; i++) if (rows[i].dataset.caseId === id) return rows[i];
        return null;
      }
      function newRow(c) {
        var tr = el("tr", { "data-case-id": c.case_id, "data-status": c.status, "data-initial-status": "(new)", "data-created-at": c.created_at });
        var first = el("td", { "class": "case-cell" });
        first.appendChild(el("a", { href: caseURL(c.case_id) }, c.case_id));
        tr.appendChild(first);
        ["status", "step", "progress", "gpus", "created", "duration"].forEach(function (f) { tr.appendChild(el("td", { "data-field": f })); });
        return tr;
      }
      function fillRow(tr, c) {
        tr.dataset.status = c.status;
        replace(field(tr, "status"), badge(c.status));
        field(tr, "step").textContent = c.workflow_step || "–";
        replace(field(tr, "progress"), progressBar(c.progress, c.status));
        field(tr, "gpus").textContent = c.gpu_ids.length ? c.gpu_ids.join(",") : "–";
        field(tr, "created").textContent = fmtTime(c.created_at);
        var end = c.finished_at ? new Date(c.finished_at) : new Date(c.updated_at);
        field(tr, "duration").textContent = fmtDuration((end - new Date(c.created_at)) / 1000);
        var cell = tr.querySelector(".case-cell"), err = cell.querySelector(".row-error");
        if (c.error) {
          if (!err) { err = el("div", { "class": "row-error" }); cell.appendChild(err); }
          err.textContent = c.error.slice(0, 120); err.setAttribute("title", c.error);
        } else if (err) { err.remove(); }
      }
      function matchesList(c) {
        var list = document.getElementById("case-list");
        if (!list || list.dataset.firstPage !== "true") return false;
        if (list.dataset.statusFilter && list.dataset.statusFilter !== c.status) return false;
        var q = (list.dataset.query || "").toLowerCase();
        return !q || c.case_id.toLowerCase().indexOf(q) >= 0;
      }
      function applyCaseRow(c) {
        var tr = rowFor(c.case_id);
        var table = document.getElementById(page === "overview" ? "recent-cases" : "cases");
        if (!tr && table && (page === "overview" || matchesList(c))) {
          tr = newRow(c);
          var tbody = table.tBodies[0];
          tbody.insertBefore(tr, tbody.firstChild);
          while (page === "overview" && tbody.rows.length > 15) tbody.deleteRow(tbody.rows.length - 1);
          var empty = table.parentNode.querySelector(".empty"); if (empty) empty.hidden = true;
        }
        if (tr) fillRow(tr, c);
        return !!tr;
      }

      // ---- case detail ----
      var detailBusy = false, detailAgain = false;
      function applyCaseHead(c) {
        var head = document.getElementById("case");
        if (!head || head.dataset.caseId !== c.case_id) return false;
        head.dataset.status = c.status;
        var oldBadge = head.querySelector(".case-title [data-role=badge]");
        if (oldBadge) oldBadge.replaceWith(badge(c.status));
        replace(head.querySelector(".case-progress"), progressBar(c.progress, c.status));
        field(head, "step").textContent = c.workflow_step || "–";
        field(head, "attempt").textContent = "(attempt " + c.attempt + ")";
        field(head, "gpus").textContent = c.gpu_ids.length ? c.gpu_ids.join(", ") : "–";
        field(head, "started").textContent = fmtTime(c.started_at);
        field(head, "finished").textContent = fmtTime(c.finished_at);
        var box = document.getElementById("case-error");
        box.hidden = !c.error;
        if (c.error) { box.textContent = ""; if (c.failure_class) box.appendChild(el("strong", null, c.failure_class + " failure: ")); box.appendChild(el("pre", null, c.error)); }
        var cancel = head.querySelector('[data-action="cancel"]'), retry = head.querySelector('[data-action="retry"]');
        if (cancel) cancel.hidden = !!FINAL[c.status];
        if (retry) retry.hidden = !(c.status === "FAILED" || c.status === "CANCELLED");
        applyBeamRuns(c.beams || []);
        return true;
      }
      function applyBeamRuns(runs) {
        var panel = document.getElementById("beam-runs-panel"), box = document.getElementById("beam-runs");
        if (!panel || !box) return;
        panel.hidden = !runs.length;
        var table = el("table", { "class": "beam-runs" }), head = el("tr"), body = el("tbody");
        ["Beam", "Status", "Attempt", "Progress", "GPU", "Started", "Finished", "Error"].forEach(function (h) { head.appendChild(el("th", null, h)); });
        var thead = el("thead"); thead.appendChild(head); table.appendChild(thead);
        runs.forEach(function (r) {
          var tr = el("tr", { "data-beam": r.number, "data-beam-status": r.status });
          [r.number, r.status, r.attempt, r.progress + "%", r.gpu_ids.length ? r.gpu_ids.join(",") : "–", fmtTime(r.started_at), fmtTime(r.finished_at), r.error || ""]
            .forEach(function (v) { tr.appendChild(el("td", null, String(v))); });
          body.appendChild(tr);
        });
        table.appendChild(body);
        box.textContent = ""; box.appendChild(table);
      }
      function renderTimeline(attempts) {
        var box = document.getElementById("timeline");
        box.textContent = "";
        if (!attempts.length) { box.appendChild(el("p", { "class": "muted" }, "No step has started yet.")); return; }
        var longest = Math.max.apply(null, attempts.map(function (a) { return a.duration_sec; }).concat([0.001]));
        var table = el("table", { "class": "timeline" }), head = el("tr");
        ["Step", "Attempt", "Phase", "Started", "Ended", "Duration", "", "Outcome"].forEach(function (h, i) { head.appendChild(el("th", (i === 1 || i === 5) ? { "class": "num" } : null, h)); });
        table.appendChild(el("thead")).appendChild(head);
        var tbody = table.appendChild(el("tbody"));
        attempts.forEach(function (a) {
          var tr = el("tr", { "class": "outcome-" + a.outcome });
          tr.appendChild(el("td", null, a.step));
          tr.appendChild(el("td", { "class": "num" }, a.attempt));
          tr.appendChild(el("td", null, a.phase === "waiting_for_gpu" ? "Waiting for GPU" : "Run"));
          tr.appendChild(el("td", null, fmtTime(a.started_at)));
          tr.appendChild(el("td", null, a.ended_at ? fmtTime(a.ended_at) : "–"));
          tr.appendChild(el("td", { "class": "num" }, fmtDuration(a.duration_sec)));
          var bar = el("td", { "class": "bar-cell" });
          bar.appendChild(el("meter", { min: "0", max: longest.toFixed(3), value: a.duration_sec.toFixed(3) }));
          tr.appendChild(bar);
          var out = el("td"); out.appendChild(el("span", { "class": "outcome" }, a.outcome.replace(/_/g, " "))); tr.appendChild(out);
          tbody.appendChild(tr);
        });
        box.appendChild(table);
      }
      function renderStepper(detail) {
        var list = document.getElementById("stepper"), c = detail["case"];
        list.textContent = "";
        var current = -1;
        detail.steps.forEach(function (s, i) { if (s.name === c.workflow_step) current = i; });
        detail.steps.forEach(function (s, i) {
          var state = "todo";
          if (c.status === "COMPLETED") state = "done";
          else if (current >= 0 && i < current) state = "done";
          else if (i === current) state = { PROCESSING: "active", PENDING_RESOURCE: "waiting", FAILED: "failed", CANCELLED: "cancelled" }[c.status] || "todo";
          var li = el("li", { "class": "step step-" + state });
          li.appendChild(el("span", { "class": "step-name" }, s.name));
          li.appendChild(el("span", { "class": "step-type muted small" }, s.type));
          list.appendChild(li);
        });
      }
      function renderLog(detail) {
        var pre = document.getElementById("log-tail"), name = document.getElementById("log-name");
        var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        if (detail.log) {
          name.textContent = detail.log.step + " · attempt " + detail.log.attempt;
          pre.textContent = detail.log.lines.join("\n");
        }
        if (atBottom) pre.scrollTop = pre.scrollHeight;
        var links = document.getElementById("log-links");
        links.textContent = "";
        if (detail.logs.length) {
          links.appendChild(document.createTextNode("Whole logs: "));
          detail.logs.forEach(function (l, i) {
            if (i) links.appendChild(document.createTextNode(" · "));
            links.appendChild(el("a", { href: l.url }, l.step + " #" + l.attempt));
          });
        }
      }
      function refreshDetail() {
        var head = document.getElementById("case");
        if (!head) return;
        if (detailBusy) { detailAgain = true; return; }
        detailBusy = true;
        fetch("/api/cases/" + encodeURIComponent(head.dataset.caseId), { cache: "no-store" })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (d) { if (d) { applyCaseHead(d["case"]); renderTimeline(d.timeline); renderStepper(d); renderLog(d); } })
          .catch(function () {})
          .then(function () { detailBusy = false; if (detailAgain) { detailAgain = false; refreshDetail(); } });
      }

      // ---- overview: counts, throughput, queues, GPUs ----
      function applyHosts(hosts) {
        var box = document.getElementById("hpc-banner");
        if (!box || !hosts) return;
        box.textContent = "";
        hosts.filter(function (h) { return !h.reachable; }).forEach(function (h) {
          box.appendChild(el("p", { "class": "banner banner-error", "data-host": h.host },
            "HPC host " + h.host + " unreachable since " + h.since + ": " + (h.reason || "no answer") + ". Work that needs it is paused; running steps keep running there."));
        });
      }
      function applySummary(s) {
        applyHosts(s.hosts);
        Object.keys(s.counts).forEach(function (status) {
          var tile = document.querySelector('[data-count-status="' + status + '"] .tile-count');
          if (tile) tile.textContent = s.counts[status];
        });
        Object.keys(s.queues).forEach(function (q) {
          var row = document.querySelector('tr[data-queue="' + q + '"] [data-field="depth"]');
          if (row) row.textContent = s.queues[q];
        });
        var dl = document.getElementById("dead-letter-count");
        if (dl && dl.dataset.deadLetters !== String(s.dead_letters)) {
          dl.dataset.deadLetters = String(s.dead_letters); dl.textContent = "(" + s.dead_letters + ")";
          refreshDeadLetters();
        }
        renderThroughput(s.throughput);
      }
      function svg(tag, attrs, text) {
        var node = document.createElementNS("http://www.w3.org/2000/svg", tag);
        for (var k in attrs) node.setAttribute(k, attrs[k]);
        if (text !== undefined) node.textContent = text;
        return node;
      }
      function renderThroughput(buckets) {
        var box = document.getElementById("throughput");
        if (!box) return;
        buckets = buckets.slice(-24);
        var max = Math.max.apply(null, buckets.map(function (b) { return b.completed + b.failed + b.cancelled; }).concat([1]));
        var W = 480, H = 110, chart = svg("svg", { viewBox: "0 0 " + W + " " + H, "class": "chart", role: "img", "aria-label": "cases finished per hour" });
        chart.appendChild(svg("line", { x1: 0, x2: W, y1: H - 16, y2: H - 16, "class": "baseline" }));
        var completed = 0, failed = 0;
        buckets.forEach(function (b, i) {
          var x = i * 20 + 3, y = H - 16, hour = new Date(b.hour);
          completed += b.completed; failed += b.failed;
          [["completed", b.completed], ["failed", b.failed], ["cancelled", b.cancelled]].forEach(function (p) {
            if (!p[1]) return;
            var h = Math.max(2, p[1] / max * (H - 30)); y -= h;
            var rect = svg("rect", { "class": "bar-" + p[0], x: x, y: y.toFixed(1), width: 14, height: h.toFixed(1) });
            rect.appendChild(svg("title", {}, pad(hour.getHours()) + ":00: " + p[1] + " " + p[0]));
            chart.appendChild(rect);
          });
          if (i % 6 === 0) chart.appendChild(svg("text", { x: x, y: H - 2, "class": "axis" }, pad(hour.getHours()) + ":00"));
        });
        box.textContent = "";
        box.appendChild(chart);
        var p = el("p", { "class": "small" });
        p.appendChild(el("span", { "class": "key key-completed" })); p.appendChild(el("strong", { "data-field": "completed-24h" }, completed));
        p.appendChild(document.createTextNode(" completed · ")); p.appendChild(el("span", { "class": "key key-failed" }));
        p.appendChild(el("strong", { "data-field": "failed-24h" }, failed));
        p.appendChild(document.createTextNode(" failed in the last 24 h (max " + max + "/h)"));
        box.appendChild(p);
      }
      function refreshDeadLetters() {
        var box = document.getElementById("dead-letters");
        if (!box) return;
        fetch("/api/queues", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (q) {
          box.textContent = "";
          if (!q.dead_letters.length) { box.appendChild(el("p", { "class": "muted small" }, "None: every message was delivered.")); return; }
          var ul = el("ul", { "class": "dead-letters" });
          q.dead_letters.slice(0, 20).forEach(function (d) {
            var li = el("li", { "data-dead-letter-id": d.id }), line = el("div");
            line.appendChild(el("strong", null, "#" + d.id + " ")); line.appendChild(el("code", null, d.kind));
            line.appendChild(document.createTextNode(" → ")); line.appendChild(el("code", null, d.queue));
            line.appendChild(document.createTextNode(" for ")); line.appendChild(el("a", { href: caseURL(d.case_id) }, d.case_id));
            line.appendChild(el("span", { "class": "muted small" }, " after " + d.deliveries + " deliveries, " + fmtTime(d.dead_at)));
            if (body.dataset.tokenConfigured === "true") {
              line.appendChild(document.createTextNode(" "));
              line.appendChild(el("button", { type: "button", "class": "small-button", "data-action": "replay", "data-dead-letter-id": d.id }, "Replay"));
            }
            li.appendChild(line); li.appendChild(el("pre", { "class": "dl-error" }, d.error)); ul.appendChild(li);
          });
          box.appendChild(ul);
        }).catch(function () {});
      }
      function applyGPU(g) {
        var card = document.querySelector('.gpu-card[data-gpu-id="' + g.gpu_id + '"]');
        if (!card) return false;
        var state = g.status === "draining" ? ["draining", "Draining"] : g.health === "missing" ? ["missing", "Not detected"] : g.status === "reserved" ? ["reserved", "In use"]
          : g.health === "busy" ? ["busy", "Busy (other process)"] : ["free", "Free"];
        card.className = "gpu-card gpu-" + state[0]; card.dataset.gpuState = state[0];
        var pill = field(card, "state"); pill.className = "pill pill-" + state[0]; pill.textContent = state[1];
        field(card, "name").textContent = g.name || "no telemetry yet";
        var util = g.utilization_percent == null ? null : Math.round(g.utilization_percent);
        field(card, "util-bar").value = util || 0; field(card, "util").textContent = util == null ? "–" : util + "%";
        var memPct = (g.memory_used_mb != null && g.memory_total_mb) ? Math.round(g.memory_used_mb / g.memory_total_mb * 100) : 0;
        field(card, "mem-bar").value = memPct;
        field(card, "mem").textContent = g.memory_used_mb == null ? "–" : Math.floor(g.memory_used_mb) + " / " + (g.memory_total_mb == null ? "?" : Math.floor(g.memory_total_mb)) + " MiB";
        field(card, "temp").textContent = g.temperature_c == null ? "" : Math.floor(g.temperature_c) + " °C";
        var holder = field(card, "holder"); holder.textContent = "";
        if (g.drain) {
          holder.appendChild(document.createTextNode("Waits for "));
          holder.appendChild(el("a", { href: caseURL(g.drain.case_id) }, g.drain.case_id));
          holder.appendChild(document.createTextNode((g.drain.attempt ? " attempt " + g.drain.attempt : "") + " to stop"));
          if (g.drain.reason) holder.appendChild(el("span", { "class": "drain-reason", "data-field": "drain-reason" }, " " + g.drain.reason));
        }
        else if (g.reserved_by) { holder.appendChild(document.createTextNode("Case ")); holder.appendChild(el("a", { href: caseURL(g.reserved_by) }, g.reserved_by)); }
        else holder.appendChild(el("span", { "class": "muted" }, "no case"));
        return true;
      }

      // ---- catching up after a reconnect or a resync ----
      function resync() {
        fetch("/api/summary", { cache: "no-store" }).then(function (r) { return r.json(); }).then(applySummary).catch(function () {});
        if (page === "overview") {
          fetch("/api/gpus", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (d) { d.gpus.forEach(applyGPU); }).catch(function () {});
          fetch("/api/cases?limit=15", { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (d) { d.cases.slice().reverse().forEach(applyCaseRow); }).catch(function () {});
        } else if (page === "cases") {
          var list = document.getElementById("case-list"), q = "limit=50";
          if (list.dataset.statusFilter) q += "&status=" + encodeURIComponent(list.dataset.statusFilter);
          if (list.dataset.query) q += "&q=" + encodeURIComponent(list.dataset.query);
          if (list.dataset.firstPage === "true") fetch("/api/cases?" + q, { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (d) { d.cases.slice().reverse().forEach(applyCaseRow); }).catch(function () {});
        } else if (page === "case") {
          refreshDetail();
        }
      }

      // ---- the live connection ----
      function setConnection(state) {
        body.dataset.connection = state;
        document.getElementById("conn-text").textContent = state === "live" ? "Live" : state === "disconnected" ? "Disconnected" : "Connecting…";
        document.getElementById("conn-banner").hidden = state !== "disconnected";
      }
      function connect() {
        if (source) source.close();
        source = new EventSource("/api/events?since=" + encodeURIComponent(lastChange));
        source.addEventListener("hello", function () {
          var recovered = disconnected;
          retryDelay = 1000; disconnected = false; everConnected = true;
          setConnection("live");
          if (window.console) console.info("mqi-dashboard: live" + (recovered ? " again (recovered)" : ""));
          if (recovered) resync();
        });
        source.addEventListener("case", function (e) {
          var c = JSON.parse(e.data);
          if (c.updated_at > lastChange) lastChange = c.updated_at;
          var applied = applyCaseRow(c);
          if (page === "case" && applyCaseHead(c)) { applied = true; refreshDetail(); }
          if (applied) countUpdate();
        });
        source.addEventListener("gpu", function (e) { if (applyGPU(JSON.parse(e.data))) countUpdate(); });
        source.addEventListener("summary", function (e) { applySummary(JSON.parse(e.data)); });
        source.addEventListener("resync", resync);
        source.onerror = function () {
          source.close(); source = null;
          if (!disconnected && window.console) console.warn("mqi-dashboard: disconnected from the daemon");
          disconnected = true;
          setConnection("disconnected");
          setTimeout(connect, retryDelay);
          retryDelay = Math.min(retryDelay * 2, 10000);
        };
      }

      // ---- retry, cancel, replay ----
      function token() {
        var t = sessionStorage.getItem("mqi-token");
        if (!t) {
          t = window.prompt("API token (the contents of the file in http.token_file). It is kept only for this browser tab.");
          if (t) { t = t.trim(); sessionStorage.setItem("mqi-token", t); }
        }
        return t;
      }
      function act(url, button, what) {
        var t = token();
        if (!t) return;
        button.disabled = true;
        fetch(url, { method: "POST", headers: { Authorization: "Bearer " + t } })
          .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, status: r.status, body: j }; }); })
          .then(function (res) {
            if (res.ok) { toast(what + ": " + (res.body.note || "done")); resync(); return; }
            if (res.status === 401) sessionStorage.removeItem("mqi-token");
            toast(what + " refused (" + res.status + "): " + (res.body.detail || res.body.error), true);
          })
          .catch(function (e) { toast(what + " failed: " + e, true); })
          .then(function () { button.disabled = false; });
      }
      document.addEventListener("click", function (e) {
        var b = e.target.closest ? e.target.closest("button[data-action]") : null;
        if (!b) return;
        var action = b.dataset.action;
        if (action === "cancel") {
          if (window.confirm("Cancel case " + b.dataset.caseId + "? A running step is stopped and its GPU freed.")) act("/api/cases/" + encodeURIComponent(b.dataset.caseId) + "/cancel", b, "Cancel");
        } else if (action === "retry") {
          act("/api/cases/" + encodeURIComponent(b.dataset.caseId) + "/retry", b, "Retry");
        } else if (action === "replay") {
          act("/api/dead-letters/" + encodeURIComponent(b.dataset.deadLetterId) + "/replay", b, "Replay");
        }
      });

      // Durations of running cases tick without a server round trip.
      setInterval(function () {
        var rows = document.querySelectorAll('tr[data-case-id]');
        for (var i = 0; i < rows.length; i++) {
          var r = rows[i];
          if (FINAL[r.dataset.status] || !r.dataset.createdAt) continue;
          var cell = field(r, "duration");
          if (cell) cell.textContent = fmtDuration((Date.now() - new Date(r.dataset.createdAt)) / 1000);
        }
      }, 1000);
      var pre = document.getElementById("log-tail");
      if (pre) pre.scrollTop = pre.scrollHeight;
      if (window.EventSource) connect(); else setConnection("disconnected");
    })();
    """#
}
