// onceflow dashboard: polls /api/job every second and redraws. No framework, no build step;
// every value from the job is inserted as text (never as HTML).
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}
const num = (n) => Math.round(n).toLocaleString("en-US");
function rate(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(2) + " M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + " k";
  return num(n);
}
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}
const ms = (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) + " ms" : v.toFixed(0) + " ms");
const clock = (t) => new Date(t * 1000).toISOString().substring(11, 23);
function ago(t) {
  const s = Date.now() / 1000 - t;
  return s < 60 ? s.toFixed(1) + " s ago" : (s / 60).toFixed(1) + " min ago";
}

// --- job graph --------------------------------------------------------------------------
const BOX_W = 290, HEAD_H = 26, OP_H = 58, GAP_X = 90, GAP_Y = 24, PAD = 16;

function drawGraph(job) {
  const g = $("graph");
  const tasks = job.graph.tasks;
  const ops = Object.fromEntries(job.operators.map((o) => [o.uid, o]));
  const incoming = {};
  for (const e of job.graph.edges) (incoming[e.to] = incoming[e.to] || []).push(e.from);
  const level = {};
  for (const t of tasks) {  // tasks come in topological order
    level[t.uid] = Math.max(0, ...(incoming[t.uid] || []).map((u) => level[u] + 1));
  }
  const columns = [];
  for (const t of tasks) (columns[level[t.uid]] = columns[level[t.uid]] || []).push(t);
  const pos = {};
  let height = 0;
  columns.forEach((col, c) => {
    let y = PAD;
    for (const t of col) {
      const h = HEAD_H + OP_H * t.operators.length + 6;
      pos[t.uid] = { x: PAD + c * (BOX_W + GAP_X), y, h };
      y += h + GAP_Y;
    }
    height = Math.max(height, y);
  });
  const width = PAD * 2 + columns.length * BOX_W + Math.max(0, columns.length - 1) * GAP_X;
  g.replaceChildren();
  g.setAttribute("width", width);
  g.setAttribute("height", Math.max(height, 60));
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.appendChild(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#64748b" }));
  defs.appendChild(marker);
  g.appendChild(defs);
  for (const e of job.graph.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const x1 = a.x + BOX_W, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2;
    const mx = (x1 + x2) / 2;
    g.appendChild(svg("path", { class: "edge", d: `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`,
      "marker-end": "url(#arrow)" }));
    g.appendChild(svg("text", { class: "edge-label", x: mx, y: (y1 + y2) / 2 - 5, "text-anchor": "middle" }, e.partitioning));
  }
  for (const t of tasks) {
    const p = pos[t.uid];
    const box = svg("g", { class: "task", "data-uid": t.uid, transform: `translate(${p.x},${p.y})` });
    box.appendChild(svg("rect", { class: "task-box", width: BOX_W, height: p.h, rx: 6 }));
    box.appendChild(svg("text", { class: "task-title", x: 10, y: 18 }, `${t.name} ×${t.parallelism}`));
    t.operators.forEach((uid, i) => {
      const o = ops[uid];
      if (!o) return;
      const y = HEAD_H + i * OP_H;
      const g2 = svg("g", { class: "operator", "data-uid": uid, transform: `translate(10,${y})` });
      g2.appendChild(svg("text", { class: "op-name", x: 0, y: 12 }, `${o.name} (${o.kind})`));
      g2.appendChild(svg("text", { class: "op-stat", x: 0, y: 26 },
        `in ${rate(o.records_in_per_s)}/s · out ${rate(o.records_out_per_s)}/s · total ` +
        num(o.kind === "sink" ? o.records_in : o.records_out) +
        (o.watermark === null || o.watermark === undefined ? "" :
          ` · watermark ${o.watermark === "end" ? "end" : Number(o.watermark).toFixed(1)}`) +
        (o.late_dropped ? ` · ${num(o.late_dropped)} late dropped` : "")));
      const bw = 110;
      const busy = Math.min(1, o.busy_ms_per_s / 1000), bp = Math.min(1, o.backpressured_ms_per_s / 1000);
      g2.appendChild(svg("rect", { class: "bar-bg", x: 0, y: 33, width: bw, height: 8 }));
      g2.appendChild(svg("rect", { class: "bar-busy", x: 0, y: 33, width: bw * busy, height: 4 }));
      g2.appendChild(svg("rect", { class: "bar-bp", x: 0, y: 37, width: bw * bp, height: 4 }));
      g2.appendChild(svg("text", { class: "op-stat", x: bw + 8, y: 41 },
        `busy ${(busy * 100).toFixed(0)}% · backpressured ${(bp * 100).toFixed(0)}%`));
      const tip = svg("title", {}, `busy ${o.busy_ms_per_s.toFixed(0)} ms/s, backpressured ${o.backpressured_ms_per_s.toFixed(0)} ms/s (worst subtask)`);
      g2.appendChild(tip);
      box.appendChild(g2);
    });
    g.appendChild(box);
  }
}

// --- checkpoint chart -------------------------------------------------------------------
function drawChart(history, restarts) {
  const c = $("chart");
  const W = c.clientWidth || 900, H = 220, L = 60, R = 70, T = 12, B = 26;
  c.replaceChildren();
  c.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const pts = history.filter((h) => h.duration_ms !== null && h.status !== "pending");
  if (pts.length === 0) {
    c.appendChild(svg("text", { class: "axis-text", x: L, y: H / 2 }, "no checkpoint yet"));
    return;
  }
  const t0 = pts[0].trigger_time, t1 = Math.max(pts[pts.length - 1].trigger_time, t0 + 1e-3);
  const maxD = Math.max(...pts.map((p) => p.duration_ms), 1);
  const done = pts.filter((p) => p.status === "completed");
  const maxS = Math.max(...done.map((p) => p.size), 1);
  const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
  const yd = (d) => H - B - (H - B - T) * d / maxD;
  const ys = (s) => H - B - (H - B - T) * s / maxS;
  c.appendChild(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  c.appendChild(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  c.appendChild(svg("line", { class: "axis", x1: W - R, y1: T, x2: W - R, y2: H - B }));
  for (const f of [0, 0.5, 1]) {
    c.appendChild(svg("text", { class: "axis-text", x: L - 6, y: yd(maxD * f) + 3, "text-anchor": "end" }, ms(maxD * f)));
    c.appendChild(svg("text", { class: "axis-text", x: W - R + 6, y: ys(maxS * f) + 3 }, bytes(maxS * f)));
  }
  c.appendChild(svg("text", { class: "axis-text", x: L, y: H - 8 }, clock(t0)));
  c.appendChild(svg("text", { class: "axis-text", x: W - R, y: H - 8, "text-anchor": "end" }, clock(t1)));
  for (const r of restarts) {  // a restart: a red dashed line at its time
    if (r.time < t0 || r.time > t1) continue;
    const line = svg("line", { class: "restart-mark", x1: x(r.time), y1: T, x2: x(r.time), y2: H - B });
    line.appendChild(svg("title", {}, `restart: ${r.cause}`));
    c.appendChild(line);
  }
  if (done.length) {
    c.appendChild(svg("polyline", { class: "line-dur", points: done.map((p) => `${x(p.trigger_time)},${yd(p.duration_ms)}`).join(" ") }));
    c.appendChild(svg("polyline", { class: "line-size", points: done.map((p) => `${x(p.trigger_time)},${ys(p.size)}`).join(" ") }));
  }
  for (const p of pts) {
    const dot = svg("circle", { class: p.status === "completed" ? "dot-dur" : "dot-failed",
      cx: x(p.trigger_time), cy: yd(p.duration_ms), r: p.status === "completed" ? 2.5 : 4 });
    dot.appendChild(svg("title", {}, `${p.kind || "checkpoint"} ${p.id} ${p.status}: ${ms(p.duration_ms)}, ${bytes(p.size)}`));
    c.appendChild(dot);
  }
}

// --- tables -----------------------------------------------------------------------------
function fillCheckpoints(history) {
  const body = $("checkpoints").tBodies[0];
  body.replaceChildren();
  for (const h of history.slice(-100).reverse()) {
    const tr = el("tr", { class: h.status, "data-id": h.id });
    const cells = [h.id, h.kind || "checkpoint", h.status + (h.final ? " (final)" : ""),
      clock(h.trigger_time), ms(h.duration_ms), ms(h.sync_ms), ms(h.async_ms), ms(h.alignment_ms),
      h.status === "completed" ? bytes(h.size) : "–",
      h.status === "completed" ? bytes(h.incremental_size) : "–",
      h.status === "completed" ? (h.unaligned ? `unaligned (${h.unaligned_subtasks}), ${bytes(h.inflight_bytes)} in flight` : "aligned") : "–"];
    for (const v of cells) tr.appendChild(el("td", {}, String(v)));
    tr.appendChild(el("td", { class: "note" }, h.failure || ""));
    body.appendChild(tr);
  }
}

function fillRestarts(restarts) {
  const body = $("restarts").tBodies[0];
  body.replaceChildren();
  restarts.forEach((r, i) => {
    const tr = el("tr");
    for (const v of [i + 1, clock(r.time), r.cause,
      r.restored_checkpoint === null ? "the beginning" : "checkpoint " + r.restored_checkpoint,
      r.delay_s.toFixed(1) + " s"]) tr.appendChild(el("td", {}, String(v)));
    tr.children[2].className = "note";
    body.appendChild(tr);
  });
  $("no-restarts").hidden = restarts.length > 0;
}

// --- summary ----------------------------------------------------------------------------
function render(job) {
  document.title = `onceflow · ${job.flow}`;
  $("flow").textContent = job.flow;
  const st = $("state");
  st.textContent = job.state;
  st.className = "badge " + job.state;
  $("uptime").textContent = `up ${job.uptime_s.toFixed(0)} s · attempt ${job.attempt + 1}`;
  const src = job.operators.filter((o) => o.kind === "source");
  const snk = job.operators.filter((o) => o.kind === "sink");
  const sum = (xs, f) => xs.reduce((a, o) => a + o[f], 0);
  $("rate-in").textContent = rate(sum(src, "records_out_per_s"));
  $("total-in").textContent = `${num(sum(src, "records_out"))} read by sources`;
  $("rate-out").textContent = rate(sum(snk, "records_in_per_s"));
  $("total-out").textContent = `${num(sum(snk, "records_in"))} written to sinks`;
  const ck = job.checkpoints, last = ck.last_completed;
  $("last-ckpt").textContent = last ? `#${last.id} · ${ms(last.duration_ms)}` : "none yet";
  $("ckpt-counts").textContent = `${ck.completed} completed · ${ck.failed} failed · ${ck.in_progress} in progress` +
    (last ? ` · ${bytes(last.size)} · ${ago(last.trigger_time)}` : "");
  $("restart-count").textContent = String(job.restarts.length);
  $("last-restore").textContent = job.last_restore
    ? `last restore: checkpoint ${job.last_restore.checkpoint} in ${job.last_restore.duration_s.toFixed(2)} s, ${ago(job.last_restore.time)}`
    : "no restore";
  $("endpoints").textContent = job.endpoints.metrics ? `Prometheus: ${job.endpoints.metrics}` : "";
  drawGraph(job);
  drawChart(ck.history, job.restarts);
  fillCheckpoints(ck.history);
  fillRestarts(job.restarts);
}

async function poll() {
  try {
    const resp = await fetch("/api/job", { credentials: "same-origin", cache: "no-store" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    render(await resp.json());
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = `not updated (${e.message}): the job may have ended.`;
  }
}

async function savepoint() {
  const b = $("savepoint");
  b.disabled = true;
  $("savepoint-result").textContent = "taking a savepoint…";
  try {
    const resp = await fetch("/api/savepoint", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify({ stop: false }) });
    const doc = await resp.json();
    $("savepoint-result").textContent = resp.ok ? `savepoint: ${doc.path}` : `failed: ${doc.error}`;
  } catch (e) {
    $("savepoint-result").textContent = `failed: ${e.message}`;
  } finally {
    b.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("savepoint").addEventListener("click", savepoint);
  poll();
  setInterval(poll, 1000);
});
