"""The dashboard's data endpoints: latency and storage reads with 20 tenants and a day of traffic.

    PYTHONPATH=. .venv/bin/python bench/dashboard.py [--tenants 20] [--calls-per-hour 10] [--requests 200]
        [--screenshot docs/dashboard-overview.png]

Seeds Azurite (in memory) with what a day of traffic leaves behind, through the same code
that writes it in the service: per tenant, 30 day rows (today's is the sum of today's
audited calls), this month's row, the last hour's minute rows and the in-flight row
(the ledger's layout, ``sk_core.limits.rows``); a day of audit rows (``AuditLog.row``;
tenants busy to quiet, more traffic by day than by night) and their hourly rollups
(``sk_core.usage._rollups``), one writer. Then it calls the endpoints the page polls, in
process through the real Starlette app (routing, the error boundary, auth with its
cache, the handlers, the storage client over HTTP to Azurite; not uvicorn's HTTP
parsing), one at a time, and reports the first (cold) call, p50/p95 and the storage
round trips per call (the storage client counts every HTTP exchange). Target: p50
<= 50 ms for the overview and the one-tenant view. Results: ``bench/results/dashboard.json``.

``--screenshot PATH`` then serves the app with uvicorn on a loopback port and saves the
overview as headless Debian Chromium shows it in a 1,280 px window (Playwright), after
checking that the page does not scroll sideways.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    machine,
    markdown_table,
    ms,
    percentile,
    process_cpu_seconds,
    service_env,
    settings_from_env,
    summary,
    write_results,
)
from scripts.devservices import free_port, start_azurite
from sk_core.accounts import Limits, Tenant
from sk_core.composition import Service, set_service
from sk_core.limits import USAGE_TABLE, window_keys
from sk_core.storage import TableStore, development_connection_string, int64, submit
from sk_core.usage import AUDIT_TABLE, AuditEntry, AuditLog, Rollups

WIDTH = 1280  # the narrowest window the dashboard is laid out for
FUNCTIONS = ("text/summarize", "chat/chat", "text/translate")
CODES = ("", "", "", "", "", "", "", "", "", "rate_limited", "budget_exceeded")


async def _write(store: TableStore, table_name: str, rows: list[dict[str, Any]]) -> None:
    """Upsert rows (idempotent: a retried batch is harmless) in entity-group transactions
    (one partition, 100 rows each), two at a time."""
    table = await store.table(table_name)
    by_partition: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_partition.setdefault(row["PartitionKey"], []).append(row)
    batches: list[list[Any]] = [
        [("upsert", row, {}) for row in partition_rows[i : i + 100]]
        for partition_rows in by_partition.values()
        for i in range(0, len(partition_rows), 100)
    ]
    gate = asyncio.Semaphore(2)

    async def one(batch: list[Any]) -> None:
        async with gate:
            try:
                await submit(table, batch)
            except Exception as exc:
                raise RuntimeError(f"seeding {table_name} failed: {exc.__cause__!r}") from exc

    await asyncio.gather(*(one(batch) for batch in batches))


def _ledger_rows(
    tenant: Tenant, now: datetime, today: tuple[int, int], rng: random.Random
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    month_spent = 0
    for back in range(30, -1, -1):
        day, month, _ = window_keys(now - timedelta(days=back))
        # Earlier days: anything up to the budget; today: what today's audited calls cost.
        spent, requests = today if back == 0 else (rng.randrange(0, tenant.limits.daily_budget_nano), 0)
        if month == window_keys(now)[1]:
            month_spent += spent
        rows.append(
            {
                "PartitionKey": tenant.id,
                "RowKey": day,
                "spent_nano": int64(spent),
                "held_nano": int64(rng.randrange(0, 10**6)),
                "leased_nano": int64(0),
                "requests": int64(requests or rng.randrange(100, 3000)),
                "prompt_tokens": int64(rng.randrange(10**4, 10**6)),
                "completion_tokens": int64(rng.randrange(10**4, 10**6)),
            }
        )
    rows.append(
        {
            "PartitionKey": tenant.id,
            "RowKey": window_keys(now)[1],
            "spent_nano": int64(month_spent),
            "held_nano": int64(0),
        }
    )
    for back in range(60):
        rows.append(
            {
                "PartitionKey": tenant.id,
                "RowKey": window_keys(now - timedelta(minutes=back))[2],
                "requests": int64(rng.randrange(0, 50)),
                "tokens": int64(rng.randrange(0, 50_000)),
            }
        )
    rows.append({"PartitionKey": tenant.id, "RowKey": "inflight", "count": int64(rng.randrange(0, 4))})
    return rows


def _audit_rows(log: AuditLog, tenant: Tenant, now: datetime, calls: int, rng: random.Random) -> list[Any]:
    rows = []
    for _ in range(calls):
        # Busier by (UTC) day than by night: accept a uniform instant with a daily rhythm.
        while True:
            at = now - timedelta(seconds=rng.uniform(0, 24 * 3600))
            if rng.random() < 0.6 + 0.4 * math.sin((at.hour - 6) / 24 * 2 * math.pi):
                break
        code = rng.choice(CODES)
        tokens = (0, 0) if code else (rng.randrange(50, 800), rng.randrange(10, 300))
        entry = AuditEntry(
            route="/api/v1/summarize",
            status=429 if code else 200,
            tenant_id=tenant.id,
            key_id="0123456789ab",
            function=rng.choice(FUNCTIONS),
            code=code or None,
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
            # gpt-4o list prices ($2.50 / $10 per million tokens), in nano-USD per token.
            cost_nano=tokens[0] * 2_500 + tokens[1] * 10_000,
            latency_ms=rng.lognormvariate(5, 0.6),
            trace_id=f"{rng.getrandbits(128):032x}",
        )
        rows.append(log.row(entry, at=at))
    return rows


async def seed(
    service: Service, store: TableStore, tenants: int, per_hour: int
) -> tuple[list[Tenant], dict[str, int]]:
    rng = random.Random(17)  # synthetic data, reproducible
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    made: list[Tenant] = []
    counts = {"ledger_rows": 0, "audit_rows": 0, "rollup_rows": 0}
    rollups = Rollups(writer="bench")
    # Traffic from busy to quiet (1/rank): the average tenant makes per_hour calls an hour.
    weights = [1 / (n + 1) for n in range(tenants)]
    scale = per_hour * 24 * tenants / sum(weights)
    for n in range(tenants):
        tenant = Tenant(
            id=f"tenant-{n:03d}",
            display_name=f"Tenant {n}",
            limits=Limits(
                daily_budget_nano=rng.randrange(10**8, 4 * 10**9),
                monthly_budget_nano=rng.randrange(10**10, 10**11),
            ),
        )
        await service.tenants.create_tenant(tenant)
        made.append(tenant)
        audit_rows = _audit_rows(service.audit, tenant, now, max(1, round(scale * weights[n])), rng)
        answered = [r for r in audit_rows if r["created_at"] >= midnight and r["status"] == 200]
        today = (sum(int(r["cost_nano"].value) for r in answered), len(answered))
        ledger_rows = _ledger_rows(tenant, now, today, rng)
        rollup_rows = rollups.entities(rollups.plan(audit_rows))
        await _write(store, USAGE_TABLE, ledger_rows)
        await _write(store, AUDIT_TABLE, audit_rows + rollup_rows)
        counts["ledger_rows"] += len(ledger_rows)
        counts["audit_rows"] += len(audit_rows)
        counts["rollup_rows"] += len(rollup_rows)
        print(f"  seeded {tenant.id}: {len(audit_rows)} calls", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return made, counts


async def measure(
    service: Service,
    client: httpx.AsyncClient,
    paths: list[tuple[str, dict[str, str]]],
    requests: int,
    azurite_pid: int,
) -> list[dict[str, Any]]:
    """Each path's first (cold) call, then ``requests`` rounds calling them in turn (the
    page polls the overview and then the open tenant, every 5 s), one call at a time.

    Besides wall time, the CPU each call cost this process (background refreshes
    included) and Azurite: on a shared machine these move far less with the load."""
    cpu = [[0.0, 0.0] for _ in paths]  # per path: this process, Azurite (seconds)

    async def call(path: str, headers: dict[str, str], i: int = -1) -> tuple[float, int, httpx.Response]:
        before = service.store.round_trips
        own, storage = time.process_time(), process_cpu_seconds(azurite_pid)
        started = time.perf_counter()
        response = await client.get(path, headers=headers)
        elapsed = time.perf_counter() - started
        if i >= 0:
            cpu[i][0] += time.process_time() - own
            cpu[i][1] += process_cpu_seconds(azurite_pid) - storage
        assert response.status_code == 200, response.text[:300]
        return elapsed, service.store.round_trips - before, response

    first = [(await call(path, headers))[0] for path, headers in paths]  # empty caches, first reads
    for _ in range(5):  # warm: auth cache, table clients, connection pool
        for path, headers in paths:
            await call(path, headers)
    latencies: list[list[float]] = [[] for _ in paths]
    trips: list[list[int]] = [[] for _ in paths]
    last: list[httpx.Response] = []
    for _ in range(requests):
        last = []
        for i, (path, headers) in enumerate(paths):
            elapsed, exchanges, response = await call(path, headers, i)
            latencies[i].append(elapsed)
            trips[i].append(exchanges)
            last.append(response)
    return [
        {
            **summary(latencies[i]),
            "first_ms": ms(first[i]),
            "p50_ms": ms(percentile(latencies[i], 50)),
            "p95_ms": ms(percentile(latencies[i], 95)),
            # The median call's; the most also counts the overview's background refresh of
            # the charts (a partition query per tenant every SNAPSHOT_SECONDS) when it fell in.
            "round_trips": sorted(trips[i])[len(trips[i]) // 2],
            "round_trips_max": max(trips[i]),
            "bytes": len(last[i].content),
            "service_cpu_ms": round(1000 * cpu[i][0] / requests, 2),
            "azurite_cpu_ms": round(1000 * cpu[i][1] / requests, 2),
        }
        for i in range(len(paths))
    ]


async def screenshot(app: Any, operator: str, path: Path) -> int:
    """Serve ``app`` on a loopback port, open the dashboard in headless Chromium 1,280 px
    wide, save the overview to ``path``; the page's scroll width (must be <= 1,280)."""
    import uvicorn
    from playwright.async_api import async_playwright

    from tests.support.browser import CHROMIUM, CHROMIUM_ARGS

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # uvicorn offers a flag, no event
            if serving.done():
                await serving  # it failed to start: say why
            await asyncio.sleep(0.05)
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = await (await browser.new_context(viewport={"width": WIDTH, "height": 1000})).new_page()
            await page.goto(f"http://127.0.0.1:{port}/api/dashboard")
            await page.fill("#key", operator)
            await page.click("#connect")
            await page.locator("#chart-spend canvas").wait_for()
            await page.locator("#tenants tbody tr").first.wait_for()
            await page.locator("#refusals li").first.wait_for()
            width = int(await page.evaluate("() => document.documentElement.scrollWidth"))
            path.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(path), full_page=True)  # the overview: the tenant view is closed
            await browser.close()
    finally:
        server.should_exit = True
        await serving
    return width


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=20)
    # Seeding is the slow part (Azurite takes ~200 rows/s on a busy 2-core machine);
    # what the endpoints read does not grow with it (rollups are per hour).
    parser.add_argument("--calls-per-hour", type=int, default=10, help="per tenant on average, for a day")
    parser.add_argument("--requests", type=int, default=200, help="timed calls per endpoint")
    parser.add_argument("--screenshot", type=Path, help="save the overview as Chromium shows it (PNG)")
    args = parser.parse_args(argv)

    port = free_port()
    scroll_width = None
    with tempfile.TemporaryDirectory() as logs:
        azurite = start_azurite(port=port, log=Path(logs) / "azurite.log")
        try:
            env = service_env("http://127.0.0.1:9/v1", development_connection_string(port))
            service = Service.create(settings_from_env(env))
            set_service(service)
            started = time.perf_counter()
            # Seeding gets its own client with patient retries: it is bulk work on a shared,
            # busy machine, not the request path the service's fast-failing client is for.
            seeder = TableStore(
                connection_string=development_connection_string(port),
                table_prefix=service.settings.storage_table_prefix,
                retries=8,
            )
            tenants, counts = await seed(service, seeder, args.tenants, args.calls_per_hour)
            await seeder.aclose()
            seeded_s = time.perf_counter() - started
            operator = (await service.tenants.issue_admin_key(name="bench")).secret
            tenant_key = (await service.tenants.issue_key(tenants[0].id)).secret

            from sk_core.asgi import create_app

            app = create_app()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                admin = {"authorization": f"Bearer {operator}"}
                tenant_view = f"/api/v1/admin/tenants/{tenants[0].id}"
                # The page's refresh: the overview, then the open tenant (the busiest).
                overview_r, tenant_r = await measure(
                    service,
                    client,
                    [("/api/v1/admin/tenants", admin), (tenant_view, admin)],
                    args.requests,
                    azurite.process.pid,
                )
                results = {"tenants overview": overview_r, "one tenant (charts, calls, holds)": tenant_r}
                for name, (url, headers) in {
                    "tenant usage (/v1/usage)": ("/api/v1/usage", {"authorization": f"Bearer {tenant_key}"}),
                    "CSV (30 days)": (f"{tenant_view}/usage.csv", admin),
                }.items():
                    [results[name]] = await measure(
                        service, client, [(url, headers)], args.requests, azurite.process.pid
                    )
            if args.screenshot:
                scroll_width = await screenshot(app, operator, args.screenshot)
            await service.aclose()
        finally:
            azurite.stop()

    refresh = (
        results["tenants overview"]["round_trips"]
        + results["one tenant (charts, calls, holds)"]["round_trips"]
    )
    rows = [
        [
            name,
            r["first_ms"],
            r["p50_ms"],
            r["p95_ms"],
            r["service_cpu_ms"],
            r["azurite_cpu_ms"],
            r["round_trips"],
            r["round_trips_max"],
            f"{r['bytes']:,}",
        ]
        for name, r in results.items()
    ]
    print(
        markdown_table(
            [
                "endpoint",
                "first call ms",
                "p50 ms",
                "p95 ms",
                "service CPU ms",
                "Azurite CPU ms",
                "storage round trips (median)",
                "(most)",
                "bytes",
            ],
            rows,
        )
    )
    print(
        f"\n{args.tenants} tenants, {counts['audit_rows']:,} audit rows, "
        f"{counts['rollup_rows']:,} rollup rows, "
        f"{counts['ledger_rows']:,} ledger rows (seeded in {seeded_s:.0f} s); one page refresh with a tenant "
        f"open = {refresh} storage round trips"
    )
    if scroll_width is not None:
        print(f"screenshot: {args.screenshot} (page scroll width {scroll_width} px in a {WIDTH} px window)")
    path = write_results(
        "dashboard",
        {
            "machine": machine(),
            "tenants": args.tenants,
            "calls_per_hour": args.calls_per_hour,
            "seeded": counts,
            "endpoints": results,
            "round_trips_per_refresh": refresh,
            "screenshot_scroll_width": scroll_width,
            # A shared 2-core machine: what else ran is part of every figure.
            "load_average_at_end": os.getloadavg(),
        },
    )
    print(f"wrote {path} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", file=sys.stderr)
    return 0 if scroll_width is None or scroll_width <= WIDTH else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
