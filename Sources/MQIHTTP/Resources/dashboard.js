"use strict";
(function () {
  var body = document.body;
  var page = body.dataset.page;
  var LABELS = { NEW: "New", PROCESSING: "Processing", PENDING_RESOURCE: "Waiting for GPU", COMPLETED: "Completed", FAILED: "Failed", CANCELLED: "Cancelled" };
  var FINAL = { COMPLETED: 1, FAILED: 1, CANCELLED: 1 };
  var lastChange = body.dataset.renderedAt;
  var source = null, retryDelay = 1000, disconnected = false;

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
    var stepCell = field(tr, "step");
    stepCell.textContent = c.workflow_step || "–";
    if (c.detail) stepCell.appendChild(el("div", { "class": "row-detail", "data-field": "detail", title: c.detail }, c.detail));
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
  // caseEvents counts the case's events: a detail fetched while one came may be older than it.
  var detailBusy = false, detailAgain = false, caseEvents = 0;
  function applyCaseHead(c) {
    var head = document.getElementById("case");
    if (!head || head.dataset.caseId !== c.case_id) return false;
    if (head.dataset.status !== c.status && window.console) console.info("mqi-dashboard: case " + c.status);
    head.dataset.status = c.status;
    var oldBadge = head.querySelector(".case-title [data-role=badge]");
    if (oldBadge) oldBadge.replaceWith(badge(c.status));
    replace(head.querySelector(".case-progress"), progressBar(c.progress, c.status));
    var detail = document.getElementById("case-detail");
    if (detail) { detail.hidden = !c.detail; detail.textContent = c.detail || ""; }
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
    var results = document.getElementById("results-download");
    if (results) results.hidden = c.status !== "COMPLETED";
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
  function renderJobs(jobs) {
    var panel = document.getElementById("slurm-jobs-panel"), box = document.getElementById("slurm-jobs");
    if (!panel || !box) return;
    panel.hidden = !jobs.length;
    var table = el("table", { "class": "slurm-jobs" }), head = el("tr"), tbody = el("tbody");
    ["Job", "Step", "Attempt", "State", "Reason", "Node", "GPU", "Submitted", "Started", "Ended"].forEach(function (h, i) {
      head.appendChild(el("th", (i === 0 || i === 2) ? { "class": "num" } : null, h));
    });
    var thead = el("thead"); thead.appendChild(head); table.appendChild(thead);
    jobs.forEach(function (j) {
      var tr = el("tr", { "data-job-id": j.job_id, "data-job-state": j.state });
      tr.appendChild(el("td", { "class": "num" }, j.job_id));
      tr.appendChild(el("td", null, j.step + (j.beam === null || j.beam === undefined ? "" : " · beam " + j.beam)));
      tr.appendChild(el("td", { "class": "num" }, j.attempt));
      var state = el("td"); state.appendChild(el("span", { "class": "job-state job-" + j.state }, j.state)); tr.appendChild(state);
      tr.appendChild(el("td", null, j.reason || ""));
      tr.appendChild(el("td", null, j.node || "–"));
      tr.appendChild(el("td", null, j.gpus || "–"));
      [j.submitted_at, j.started_at, j.ended_at].forEach(function (t) { tr.appendChild(el("td", { "class": "nowrap" }, t ? fmtTime(t) : "")); });
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
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
  // ---- the log panel: the shown attempt's log, followed live (its own event stream) while it runs ----
  var MAX_LOG_LINES = 5000;
  var logView = { key: null, source: null, pinned: false };
  function logKey(step, attempt) { return step + "#" + attempt; }
  function setLogLive(live) {
    var pre = document.getElementById("log-tail"), dot = document.getElementById("log-live");
    pre.dataset.live = live ? "true" : "false";
    if (dot) dot.dataset.live = pre.dataset.live;
  }
  function appendLogLines(pre, lines, failures) {
    var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    var failed = {};
    failures.forEach(function (i) { failed[i] = true; });
    var count = 0;
    lines.forEach(function (line, i) {
      if (pre.lastChild) pre.appendChild(document.createTextNode("\n"));
      var node = failed[i] ? el("mark", { "class": "log-fail", "data-failure": "true", "data-line": "1", title: "matches a failure pattern of this step" }, line)
        : el("span", { "data-line": "1" }, line);
      pre.appendChild(node); count++;
    });
    // Bounded: the oldest lines go (with the newline after each).
    var shown = pre.querySelectorAll("[data-line]");
    for (var k = 0; k < shown.length - MAX_LOG_LINES; k++) {
      var next = shown[k].nextSibling;
      shown[k].remove();
      if (next && next.nodeType === 3) next.remove();
    }
    pre.dataset.streamLines = String((parseInt(pre.dataset.streamLines, 10) || 0) + count);
    pre.dataset.failureLines = String(pre.querySelectorAll("[data-failure]").length);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }
  function showLog(step, attempt, url) {
    var pre = document.getElementById("log-tail");
    if (!pre) return;
    if (logView.source) { logView.source.close(); logView.source = null; }
    logView.key = logKey(step, attempt);
    pre.dataset.logStep = step; pre.dataset.logAttempt = String(attempt); pre.dataset.logUrl = url;
    var beam = /^(.*)\.([0-9]+)$/.exec(step);
    document.getElementById("log-name").textContent = (beam ? beam[1] + " · beam " + beam[2] : step) + " · attempt " + attempt;
    var links = document.querySelectorAll("#log-links a[data-log-step]");
    for (var i = 0; i < links.length; i++) {
      if (links[i].dataset.logStep === step && links[i].dataset.logAttempt === String(attempt)) links[i].setAttribute("aria-current", "true");
      else links[i].removeAttribute("aria-current");
    }
    // The stream sends the log's tail and, while the attempt runs, each line appended; then end.
    var stream = new EventSource(url + "/stream"), first = true, name = logKey(step, attempt);
    logView.source = stream;
    setLogLive(true);
    if (window.console) console.info("mqi-dashboard: log " + name + " followed");
    stream.addEventListener("log", function (e) {
      if (logView.source !== stream) return;
      var d = JSON.parse(e.data);
      if (first) { pre.textContent = ""; pre.dataset.streamLines = "0"; first = false; }
      if (d.skipped_bytes) {
        if (pre.lastChild) pre.appendChild(document.createTextNode("\n"));
        pre.appendChild(el("span", { "class": "log-skipped" }, "… " + Math.ceil(d.skipped_bytes / 1024) + " KiB of the log not shown here (raw: the whole log)"));
      }
      appendLogLines(pre, d.lines, d.failures);
    });
    stream.addEventListener("end", function () {
      stream.close();
      if (window.console) console.info("mqi-dashboard: log " + name + " ended");
      if (logView.source !== stream) return;
      logView.source = null;
      if (first) { pre.textContent = ""; pre.appendChild(el("span", { "class": "muted" }, "The log is empty.")); }
      setLogLive(false);
    });
    stream.onerror = function () {
      // A stream refused (404: no log yet) is closed; an interrupted one reconnects by itself
      // from its last event.
      if (window.console) console.info("mqi-dashboard: log " + name + (stream.readyState === EventSource.CLOSED ? " refused" : " interrupted, reconnecting"));
      if (stream.readyState === EventSource.CLOSED && logView.source === stream) { logView.source = null; setLogLive(false); }
    };
  }
  function renderLog(detail, mayFollow) {
    var links = document.getElementById("log-links");
    links.textContent = "";
    if (detail.logs.length) {
      links.appendChild(document.createTextNode("Logs (newest first): "));
      detail.logs.forEach(function (l, i) {
        if (i) links.appendChild(document.createTextNode(" · "));
        var m = /^(.*)\.([0-9]+)$/.exec(l.step);
        var a = el("a", { href: caseURL(detail["case"].case_id) + "?log=" + encodeURIComponent(l.step) + "&attempt=" + l.attempt + "#log",
          "data-log-step": l.step, "data-log-attempt": l.attempt, "data-log-url": l.url }, m ? m[1] + " · beam " + m[2] + " #" + l.attempt : l.step + " #" + l.attempt);
        if (logKey(l.step, l.attempt) === logView.key) a.setAttribute("aria-current", "true");
        links.appendChild(a);
        links.appendChild(document.createTextNode(" "));
        links.appendChild(el("a", { "class": "raw muted", href: l.url, title: "the whole log as text" }, "raw"));
      });
    }
    // Once the followed log has ended, one that is still written (a new attempt, the next step,
    // another beam's run), unless the operator picked a log. Beam runs side by side do not take turns.
    if (logView.pinned || logView.source || !mayFollow) return;
    var c = detail["case"], next = null;
    [detail.log].concat(detail.logs).forEach(function (l) { if (!next && l && logIsLive(c, l.step, l.attempt)) next = l; });
    if (next && logKey(next.step, next.attempt) !== logView.key) showLog(next.step, next.attempt, next.url);
  }
  // Whether the attempt may still write to its log (as the server's LogFollowStream.isLive).
  function logIsLive(c, step, attempt) {
    if (c.status !== "PROCESSING" && c.status !== "PENDING_RESOURCE") return false;
    if (c.workflow_step === step) return c.attempt === Number(attempt);
    var m = /^(.*)\.([0-9]+)$/.exec(step);
    return !!m && c.workflow_step === m[1] && (c.beams || []).some(function (b) {
      return b.number === Number(m[2]) && b.attempt === Number(attempt) && (b.status === "RUNNING" || b.status === "WAITING");
    });
  }
  function startLogPanel() {
    var pre = document.getElementById("log-tail");
    if (!pre) return;
    if (pre.dataset.logStep) logView.key = logKey(pre.dataset.logStep, pre.dataset.logAttempt);
    logView.pinned = /[?&]log=/.test(window.location.search);
    if (pre.dataset.live === "true" && window.EventSource) showLog(pre.dataset.logStep, pre.dataset.logAttempt, pre.dataset.logUrl);
    document.getElementById("log-links").addEventListener("click", function (e) {
      var a = e.target.closest ? e.target.closest("a[data-log-step]") : null;
      if (!a || !window.EventSource || e.ctrlKey || e.metaKey || e.shiftKey) return;
      e.preventDefault();
      logView.pinned = true;
      if (window.history && history.replaceState) history.replaceState(null, "", a.getAttribute("href"));
      showLog(a.dataset.logStep, a.dataset.logAttempt, a.dataset.logUrl);
    });
  }
  function refreshDetail() {
    var head = document.getElementById("case");
    if (!head) return;
    if (detailBusy) { detailAgain = true; return; }
    detailBusy = true;
    var seen = caseEvents;
    fetch("/api/cases/" + encodeURIComponent(head.dataset.caseId), { cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (d) {
        if (!d) return;
        // A detail an event overtook (its fetch, asked for by that event, follows) leaves the
        // head as the event set it and opens no log: it could be an attempt that has ended.
        // Not updated_at: a transaction stamps it before it commits, so it can go backwards.
        var fresh = seen === caseEvents;
        if (fresh) applyCaseHead(d["case"]);
        renderJobs(d.jobs || []); renderTimeline(d.timeline); renderStepper(d); renderLog(d, fresh);
      })
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

  // The GPU cards' last hour, drawn again every 30 s (as the server draws it: Dashboard.gpuHistoryChart).
  function drawGPUHistory(card, h) {
    var old = field(card, "history");
    if (!old) return;
    var now = Date.now(), samples = h.samples;
    if (!samples.length) return;
    var W = 240, H = 48, span = Math.max(1, Math.min(h.window_sec, (now - new Date(samples[0].at)) / 1000));
    function pts(value) {
      return samples.map(function (x) {
        var v = value(x);
        if (v == null) return null;
        var px = Math.max(0, Math.min(W, (1 - (now - new Date(x.at)) / 1000 / span) * W));
        return px.toFixed(1) + "," + (H - 1 - Math.max(0, Math.min(100, v)) / 100 * (H - 2)).toFixed(1);
      }).filter(function (p) { return p; }).join(" ");
    }
    var label = span >= h.window_sec - 30 ? "last hour" : span >= 120 ? "last " + Math.floor(span / 60) + " min" : "last " + Math.round(span) + " s";
    var fig = el("figure", { "class": "gpu-history", "data-field": "history", "data-points": samples.length });
    var chart = svg("svg", { viewBox: "0 0 " + W + " " + H, "class": "sparkline", role: "img", "aria-label": "GPU " + h.gpu_id + ": utilization and memory, " + label });
    chart.appendChild(svg("line", { "class": "spark-grid", x1: 0, x2: W, y1: H / 2, y2: H / 2 }));
    chart.appendChild(svg("polyline", { "class": "spark-mem", points: pts(function (x) { return x.memory_used_mb != null && x.memory_total_mb ? x.memory_used_mb / x.memory_total_mb * 100 : null; }) }));
    chart.appendChild(svg("polyline", { "class": "spark-util", points: pts(function (x) { return x.utilization_percent; }) }));
    fig.appendChild(chart);
    var caption = el("figcaption", { "class": "small muted" });
    caption.appendChild(el("span", { "class": "key key-util" })); caption.appendChild(document.createTextNode("utilization "));
    caption.appendChild(el("span", { "class": "key key-mem" })); caption.appendChild(document.createTextNode("memory · " + label));
    fig.appendChild(caption);
    old.replaceWith(fig);
  }
  function refreshGPUHistory() {
    var cards = document.querySelectorAll(".gpu-card[data-gpu-id]"), counts = [], left = cards.length;
    function done(i, n) {
      counts[i] = n;
      if (--left === 0 && window.console) console.info("mqi-dashboard: GPU charts redrawn: " + counts.join(","));
    }
    Array.prototype.forEach.call(cards, function (card, i) {
      fetch("/api/gpus/" + encodeURIComponent(card.dataset.gpuId) + "/history?points=120", { cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (h) { if (h) drawGPUHistory(card, h); done(i, h ? h.samples.length : 0); })
        .catch(function () { done(i, 0); });
    });
  }
  if (page === "overview") setInterval(refreshGPUHistory, 30000);

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
      if (list.dataset.receivedFrom) q += "&received_from=" + encodeURIComponent(list.dataset.receivedFrom);
      if (list.dataset.receivedTo) q += "&received_to=" + encodeURIComponent(list.dataset.receivedTo);
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
      retryDelay = 1000; disconnected = false;
      setConnection("live");
      if (window.console) console.info("mqi-dashboard: live" + (recovered ? " again (recovered)" : ""));
      if (recovered) resync();
    });
    source.addEventListener("case", function (e) {
      var c = JSON.parse(e.data);
      if (c.updated_at > lastChange) lastChange = c.updated_at;
      var applied = applyCaseRow(c);
      if (page === "case" && applyCaseHead(c)) { applied = true; caseEvents++; refreshDetail(); }
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
  // A token typed into the prompt is kept for this tab and sent as Bearer. Without one, a change
  // is first sent as it is: a browser signed in with Basic (the token as the password) adds its
  // credentials to this same-origin request itself. Only a 401 then asks for the token.
  function token(ask) {
    var t = sessionStorage.getItem("mqi-token");
    if (!t && ask) {
      t = window.prompt("API token (from the file in http.tokens_file or http.token_file). It is kept only for this browser tab.");
      if (t) { t = t.trim(); sessionStorage.setItem("mqi-token", t); }
    }
    return t || null;
  }
  function act(url, button, what) {
    function send(t) {
      var init = { method: "POST", credentials: "same-origin" };
      if (t) init.headers = { Authorization: "Bearer " + t };
      return fetch(url, init).then(function (r) {
        return r.json().then(function (j) { return { ok: r.ok, status: r.status, body: j, bearer: t }; });
      });
    }
    button.disabled = true;
    send(token(false))
      .then(function (res) {
        if (res.status !== 401 || res.bearer) return res;
        var t = token(true);
        return t ? send(t) : res;
      })
      .then(function (res) {
        if (res.ok) { toast(what + ": " + (res.body.note || "done")); resync(); return; }
        if (res.status === 401 && res.bearer) sessionStorage.removeItem("mqi-token");
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
  var caseHead = document.getElementById("case");
  if (caseHead && window.console) console.info("mqi-dashboard: case " + caseHead.dataset.status);
  var pre = document.getElementById("log-tail");
  if (pre) { pre.scrollTop = pre.scrollHeight; startLogPanel(); }
  if (window.EventSource) connect(); else setConnection("disconnected");
})();
