"""The HTML of the router's ``/dashboard``: one page, inline CSS and JS, nothing fetched
but ``dashboard/state`` (no build step, no CDN: it works on a machine without internet).

Kept as a Python string so it ships inside the package without package-data rules.
Rows carry ``data-url`` and the body ``data-renders`` (successful refreshes) for tests.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pdcore router</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 0; background: #f4f6f9; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 10px 18px; display: flex;
           gap: 26px; align-items: baseline; flex-wrap: wrap; }
  header h1 { font-size: 18px; margin: 0; }
  .kpi b { font-size: 18px; margin-left: 4px; }
  #updated { color: #aab; margin-left: auto; }
  #error { display: none; background: #fde8e8; color: #9b1c1c; padding: 8px 18px; }
  main { padding: 12px 18px; }
  section { background: #fff; border: 1px solid #dde1e7; border-radius: 6px;
            margin-bottom: 14px; padding: 8px 12px; overflow-x: auto; }
  h2 { font-size: 15px; margin: 4px 0 8px; text-transform: capitalize; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 5px 7px; border-bottom: 1px solid #eef0f3;
           white-space: nowrap; }
  th { font-weight: 600; color: #556; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  .dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%;
         margin-right: 6px; vertical-align: -1px; }
  .closed { background: #1f9d55; } .open { background: #d64545; }
  .half_open { background: #e3a008; }
  .muted { color: #889; } .err { color: #9b1c1c; white-space: normal; }
  svg.spark { vertical-align: middle; background: #f7f9fc; }
  [title] { cursor: help; }
  #legend dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 14px;
               margin: 4px 0; }
  #legend dt { font-weight: 600; color: #556; } #legend dd { margin: 0; }
</style>
</head>
<body data-renders="0">
<header>
  <h1>pdcore router</h1>
  <span class="kpi">workers<b id="k-workers">-</b></span>
  <span class="kpi">healthy<b id="k-healthy">-</b></span>
  <span class="kpi" id="kpi-inflight">requests in flight<b id="k-inflight">-</b></span>
  <span class="kpi" id="kpi-rate">KV sent<b id="k-rate">-</b></span>
  <span id="updated">connecting...</span>
</header>
<div id="error"></div>
<main>
<div id="roles"></div>
<section id="legend">
  <h2>What the columns mean</h2>
  <dl>
    <dt>requests in flight</dt><dd>requests the router is answering now; a PD request
      is on a prefill and a decode at once and counts once (the worker tables count it on
      each)</dd>
    <dt>in flight</dt><dd>this router's requests on the worker now</dd>
    <dt>load</dt><dd>what load-based policies compare: in flight plus the running and
      waiting requests the worker reported at its last health check</dd>
    <dt>health (circuit)</dt><dd>closed: in rotation; open: taken out after consecutive
      failures, until its cooldown ends; half_open: the next request is a trial that
      closes or reopens it</dd>
    <dt>bootstrap q, prealloc q, transfer q, local prefill</dt><dd>requests in each PD
      queue of the worker</dd>
    <dt>held pages</dt><dd>KV cache pages held for transfers in progress</dd>
    <dt>rooms ok, failed</dt><dd>PD transfers completed, and failed (bootstrap or
      transfer), since the worker started</dd>
    <dt>KV sent/s</dt><dd>KV cache bytes per second the prefill sent, between its last
      two health checks (every <span id="interval">-</span> s): 0 B/s while requests wait
      in queues means nothing finished sending in that window</dd>
    <dt>speed/request</dt><dd>the transfer speed of recent requests, as the worker
      measured it</dd>
  </dl>
</section>
</main>
<script>
"use strict";
const STATE_URL = "dashboard/state";  // relative: also right behind a path prefix
let refreshMs = 1000;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function rate(gbs) {
  if (!gbs) return "0 B/s";
  if (gbs >= 1) return gbs.toFixed(2) + " GB/s";
  if (gbs >= 1e-3) return (gbs * 1e3).toFixed(1) + " MB/s";
  return (gbs * 1e6).toFixed(1) + " KB/s";
}

function sparkline(history) {
  const w = 110, h = 24, ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  const values = history.map((s) => s[1]);
  if (values.length > 1) {
    const max = Math.max(...values) || 1;
    const step = w / (values.length - 1);
    const points = values.map((v, i) =>
      (i * step).toFixed(1) + "," + (h - 2 - (v / max) * (h - 4)).toFixed(1));
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#2563eb");
    line.setAttribute("stroke-width", "1.5");
    svg.append(line);
  }
  return svg;
}

// What each number means, as tooltips (the legend under the tables says the same).
const TIPS = {
  "in flight": "this router's requests on the worker now",
  "load": "in flight + running and waiting requests the worker reported at its last "
    + "health check; load-based policies compare it",
  "health": "circuit closed: in rotation; open: out after consecutive failures until its "
    + "cooldown ends; half_open: the next request is a trial",
  "bootstrap q": "requests waiting for decode to connect (requests)",
  "prealloc q": "requests waiting for KV pages on decode (requests)",
  "transfer q": "requests whose KV is being sent or received (requests)",
  "local prefill": "short prompts decode prefilled itself (requests)",
  "held pages": "KV cache pages held for transfers in progress",
  "rooms ok": "transfers completed since the worker started",
  "failed": "bootstrap and transfer failures since the worker started",
  "KV sent/s": "KV bytes per second sent, between the last two health checks",
  "speed/request": "transfer speed of recent requests, as the worker measured it",
};
document.getElementById("kpi-inflight").title = "requests the router is answering now; "
  + "a PD request counts once (its decode side), not once per worker";
document.getElementById("kpi-rate").title = "KV cache bytes per second all prefill workers "
  + "sent, between their last two health checks";

const QUEUES = {
  prefill: [["bootstrap_queue", "bootstrap q"], ["transfer_queue", "transfer q"]],
  decode: [["prealloc_queue", "prealloc q"], ["transfer_queue", "transfer q"],
    ["local_prefill_reqs", "local prefill"]],
  regular: [],
};

function roleTable(role, workers) {
  const queues = QUEUES[role] || [];
  const pd = role !== "regular", sends = role === "prefill";
  const heads = ["worker", "health", "in flight", "load", ...queues.map((q) => q[1])];
  if (pd) heads.push("held pages", "rooms ok", "failed");
  if (sends) heads.push("KV sent/s", "speed/request", "sent/s history");
  heads.push("last error");
  const text = new Set(["worker", "health", "sent/s history", "last error"]);
  const head = el("tr", {}, ...heads.map((h) => el("th",
    {...(text.has(h) ? {} : {class: "num"}), ...(TIPS[h] ? {title: TIPS[h]} : {})}, h)));
  const num = (v) => el("td", {class: "num"}, v ?? "-");
  const rows = workers.map((w) => {
    const p = w.pd || {};
    const cells = [
      el("td", {}, w.url),
      el("td", {title: TIPS.health}, el("span", {class: "dot " + w.circuit}),
        w.healthy ? "healthy" : "down",
        el("span", {class: "muted"}, " (circuit " + w.circuit + ")")),
      num(w.in_flight),
      num(w.load),
      ...queues.map((q) => num(p[q[0]])),
    ];
    if (pd) {
      const failed = (p.bootstrap_failed ?? 0) + (p.transfer_failed ?? 0);
      cells.push(num(p.held_pages), num(p.rooms_succeeded), num(failed));
    }
    if (sends) {
      cells.push(num(rate(w.kv_transfer_gb_s)), num(rate(p.recent_transfer_speed_gb_s)),
        el("td", {}, sparkline(w.kv_history || [])));
    }
    cells.push(el("td", {class: "err"}, w.last_error || ""));
    return el("tr", {class: "worker-row", "data-url": w.url, "data-role": role}, ...cells);
  });
  return el("section", {id: "role-" + role}, el("h2", {}, role + " (" + workers.length + ")"),
    el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
}

function render(state) {
  const t = state.totals;
  document.getElementById("k-workers").textContent = t.workers;
  document.getElementById("k-healthy").textContent = t.healthy + "/" + t.workers;
  document.getElementById("k-inflight").textContent = t.in_flight;
  document.getElementById("interval").textContent = state.router.health_check_interval_secs;
  document.getElementById("k-rate").textContent = rate(t.kv_transfer_gb_s);
  const roles = Object.entries(state.roles).filter(([, ws]) => ws.length);
  document.getElementById("roles").replaceChildren(...roles.map(([r, ws]) => roleTable(r, ws)));
  const when = new Date(state.router.time * 1000).toLocaleTimeString();
  document.getElementById("updated").textContent =
    "v" + state.router.version + " | updated " + when;
  document.body.dataset.renders = Number(document.body.dataset.renders) + 1;
  refreshMs = state.router.refresh_ms || refreshMs;
}

async function tick() {
  const banner = document.getElementById("error");
  try {
    const r = await fetch(STATE_URL, {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    banner.style.display = "none";
  } catch (e) {
    banner.textContent = "cannot reach the router: " + e.message;
    banner.style.display = "block";
  } finally {
    setTimeout(tick, refreshMs);
  }
}
tick();
</script>
</body>
</html>
"""
