"""Soak: mixed traffic of two tenants against the container host, with faults injected.

    PYTHONPATH=. .venv/bin/python bench/soak.py [--minutes 10] [--clients 6] [--fault-every 6]
        [--cache] [--tracemalloc] [--name soak]

Starts its own stub model, Azurite and the container host (uvicorn, one worker), with a
TCP fault proxy between the service and the model and between the service and Azurite.
Clients send summarize calls for two tenants, alternately, as fast as answers come:
a third of them streamed (``Accept: text/event-stream``), a fifth of them a text sent
before (a response-cache hit, counted but free), the rest a text of its own (a miss);
every ``--fault-every`` seconds the next fault of a fixed cycle is injected for a moment
(stub: 429 with Retry-After, 500, malformed JSON, no usage, a broken connection, a hang;
proxy: model latency, model black hole, model reset, storage black hole, storage reset).

The response cache is off, as it is by default (``--cache`` opts summarize in).

Reports, per minute: requests, p50/p99 latency, 5xx by code, the service's RSS (growth
from minute 2 to the end should stay under 5 %) and the machine's load average (the
box is shared: a slow minute under load 6 is not the service's); at the end the
ledger check: the service is stopped gracefully (leases handed back, audit flushed),
every hold past its lease is charged, and per tenant the stored ledger is compared with
the audit rows and with what clients were told. Writes ``bench/results/<name>.json``.

``--tracemalloc`` serves ``bench._traced_asgi:app`` (tracemalloc on from the start),
takes a snapshot in the service after minute 2 and at the end, and adds the top growth
sites between the two (file:line, size and count differences, and the biggest ones'
call stacks) to the results. Tracing slows the service: its throughput is not comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx

from bench._common import (
    SUMMARIZE_BODY,
    SUMMARIZE_PATH,
    machine,
    markdown_table,
    percentile,
    process_cpu_seconds,
    write_results,
)
from bench._growth import growth_sites, snapshot, snapshot_at
from scripts.devservices import free_port, start_azurite, start_service
from tests.support.fault_proxy import FaultProxy
from tests.support.stub_model import start_stub_model

TENANTS = ("soak-a", "soak-b")
LIMITS = {
    "requests_per_minute": 10**6,
    "tokens_per_minute": 10**9,
    "max_concurrent": 1000,
    "daily_budget_nano": 10**15,
    "monthly_budget_nano": 10**15,
}
STUB_FAULTS: list[dict[str, Any]] = [
    {"status": 429, "headers": {"retry-after": "1"}},
    {"status": 500},
    {"raw": '{"id": "x", "choi'},
    {"body": {"id": "x", "object": "chat.completion", "created": 0, "model": "stub-model", "choices": []}},
    {"drop": True},
    {"delay": 10},
]
# (proxy, mode, seconds it lasts)
PROXY_FAULTS: list[tuple[str, str, float]] = [
    ("model", "latency", 2.0),
    ("model", "blackhole", 1.5),
    ("model", "reset", 0.0),
    ("storage", "blackhole", 1.5),
    ("storage", "reset", 0.0),
]


# Every text has the same length, so every call reserves the same amount (the check).
REPEATED = f"{SUMMARIZE_BODY['text']} (#--------)"


def _body(n: int) -> dict[str, Any]:
    """The n-th call's body: every fifth the repeated text, else a text of its own."""
    text = REPEATED if n % 5 == 0 else f"{SUMMARIZE_BODY['text']} (#{n:08d})"
    return {**SUMMARIZE_BODY, "text": text}


