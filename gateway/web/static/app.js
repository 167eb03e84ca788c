// ems-gateway live page: vanilla JS, no build step. Live figures over server-sent events (/api/stream).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let csrf = "";
  let stream = null;
  let last = null;
  const COLORS = ["#1976d2", "#c62828", "#2e7d32"];

  function fmt(v, nd) {
    if (v === null || v === undefined) return "–";
    return Number(v).toFixed(nd === undefined ? 1 : nd);
  }
  function fmtList(vs) { return vs ? vs.map((v) => fmt(v)).join(" / ") : "–"; }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function row(cells, attrs) {
    const tr = document.createElement("tr");
    for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", String(c)));
    if (attrs) for (const k in attrs) tr.setAttribute(k, attrs[k]);
    return tr;
  }
  function fill(tableId, rows) {
    const tb = $(tableId).tBodies[0];
    const frag = document.createDocumentFragment();
    for (const r of rows) frag.appendChild(r);
    tb.replaceChildren(frag);
  }

  async function api(path, opts) {
    opts = opts || {};
    const headers = opts.headers || {};
    if (opts.method === "POST") {
      headers["Content-Type"] = "application/json";
      if (csrf) headers["X-CSRF-Token"] = csrf;
    }
    const r = await fetch(path, { ...opts, headers, credentials: "same-origin" });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    return { status: r.status, body };
  }

  // -- session ------------------------------------------------------------------------------
  async function init() {
    const s = await api("/api/session");
    if (s.status === 200) start(s.body); else showLogin();
  }
  function showLogin() {
    $("login").hidden = false;
    $("main").hidden = true;
    $("logout").hidden = true;
    if (stream) { stream.close(); stream = null; }
  }
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("/api/login", { method: "POST",
      body: JSON.stringify({ user: $("login-user").value, password: $("login-password").value }) });
    if (r.status === 200) {
      $("login-error").textContent = "";
      $("login-password").value = "";
      const s = await api("/api/session");
      start(s.body);
    } else {
      $("login-error").textContent = (r.body && r.body.error) || ("login failed (" + r.status + ")");
    }
  });
  $("logout").addEventListener("click", async () => { await api("/api/logout", { method: "POST" }); csrf = ""; showLogin(); });

  function start(s) {
    csrf = s.csrf || "";
    $("who").textContent = s.user + " (" + s.role + ")";
    $("logout").hidden = !s.auth_required;
    $("login").hidden = true;
    $("main").hidden = false;
    if (!stream) {
      stream = new EventSource("/api/stream");
      stream.onmessage = (e) => { last = JSON.parse(e.data); render(last); };
      stream.onerror = async () => {
        const r = await api("/api/session");
        if (r.status === 401) showLogin();
      };
    }
    loadEvents(); loadHistory(); loadCommissioning();
  }

  // -- live ---------------------------------------------------------------------------------
  function render(doc) {
    const s = doc.site;
    $("site-name").textContent = s.name;
    const mode = $("mode");
    mode.textContent = s.mode;
    mode.className = "badge " + s.mode;
    $("budget-source").textContent = s.budget.source;
    $("tick-age").textContent = s.tick_age_s === null ? "" : "tick " + fmt(s.tick_age_s, 1) + " s ago";
    const sv = s.service;
    fill("service", s.phases.map((ph, i) => {
      const m = sv.measured_a ? sv.measured_a[i] : null;
      const lim = s.budget.per_phase[i].limit_a;
      const bar = el("span", undefined, "bar");
      const inner = el("span");
      inner.style.width = (m === null || !lim ? 0 : Math.min(100, 100 * m / lim)) + "%";
      bar.appendChild(inner);
      const td = el("td"); td.appendChild(bar);
      const tr = row([ph, fmt(m), sv.allocated_a ? fmt(sv.allocated_a[i]) : "–", fmt(lim),
        sv.headroom_a ? fmt(sv.headroom_a[i]) : "–", s.budget.per_phase[i].source, td], { "data-phase": ph });
      tr.cells[1].id = "svc-measured-" + ph;
      tr.cells[3].id = "svc-limit-" + ph;
      return tr;
    }));
    const b = Object.entries(s.binding).map(([k, n]) => k + ": " + n).join(", ");
    $("binding").textContent = b ? "capping constraints: " + b : "";
    fill("circuits", doc.circuits.map((c) => row([c.id, c.kind, c.state, fmt(c.limit_a), fmtList(c.measured_a),
      fmtList(c.allocated_a), fmtList(c.headroom_a)], { "data-id": c.id })));
    const f = $("charger-filter").value.trim().toLowerCase();
    const chs = f ? doc.chargers.filter((c) => (c.id + " " + c.circuit + " " + c.state + " " + (c.reason || "")).toLowerCase().includes(f)) : doc.chargers;
    $("charger-count").textContent = "(" + s.chargers.online + " online, " + s.chargers.charging + " charging of " + s.chargers.configured + ")";
    fill("chargers", chs.map((c) => {
      const draw = c.unit === "W" ? fmt(c.draw_w === null ? null : c.draw_w / 1000) + " kW" : fmtList(c.draw_a) + " A";
      const lim = c.limit === null ? "–" : (c.unit === "W" ? fmt(c.limit / 1000) + " kW" : fmt(c.limit) + " A");
      const tr = row([c.id, c.circuit, c.online ? c.state : "offline", lim, draw, c.reason || "",
        c.session_energy_wh === null ? "–" : fmt(c.session_energy_wh / 1000, 2),
        c.controlled === null ? "–" : (c.controlled ? "yes" : "no")], { "data-id": c.id });
      if (c.noncompliant) tr.className = "bad";
      return tr;
    }));
    fill("meters", doc.meters.map((m) => {
      const tr = row([m.id, m.circuit, m.health, fmt(m.age_s, 1), fmtList(m.current_a), m.reason], { "data-id": m.id });
      tr.cells[2].className = m.health === "ok" ? "ok" : "bad";
      return tr;
    }));
    const sel = $("hist-charger");
    if (sel.options.length !== doc.chargers.length) {
      const cur = sel.value;
      sel.replaceChildren(...doc.chargers.map((c) => { const o = el("option", c.id); o.value = c.id; return o; }));
      if (cur) sel.value = cur;
      loadChargerHistory();
    }
  }
  $("charger-filter").addEventListener("input", () => { if (last) render(last); });

  // -- history (hand-written SVG) -----------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function chart(svg, series, unit) {
    const W = svg.viewBox.baseVal.width, H = svg.viewBox.baseVal.height;
    const L = 50, R = 10, T = 20, B = 25;
    svg.replaceChildren();
    let t0 = Infinity, t1 = -Infinity, vmax = 0, n = 0;
    for (const s of series) for (const [t, v] of s.points) {
      if (v === null) continue;
      t0 = Math.min(t0, t); t1 = Math.max(t1, t); vmax = Math.max(vmax, v); n++;
    }
    if (!n) { svg.appendChild(svgEl("text", { x: L, y: H / 2 }, "no history yet")); svg.dataset.points = "0"; return; }
    if (t1 === t0) t1 = t0 + 1;
    vmax = vmax > 0 ? vmax * 1.1 : 1;
    const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
    const y = (v) => T + (H - T - B) * (1 - v / vmax);
    svg.appendChild(svgEl("line", { x1: L, y1: y(0), x2: W - R, y2: y(0), class: "axis" }));
    svg.appendChild(svgEl("line", { x1: L, y1: T, x2: L, y2: y(0), class: "axis" }));
    for (let i = 0; i <= 4; i++) {
      const v = vmax * i / 4;
      svg.appendChild(svgEl("text", { x: 2, y: y(v) + 4 }, v.toFixed(vmax < 10 ? 1 : 0) + " " + unit));
      const t = t0 + (t1 - t0) * i / 4;
      const hhmm = new Date(t * 1000).toTimeString().slice(0, t1 - t0 < 600 ? 8 : 5);
      svg.appendChild(svgEl("text", { x: Math.min(x(t) - 18, W - 50), y: H - 6 }, hhmm));
    }
    let lx = L + 10;
    for (const s of series) {
      const pts = s.points.filter((p) => p[1] !== null).map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ");
      svg.appendChild(svgEl("polyline", { points: pts, stroke: s.color, "stroke-dasharray": s.dash || "", "data-series": s.name }));
      svg.appendChild(svgEl("rect", { x: lx, y: 4, width: 10, height: 10, fill: s.color }));
      svg.appendChild(svgEl("text", { x: lx + 14, y: 13 }, s.name));
      lx += 14 + 7 * s.name.length + 16;
    }
    svg.dataset.points = String(n);
  }
  async function loadHistory() {
    const h = $("hist-hours").value;
    const r = await api("/api/history/site?hours=" + h);
    if (r.status !== 200) return;
    const d = r.body, series = [];
    d.phases.forEach((ph, i) => {
      const c = COLORS[i % COLORS.length];
      series.push({ name: ph + " measured", color: c, points: d.samples.map((s) => [s.ts, s.measured_a[i]]) });
      series.push({ name: ph + " allocated", color: c, dash: "4 3", points: d.samples.map((s) => [s.ts, s.allocated_a[i]]) });
    });
    series.push({ name: "limit", color: "#000", dash: "1 3", points: d.samples.map((s) => [s.ts, s.limit_a[0]]) });
    chart($("chart-site"), series, "A");
    loadChargerHistory();
  }
  async function loadChargerHistory() {
    const id = $("hist-charger").value;
    if (!id) return;
    const r = await api("/api/history/charger/" + encodeURIComponent(id) + "?hours=" + $("hist-hours").value);
    if (r.status !== 200) return;
    const d = r.body;
    chart($("chart-charger"), [
      { name: id + " limit", color: "#000", dash: "4 3", points: d.samples.map((s) => [s.ts, s.limit]) },
      { name: id + " draw", color: "#1976d2", points: d.samples.map((s) => [s.ts, s.draw]) },
    ], d.unit);
  }
  $("hist-hours").addEventListener("change", loadHistory);
  $("hist-charger").addEventListener("change", loadChargerHistory);

  // -- events ---------------------------------------------------------------------------------
  async function loadEvents() {
    const kind = $("event-kind").value, q = $("event-q").value.trim();
    const r = await api("/api/events?limit=200&kind=" + encodeURIComponent(kind) + "&q=" + encodeURIComponent(q));
    if (r.status !== 200) return;
    const ks = $("event-kind");
    if (ks.options.length === 1) for (const k of r.body.kinds) { const o = el("option", k); o.value = k; ks.appendChild(o); }
    fill("events", r.body.events.map((e) => row([new Date(e.ts * 1000).toLocaleTimeString(), e.kind, e.name,
      Object.entries(e.fields).map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join(" ")],
      { "data-kind": e.kind, "data-name": e.name })));
  }
  $("event-kind").addEventListener("change", loadEvents);
  $("event-q").addEventListener("input", loadEvents);

  $("config").parentElement.addEventListener("toggle", (ev) => { if (ev.target.open) loadConfig(); });
  async function loadConfig() {
    const r = await api("/api/config");
    if (r.status === 200) $("config").textContent = JSON.stringify(r.body, null, 2);
  }

  // -- technician -----------------------------------------------------------------------------
  function result(r, what) {
    const ok = r.status === 200;
    $("action-result").className = ok ? "ok" : "error";
    $("action-result").textContent = what + ": " + (ok ? "done " + JSON.stringify(r.body) : "refused (" + r.status + ") " + ((r.body && r.body.error) || ""));
    loadEvents();
  }
  $("cap-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("/api/site-cap", { method: "POST", body: JSON.stringify({
      limit_a: Number($("cap-limit").value), duration_s: Number($("cap-duration").value) }) });
    result(r, "site cap");
  });
  $("cap-clear").addEventListener("click", async () => result(await api("/api/site-cap", { method: "POST", body: JSON.stringify({ clear: true }) }), "clear cap"));

  // -- commissioning --------------------------------------------------------------------------
  let commRunning = false;
  $("comm-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const steps = [...document.querySelectorAll("#comm-form input[name=step]:checked")].map((c) => c.value);
    const r = await api("/api/commissioning/start", { method: "POST", body: JSON.stringify({ steps }) });
    const ok = r.status === 202;
    $("action-result").className = ok ? "ok" : "error";
    $("action-result").textContent = "commissioning: " + (ok ? "started " + steps.join(", ") : "refused (" + r.status + ") " + ((r.body && r.body.error) || ""));
    loadCommissioning();
  });
  $("comm-cancel").addEventListener("click", async () => {
    const r = await api("/api/commissioning/cancel", { method: "POST", body: "{}" });
    if (r.status !== 200) result(r, "cancel commissioning");
    loadCommissioning();
  });
  async function loadCommissioning() {
    const r = await api("/api/commissioning");
    if (r.status !== 200) return;
    const c = r.body;
    $("comm-state").textContent = "(" + c.state + ")";
    $("commissioning").dataset.state = c.state;
    let text = "";
    if (c.state !== "idle" && c.state !== "unavailable") {
      const done = (c.steps_done || []).map((s) => s.step + (s.ok ? " ok" : " FAILED") + " " + fmt(s.s) + " s").join(", ");
      text = c.steps.join(", ") + " by " + c.user + ": " + c.state + (c.current ? " (" + c.current + "…)" : "") +
        (done ? "; done: " + done : "") + (c.verdict ? "; verdict: " + c.verdict : "") + (c.error ? "; " + c.error : "");
      if (c.todo && c.todo.length) text += " — " + c.todo.join(" · ");
    }
    $("comm-status").textContent = text;
    const wasRunning = commRunning;
    commRunning = c.state === "running";
    if (wasRunning !== commRunning || !$("reports").tBodies[0].rows.length) loadReports();
    if (wasRunning && !commRunning) loadEvents();
  }
  async function loadReports() {
    const r = await api("/api/commissioning/reports");
    if (r.status !== 200) return;
    fill("reports", r.body.reports.map((x) => {
      const files = el("td");
      for (const f of x.files) {
        const a = el("a", f.replace("report.", ""));
        a.href = "/api/commissioning/reports/" + encodeURIComponent(x.id) + "/" + f;
        a.target = "_blank"; a.rel = "noopener";
        a.className = "report-link";
        files.appendChild(a); files.appendChild(document.createTextNode(" "));
      }
      const tr = row([x.id, x.date || "–", x.verdict || "–", files], { "data-id": x.id });
      tr.cells[2].className = x.verdict === "pass" ? "ok" : (x.verdict ? "bad" : "");
      return tr;
    }));
  }
  let commTick = 0;  // every second while a run goes on, else every 5 s
  setInterval(() => { if (!$("main").hidden && (commRunning || ++commTick % 5 === 0)) loadCommissioning(); }, 1000);

  setInterval(() => { if (!$("main").hidden) loadEvents(); }, 5000);
  setInterval(() => { if (!$("main").hidden) loadHistory(); }, 30000);
  init();
})();
