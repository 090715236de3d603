// Shared by the admin pages: table cells, and requests that carry the admin key.
// GETs under /admin may ride on the sign-in cookie; every POST (and every /v1 request) sends the key
// as a header, read from that cookie by this page's own script, so a cookie alone never authorises a change.
(function () {
  "use strict";

  function key() {
    const found = document.cookie.split("; ").find((c) => c.startsWith("omnijobs_key="));
    return found ? decodeURIComponent(found.slice("omnijobs_key=".length)) : "";
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const k = key();
    if (k) h.Authorization = "Bearer " + k;
    return h;
  }

  async function message(resp) {
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON */ }
    return "HTTP " + resp.status;
  }

  async function request(method, path) {
    const resp = await fetch(path, { method, credentials: "same-origin", headers: headers() });
    if (resp.status === 401) {
      location.href = "/admin"; // back to the sign-in page
      throw new Error("signed out");
    }
    if (!resp.ok) throw new Error(`${method} ${path}: ${await message(resp)}`);
    return resp;
  }

  function cell(text, attrs) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    for (const [k, v] of Object.entries(attrs || {})) td.setAttribute(k, v);
    return td;
  }

  function link(text, href) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    return a;
  }

  function button(text, action, attrs) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    for (const [k, v] of Object.entries(attrs || {})) b.setAttribute(k, v);
    b.addEventListener("click", async () => {
      b.disabled = true;
      try { await action(); } finally { b.disabled = false; }
    });
    return b;
  }

  function secs(v) {
    if (v === null || v === undefined) return null;
    return v < 1 ? (v * 1000).toFixed(0) + " ms" : v.toFixed(2) + " s";
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : null;
  }

  window.OmniAdmin = {
    getJSON: async (path) => (await request("GET", path)).json(),
    post: async (path) => (await request("POST", path)).json(),
    request, headers, cell, link, button, secs, when,
    retry: (id) => window.OmniAdmin.post(`/admin/api/jobs/${encodeURIComponent(id)}/retry`),
    cancel: (id) => window.OmniAdmin.post(`/admin/api/jobs/${encodeURIComponent(id)}/cancel`),
  };
})();
