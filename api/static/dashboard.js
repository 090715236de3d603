// The admin dashboard: polls the admin API and redraws. Plain DOM + uPlot, no build step.
(function () {
  "use strict";
  const HISTORY = 600; // points kept per stage chart
  const history = {}; // stage -> [times, depths, throughputs]
  const charts = {}; // stage -> uPlot
  let timer = null;

  const $ = (sel) => document.querySelector(sel);
  const { cell, link, button, secs, when } = window.OmniAdmin;

  function fillTable(selector, rows, build) {
    const body = $(selector + " tbody");
    const fresh = document.createElement("tbody");
    for (const row of rows) fresh.appendChild(build(row));
    body.replaceWith(fresh);
  }

  function pct(p) {
    return [p.p50, p.p95, p.p99].map((v) => secs(v) ?? "–").join(" / ");
  }

  function ago(iso) {
    const s = (Date.now() - Date.parse(iso)) / 1000;
    return s < 60 ? s.toFixed(1) + " s ago" : (s / 60).toFixed(1) + " min ago";
  }

  const getJSON = window.OmniAdmin.getJSON;

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
      const engine = w.engine + (w.model ? " / " + w.model : "");
      tr.append(cell(w.name, { class: "clip", title: `${w.name}, started ${when(w.started_at)}` }), state,
        cell(w.stage), cell(`${w.host}:${w.pid}`, { class: "clip", title: `${w.host}:${w.pid}` }), cell(w.device),
        cell(engine, { class: "clip", title: engine }), cell(ago(w.last_heartbeat)), cell(w.batch_size),
        cell(w.batches), cell(w.jobs_done, { "data-field": "jobs_done" }), cell(w.failures));
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

  // Failed and canceled jobs come from the admin API (with every attempt); the others from /v1/jobs,
  // where an admin key sees every key's jobs.
  function jobsPath(status) {
    return status === "failed" || status === "canceled"
      ? `/admin/api/jobs?status=${status}&limit=20` : `/v1/jobs?status=${status}&limit=20`;
  }

  function attemptsOf(j) {
    if (j.attempts) return j.attempts.length;
    return (j.stages || []).reduce((n, s) => n + (s.errors || []).length, 0);
  }

  async function act(what, id) {
    try {
      const done = what === "retry" ? await window.OmniAdmin.retry(id) : await window.OmniAdmin.cancel(id);
      $("#action").textContent = `${what}: job ${id} is ${done.status}`;
    } catch (err) {
      $("#action").textContent = err.message; // e.g. the job finished meanwhile: the API says so
    }
    await refresh();
  }

  function renderJobs(jobs) {
    fillTable("#jobs", jobs.data, (j) => {
      const tr = document.createElement("tr");
      tr.dataset.job = j.id;
      const err = j.error ? `${j.error.stage || ""} ${j.error.code || ""}: ${j.error.message || ""}` : "";
      const id = document.createElement("td");
      id.appendChild(link(j.id.slice(0, 8) + "…", `/admin/jobs/${encodeURIComponent(j.id)}`));
      id.title = j.id;
      const actions = document.createElement("td");
      if (j.status === "failed") {
        actions.appendChild(button("Retry", () => act("retry", j.id), { "data-action": "retry" }));
      }
      if (j.status === "queued" || j.status === "running") {
        actions.appendChild(button("Cancel", () => act("cancel", j.id), { "data-action": "cancel" }));
      }
      tr.append(id, cell(j.pipeline), cell(j.status, { "data-field": "status" }), cell(when(j.created_at)),
        cell(when(j.finished_at)), cell(err, { class: "err", title: err }), cell(attemptsOf(j)), actions);
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
    title.addEventListener("click", () => box.classList.toggle("open"));
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
      // A flat-zero chart says nothing: fold it to its title (a click opens it) until the stage has work.
      const idle = h[1].every((v) => !v) && h[2].every((v) => !v);
      const box = chart.root.parentElement;
      box.classList.toggle("idle", idle);
      box.querySelector("h3").dataset.idle = idle ? "idle" : "";
    }
  }

  async function refresh() {
    try {
      const [queues, workers, stats, jobs] = await Promise.all([
        getJSON("/admin/api/queues"), getJSON("/admin/api/workers"),
        getJSON("/admin/api/stats?window_s=300&bucket_s=10"), getJSON(jobsPath($("#job-status").value)),
      ]);
      renderQueues(queues.data);
      renderWorkers(workers);
      renderStats(stats);
      renderJobs(jobs);
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
  $("#job-status").addEventListener("change", refresh);
  refresh();
  schedule();
})();
