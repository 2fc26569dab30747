// The bill dashboard: renders a ledger snapshot and re-renders on each server-sent event.
// A few lines of SVG instead of a charting library: nothing to download, works offline.
"use strict";
const KIND_COLORS = {training: "#3b82f6", inference: "#10b981", notebook: "#f59e0b",
                     endpoint: "#8b5cf6", agent: "#ef4444"};
const usd = (v) => {
  if (v == null) return "—";
  const digits = v !== 0 && Math.abs(v) < 1 ? 4 : 2;  // cents hide a small demo's spend
  return "$" + Number(v).toLocaleString("en-US", {minimumFractionDigits: digits, maximumFractionDigits: digits});
};
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));

function rows(id, items, cells) {
  document.querySelector(`#${id} tbody`).innerHTML = items.map(cells).join("") ||
    `<tr><td class="muted" colspan="6">nothing yet</td></tr>`;
}

function render(s) {
  document.getElementById("period").textContent = s.period;
  rows("teams", s.teams, (t) => {
    const pct = t.budget_usd ? 100 * t.spent_usd / t.budget_usd : null;
    const cls = pct == null ? "" : pct >= 100 ? "over" : pct >= 80 ? "warn" : "";
    return `<tr data-team="${esc(t.team)}"><td>${esc(t.team)}</td>
      <td class="num spent">${usd(t.spent_usd)}</td><td class="num budget">${usd(t.budget_usd)}</td>
      <td>${pct == null ? '<span class="muted">no budget</span>' :
        `<div class="bar"><div class="${cls}" style="width:${Math.min(pct, 100)}%"></div></div>
         <span class="pct">${pct.toFixed(1)} %</span>`}</td>
      <td class="num forecast">${usd(t.forecast_usd)}</td><td>${esc(t.action ?? "—")}</td></tr>`;
  });
  rows("resources", s.top_resources, (r) => `<tr><td>${esc(r.team)}</td><td>${esc(r.kind)}</td>
    <td>${esc(r.resource_id)}</td><td class="num">${usd(r.usd)}</td></tr>`);
  rows("models", s.top_models, (r) => `<tr><td>${esc(r.team)}</td><td>${esc(r.model)}</td>
    <td class="num">${usd(r.usd)}</td></tr>`);
  rows("alerts", s.alerts, (a) => `<tr class="alert"><td>${esc(a.at.slice(0, 19).replace("T", " "))}</td>
    <td>${esc(a.team)}</td><td>${esc(a.period)}</td><td class="num">${a.threshold} %</td>
    <td class="num">${usd(a.spent_usd)} of ${usd(a.amount_usd)}</td><td>${esc(a.action)}</td></tr>`);
  rows("idle", s.idle, (i) => `<tr><td>${esc(i.gpu_type)}</td>
    <td class="num">${Number(i.gpu_hours).toFixed(1)}</td><td class="num">${usd(i.usd)}</td></tr>`);
  chart(document.getElementById("chart"), s.daily);
  document.getElementById("status").textContent =
    `updated ${new Date(s.generated_at).toLocaleTimeString()} · snapshot ${s.version}`;
}

function chart(svg, daily) {
  const days = [...new Set(daily.map((d) => d.day))].sort();
  const kinds = [...new Set(daily.map((d) => d.kind))].sort();
  const totals = days.map((day) => daily.filter((d) => d.day === day).reduce((a, d) => a + d.usd, 0));
  const max = Math.max(...totals, 0.01), W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const left = 60, bottom = 24, width = (W - left - 110) / Math.max(days.length, 1);
  let out = `<text x="0" y="12">${usd(max)}</text><line x1="${left}" x2="${W - 110}" y1="${H - bottom}"
    y2="${H - bottom}" stroke="#c9ced8"/>`;
  days.forEach((day, i) => {
    let y = H - bottom;
    for (const kind of kinds) {
      const v = daily.find((d) => d.day === day && d.kind === kind)?.usd ?? 0;
      const h = (H - bottom - 16) * v / max;
      y -= h;
      out += `<rect x="${left + i * width + 2}" y="${y}" width="${Math.max(width - 4, 1)}" height="${h}"
        fill="${KIND_COLORS[kind] ?? "#64748b"}"><title>${day} ${kind}: ${usd(v)}</title></rect>`;
    }
    if (days.length < 16 || i % 5 === 0) out += `<text x="${left + i * width}" y="${H - 6}">${day.slice(5)}</text>`;
  });
  kinds.forEach((kind, i) => {
    out += `<rect x="${W - 100}" y="${10 + i * 18}" width="10" height="10" fill="${KIND_COLORS[kind] ?? "#64748b"}"/>
      <text x="${W - 85}" y="${19 + i * 18}">${esc(kind)}</text>`;
  });
  svg.innerHTML = out;
}

if (window.SNAPSHOT) render(window.SNAPSHOT);
const source = new EventSource("/bill/events");
source.onopen = () => document.getElementById("live").classList.add("on");
source.onerror = () => document.getElementById("live").classList.remove("on");
source.onmessage = (e) => render(JSON.parse(e.data));
