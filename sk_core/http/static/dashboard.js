// The usage dashboard: polls the admin API with the operator's key and draws what it
// answers. Numbers are formatted from the integer nano-USD fields exactly as the admin
// CLI prints them (6 decimals, half up), so the page and `admin usage` agree digit for digit.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const API = "/api/v1/admin/tenants";
  const state = { key: sessionStorage.getItem("skf-admin-key") || "", tenants: [], selected: null, timer: null, charts: [] };
  const $ = (id) => document.getElementById(id);

  // --- formatting ----------------------------------------------------------------------
  function usd(nano) {
    if (nano !== 0 && Math.abs(nano) < 500) return (nano < 0 ? "-" : "") + "<0.000001";
    const micro = Math.sign(nano) * Math.round(Math.abs(nano) / 1000);
    const abs = Math.abs(micro);
    return (micro < 0 ? "-" : "") + Math.floor(abs / 1e6) + "." + String(abs % 1e6).padStart(6, "0");
  }
  const pct = (part, whole) => (whole > 0 ? (100 * part) / whole : part > 0 ? 100 : 0);
  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function cell(row, text, field, cls) {
    const td = el("td", text, cls);
    if (field) td.dataset.field = field;
    row.appendChild(td);
    return td;
  }

  // --- data ----------------------------------------------------------------------------
  async function get(path) {
    const response = await fetch(path, { headers: { Authorization: "Bearer " + state.key }, cache: "no-store" });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
      const error = new Error(response.status + ": " + detail);
      error.status = response.status;
      throw error;
    }
    return response;
  }

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  }

  async function refresh() {
    try {
      const data = await (await get(API)).json();
      state.tenants = data.tenants;
      $("overview").hidden = false;
      $("as-of").textContent = "as of " + data.as_of.slice(0, 19).replace("T", " ") + " UTC";
      drawTenants();
      if (state.selected) await loadDetail(state.selected);
      status("Connected; refreshing every " + REFRESH_MS / 1000 + " s.", false);
    } catch (error) {
      status("Refused: " + error.message, true);
      if (error.status === 401 || error.status === 403) {
        stop();
        $("overview").hidden = true;
        $("detail").hidden = true;
      }
    }
  }

  function start() {
    stop();
    refresh();
    state.timer = setInterval(refresh, REFRESH_MS);
  }
  function stop() {
    if (state.timer) clearInterval(state.timer);
    state.timer = null;
  }

  // --- overview ------------------------------------------------------------------------
  function used(window) { return window.spent_nano + window.held_nano; }

  function bar(row, window, field) {
    const td = cell(row, null, field);
    const box = el("span", null, "bar");
    const fill = el("span", null, "fill");
    const held = el("span", null, "held");
    const spentPct = Math.min(100, pct(window.spent_nano, window.budget_nano));
    const heldPct = Math.min(100 - spentPct, pct(window.held_nano, window.budget_nano));
    fill.style.width = spentPct.toFixed(2) + "%";
    held.style.left = spentPct.toFixed(2) + "%";
    held.style.width = heldPct.toFixed(2) + "%";
    // The share used or held: what the highlight and the "% of budget" order go by.
    box.dataset.used = pct(used(window), window.budget_nano).toFixed(2);
    box.title = box.dataset.used + "% of the budget spent or held";
    box.append(fill, held);
    td.append(box, el("span", usd(window.spent_nano) + " / " + usd(window.budget_nano), "money"));
  }

  function drawTenants() {
    const order = $("sort").value;
    const key = (t) => (order === "pct" ? pct(used(t.day), t.day.budget_nano) : t.day.spent_nano);
    const rows = [...state.tenants].sort((a, b) => key(b) - key(a) || a.tenant_id.localeCompare(b.tenant_id));
    const body = $("tenants").tBodies[0];
    body.replaceChildren();
    for (const t of rows) {
      const row = el("tr");
      row.dataset.tenant = t.tenant_id;
      const share = pct(used(t.day), t.day.budget_nano);
      if (share >= 100) row.classList.add("over");
      else if (share >= 80) row.classList.add("hot");
      if (t.tenant_id === state.selected) row.classList.add("selected");
      cell(row, t.tenant_id, "tenant");
      cell(row, t.status, "status");
      bar(row, t.day, "day");
      cell(row, usd(t.day.remaining_nano), "day-remaining", "num");
      bar(row, t.month, "month");
      cell(row, usd(t.month.remaining_nano), "month-remaining", "num");
      cell(row, t.minute.requests + " / " + t.minute.requests_limit, "rpm", "num");
      cell(row, t.minute.tokens + " / " + t.minute.tokens_limit, "tpm", "num");
      cell(row, t.concurrency.in_flight + " / " + t.concurrency.limit, "in-flight", "num");
      row.addEventListener("click", () => { state.selected = t.tenant_id; drawTenants(); loadDetail(t.tenant_id); });
      body.appendChild(row);
    }
  }

  // --- one tenant ----------------------------------------------------------------------
  const WINDOW_ROWS = [
    ["spent USD", "spent_nano", true], ["held USD", "held_nano", true], ["leased USD", "leased_nano", true],
    ["budget USD", "budget_nano", true], ["remaining USD", "remaining_nano", true], ["requests", "requests", false],
    ["prompt tokens", "prompt_tokens", false], ["completion tokens", "completion_tokens", false],
    ["expired holds", "expired_holds", false], ["expired USD", "expired_nano", true], ["overrun USD", "overrun_nano", true],
  ];

  async function loadDetail(tenantId) {
    const data = await (await get(API + "/" + encodeURIComponent(tenantId))).json();
    if (state.selected !== tenantId) return; // another tenant was picked meanwhile
    $("detail").hidden = false;
    $("detail-title").textContent = "Tenant " + data.tenant_id + " (" + data.status + "), in flight now: " + data.usage.concurrency.in_flight + " (slots leased to instances: " + data.usage.concurrency.leased_slots + ")";
    const head = el("tr");
    head.append(el("th", "tenant " + data.tenant_id), ...data.windows.map((w) => el("th", w.period + " " + w.label, "num")));
    $("windows").tHead.replaceChildren(head);
    const body = $("windows").tBodies[0];
    body.replaceChildren();
    for (const [label, field, money] of WINDOW_ROWS) {
      const row = el("tr");
      row.dataset.row = label;
      cell(row, label);
      for (const w of data.windows) cell(row, money ? usd(w[field]) : w[field], w.period, "num");
      body.appendChild(row);
    }
    drawCharts(data);
    table("functions", data.by_function, (f) => [f.function, f.calls, f.cost_usd.toFixed(6), f.p50_ms ?? "-", f.p95_ms ?? "-"], [1, 2, 3, 4]);
    table("recent", data.recent, (c) => [
      (c.time || "").slice(0, 19).replace("T", " "), c.function || "-", c.status, c.code || "",
      c.prompt_tokens + "/" + c.completion_tokens, c.cost_usd.toFixed(6), Math.round(c.latency_ms), c.trace_id,
    ], [2, 4, 5, 6]);
    table("expired", data.expired, (x) => [x.kind, x.id, x.function || "-", x.key_id || "-", x.charged_usd.toFixed(6), (x.charged_at || "").slice(0, 19)], [4], "flag");
  }

  function table(id, items, cells, numeric, rowClass) {
    const body = $(id).tBodies[0];
    body.replaceChildren();
    for (const item of items) {
      const row = el("tr", null, rowClass);
      cells(item).forEach((value, i) => cell(row, value, null, numeric.includes(i) ? "num" : ""));
      body.appendChild(row);
    }
  }

  function chart(target, opts, data) {
    const node = $(target);
    node.replaceChildren();
    state.charts.push(new uPlot({ width: 520, height: 200, ...opts }, data, node));
  }

  const PALETTE = ["#b42318", "#dc6803", "#7a5af8", "#0e9384", "#344054", "#c11574"];

  function drawCharts(data) {
    for (const c of state.charts) c.destroy();
    state.charts = [];
    const m = data.per_minute;
    chart("chart-minute", {
      series: [{}, { label: "requests", stroke: "#3358d4", scale: "n" }, { label: "tokens", stroke: "#0e9384", scale: "tok" }],
      axes: [{}, { scale: "n" }, { scale: "tok", side: 1, grid: { show: false } }],
    }, [m.t, m.calls, m.tokens]);
    const d = data.spend_by_day;
    chart("chart-days", {
      series: [{}, { label: "spent USD", stroke: "#3358d4", fill: "#a9bcf5", paths: uPlot.paths.bars({ size: [0.7, 40] }), points: { show: false } },
        { label: "daily budget", stroke: "#1d2330", dash: [6, 4], points: { show: false } }],
      // Cents and less are common here: three significant digits, not rounded to 0.
      axes: [{}, { values: (u, splits) => splits.map((v) => (v === 0 ? "0" : v.toPrecision(3))), size: 70 }],
    }, [d.t, d.spent_usd, d.t.map(() => d.budget_usd)]);
    const h = data.per_hour;
    const codes = Object.keys(h.codes);
    chart("chart-codes", {
      series: [{}, ...codes.map((code, i) => ({ label: code, stroke: PALETTE[i % PALETTE.length] }))].concat(codes.length ? [] : [{ label: "no refusals", stroke: "#98a2b3" }]),
    }, [h.t, ...(codes.length ? codes.map((c) => h.codes[c]) : [h.t.map(() => 0)])]);
  }

  async function downloadCsv() {
    if (!state.selected) return;
    try {
      const response = await get(API + "/" + encodeURIComponent(state.selected) + "/usage.csv");
      const name = (response.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
      const link = el("a");
      link.href = URL.createObjectURL(await response.blob());
      link.download = name ? name[1] : "usage.csv";
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    } catch (error) {
      status("CSV refused: " + error.message, true);
    }
  }

  // --- wiring --------------------------------------------------------------------------
  $("key").value = state.key;
  $("connect").addEventListener("click", () => {
    state.key = $("key").value.trim();
    sessionStorage.setItem("skf-admin-key", state.key);
    start();
  });
  $("key").addEventListener("keydown", (event) => { if (event.key === "Enter") $("connect").click(); });
  $("sort").addEventListener("change", drawTenants);
  $("csv").addEventListener("click", downloadCsv);
  if (state.key) start();
})();
