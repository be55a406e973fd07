"""The dashboard's data endpoints: latency and storage reads with 50 tenants and a day of traffic.

    PYTHONPATH=. .venv/bin/python bench/dashboard.py [--tenants 50] [--calls-per-hour 30] [--requests 200]

Seeds Azurite (in memory) with what a day of traffic leaves behind, through the same code
that writes it in the service: per tenant, 30 day rows, this month's row, the last hour's
minute rows and the in-flight row (the ledger's layout, ``sk_core.limits.rows``); a day
of audit rows (``AuditLog.row``) and their per-minute and per-hour rollups
(``sk_core.usage._rollups``), one writer. Then it calls the endpoints the page polls, in
process through the real Starlette app (routing, the error boundary, auth with its
cache, the handlers, the storage client over HTTP to Azurite; not uvicorn's HTTP
parsing), one at a time, and reports p50/p95 and the storage round trips per call (the
storage client counts every HTTP exchange). Results: ``bench/results/dashboard.json``.
"""

from __future__ import annotations

import argparse
import asyncio
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


def _ledger_rows(tenant: Tenant, now: datetime, rng: random.Random) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    month_spent = 0
    for back in range(30, -1, -1):
        day, month, _ = window_keys(now - timedelta(days=back))
        spent = rng.randrange(0, tenant.limits.daily_budget_nano)
        if month == window_keys(now)[1]:
            month_spent += spent
        rows.append(
            {
                "PartitionKey": tenant.id,
                "RowKey": day,
                "spent_nano": int64(spent),
                "held_nano": int64(rng.randrange(0, 10**6)),
                "leased_nano": int64(0),
                "requests": int64(rng.randrange(100, 3000)),
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


def _audit_rows(log: AuditLog, tenant: Tenant, now: datetime, per_hour: int, rng: random.Random) -> list[Any]:
    rows = []
    step = 3600 / per_hour
    for n in range(24 * per_hour):
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
            cost_nano=tokens[0] * 150 + tokens[1] * 600,
            latency_ms=rng.lognormvariate(5, 0.6),
            trace_id=f"{rng.getrandbits(128):032x}",
        )
        at = now - timedelta(hours=24) + timedelta(seconds=n * step + rng.uniform(0, step))
        rows.append(log.row(entry, at=at))
    return rows


async def seed(
    service: Service, store: TableStore, tenants: int, per_hour: int
) -> tuple[list[Tenant], dict[str, int]]:
    rng = random.Random(17)  # synthetic data, reproducible
    now = datetime.now(UTC)
    made: list[Tenant] = []
    counts = {"ledger_rows": 0, "audit_rows": 0, "rollup_rows": 0}
    rollups = Rollups(writer="bench")
    for n in range(tenants):
        tenant = Tenant(
            id=f"tenant-{n:03d}",
            display_name=f"Tenant {n}",
            limits=Limits(daily_budget_nano=rng.randrange(10**9, 10**10), monthly_budget_nano=10**11),
        )
        await service.tenants.create_tenant(tenant)
        made.append(tenant)
        ledger_rows = _ledger_rows(tenant, now, rng)
        audit_rows = _audit_rows(service.audit, tenant, now, per_hour, rng)
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
    service: Service, client: httpx.AsyncClient, path: str, headers: dict[str, str], requests: int
) -> dict[str, Any]:
    for _ in range(5):  # warm: auth cache, table clients, connection pool
        assert (await client.get(path, headers=headers)).status_code == 200
    latencies, trips = [], []
    for _ in range(requests):
        before = service.store.round_trips
        started = time.perf_counter()
        response = await client.get(path, headers=headers)
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text[:300]
        trips.append(service.store.round_trips - before)
    return {
        **summary(latencies),
        "p50_ms": ms(percentile(latencies, 50)),
        "p95_ms": ms(percentile(latencies, 95)),
        "round_trips": max(trips),
        "round_trips_min": min(trips),
        "bytes": len(response.content),
    }


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=50)
    # Seeding is the slow part (Azurite takes ~200 rows/s on a busy 2-core machine);
    # what the endpoints read does not grow with it (rollups are per minute and hour).
    parser.add_argument("--calls-per-hour", type=int, default=30, help="per tenant, for a day")
    parser.add_argument("--requests", type=int, default=200, help="timed calls per endpoint")
    args = parser.parse_args(argv)

    port = free_port()
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

            transport = httpx.ASGITransport(app=create_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                admin = {"authorization": f"Bearer {operator}"}
                endpoints = {
                    "tenants overview": ("/api/v1/admin/tenants", admin),
                    "one tenant (charts, calls, holds)": (f"/api/v1/admin/tenants/{tenants[0].id}", admin),
                    "tenant usage (/v1/usage)": ("/api/v1/usage", {"authorization": f"Bearer {tenant_key}"}),
                    "CSV (30 days)": (f"/api/v1/admin/tenants/{tenants[0].id}/usage.csv", admin),
                }
                results = {
                    name: await measure(service, client, path, headers, args.requests)
                    for name, (path, headers) in endpoints.items()
                }
            await service.aclose()
        finally:
            azurite.stop()

    refresh = (
        results["tenants overview"]["round_trips"]
        + results["one tenant (charts, calls, holds)"]["round_trips"]
    )
    rows = [
        [name, r["p50_ms"], r["p95_ms"], r["round_trips"], f"{r['bytes']:,}"] for name, r in results.items()
    ]
    print(markdown_table(["endpoint", "p50 ms", "p95 ms", "storage round trips", "bytes"], rows))
    print(
        f"\n{args.tenants} tenants, {counts['audit_rows']:,} audit rows, "
        f"{counts['rollup_rows']:,} rollup rows, "
        f"{counts['ledger_rows']:,} ledger rows (seeded in {seeded_s:.0f} s); one page refresh with a tenant "
        f"open = {refresh} storage round trips"
    )
    path = write_results(
        "dashboard",
        {
            "machine": machine(),
            "tenants": args.tenants,
            "calls_per_hour": args.calls_per_hour,
            "seeded": counts,
            "endpoints": results,
            "round_trips_per_refresh": refresh,
            # A shared 2-core machine: what else ran is part of every figure.
            "load_average_at_end": os.getloadavg(),
        },
    )
    print(f"wrote {path} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