@dataclass
class Sample:
    started: float  # seconds since the soak began
    seconds: float
    status: int
    code: str | None
    tenant: str
    cost_nano: int
    streamed: bool = False
    trace_id: str = ""  # X-Trace-Id: the audit row of this call has it too
    cache: str = ""  # X-Cache: hit or miss (plain calls; streams bypass the cache)


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    rss_kib: dict[int, int] = field(default_factory=dict)  # minute -> peak RSS
    # minute -> CPU seconds used so far (service, Azurite) at the minute's last sample
    cpu: dict[int, tuple[float, float]] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)
    load: dict[int, float] = field(default_factory=dict)  # minute -> peak 1-minute load average


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _client(
    soak: Soak, client: httpx.AsyncClient, keys: dict[str, str], begin: float, until: float, index: int
) -> None:
    tenants = itertools.cycle(TENANTS[index % 2 :] + TENANTS[: index % 2])
    calls = itertools.count(index * 10**6)  # distinct texts per client
    while time.perf_counter() < until:
        tenant, n = next(tenants), next(calls)
        streamed = n % 3 == 1
        started = time.perf_counter()
        try:
            call = _streamed if streamed else _plain
            status, code, cost_nano, trace_id, cache = await call(client, _body(n), keys[tenant])
        except httpx.TransportError as exc:
            status, code, cost_nano, trace_id, cache = 0, type(exc).__name__, 0, "", ""
        seconds = time.perf_counter() - started
        soak.samples.append(
            Sample(started - begin, seconds, status, code, tenant, cost_nano, streamed, trace_id, cache)
        )


Reply = tuple[int, str | None, int, str, str]  # status, code, cost told (nano-USD), trace id, X-Cache


async def _plain(client: httpx.AsyncClient, body: dict[str, Any], key: str) -> Reply:
    response = await client.post(SUMMARIZE_PATH, json=body, headers={"x-api-key": key})
    status = response.status_code
    code = None
    if status >= 400:
        try:
            code = response.json().get("code")
        except ValueError:
            code = f"http_{status}"
    cost = response.headers.get("x-request-cost-usd")
    told = round(float(cost) * 1e9) if cost and status == 200 else 0
    headers = response.headers
    return status, code, told, headers.get("x-trace-id", ""), headers.get("x-cache", "")


async def _streamed(client: httpx.AsyncClient, body: dict[str, Any], key: str) -> Reply:
    """A stream that fails after its start (an ``error`` event) counts as a 502 with the
    event's code; its cost is the ``done`` event's."""
    headers = {"x-api-key": key, "accept": "text/event-stream"}
    async with client.stream("POST", SUMMARIZE_PATH, json=body, headers=headers) as response:
        trace_id = response.headers.get("x-trace-id", "")
        if response.status_code != 200:
            await response.aread()
            try:
                return response.status_code, response.json().get("code"), 0, trace_id, ""
            except ValueError:
                return response.status_code, f"http_{response.status_code}", 0, trace_id, ""
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event in ("done", "error"):
                data = json.loads(line.removeprefix("data:"))
                if event == "done":
                    return 200, None, round(float(data["cost_usd"]) * 1e9), trace_id, ""
                return 502, f"stream:{data.get('code')}", 0, trace_id, ""
    return 0, "stream_ended_without_done", 0, trace_id, ""


async def _inject(soak: Soak, stub: Any, proxies: dict[str, FaultProxy], every: float, until: float) -> None:
    faults: list[Any] = [*STUB_FAULTS, *PROXY_FAULTS]
    random.Random(7).shuffle(faults)  # a fixed order: runs are comparable
    for fault in itertools.cycle(faults):
        await asyncio.sleep(every)
        if time.perf_counter() >= until:
            return
        if isinstance(fault, dict):
            await asyncio.to_thread(stub.script, fault)
            soak.faults["stub " + ",".join(fault)] += 1
            continue
        name, mode, seconds = fault
        proxies[name].set(mode, 0.2 if mode == "latency" else 0.0)
        await asyncio.sleep(seconds)
        proxies[name].set("pass")
        soak.faults[f"{name} {mode}"] += 1


