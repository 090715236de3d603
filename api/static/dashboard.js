// The admin dashboard: polls the admin API and redraws. Plain DOM + uPlot, no build step.
(function () {
  "use strict";
  const HISTORY = 600; // points kept per stage chart
  const history = {}; // stage -> [times, depths, throughputs]
  const charts = {}; // stage -> uPlot
  let timer = null;

  const $ = (sel) => document.querySelector(sel);

  function cell(text, attrs) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    for (const [k, v] of Object.entries(attrs || {})) td.setAttribute(k, v);
    return td;
  }

  function fillTable(selector, rows, build) {
    const body = $(selector + " tbody");
    const fresh = document.createElement("tbody");
    for (const row of rows) fresh.appendChild(build(row));
    body.replaceWith(fresh);
  }

  function secs(v) {
    if (v === null || v === undefined) return null;
    return v < 1 ? (v * 1000).toFixed(0) + " ms" : v.toFixed(2) + " s";
  }

  function pct(p) {
    return [p.p50, p.p95, p.p99].map((v) => secs(v) ?? "–").join(" / ");
  }

  function ago(iso) {
    const s = (Date.now() - Date.parse(iso)) / 1000;
    return s < 60 ? s.toFixed(1) + " s ago" : (s / 60).toFixed(1) + " min ago";
  }

  async function getJSON(path) {
    const resp = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (resp.status === 401 || resp.status === 403) {
      location.reload(); // back to the sign-in page
      throw new Error("signed out");
    }
    if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
    return resp.json();
  }

  function renderQueues(queues) {
    fillTable("#queues", queues, (q) => {
      const tr = document.createElement("tr");
      tr.dataset.stage = q.stage;
      const depth = cell(q.depth, { "data-field": "depth" });
      if (q.bound !== null && q.depth !== null && q.depth >= q.bound) depth.className = "over";
      const prio = Object.entries(q.depth_by_priority).map(([p, n]) => `p${p}: ${n}`).join(", ");
      tr.append(cell(q.stage), depth, cell(prio || ""), cell(q.bound), cell(q.queued, { "data-field": "queued" }),
        cell(q.running, { "data-field": "running" }), cell(secs(q.oldest_wait_s)),
        cell(q.workers, { "data-field": "workers" }));
      return tr;
    });
  }

  function renderWorkers(data) {
    fillTable("#workers", data.data, (w) => {
      const tr = document.createElement("tr");
      tr.dataset.worker = w.name;
      const state = cell(w.state, { "data-field": "state" });
      state.className = "state-" + w.state;
      tr.append(cell(w.name), state, cell(w.stage), cell(w.host), cell(w.pid), cell(w.device),
        cell(w.engine + (w.model ? " / " + w.model : "")), cell(new Date(w.started_at).toLocaleTimeString()),
        cell(ago(w.last_heartbeat)), cell(w.batch_size), cell(w.batches), cell(w.jobs_done, { "data-field": "jobs_done" }),
        cell(w.failures));
      return tr;
    });
  }

  function renderStats(stats) {
    $("#window").textContent = `(last ${Math.round(stats.window_s / 60)} min)`;
    fillTable("#stats", Object.entries(stats.stages), ([name, s]) => {
      const tr = document.createElement("tr");
      tr.dataset.stage = name;
      const sizes = Object.entries(s.batch_sizes).map(([k, n]) => `${k}×${n}`).join(" ");
      tr.append(cell(name), cell(s.succeeded, { "data-field": "succeeded" }), cell(s.failed), cell(s.retries),
        cell(s.throughput_per_s), cell(sizes), cell(pct(s.queue_wait_s)), cell(pct(s.run_s)));
      return tr;
    });
    fillTable("#pipelines", Object.entries(stats.pipelines), ([name, p]) => {
      const tr = document.createElement("tr");
      tr.append(cell(name), cell(p.queued), cell(p.running), cell(p.succeeded), cell(p.failed), cell(p.canceled),
        cell(p.throughput_per_s), cell(pct(p.total_s)));
      return tr;
    });
  }

  function renderFailed(failed) {
    fillTable("#failed", failed.data, (j) => {
      const tr = document.createElement("tr");
      const err = j.error ? `${j.error.stage || ""} ${j.error.code || ""}: ${j.error.message || ""}` : "";
      tr.append(cell(j.id), cell(j.pipeline), cell(j.finished_at ? new Date(j.finished_at).toLocaleString() : null),
        cell(err, { class: "err", title: err }), cell(j.attempts.length));
      return tr;
    });
  }

  function lastMinuteThroughput(stage, stats) {
    const s = stats.stages[stage];
    if (!s) return 0;
    const n = Math.max(1, Math.round(60 / stats.bucket_s));
    return s.series.slice(-n).reduce((a, b) => a + b, 0) / (n * stats.bucket_s);
  }

  function chartFor(stage) {
    if (charts[stage]) return charts[stage];
    const box = document.createElement("div");
    box.className = "chart";
    box.dataset.stage = stage;
    const title = document.createElement("h3");
    title.textContent = stage;
    box.appendChild(title);
    $("#charts").appendChild(box);
    history[stage] = [[], [], []];
    const opts = {
      width: 420, height: 180,
      scales: { x: { time: true }, tput: { auto: true } },
      series: [{}, { label: "depth", stroke: "#3367d6", width: 2 },
        { label: "runs/s", stroke: "#e37400", width: 2, scale: "tput" }],
      axes: [{}, { scale: "y" }, { scale: "tput", side: 1, grid: { show: false } }],
    };
    charts[stage] = new uPlot(opts, history[stage], box);
    return charts[stage];
  }

  function renderCharts(queues, stats) {
    const now = Date.now() / 1000;
    for (const q of queues) {
      const depth = q.depth ?? q.queued;
      const tput = lastMinuteThroughput(q.stage, stats);
      // A chart per stage that has had work or workers since the page opened; idle stages stay in the table.
      if (!charts[q.stage] && !(depth || q.queued || q.running || q.workers || tput)) continue;
      const chart = chartFor(q.stage);
      const h = history[q.stage];
      h[0].push(now);
      h[1].push(depth);
      h[2].push(tput);
      if (h[0].length > HISTORY) h.forEach((a) => a.shift());
      chart.setData(h);
    }
  }

  async function refresh() {
    try {
      const [queues, workers, stats, failed] = await Promise.all([
        getJSON("/admin/api/queues"), getJSON("/admin/api/workers"),
        getJSON("/admin/api/stats?window_s=300&bucket_s=10"), getJSON("/admin/api/jobs?status=failed&limit=10"),
      ]);
      renderQueues(queues.data);
      renderWorkers(workers);
      renderStats(stats);
      renderFailed(failed);
      renderCharts(queues.data, stats);
      $("#status").textContent = "updated " + new Date().toLocaleTimeString();
      document.body.dataset.refreshed = String(Date.now());
    } catch (err) {
      $("#status").textContent = "refresh failed: " + err.message;
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = setInterval(refresh, Number($("#interval").value));
  }

  $("#interval").addEventListener("change", schedule);
  refresh();
  schedule();
})();
