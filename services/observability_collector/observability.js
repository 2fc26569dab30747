// The observability page: renders a snapshot and polls for the next one every 2 s.
// No charting library: nothing to download, works offline.
"use strict";
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const pct = (v, digits = 3) => v == null ? "—" : `${(100 * v).toFixed(digits)} %`;
const secs = (v) => v == null || !isFinite(v) ? "—" : v < 1 ? `${(1000 * v).toFixed(0)} ms` : `${v.toFixed(2)} s`;
const num = (v, digits = 2) => v == null || !isFinite(v) ? "—" : Number(v).toFixed(digits);

function rows(id, items, cells) {
  document.querySelector(`#${id} tbody`).innerHTML = items.map(cells).join("") ||
    `<tr><td class="muted" colspan="8">nothing yet</td></tr>`;
}

function byModel(panels) {
  const models = {};
  for (const id of ["tokens_per_s", "requests_per_s", "latency_p50", "latency_p99", "ttft_p50"]) {
    for (const row of panels[id]?.rows ?? []) {
      (models[row.gen_ai_request_model] ??= {})[id] = row.value;
    }
  }
  return Object.entries(models).sort((a, b) => (b[1].tokens_per_s ?? 0) - (a[1].tokens_per_s ?? 0));
}

function render(s) {
  const notes = [];
  if (!s.prometheus.reachable) notes.push(`no figures: ${s.prometheus.error}`);
  if (s.slo_file.error) notes.push(`SLO file refused (last good SLOs shown): ${s.slo_file.error}`);
  document.getElementById("notes").innerHTML = notes.map((n) => `<div>${esc(n)}</div>`).join("");
  rows("alerts", s.alerts, (a) => `<tr class="firing" data-alert="${esc(a.alert)}">
    <td>${esc(a.starts_at.slice(0, 19).replace("T", " "))}</td><td>${esc(a.alert)}</td>
    <td>${esc(a.severity)}</td><td>${esc(a.summary)}</td>
    <td>${a.runbook_url ? `<a href="${esc(a.runbook_url)}">runbook</a>` : "—"}</td></tr>`);
  rows("slos", s.slos, (r) => {
    const cls = r.alerts.length ? "firing" : r.error_budget_left != null && r.error_budget_left < 0.25 ? "warn" : "ok";
    return `<tr data-slo="${esc(r.slo)}" class="${cls}"><td>${esc(r.slo)}</td><td>${esc(r.service)}</td>
      <td class="num">${pct(r.objective, 1)}</td><td class="num sli">${pct(r.sli)}</td>
      <td class="num budget">${pct(r.error_budget_left, 1)}</td>
      <td class="num">${r.burn_rate_1h == null ? "—" : num(r.burn_rate_1h) + "×"}</td>
      <td class="num">${r.burn_rate_6h == null ? "—" : num(r.burn_rate_6h) + "×"}</td></tr>`;
  });
  rows("models", byModel(s.panels), ([model, m]) => `<tr data-model="${esc(model)}"><td>${esc(model)}</td>
    <td class="num tokens">${num(m.tokens_per_s)}</td><td class="num">${num(m.requests_per_s)}</td>
    <td class="num">${secs(m.latency_p50)}</td><td class="num">${secs(m.latency_p99)}</td>
    <td class="num">${secs(m.ttft_p50)}</td></tr>`);
  rows("gpus", s.panels.gpu_memory.rows, (g) => `<tr><td>${esc(g.job_id)}</td><td>${esc(g.endpoint)}</td>
    <td>${esc(g.team)}</td><td>${esc(g.gpu)}</td><td class="num">${num(g.value, 0)}</td></tr>`);
  rows("drift", s.panels.drift.rows, (d) => `<tr class="${d.value > 0.2 ? "firing" : ""}">
    <td>${esc(d.endpoint)}</td><td>${esc(d.feature)}</td><td class="num">${num(d.value, 3)}</td></tr>`);
  rows("quality", s.panels.quality.rows, (q) => `<tr data-endpoint="${esc(q.endpoint)}"><td>${esc(q.endpoint)}</td>
    <td>${esc(q.version)}</td><td class="num">${num(q.value, 2)}</td></tr>`);
  document.getElementById("status").textContent = `updated ${new Date(s.generated_at).toLocaleTimeString()}`;
}

async function poll() {
  const live = document.getElementById("live");
  try {
    const response = await fetch("/observability/snapshot", {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    live.classList.add("on");
  } catch (error) {
    live.classList.remove("on");
    document.getElementById("status").textContent = `cannot reach the collector (${error.message}); retrying`;
  }
  setTimeout(poll, 2000);
}

if (window.SNAPSHOT) render(window.SNAPSHOT);
poll();