async def _sample(soak: Soak, pid: int, azurite_pid: int, begin: float, until: float) -> None:
    """Peak RSS of the service, and CPU of the service and of Azurite, per minute."""
    while time.perf_counter() < until:
        minute = int((time.perf_counter() - begin) // 60)
        with contextlib.suppress(OSError):
            soak.rss_kib[minute] = max(soak.rss_kib.get(minute, 0), _rss_kib(pid))
            soak.cpu[minute] = (process_cpu_seconds(pid), process_cpu_seconds(azurite_pid))
        soak.load[minute] = max(soak.load.get(minute, 0.0), os.getloadavg()[0])
        await asyncio.sleep(2)


async def _provision(env: dict[str, str]) -> dict[str, str]:
    from bench._common import settings_from_env
    from sk_core.accounts import Limits, Tenant
    from sk_core.composition import Service

    service = Service.create(settings_from_env(env))
    try:
        keys = {}
        for tenant in TENANTS:
            await service.tenants.create_tenant(
                Tenant(id=tenant, display_name=tenant, limits=Limits(**LIMITS))
            )
            keys[tenant] = str((await service.tenants.issue_key(tenant, name="soak")).secret)
        return keys
    finally:
        await service.aclose()


async def _ledger_check(env: dict[str, str], soak: Soak, minutes: float) -> dict[str, Any]:
    """After the service stopped: charge every hold past its lease, then compare per tenant."""
    from bench._common import settings_from_env
    from sk_core.composition import Service
    from sk_core.limits import Ledger, window_keys
    from sk_core.limits.rows import INFLIGHT, USAGE_TABLE
    from sk_core.storage import query_partition, read_int
    from sk_core.usage import ANONYMOUS

    service = Service.create(settings_from_env(env))
    try:
        later = Ledger(
            store=service.store,
            lease_seconds=30,
            min_answer_tokens=1,
            clock=lambda: datetime.now(UTC) + timedelta(hours=1),
        )
        expired = await later.expire_holds()
        reservation = _reservation(service)
        day = window_keys(datetime.now(UTC))[0]
        usage_table = await service.store.table(USAGE_TABLE)
        audit = service.audit
        # Every call of the run (``AuditLog.calls``: the partitions of its hours and shards).
        last = datetime.now(UTC) + timedelta(minutes=1)
        first = last - timedelta(minutes=minutes + 15)
        report: dict[str, Any] = {"holds_expired_by_final_sweep": expired, "tenants": {}}
        # A call refused before its key was checked (storage could not be asked) has its
        # audit row in the anonymous partition, not its tenant's.
        anonymous = {str(row.get("trace_id", "")): row for row in await audit.calls(ANONYMOUS, first, last)}
        for tenant in TENANTS:
            rows = await query_partition(usage_table, tenant, [day, INFLIGHT])
            window, inflight = rows.get(day, {}), rows.get(INFLIGHT, {})
            audit_cost = audit_rows = 0
            by_trace: dict[str, dict[str, Any]] = {}
            for row in await audit.calls(tenant, first, last):  # the calls' rows, not the rollups
                audit_rows += 1
                audit_cost += read_int(row.get("cost_nano"))
                by_trace[str(row.get("trace_id", ""))] = dict(row)
            mine = [s for s in soak.samples if s.tenant == tenant]
            told = sum(s.cost_nano for s in mine)
            spent, held = read_int(window.get("spent_nano")), read_int(window.get("held_nano"))
            expired_nano = read_int(window.get("expired_nano"))
            # Failures that may keep their reservation (README, "Faults and what they cost").
            billable = sum(s.status in (0, 502, 504) for s in mine)
            charged_failures, remainder = divmod(spent - told, reservation)
            report["tenants"][tenant] = {
                "requests_sent": len(mine),
                "audit_rows": audit_rows,
                "spent_nano": spent,
                "held_nano": held,
                "inflight": read_int(inflight.get("count")),
                "expired_holds": read_int(window.get("expired_holds")),
                "expired_nano": expired_nano,
                "audit_cost_nano": audit_cost,
                "told_clients_nano": told,
                "reservation_nano": reservation,
                "failures_charged_their_reservation": charged_failures,
                "failures_that_may_be_charged": billable,
                "per_call": _reconcile(mine, by_trace, anonymous),
                # Exact: nothing held or in flight, and the stored spend is what the 200s
                # were told plus whole reservations of failed calls that may have been
                # billed (every call here reserves the same amount). A hold charged at
                # expiry (its settlement lost) would break the multiple: then only the
                # first two hold, and expired_holds says why.
                "ok": held == 0
                and read_int(inflight.get("count")) == 0
                and (expired_nano > 0 or (remainder == 0 and 0 <= charged_failures <= billable)),
            }
        return report
    finally:
        await service.aclose()


def _reconcile(
    samples: list[Sample], audit: dict[str, dict[str, Any]], anonymous: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Each call against its audit row (by trace id): calls without a row (in the
    tenant's partition or the anonymous one), and answered calls whose row's cost is not
    what the client was told (a few, for a look)."""
    from sk_core.storage import read_int

    unauthenticated = [s for s in samples if s.trace_id not in audit and s.trace_id in anonymous]
    missing = [s for s in samples if s.trace_id not in audit and s.trace_id not in anonymous]
    differ = [
        (s, read_int(audit[s.trace_id].get("cost_nano")))
        for s in samples
        if s.status == 200
        and s.trace_id in audit
        and read_int(audit[s.trace_id].get("cost_nano")) != s.cost_nano
    ]
    return {
        "audit_row_in_anonymous_partition": len(unauthenticated),
        "without_audit_row": len(missing),
        "without_audit_row_by_status": dict(Counter(f"{s.status} {s.code or ''}".strip() for s in missing)),
        "without_audit_row_minutes": dict(Counter(int(s.started // 60) + 1 for s in missing)),
        "without_audit_row_told_nano": sum(s.cost_nano for s in missing),
        "told_differs_from_audit": len(differ),
        "told_minus_audit_nano": sum(s.cost_nano - cost for s, cost in differ),
        "differing_examples": [
            {
                "minute": int(s.started // 60) + 1,
                "streamed": s.streamed,
                "told": s.cost_nano,
                "audit": cost,
                "audit_code": audit[s.trace_id].get("code"),
                "audit_status": audit[s.trace_id].get("status"),
            }
            for s, cost in differ[:5]
        ],
    }


def _log_summary(log: str) -> dict[str, int]:
    """The service log's warnings and errors (JSON lines), by logger and message with
    numbers and ids masked."""
    import re

    counts: Counter[str] = Counter()
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            message = re.sub(r"[0-9a-f]{12,}|\d+(\.\d+)?", "#", str(entry.get("message")))[:100]
            counts[f"{entry['level']} {entry.get('logger')}: {message}"] += 1
    return dict(counts.most_common(15))


def _reservation(service: Any) -> int:
    """What admission holds for one soak call (limits are far away: nothing is clamped)."""
    spec = service.catalog.get("text", "summarize")
    arguments, options = spec.split_request(spec.request_model.model_validate(_body(1)))
    requested = spec.requested_max_tokens(arguments, options.max_tokens)
    price = service.routing.chain(None).reservation_price
    return int(price.cost_nano(spec.prompt_token_bound(arguments), requested))


def _cpu_per_request(soak: Soak, minute: int, requests: int) -> dict[str, float | None]:
    now, before = soak.cpu.get(minute), soak.cpu.get(minute - 1, (0.0, 0.0))
    if now is None or not requests:
        return {"service_cpu_ms_per_request": None, "azurite_cpu_ms_per_request": None}
    return {
        "service_cpu_ms_per_request": round((now[0] - before[0]) / requests * 1000, 2),
        "azurite_cpu_ms_per_request": round((now[1] - before[1]) / requests * 1000, 2),
    }


def _per_minute(soak: Soak) -> list[dict[str, Any]]:
    minutes: dict[int, list[Sample]] = defaultdict(list)
    for sample in soak.samples:
        minutes[int(sample.started // 60)].append(sample)
    table = []
    for minute in sorted(minutes):
        samples = minutes[minute]
        durations = [s.seconds for s in samples]
        errors = Counter(f"{s.status} {s.code}" for s in samples if s.status >= 500 or s.status == 0)
        streamed = [s.seconds for s in samples if s.streamed and s.status == 200]
        table.append(
            {
                "minute": minute + 1,
                "requests": len(samples),
                "ok": sum(s.status == 200 for s in samples),
                "cache_hits": sum(s.cache == "hit" for s in samples),
                "p50_ms": round(percentile(durations, 50) * 1000, 1),
                "p99_ms": round(percentile(durations, 99) * 1000, 1),
                "streamed_p50_ms": round(percentile(streamed, 50) * 1000, 1) if streamed else None,
                "requests_per_second": round(len(samples) / 60, 1),
                "count_5xx": sum(errors.values()),
                "errors_5xx": dict(errors),
                "rss_mib": round(soak.rss_kib.get(minute, 0) / 1024, 1),
                "load_average": round(soak.load.get(minute, 0.0), 2),
                # CPU per request this minute: where the time goes as tables grow.
                **_cpu_per_request(soak, minute, len(samples)),
            }
        )
    return table


async def run(
    minutes: float,
    clients: int,
    every: float,
    *,
    cache: bool = False,
    traced: bool = False,
    shards: int = 16,
) -> dict[str, Any]:
    with TemporaryDirectory() as tmp:
        logs = Path(tmp)
        stub = start_stub_model()
        stub.client.set_default(delay=0.05)
        azurite_port = free_port()
        azurite = start_azurite(port=azurite_port, log=logs / "azurite.log")
        model_proxy = FaultProxy(stub.host, stub.port).start()
        storage_proxy = FaultProxy("127.0.0.1", azurite_port).start()
        service = None
        tracemalloc_result: dict[str, Any] | None = None
        try:
            from bench._common import service_env
            from sk_core.storage import development_connection_string

            direct = service_env(stub.base_url, development_connection_string(azurite_port))
            keys = await _provision(direct)
            env = {
                **service_env(
                    f"http://{model_proxy.address}/v1", development_connection_string(storage_proxy.port)
                ),
                "SKF_MODEL_TIMEOUT_SECONDS": "2",
                "SKF_MODEL_DEADLINE_SECONDS": "6",
                "SKF_HOLD_LEASE_SECONDS": "30",
                # Azurite's writes slow down as their partition grows (bench/azurite_tables.py;
                # Table Storage's do not): shards keep each audit partition small.
                "SKF_AUDIT_SHARDS": str(shards),
                "SKF_LOG_FORMAT": "json",  # on stderr, into service.log: summarised at the end
                "SKF_TELEMETRY_EXPORTER": "none",
            }
            if cache:  # summarize opts in to the response cache (its prompt file does not)
                env["SKF_CACHE_FUNCTIONS"] = json.dumps({"text/summarize": {"enabled": True}})
            if traced:
                env["SOAK_TRACEMALLOC_DIR"] = str(logs)
            port = free_port()
            app = "bench._traced_asgi:app" if traced else "sk_core.asgi:app"
            service = start_service(port=port, env=env, log=logs / "service.log", app=app)
            soak = Soak()
            begin = time.perf_counter()
            until = begin + minutes * 60
            proxies = {"model": model_proxy, "storage": storage_proxy}
            pid, snapshots = service.process.pid, dict[str, float]()
            extra = [snapshot_at(pid, logs, begin + 120, snapshots)] if traced and minutes > 2 else []
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                await asyncio.gather(
                    *(_client(soak, client, keys, begin, until, i) for i in range(clients)),
                    _inject(soak, stub.client, proxies, every, until),
                    _sample(soak, pid, azurite.process.pid, begin, until),
                    *extra,
                )
            if extra:  # before the shutdown: what the serving process holds after the load
                snapshots["end_seconds"] = await snapshot(pid, logs, 1)
                tracemalloc_result = {"snapshot_seconds": snapshots, **growth_sites(logs)}
            model_proxy.set("pass")
            storage_proxy.set("pass")
            service.stop(timeout=30)  # graceful: leases handed back, audit flushed
            ledger = await _ledger_check({**direct, "SKF_AUDIT_SHARDS": str(shards)}, soak, minutes)
            service_log = (logs / "service.log").read_text(errors="replace")
        finally:
            if service is not None:
                service.stop()
            model_proxy.stop()
            storage_proxy.stop()
            azurite.stop()
            stub.stop()
    per_minute = _per_minute(soak)
    warm = [m["rss_mib"] for m in per_minute[1:] if m["rss_mib"]]
    statuses = Counter(f"{s.status} {s.code or ''}".strip() for s in soak.samples)
    return {
        "config": {
            "minutes": minutes,
            "clients": clients,
            "fault_every_seconds": every,
            "cache": cache,
            "tracemalloc": traced,
            "audit_shards": shards,
        },
        "machine": machine(),
        "requests": len(soak.samples),
        "statuses": dict(statuses.most_common()),
        "faults_injected": dict(soak.faults),
        "per_minute": per_minute,
        "rss_growth_after_warmup_pct": round((warm[-1] - warm[0]) / warm[0] * 100, 1)
        if len(warm) > 1
        else None,
        "tracemalloc": tracemalloc_result,
        "ledger": ledger,
        "unhandled_errors_in_log": service_log.count("unhandled error"),
        "service_log": _log_summary(service_log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--fault-every", type=float, default=6.0, help="seconds between injected faults")
    parser.add_argument("--cache", action="store_true", help="summarize opts in to the response cache")
    parser.add_argument("--tracemalloc", action="store_true", help="growth sites, minute 2 to the end")
    parser.add_argument("--name", default="soak", help="results file: bench/results/<name>.json")
    parser.add_argument("--audit-shards", type=int, default=16, help="SKF_AUDIT_SHARDS of the service")
    args = parser.parse_args()
    run_ = run(
        args.minutes,
        args.clients,
        args.fault_every,
        cache=args.cache,
        traced=args.tracemalloc,
        shards=args.audit_shards,
    )
    result = asyncio.run(run_)
    rows = [
        [
            m["minute"],
            m["requests"],
            m["ok"],
            m["cache_hits"],
            m["p50_ms"],
            m["requests_per_second"],
            m["p99_ms"],
            m["streamed_p50_ms"],
            m["rss_mib"],
            m["load_average"],
            m["service_cpu_ms_per_request"],
            m["azurite_cpu_ms_per_request"],
            json.dumps(m["errors_5xx"]),
        ]
        for m in result["per_minute"]
    ]
    headers = ["minute", "requests", "200", "cache hits", "p50 ms", "req/s", "p99 ms", "streamed p50 ms"]
    headers += ["RSS MiB", "load avg"]
    headers += ["service CPU ms/req", "Azurite CPU ms/req", "5xx by code"]
    print(markdown_table(headers, rows))
    print(f"\nstatuses: {result['statuses']}")
    print(f"faults injected: {result['faults_injected']}")
    print(f"RSS growth after warm-up: {result['rss_growth_after_warmup_pct']} %")
    print(f"unhandled errors in the service log: {result['unhandled_errors_in_log']}")
    print("service log, warnings and errors:", json.dumps(result["service_log"], indent=2))
    print("ledger:", json.dumps(result["ledger"], indent=2))
    if result["tracemalloc"]:
        sites = result["tracemalloc"]["top_lines"]
        rows = [[s["site"], s["size_diff_kib"], s["count_diff"]] for s in sites]
        print(markdown_table(["growth site", "KiB", "count"], rows))
    print(f"wrote {write_results(args.name, result)}")


if __name__ == "__main__":
    main()
