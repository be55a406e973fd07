// The usage dashboard: polls the admin API with the operator's key and draws what it
// answers. Money arrives as integer nano-USD and is shown to the cent with grouping
// ($100,000.00; amounts under a cent with two significant digits), the exact stored
// figure in the element's title (hover), so nothing is lost to rounding.
"use strict";

(function () {
  const REFRESH_MS = 5000;
  const API = "/api/v1/admin/tenants";
  const state = { key: sessionStorage.getItem("skf-admin-key") || "", tenants: [], selected: null, timer: null, charts: [], overviewChart: null, data: null };
  const $ = (id) => document.getElementById(id);

  // --- formatting ----------------------------------------------------------------------
  const NANO = 1e9;
  const grouped = (whole) => whole.toLocaleString("en-US");

  // For people: $1,234.56; under a cent, two significant digits ($0.000012).
  function usd(nano) {
    const sign = nano < 0 ? "-" : "";
    const abs = Math.abs(nano);
    const cents = Math.round(abs / 1e7); // integer nano / 1e7 is exact at every tie: half up
    if (abs === 0 || cents > 0) return sign + "$" + grouped(Math.floor(cents / 100)) + "." + String(cents % 100).padStart(2, "0");
    const value = abs / NANO;
    const digits = Math.min(9, 1 - Math.floor(Math.log10(value)));
    return sign + "$" + Number(value.toPrecision(2)).toFixed(digits);
  }
  // Exactly as stored: nine decimals, trailing zeros beyond the cents dropped.
  function usdExact(nano) {
    const abs = Math.abs(nano);
    const fraction = String(abs % NANO).padStart(9, "0").replace(/0{1,7}$/, "");
    return (nano < 0 ? "-" : "") + "$" + grouped(Math.floor(abs / NANO)) + "." + fraction;
  }
  const nanoOf = (usdFloat) => Math.round(usdFloat * NANO); // the API's *_usd floats are nano / 1e9
  function money(tag, nano, cls) {
    const node = el(tag, usd(nano), cls ? cls + " usd" : "usd");
    node.title = usdExact(nano);
    node.dataset.nano = String(nano);
    return node;
  }
  const count = (n) => grouped(n);
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
      state.data = data;
      state.tenants = data.tenants;
      $("overview").hidden = false;
      $("as-of").textContent = "as of " + when(data.as_of) + " UTC";
      $("charts-as-of").textContent = data.charts_as_of ? "(as of " + when(data.charts_as_of).slice(11) + ")" : "";
      drawTotals(data.totals);
      drawSpendChart(data.spend_by_hour);
      drawRefusals(data.refusals_by_code);
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
  const when = (iso) => (iso || "").slice(0, 19).replace("T", " ");

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
  // Spent, or held by calls admitted; budget leased to instances is not used (shown apart).
  function used(window) { return window.spent_nano + window.held_nano - window.leased_nano; }

  // "n / limit", and what sits leased to instances apart (it counts against the limit).
  function ofLimit(row, used, limit, leased, field, what) {
    const td = cell(row, count(used) + " / " + count(limit), field, "num");
    if (leased > 0) {
      td.appendChild(el("span", " +" + count(leased) + " leased", "leased"));
      td.title = count(leased) + " " + what + " leased to instances (not used; they count against the limit)";
    }
  }

  function card(name, big, sub) {
    const node = document.querySelector('#totals [data-total="' + name + '"]');
    node.querySelector(".big").replaceChildren(big);
    if (sub !== undefined) node.querySelector(".sub").replaceChildren(...sub);
  }

  function drawTotals(totals) {
    for (const period of ["day", "month"]) {
      const w = totals[period];
      const share = pct(used(w), w.budget_nano);
      card(period, money("span", w.spent_nano), [
        "of ", money("span", w.budget_nano), " budgeted (" + share.toFixed(1) + " % spent or held by calls)",
      ]);
      document.querySelector('#totals [data-total="' + period + '"]').title =
        "Leased to instances, not used: " + usdExact(w.leased_nano);
    }
    card("requests", document.createTextNode(count(totals.requests_today)));
    card("refusals", document.createTextNode(count(totals.refusals_today)));
    card("near", document.createTextNode(count(totals.near_budget)), [
      "of " + count(totals.tenants) + " tenants at 80 % or more of a budget",
    ]);
  }

  // Stacked areas: each series is drawn as the running total of itself and the ones below,
  // the largest total first, so each later (smaller) one paints over it. Legends and
  // hover show each tenant's own figure, not the running total.
  const STACK = ["#3358d4", "#0e9384", "#7a5af8", "#dc6803", "#c11574", "#98a2b3"];
  function drawSpendChart(spend) {
    const node = $("chart-spend");
    if (state.overviewChart) state.overviewChart.destroy();
    node.replaceChildren();
    const own = spend.series.map((s) => s.cost_nano.map((n) => n / NANO));
    const totals = [];
    own.reduce((below, values) => {
      const running = values.map((v, i) => v + below[i]);
      totals.push(running);
      return running;
    }, spend.t.map(() => 0));
    const order = own.map((_, i) => i).reverse();
    const series = [{}].concat(order.map((i) => ({
      label: spend.series[i].label,
      stroke: STACK[i % STACK.length],
      fill: STACK[i % STACK.length] + "cc",
      points: { show: false },
      value: (u, v, si, idx) => (idx === null || idx === undefined ? "" : usd(Math.round(own[i][idx] * NANO))),
    })));
    if (!own.length) series.push({ label: "no spend in the last 24 hours", stroke: "#98a2b3" });
    const width = Math.max(320, Math.floor(node.getBoundingClientRect().width) || 700);
    state.overviewChart = new uPlot({
      width, height: 240, series,
      axes: [{}, { values: (u, splits) => splits.map((v) => usd(Math.round(v * NANO))), size: 80 }],
    }, [spend.t, ...(own.length ? order.map((i) => totals[i]) : [spend.t.map(() => 0)])], node);
  }

  function drawRefusals(refusals) {
    const list = $("refusals");
    list.replaceChildren();
    const codes = Object.entries(refusals.totals);
    if (!codes.length) {
      list.appendChild(el("li", "none in the last 24 hours", "none"));
      return;
    }
    const most = Math.max(...codes.map(([, n]) => n));
    for (const [code, n] of codes) {
      const item = el("li");
      item.dataset.code = code;
      const track = el("span", null, "track");
      const fill = el("span", null, "fill");
      fill.style.width = ((100 * n) / most).toFixed(1) + "%";
      track.appendChild(fill);
      const label = el("span", code, "code");
      label.title = code;
      item.append(label, track, el("span", count(n), "count"));
      list.appendChild(item);
    }
  }

  function bar(row, window, field) {
    const td = cell(row, null, field);
    const box = el("span", null, "bar");
    const fill = el("span", null, "fill");
    const held = el("span", null, "held");
    const leased = el("span", null, "leased");
    const spentPct = Math.min(100, pct(window.spent_nano, window.budget_nano));
    const heldPct = Math.min(100 - spentPct, pct(window.held_nano - window.leased_nano, window.budget_nano));
    const leasedPct = Math.min(100 - spentPct - heldPct, pct(window.leased_nano, window.budget_nano));
    fill.style.width = spentPct.toFixed(2) + "%";
    held.style.left = spentPct.toFixed(2) + "%";
    held.style.width = heldPct.toFixed(2) + "%";
    leased.style.left = (spentPct + heldPct).toFixed(2) + "%";
    leased.style.width = leasedPct.toFixed(2) + "%";
    box.dataset.used = pct(used(window), window.budget_nano).toFixed(2);
    box.title = box.dataset.used + "% of the budget spent or held by calls (held: " +
      usdExact(window.held_nano - window.leased_nano) + "; leased to instances, not used: " +
      usdExact(window.leased_nano) + ")";
    box.append(fill, held, leased);
    const text = el("span", null, "money");
    text.append(money("span", window.spent_nano), " / ", money("span", window.budget_nano));
    td.append(text, box);
  }

  const ORDERS = {
    budget: (a, b) => b.budget_used_pct - a.budget_used_pct || b.day.spent_nano - a.day.spent_nano,
    spend: (a, b) => b.day.spent_nano - a.day.spent_nano,
    id: () => 0,
  };

  function drawTenants() {
    const order = ORDERS[$("sort").value] || ORDERS.budget;
    const rows = [...state.tenants].sort((a, b) => order(a, b) || a.tenant_id.localeCompare(b.tenant_id));
    const body = $("tenants").tBodies[0];
    body.replaceChildren();
    for (const t of rows) {
      const row = el("tr");
      row.dataset.tenant = t.tenant_id;
      if (t.budget_used_pct >= 100) row.classList.add("over");
      else if (t.budget_used_pct >= 80) row.classList.add("hot");
      if (t.tenant_id === state.selected) row.classList.add("selected");
      const id = cell(row, t.tenant_id, "tenant");
      id.title = t.tenant_id + (t.name ? " (" + t.name + ")" : "");
      if (t.name) id.appendChild(el("span", t.name, "name"));
      cell(row, t.status, "status");
      bar(row, t.day, "day");
      bar(row, t.month, "month");
      cell(row, null, "day-remaining", "num").appendChild(money("span", t.day.remaining_nano));
      const share = cell(row, t.budget_used_pct.toFixed(1) + " %", "used", "num");
      share.title = "of the " + (t.nearest_window === "day" ? "daily" : "monthly") + " budget, spent or held by calls";
      ofLimit(row, t.minute.requests, t.minute.requests_limit, t.minute.leased_requests, "rpm", "requests");
      cell(row, count(t.minute.tokens) + " / " + count(t.minute.tokens_limit), "tpm", "num");
      ofLimit(row, t.concurrency.in_flight, t.concurrency.limit, t.concurrency.leased_slots, "in-flight", "slots");
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
    for (const [label, field, isMoney] of WINDOW_ROWS) {
      const row = el("tr");
      row.dataset.row = label;
      cell(row, label);
      for (const w of data.windows) {
        if (isMoney) cell(row, null, w.period, "num").appendChild(money("span", w[field]));
        else cell(row, count(w[field]), w.period, "num");
      }
      body.appendChild(row);
    }
    drawCharts(data);
    const cost = (value) => money("span", nanoOf(value));
    table("functions", data.by_function, (f) => [f.function, count(f.calls), cost(f.cost_usd), f.p50_ms ?? "-", f.p95_ms ?? "-"], [1, 2, 3, 4]);
    table("recent", data.recent, (c) => [
      when(c.time), c.function || "-", c.status, c.code || "",
      c.prompt_tokens + "/" + c.completion_tokens, cost(c.cost_usd), Math.round(c.latency_ms), c.trace_id,
    ], [2, 4, 5, 6]);
    table("expired", data.expired, (x) => [x.kind, x.id, x.function || "-", x.key_id || "-", cost(x.charged_usd), when(x.charged_at)], [4], "flag");
  }

  function table(id, items, cells, numeric, rowClass) {
    const body = $(id).tBodies[0];
    body.replaceChildren();
    for (const item of items) {
      const row = el("tr", null, rowClass);
      cells(item).forEach((value, i) => {
        const node = value instanceof Node;
        const td = cell(row, node ? null : value, null, numeric.includes(i) ? "num" : "");
        if (node) td.appendChild(value);
      });
      body.appendChild(row);
    }
  }

  function chart(target, opts, data) {
    const node = $(target);
    node.replaceChildren();
    state.charts.push(new uPlot({ width: 520, height: 200, ...opts }, data, node));
  }

  const PALETTE = ["#b42318", "#dc6803", "#7a5af8", "#0e9384", "#344054", "#c11574"];

  const dollars = (u, v) => (v === null || v === undefined ? "--" : usd(nanoOf(v)));

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
      series: [{}, { label: "spent", stroke: "#3358d4", fill: "#a9bcf5", paths: uPlot.paths.bars({ size: [0.7, 40] }), points: { show: false }, value: dollars },
        { label: "daily budget", stroke: "#1d2330", dash: [6, 4], points: { show: false }, value: dollars }],
      // Cents and less are common here: usd() keeps two significant digits below a cent.
      axes: [{}, { values: (u, splits) => splits.map((v) => usd(nanoOf(v))), size: 80 }],
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
