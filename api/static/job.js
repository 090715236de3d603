// One job for operators: facts, stages, outputs (downloads), every failed attempt; retry or cancel.
(function () {
  "use strict";
  const A = window.OmniAdmin;
  const $ = (sel) => document.querySelector(sel);
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const FINAL = ["succeeded", "failed", "canceled"];
  let timer = null;

  function fill(selector, rows, build) {
    const fresh = document.createElement("tbody");
    for (const row of rows) fresh.appendChild(build(row));
    $(selector + " tbody").replaceWith(fresh);
  }

  function facts(job) {
    const dl = document.createElement("dl");
    dl.className = "facts";
    dl.id = "facts";
    const rows = [["id", job.id], ["pipeline", job.pipeline], ["status", job.status], ["priority", job.priority],
      ["created", A.when(job.created_at)], ["started", A.when(job.started_at)], ["finished", A.when(job.finished_at)],
      ["total", A.secs(job.metrics.total_s)], ["inputs", JSON.stringify(job.inputs)],
      ["error", job.error ? JSON.stringify(job.error) : null]];
    for (const [k, v] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = v === null || v === undefined ? "–" : String(v);
      dd.dataset.field = k;
      dl.append(dt, dd);
    }
    $("#facts").replaceWith(dl);
  }

  // A file output needs the key as a header: fetch it, then hand the bytes to the browser as a file.
  async function download(name, ref) {
    const resp = await A.request("GET", new URL(ref.url).pathname);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await resp.blob());
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  function actions(job) {
    const box = document.createElement("span");
    box.id = "actions";
    const act = (what) => async () => {
      try {
        const done = await A[what](job.id);
        $("#action").textContent = `${what}: now ${done.status}`;
      } catch (err) {
        $("#action").textContent = err.message;
      }
      await load();
    };
    if (job.status === "failed") box.appendChild(A.button("Retry", act("retry"), { "data-action": "retry" }));
    if (!FINAL.includes(job.status)) box.appendChild(A.button("Cancel", act("cancel"), { "data-action": "cancel" }));
    $("#actions").replaceWith(box);
  }

  async function load() {
    try {
      const [job, admin] = await Promise.all([
        A.getJSON(`/v1/jobs/${encodeURIComponent(id)}`), A.getJSON(`/admin/api/jobs/${encodeURIComponent(id)}`),
      ]);
      $("#title").textContent = `${job.pipeline} job ${job.id}`;
      facts(job);
      actions(job);
      fill("#stages", job.stages, (s) => {
        const tr = document.createElement("tr");
        tr.dataset.stage = s.name;
        const p = s.progress && s.progress.steps ? `${s.progress.step} / ${s.progress.steps}` : "";
        const err = s.error ? `${s.error.code || ""}: ${s.error.message || ""}` : "";
        tr.append(A.cell(s.name), A.cell(s.status, { "data-field": "status" }), A.cell(`${s.attempt} / ${s.max_attempts}`),
          A.cell(s.worker, { class: "clip", title: s.worker || "" }), A.cell(s.batch_size), A.cell(A.secs(s.queue_wait_s)),
          A.cell(A.secs(s.run_s)), A.cell(p), A.cell(err, { class: "err", title: err }));
        return tr;
      });
      fill("#outputs", Object.entries(job.outputs || {}), ([name, v]) => {
        const tr = document.createElement("tr");
        tr.dataset.output = name;
        const value = document.createElement("td");
        const pre = document.createElement("pre");
        pre.className = "value";
        const file = v && typeof v === "object" && v.url;
        pre.textContent = file ? `${v.type || "file"}: ${v.content_type}, ${v.bytes} bytes` : JSON.stringify(v, null, 1);
        value.appendChild(pre);
        const get = document.createElement("td");
        if (file && !v.expired) get.appendChild(A.button("Download", () => download(name, v), { "data-action": "download" }));
        tr.append(A.cell(name), value, get);
        return tr;
      });
      fill("#attempts", admin.attempts, (a) => {
        const tr = document.createElement("tr");
        tr.append(A.cell(A.when(a.at)), A.cell(a.stage), A.cell(a.attempt), A.cell(a.code),
          A.cell(a.message, { class: "err", title: a.message || "" }), A.cell(a.worker));
        return tr;
      });
      $("#status").textContent = "updated " + new Date().toLocaleTimeString();
      document.body.dataset.refreshed = String(Date.now());
      clearTimeout(timer);
      if (!FINAL.includes(job.status)) timer = setTimeout(load, 2000);
    } catch (err) {
      $("#status").textContent = "could not load the job: " + err.message;
    }
  }

  load();
})();
