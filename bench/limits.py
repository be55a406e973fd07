"""Limits: what authentication, admission and settlement add to each request.

    PYTHONPATH=. .venv/bin/python bench/limits.py [--seconds 10] [--no-multiprocess]
    (--help lists every phase's request count and time limit; about 3 minutes in all)

One run starts its own Azurite (in memory) and stub model, then measures:

1. **In-process stage cost.** ``service.auth.authenticate`` (cached after the first
   call), ``service.ledger.admit`` and ``service.ledger.settle`` timed separately and
   together for sequential requests of one tenant: wall time, round trips, time on the
   wire and this process's CPU per stage; once with the logging the service configures
   and once with azure-core's per-request INFO logging silenced; a cProfile of the
   client-side CPU; and 16 concurrent in-process callers, which shows the ceiling the
   per-tenant lock puts on one process.
2. **Storage round trips.** Every HTTP request the Azure SDK sends is counted by a
   ``raw_request_hook`` (azure-core's ``CustomHookPolicy``, which the Tables SDK puts in
   every pipeline). ``TableStore`` builds its own client, so the bench swaps the
   ``TableServiceClient`` name *in the sk_core.storage._tables module only* for a subclass that
   adds the hooks; sk_core itself is not edited. Reported for a process's first request,
   a key's first request (auth cache miss), steady state, and 4 ``Ledger`` instances
   (separate locks, as separate processes would have) racing on one tenant.
3. **HTTP throughput, limits on vs off.** The container host (``start_service``,
   1 worker, key in ``X-API-Key``) against a "no-limits pipeline": the same uvicorn,
   ``read_json_body`` + ``validate_body`` + ``runtime.invoke`` and the same response,
   minus auth/admit/settle (``python bench/limits.py --serve-nolimits --port N``).
   16 closed-loop clients, stub delay 0 and 0.05 s.
4. **Multi-process contention.** 4 OS processes (``--contend-worker``), each its own
   ``Ledger`` over its own connection pool, admitting and settling on one tenant at
   once, against 1 process doing the same alone.

Prints a Markdown table per section and writes ``bench/results/limits.json``. On a
shared 2-core machine the load generator, service, stub and Azurite compete for CPU, so
the figures are relative; CPU ms per request is reported as the steadier measure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import cProfile
import importlib
import importlib.util
import json
import logging
import os
import pstats
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from bench._common import (
    SUMMARIZE_BODY,
    SUMMARIZE_PATH,
    machine,
    markdown_table,
    ms,
    percentile,
    process_cpu_seconds,
    service_env,
    settings_from_env,
    wait_ready,
    write_results,
)
from scripts.devservices import ROOT, ManagedProcess, free_port, start_azurite, start_service

if TYPE_CHECKING:
    from azure.core.pipeline import PipelineRequest, PipelineResponse
    from azure.data.tables.aio import TableServiceClient
    from starlette.applications import Starlette

    from sk_core.accounts import Tenant
    from sk_core.catalog import FunctionSpec
    from sk_core.composition import Service
    from sk_core.limits import Ledger
    from sk_core.pricing import Price
    from tests.support.stub_model import StubModelProcess

SCRIPT = Path(__file__).resolve()
CONCURRENCY = 16
# Generous enough that no request is ever refused: the bench measures the admission
# path, not refusals (every non-200 is counted and reported anyway).
GENEROUS = {
    "requests_per_minute": 10**7,
    "tokens_per_minute": 10**10,
    "max_concurrent": 10**4,
    "daily_budget_nano": 10**15,
    "monthly_budget_nano": 10**15,
}
# What the stub reports per call is irrelevant to storage cost; fixed usage keeps the
# settle arithmetic identical for every in-process request.
SETTLE_PROMPT_TOKENS = 60
SETTLE_COMPLETION_TOKENS = 40


# --------------------------------------------------------------------------
# Storage round-trip counting
# --------------------------------------------------------------------------


@dataclass
class RoundTrips:
    """HTTP requests sent to Table Storage, with the time each spent on the wire."""

    count: int = 0
    seconds: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)
    kind_seconds: dict[str, float] = field(default_factory=dict)


# The counter requests are charged to: a ContextVar so that concurrent tasks (one per
# racing Ledger) each count their own, since asyncio tasks copy the context at creation.
_DEFAULT_TRIPS = RoundTrips()
_TRIPS: contextvars.ContextVar[RoundTrips] = contextvars.ContextVar("round_trips", default=_DEFAULT_TRIPS)


def _kind(method: str, url: str) -> str:
    """``POST batch``, ``GET query skfusage``, ``GET entity skfapikeys``, ``POST create_table``."""
    last = urlsplit(url).path.rsplit("/", 1)[-1]
    if last == "$batch":
        return f"{method} batch"
    if last == "Tables":
        return f"{method} create_table"
    table, paren, rest = last.partition("(")
    if not paren:
        return f"{method} {last}"
    return f"{method} {'query' if rest.startswith(')') else 'entity'} {table}"


def _on_request(request: PipelineRequest[Any]) -> None:
    # Runs after the SDK's retry policy, i.e. once per attempt: a retried call counts twice.
    trips = _TRIPS.get()
    kind = _kind(request.http_request.method, request.http_request.url)
    trips.count += 1
    trips.kinds[kind] += 1
    request.context["bench_sent"] = (time.perf_counter(), kind)


def _on_response(response: PipelineResponse[Any, Any]) -> None:
    sent = response.context.get("bench_sent")
    if sent is not None:
        elapsed = time.perf_counter() - sent[0]
        trips = _TRIPS.get()
        trips.seconds += elapsed
        trips.kind_seconds[sent[1]] = trips.kind_seconds.get(sent[1], 0.0) + elapsed


def install_round_trip_hooks() -> None:
    """Make every ``TableStore`` built from now on (in this process) count its requests.

    ``TableStore`` calls ``TableServiceClient.from_connection_string`` itself and takes
    no pipeline options, so the name it resolves is replaced, in ``sk_core.storage._tables``'s
    namespace only, by a subclass adding azure-core's documented ``raw_request_hook`` /
    ``raw_response_hook``. The Tables SDK hands its policy list to every table client it
    creates, so the hooks see all traffic. ``per_call_policies`` would not work here:
    the Tables SDK builds its policy list itself and ignores that keyword.
    """
    from azure.data.tables.aio import TableServiceClient as Original

    import sk_core.storage._tables as storage

    class Hooked(Original):
        @classmethod
        def from_connection_string(cls, conn_str: str, **kwargs: Any) -> TableServiceClient:
            store_hook = kwargs.pop("raw_response_hook", None)  # TableStore's own counter

            def on_response(response: PipelineResponse[Any, Any]) -> None:
                _on_response(response)
                if store_hook is not None:
                    store_hook(response)

            return super().from_connection_string(
                conn_str, raw_request_hook=_on_request, raw_response_hook=on_response, **kwargs
            )

    # The name sk_core.storage._tables imported, replaced in that module only.
    setattr(storage, "TableServiceClient", Hooked)  # noqa: B010 (not re-exported: mypy refuses the attribute)


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def dist(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean/max in ms (nearest-rank percentiles, as the other bench scripts)."""
    return {
        "p50_ms": ms(percentile(seconds, 50)),
        "p99_ms": ms(percentile(seconds, 99)),
        "mean_ms": ms(statistics.fmean(seconds)),
        "max_ms": ms(max(seconds)),
    }


@dataclass(frozen=True)
class Call:
    """The admit arguments of one summarize request, computed as the handler does."""

    spec: FunctionSpec
    price: Price
    prompt_tokens_bound: int
    requested_max_tokens: int

    @classmethod
    def summarize(cls, service: Service) -> Call:
        """The benchmark body through validation, the token bound and the default max_tokens."""
        from sk_core.http.request_body import validate_body

        spec = service.catalog.get("text", "summarize")
        assert spec is not None
        arguments, options = spec.split_request(validate_body(spec.request_model, dict(SUMMARIZE_BODY)))
        requested = spec.requested_max_tokens(arguments, options.max_tokens)
        return cls(spec, service.settings.price, spec.prompt_token_bound(arguments), requested)

    async def admit_settle(self, ledger: Ledger, tenant: Tenant, key_id: str) -> tuple[float, float]:
        """One admission and its settlement; returns (admit seconds, settle seconds)."""
        started = time.perf_counter()
        hold = await ledger.admit(
            tenant,
            price=self.price,
            prompt_tokens_bound=self.prompt_tokens_bound,
            requested_max_tokens=self.requested_max_tokens,
            function=self.spec.id,
            key_id=key_id,
        )
        admitted = time.perf_counter()
        await ledger.settle(
            hold,
            cost_nano=self.price.cost_nano(SETTLE_PROMPT_TOKENS, SETTLE_COMPLETION_TOKENS),
            prompt_tokens=SETTLE_PROMPT_TOKENS,
            completion_tokens=SETTLE_COMPLETION_TOKENS,
        )
        return admitted - started, time.perf_counter() - admitted


async def provision(service: Service, tenant_id: str, keys: int = 1) -> list[str]:
    """A tenant with generous limits and ``keys`` API keys (their secrets)."""
    from sk_core.accounts import Limits, Tenant

    await service.tenants.create_tenant(
        Tenant(id=tenant_id, display_name=tenant_id, limits=Limits(**GENEROUS))
    )
    return [(await service.tenants.issue_key(tenant_id, name=f"bench-{i}")).secret for i in range(keys)]


# --------------------------------------------------------------------------
# Section 1 and 2: in process
# --------------------------------------------------------------------------


@dataclass
class StageSamples:
    """Per-request wall time, round trips, wire time and bench-process CPU of one stage."""

    wall: list[float] = field(default_factory=list)
    trips: list[int] = field(default_factory=list)
    wire: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The stage's figures for the table and the JSON."""
        return {
            **dist(self.wall),
            "round_trips_per_request": round(statistics.fmean(self.trips), 3),
            "storage_wire_ms_per_request": ms(statistics.fmean(self.wire)),
            "bench_cpu_ms_per_request": ms(statistics.fmean(self.cpu)),
        }


async def one_request(
    service: Service, call: Call, headers: Any
) -> dict[str, tuple[float, int, float, float]]:
    """auth → admit → settle once; per stage (wall s, round trips, wire s, CPU s)."""
    trips = _TRIPS.get()
    marks: list[tuple[float, int, float, float]] = []

    def mark() -> None:
        marks.append((time.perf_counter(), trips.count, trips.seconds, time.process_time()))

    mark()
    principal = await service.auth.authenticate(headers, call.spec.id)
    mark()
    hold = await service.ledger.admit(
        principal.tenant,
        price=call.price,
        prompt_tokens_bound=call.prompt_tokens_bound,
        requested_max_tokens=call.requested_max_tokens,
        function=call.spec.id,
        key_id=principal.key.key_id,
    )
    mark()
    await service.ledger.settle(
        hold,
        cost_nano=call.price.cost_nano(SETTLE_PROMPT_TOKENS, SETTLE_COMPLETION_TOKENS),
        prompt_tokens=SETTLE_PROMPT_TOKENS,
        completion_tokens=SETTLE_COMPLETION_TOKENS,
    )
    mark()

    def delta(a: int, b: int) -> tuple[float, int, float, float]:
        return (
            marks[b][0] - marks[a][0],
            marks[b][1] - marks[a][1],
            marks[b][2] - marks[a][2],
            marks[b][3] - marks[a][3],
        )

    return {"authenticate": delta(0, 1), "admit": delta(1, 2), "settle": delta(2, 3), "total": delta(0, 3)}


async def single_request_trips(service: Service, call: Call, headers: Any) -> dict[str, Any]:
    """Round trips of one request, by stage and by kind of HTTP call."""
    trips = _TRIPS.get()
    before = Counter(trips.kinds)
    stages = await one_request(service, call, headers)
    return {
        "round_trips": {name: stage[1] for name, stage in stages.items()},
        "ms": {name: ms(stage[0]) for name, stage in stages.items()},
        "kinds": dict(trips.kinds - before),
    }


def package_of(filename: str) -> str:
    """A profiler entry's package: azure.core, aiohttp, asyncio, sk_core, ..."""
    path = filename.replace("\\", "/")
    for marker, name in (
        ("/azure/core/", "azure.core"),
        ("/azure/data/tables/", "azure.data.tables"),
        ("/aiohttp/", "aiohttp"),
        ("/multidict/", "aiohttp"),
        ("/yarl/", "aiohttp"),
        ("/asyncio/", "asyncio"),
        ("/sk_core/", "sk_core"),
        ("/opentelemetry/", "opentelemetry"),
        ("/xml/", "xml/email (multipart)"),
        ("/email/", "xml/email (multipart)"),
        ("/json/", "json"),
        ("/urllib/", "urllib"),
        ("/uuid", "uuid"),
        ("/logging/", "logging"),
        ("/isodate/", "isodate/datetime"),
        ("/_strptime", "isodate/datetime"),
    ):
        if marker in path:
            return name
    if filename.startswith("<") or filename == "~":
        return "builtins (C)"
    return "other python"


async def profile_steady(service: Service, call: Call, headers: Any, n: int) -> dict[str, Any]:
    """Bench-process CPU of ``n`` steady-state requests, by package (self time).

    Says where the client-side CPU of admit/settle goes: request building and response
    parsing in the Azure SDK, aiohttp, or the ledger's own arithmetic.
    """
    # CPU clock, not wall: with wall time the event loop's epoll wait (Azurite's time)
    # would show up as "builtins" and drown the client-side work.
    profiler = cProfile.Profile(time.process_time)
    started = time.process_time()
    profiler.enable()
    for _ in range(n):
        await one_request(service, call, headers)
    profiler.disable()
    cpu = time.process_time() - started
    by_package: dict[str, float] = {}
    cumulative = dict.fromkeys(PROFILE_MARKERS, 0.0)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _line, name), values in raw.items():
        package = package_of(filename)
        by_package[package] = by_package.get(package, 0.0) + float(values[2])  # tottime
        for label, (suffix, function) in PROFILE_MARKERS.items():
            if name == function and filename.endswith(suffix):
                cumulative[label] += float(values[3])  # cumtime
    total = sum(by_package.values()) or 1.0
    ranked = sorted(by_package.items(), key=lambda item: -item[1])
    return {
        "requests": n,
        "bench_cpu_ms_per_request_under_profiler": ms(cpu / n),
        "self_time_share": {k: round(v / total, 3) for k, v in ranked},
        "cumulative_share": {k: round(v / total, 3) for k, v in cumulative.items()},
    }


# Functions whose cumulative CPU (callees included) is reported as a share of the total.
PROFILE_MARKERS = {
    "Ledger.admit": ("sk_core/limits/ledger.py", "admit"),
    "Ledger.settle": ("sk_core/limits/ledger.py", "settle"),
    "storage.query_partition (1 GET)": ("sk_core/storage/_tables.py", "query_partition"),
    "storage.submit (1 POST $batch)": ("sk_core/storage/_tables.py", "submit"),
    "log handlers (Logger.callHandlers)": ("logging/__init__.py", "callHandlers"),
    "batch request body (azure-core multipart, email.generator)": (
        "_pipeline_transport_rest_shared.py",
        "_prepare_multipart_body_helper",
    ),
    "batch response parsing (azure-core multipart, email.parser)": (
        "_pipeline_transport_rest_shared.py",
        "_get_raw_parts_helper",
    ),
}


class RecordCounter(logging.Handler):
    """Counts the log records that reach the root logger (i.e. pass the level checks)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Count only: the handlers the service installed do the formatting and writing."""
        self.records += 1


_LOG_RECORDS = RecordCounter()
# azure-core logs every request and response (headers included) at INFO through this logger.
AZURE_HTTP_LOGGER = "azure.core.pipeline.policies.http_logging_policy"


async def sequential(
    service: Service, call: Call, headers: Any, azurite_pid: int, n: int, seconds: float
) -> dict[str, Any]:
    """Up to ``n`` requests (or ``seconds``) one after another: per-stage figures."""
    samples = {name: StageSamples() for name in ("authenticate", "admit", "settle", "total")}
    kinds_before = Counter(_TRIPS.get().kinds)
    kind_seconds_before = dict(_TRIPS.get().kind_seconds)
    records_before = _LOG_RECORDS.records
    azurite_cpu = process_cpu_seconds(azurite_pid)
    started = time.perf_counter()
    deadline = started + seconds
    while len(samples["total"].wall) < n and time.perf_counter() < deadline:
        for name, (wall, trips, wire, cpu) in (await one_request(service, call, headers)).items():
            stage = samples[name]
            stage.wall.append(wall)
            stage.trips.append(trips)
            stage.wire.append(wire)
            stage.cpu.append(cpu)
    wall = time.perf_counter() - started
    done = len(samples["total"].wall)
    return {
        "requests": done,
        "stages": {name: stage.row() for name, stage in samples.items()},
        "rps": round(done / wall, 1),
        "azurite_cpu_ms_per_request": ms((process_cpu_seconds(azurite_pid) - azurite_cpu) / done),
        "log_records_per_request": round((_LOG_RECORDS.records - records_before) / done, 2),
        "round_trips_by_kind": {
            k: round(v / done, 3) for k, v in (_TRIPS.get().kinds - kinds_before).most_common()
        },
        # Request hook to response hook: Azurite's work plus the client's socket I/O.
        "wire_ms_per_call_by_kind": {
            k: ms((v - kind_seconds_before.get(k, 0.0)) / max(1, (_TRIPS.get().kinds - kinds_before)[k]))
            for k, v in _TRIPS.get().kind_seconds.items()
            if (_TRIPS.get().kinds - kinds_before)[k]
        },
    }


async def section_inproc(
    service: Service, azurite_pid: int, keys: Sequence[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Sections 1 and 2 (single process): stage costs and round trips."""
    from starlette.datastructures import Headers

    call = Call.summarize(service)
    first_key, second_key = (Headers({"x-api-key": k}) for k in keys[:2])
    # The process's very first request: tables are "created" (409: they exist) once each.
    cold_process = await single_request_trips(service, call, first_key)
    # A key seen for the first time by a warm process: the auth cache misses.
    cold_key = await single_request_trips(service, call, second_key)

    as_configured = await sequential(
        service, call, first_key, azurite_pid, args.inproc_requests, args.inproc_seconds
    )
    # The same loop with azure-core's per-request INFO logging silenced: how much of the
    # stage cost is the logging that the service's root-INFO configuration turns on.
    azure_http = logging.getLogger(AZURE_HTTP_LOGGER)
    level = azure_http.level
    azure_http.setLevel(logging.WARNING)
    try:
        quiet = await sequential(
            service, call, first_key, azurite_pid, args.inproc_requests, args.inproc_seconds / 2
        )
    finally:
        azure_http.setLevel(level)
    profile = await profile_steady(service, call, first_key, args.profile_requests)

    # 16 callers of one tenant in one process: the per-tenant lock serialises admit and
    # settle, so this is the most one process can admit for one tenant (no model call).
    conflicts_before = service.ledger.conflicts
    totals: list[float] = []
    admits: list[float] = []
    issued = 0
    deadline = time.perf_counter() + args.concurrent_seconds

    async def caller() -> None:
        nonlocal issued
        while issued < args.concurrent_requests and time.perf_counter() < deadline:
            issued += 1
            stages = await one_request(service, call, first_key)
            totals.append(stages["total"][0])
            admits.append(stages["admit"][0])

    azurite_cpu = process_cpu_seconds(azurite_pid)
    cpu_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    concurrent_wall = time.perf_counter() - started
    done = len(totals)
    concurrent = {
        "clients": CONCURRENCY,
        "requests": done,
        "rps": round(done / concurrent_wall, 1),
        "total": dist(totals),
        "admit_including_lock_wait": dist(admits),
        "ledger_conflicts": service.ledger.conflicts - conflicts_before,
        "bench_cpu_ms_per_request": ms((time.process_time() - cpu_before) / done),
        "azurite_cpu_ms_per_request": ms((process_cpu_seconds(azurite_pid) - azurite_cpu) / done),
    }
    return {
        "sequential": as_configured,
        "sequential_azure_http_logging_off": quiet,
        "profile": profile,
        "concurrent_16": concurrent,
        "cold_process_first_request": cold_process,
        "cold_key_first_request": cold_key,
    }


@dataclass
class LoopResult:
    """One ledger's sequential admit+settle loop."""

    admit: list[float]
    settle: list[float]
    trips: RoundTrips
    conflicts: int
    wall: float

    def as_json(self) -> dict[str, Any]:
        """Raw enough for the parent to aggregate (worker processes print this)."""
        return {
            "admit_s": self.admit,
            "settle_s": self.settle,
            "round_trips": self.trips.count,
            "wire_s": self.trips.seconds,
            "kinds": dict(self.trips.kinds),
            "kind_seconds": self.trips.kind_seconds,
            "conflicts": self.conflicts,
            "wall_s": self.wall,
        }


async def ledger_loop(ledger: Ledger, tenant: Tenant, call: Call, n: int, seconds: float) -> LoopResult:
    """Up to ``n`` sequential admit+settle on ``ledger`` (or ``seconds``), counting its round trips."""
    trips = RoundTrips()
    _TRIPS.set(trips)  # this task's context only
    admit: list[float] = []
    settle: list[float] = []
    conflicts = ledger.conflicts
    started = time.perf_counter()
    deadline = started + seconds
    while len(admit) < n and time.perf_counter() < deadline:
        a, s = await call.admit_settle(ledger, tenant, "bench")
        admit.append(a)
        settle.append(s)
    return LoopResult(admit, settle, trips, ledger.conflicts - conflicts, time.perf_counter() - started)


def contention_summary(results: Sequence[Mapping[str, Any]], wall: float) -> dict[str, Any]:
    """Aggregate several ledgers' loops racing on one tenant."""
    admit = [x for r in results for x in r["admit_s"]]
    settle = [x for r in results for x in r["settle_s"]]
    n = len(admit)
    kinds: Counter[str] = Counter()
    for r in results:
        kinds.update(r["kinds"])
    return {
        "ledgers": len(results),
        "requests": n,
        # Uneven counts mean some ledgers kept losing the race (starvation).
        "requests_per_ledger": [len(r["admit_s"]) for r in results],
        "rps_total": round(n / wall, 1),
        "round_trips_per_request": round(sum(r["round_trips"] for r in results) / n, 2),
        "conflicts_per_request": round(sum(r["conflicts"] for r in results) / n, 2),
        "round_trips_by_kind_per_request": {k: round(v / n, 2) for k, v in kinds.most_common()},
        "admit": dist(admit),
        "settle": dist(settle),
    }


async def section_contention_inproc(
    service: Service, tenant_id: str, n: int, seconds: float, ledgers: int
) -> dict[str, Any]:
    """``ledgers`` Ledger instances, each with its own store (own lock, own pool), on one tenant."""
    from sk_core.composition import make_store
    from sk_core.limits import Ledger

    call = Call.summarize(service)
    tenant = await service.tenants.require_tenant(tenant_id)
    stores = [make_store(service.settings) for _ in range(ledgers)]
    try:
        instances = [
            Ledger(
                store=s,
                lease_seconds=service.settings.hold_lease_seconds,
                min_answer_tokens=service.settings.min_answer_tokens,
            )
            for s in stores
        ]
        for store in stores:  # create_table once each, outside the measurement
            await store.table("usage")
        started = time.perf_counter()
        loops = await asyncio.gather(*(ledger_loop(ledger, tenant, call, n, seconds) for ledger in instances))
        wall = time.perf_counter() - started
    finally:
        for store in stores:
            await store.aclose()
    return contention_summary([loop.as_json() for loop in loops], wall)


# --------------------------------------------------------------------------
# Section 4: OS processes
# --------------------------------------------------------------------------


async def contend_worker(tenant_id: str, n: int, seconds: float) -> None:
    """Child process: one Ledger, wait for "go" on stdin, loop, print the result as JSON."""
    from sk_core.catalog import Catalog
    from sk_core.composition import make_store, make_tenant_store
    from sk_core.limits import Ledger
    from sk_core.settings import get_settings

    install_round_trip_hooks()
    settings = get_settings()
    store = make_store(settings)
    try:
        tenant = await make_tenant_store(settings, store).require_tenant(tenant_id)
        ledger = Ledger(
            store=store,
            lease_seconds=settings.hold_lease_seconds,
            min_answer_tokens=settings.min_answer_tokens,
        )
        await store.table("usage")
        spec = Catalog.load().get("text", "summarize")
        assert spec is not None
        from sk_core.http.request_body import validate_body

        arguments, options = spec.split_request(validate_body(spec.request_model, dict(SUMMARIZE_BODY)))
        requested = spec.requested_max_tokens(arguments, options.max_tokens)
        call = Call(spec, settings.price, spec.prompt_token_bound(arguments), requested)
        # One warm-up pair so the connection is open before the race starts.
        await call.admit_settle(ledger, tenant, "bench")
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        result = await ledger_loop(ledger, tenant, call, n, seconds)
        print(json.dumps(result.as_json()), flush=True)
    finally:
        await store.aclose()


async def _worker_result(child: asyncio.subprocess.Process) -> dict[str, Any]:
    """The worker's JSON line (anything else a library prints to stdout is skipped)."""
    assert child.stdout is not None
    while True:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=120)
        if not line:
            raise RuntimeError(f"worker exited without a result (code {child.returncode})")
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict) and "admit_s" in parsed:
                return parsed


async def run_workers(
    env: Mapping[str, str], tenant_id: str, processes: int, n: int, seconds: float, logs: Path
) -> dict[str, Any]:
    """Start ``processes`` contend workers, release them together, aggregate their loops."""
    children: list[asyncio.subprocess.Process] = []
    try:
        for index in range(processes):
            log = logs / f"worker-{processes}-{index}.log"
            with await asyncio.to_thread(log.open, "wb") as err:
                children.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        str(SCRIPT),
                        "--contend-worker",
                        "--tenant",
                        tenant_id,
                        "--mp-requests",
                        str(n),
                        "--mp-seconds",
                        str(seconds),
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=err,
                        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                        cwd=ROOT,
                    )
                )
        for child in children:
            assert child.stdout is not None
            line = b""
            while line.strip() != b"ready":  # skips anything a library prints first
                line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
                if not line:
                    raise RuntimeError(f"a contend worker exited before getting ready (see {logs})")
        started = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        results = [await _worker_result(child) for child in children]
        wall = time.perf_counter() - started
        for child in children:
            await asyncio.wait_for(child.wait(), timeout=30)
    finally:
        for child in children:  # only our own children, by handle
            if child.returncode is None:
                child.kill()
                await child.wait()
    summary = contention_summary(results, wall)
    summary["processes"] = processes
    return summary


# --------------------------------------------------------------------------
# Section 3: HTTP, limits on vs the no-limits pipeline
# --------------------------------------------------------------------------


def nolimits_app() -> Starlette:
    """The service's summarize pipeline without authentication, admission or settlement.

    Same body reading and validation, the same cached ``RuntimeProvider`` runtime and
    ``invoke``, the same ``max_tokens`` default, the same response model and the same
    route boundary (``RouteSpec.bind``); only ``auth.authenticate``,
    ``ledger.admit``, ``ledger.settle`` and what depends on them (rate-limit headers,
    the per-tenant call metrics) are left out.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from sk_core.catalog import Catalog
    from sk_core.http.api_models import HealthResponse, SummarizeResponse
    from sk_core.http.rendering import json_response
    from sk_core.http.request_body import read_json_body, validate_body
    from sk_core.http.routes import RouteSpec
    from sk_core.model import RuntimeProvider
    from sk_core.pricing import usd
    from sk_core.settings import get_settings

    settings = get_settings()
    catalog = Catalog.load()
    kernels = RuntimeProvider(settings=settings, catalog=catalog)
    spec = catalog.get("text", "summarize")
    assert spec is not None
    price = settings.price
    # sk_core.telemetry may be newer than this bench; when it exists the real host
    # installs its providers and opens validate/invoke spans, so the baseline does too.
    telemetry: Any = (
        importlib.import_module("sk_core.telemetry")
        if importlib.util.find_spec("sk_core.telemetry")
        else None
    )

    def span(name: str) -> contextlib.AbstractContextManager[Any]:
        if telemetry is None:
            return contextlib.nullcontext()
        return telemetry.tracer().start_as_current_span(name)  # type: ignore[no-any-return]

    async def summarize(request: Request, *_: Any) -> Response:  # no service, no context
        with span("validate"):
            data = await read_json_body(request, max_bytes=settings.max_body_bytes)
            arguments, options = spec.split_request(validate_body(spec.request_model, data))
        requested = spec.requested_max_tokens(arguments, options.max_tokens)
        with span("invoke"):
            runtime = await kernels.get()
            completion = await runtime.invoke(spec, arguments, max_tokens=requested)
        usage = completion.usage
        cost = price.cost_nano(usage.prompt_tokens, usage.completion_tokens)
        body = SummarizeResponse(
            summary=completion.text.strip(),
            model=completion.model,
            usage=usage,
            finish_reason=completion.finish_reason,
            cost_usd=usd(cost),
        )
        response = json_response(body)
        response.headers["X-Request-Cost-USD"] = f"{usd(cost):.9f}"
        return response

    async def health(request: Request) -> Response:
        return json_response(HealthResponse(status="ok"))

    async def ready(request: Request) -> Response:
        await kernels.get()  # the kernel is built, as the real /api/ready requires
        return json_response(HealthResponse(status="ok"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if telemetry is not None:
            telemetry.setup_telemetry(settings, host="container")
        yield
        await kernels.aclose()

    route = RouteSpec("summarize", "v1/summarize", ("POST",), summarize, "function", "Summarize", "functions")
    return Starlette(
        routes=[
            # No service: this handler uses none, and the boundary needs one only for
            # audited routes and cross-origin requests, which this bench sends neither of.
            Route(route.full_path, route.bind(lambda: None), methods=["POST"]),  # type: ignore[arg-type,return-value]
            Route("/api/health", health, methods=["GET"]),
            Route("/api/ready", ready, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def serve_nolimits(port: int) -> None:
    """Child process: uvicorn with the options ``start_service`` passes on its command line."""
    import uvicorn

    uvicorn.run(nolimits_app(), host="127.0.0.1", port=port, workers=1, access_log=False, log_level="warning")


@dataclass
class LoadResult:
    """A closed-loop load run against one URL."""

    latencies: list[float]
    statuses: Counter[str]
    wall: float
    cpu: dict[str, float]

    def as_json(self) -> dict[str, Any]:
        """rps, latency, non-200s and CPU ms per request by process."""
        n = len(self.latencies)
        return {
            "requests": n,
            "non_200": sum(v for k, v in self.statuses.items() if k != "200"),
            "statuses": dict(self.statuses),
            "seconds": round(self.wall, 2),
            "rps": round(n / self.wall, 1),
            **dist(self.latencies),
            "cpu_ms_per_request": {k: ms(v / n) for k, v in self.cpu.items()},
        }


async def run_load(
    client: httpx.AsyncClient,
    url: str,
    headers: Mapping[str, str],
    *,
    max_requests: int,
    seconds: float,
    pids: Mapping[str, int],
) -> LoadResult:
    """``CONCURRENCY`` closed-loop clients until ``max_requests`` or ``seconds`` runs out."""
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    issued = 0
    deadline = time.perf_counter() + seconds

    async def one_client() -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            begun = time.perf_counter()
            try:
                status = str((await client.post(url, json=SUMMARIZE_BODY, headers=headers)).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            latencies.append(time.perf_counter() - begun)
            statuses[status] += 1

    cpu_before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    bench_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(CONCURRENCY)))
    wall = time.perf_counter() - started
    cpu = {name: process_cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    cpu["bench (load generator)"] = time.process_time() - bench_before
    return LoadResult(latencies, statuses, wall, cpu)


async def section_http(
    stub: StubModelProcess,
    azurite: ManagedProcess,
    env: Mapping[str, str],
    key: str,
    logs: Path,
    *,
    seconds: float,
    max_requests: int,
    warmup: int,
) -> dict[str, Any]:
    """Section 3: the container host with limits vs the no-limits pipeline, over HTTP."""
    processes: list[ManagedProcess] = []
    try:
        limited_port, open_port = free_port(), free_port()
        limited = start_service(port=limited_port, env=env, log=logs / "service.log")
        processes.append(limited)
        unlimited = ManagedProcess(
            "no-limits pipeline",
            [sys.executable, str(SCRIPT), "--serve-nolimits", "--port", str(open_port)],
            env={**env, "PYTHONPATH": str(ROOT)},
            log=logs / "nolimits.log",
        )
        processes.append(unlimited)
        unlimited.wait_until(f"http://127.0.0.1:{open_port}/api/health", timeout=60)
        targets = {
            "limits on (container host)": (limited, f"http://127.0.0.1:{limited_port}", {"x-api-key": key}),
            "no-limits pipeline": (unlimited, f"http://127.0.0.1:{open_port}", {}),
        }
        scenarios: dict[str, Any] = {}
        async with httpx.AsyncClient(
            timeout=60, limits=httpx.Limits(max_connections=CONCURRENCY), trust_env=False
        ) as client:
            await asyncio.gather(*(wait_ready(client, base) for _, base, _ in targets.values()))
            for delay in (0.0, 0.05):
                stub.client.set_default(delay=delay)
                runs: dict[str, Any] = {}
                for name, (process, base, headers) in targets.items():
                    url = base + SUMMARIZE_PATH
                    pids = {
                        "service": process.process.pid,
                        "stub": stub.process.pid,
                        "azurite": azurite.process.pid,
                    }
                    # Warm-up: connections, the auth cache, the usage table, SK's first-call paths.
                    await run_load(client, url, headers, max_requests=warmup, seconds=30, pids=pids)
                    runs[name] = (
                        await run_load(
                            client, url, headers, max_requests=max_requests, seconds=seconds, pids=pids
                        )
                    ).as_json()
                on, off = runs["limits on (container host)"], runs["no-limits pipeline"]
                runs["ratio"] = {
                    "rps_limits_over_nolimits": round(on["rps"] / off["rps"], 3),
                    "p50_limits_over_nolimits": round(on["p50_ms"] / off["p50_ms"], 3),
                    "p99_limits_over_nolimits": round(on["p99_ms"] / off["p99_ms"], 3),
                    "p50_added_ms": round(on["p50_ms"] - off["p50_ms"], 2),
                }
                scenarios[f"stub_delay_{delay:g}s"] = runs
        return scenarios
    finally:
        for process in processes:
            process.stop()


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def _stage_rows(label: str, run: Mapping[str, Any]) -> list[list[object]]:
    return [
        [
            label,
            name,
            st["p50_ms"],
            st["p99_ms"],
            st["mean_ms"],
            st["round_trips_per_request"],
            st["storage_wire_ms_per_request"],
            st["bench_cpu_ms_per_request"],
        ]
        for name, st in run["stages"].items()
    ]


def print_tables(results: Mapping[str, Any]) -> None:
    """One Markdown table per section."""
    inproc = results["inproc"]
    on, off = inproc["sequential"], inproc["sequential_azure_http_logging_off"]
    print("\n### 1. In-process stage cost, sequential requests of one tenant\n")
    print(
        markdown_table(
            ["logging", "stage", "p50 ms", "p99 ms", "mean ms", "round trips", "wire ms", "bench CPU ms"],
            _stage_rows(f"as configured ({on['requests']} req)", on)
            + _stage_rows(f"azure HTTP log off ({off['requests']} req)", off),
        )
    )
    c = inproc["concurrent_16"]
    print(
        f"\nSequential: {on['rps']} req/s, Azurite CPU {on['azurite_cpu_ms_per_request']} ms/request, "
        f"{on['log_records_per_request']} log records/request (azure HTTP logging off: {off['rps']} req/s, "
        f"{off['azurite_cpu_ms_per_request']} ms, {off['log_records_per_request']} records).\n"
        f"16 concurrent in-process callers: {c['rps']} req/s, total p50 {c['total']['p50_ms']} ms"
        f" / p99 {c['total']['p99_ms']} ms, conflicts {c['ledger_conflicts']}.\n"
        f"Wire ms per call (request hook to response hook): {on['wire_ms_per_call_by_kind']}.\n"
        "Per-tenant lock ceiling 1000 / (admit mean + settle mean) = "
        f"{results['analysis']['lock_ceiling_rps']} req/s per process."
    )
    profile = inproc["profile"]
    print(
        f"\nBench-process CPU by package, self time ({profile['requests']} steady requests under "
        f"cProfile, {profile['bench_cpu_ms_per_request_under_profiler']} ms CPU/request):\n"
    )
    shares = [[k, v] for k, v in profile["self_time_share"].items()]
    shares += [[f"cumulative: {k}", v] for k, v in profile["cumulative_share"].items()]
    print(markdown_table(["package / function", "share of CPU"], shares))

    print("\n### 2. Table Storage round trips per request\n")
    rt = results["round_trips"]
    rows = []
    for name in ("cold_process_first_request", "cold_key_first_request"):
        r = rt[name]["round_trips"]
        rows.append(
            [
                name.replace("_", " "),
                r["authenticate"],
                r["admit"],
                r["settle"],
                r["total"],
                "0",
                ", ".join(f"{k} x{v}" for k, v in rt[name]["kinds"].items()),
            ]
        )
    steady = on["stages"]
    rows.append(
        [
            "steady state (mean)",
            steady["authenticate"]["round_trips_per_request"],
            steady["admit"]["round_trips_per_request"],
            steady["settle"]["round_trips_per_request"],
            steady["total"]["round_trips_per_request"],
            "0",
            ", ".join(f"{k} x{v}" for k, v in on["round_trips_by_kind"].items()),
        ]
    )
    for name in ("contention_inproc", "contention_processes"):
        r = rt.get(name)
        if r is None:
            continue
        rows.append(
            [
                f"{r['ledgers']} racing ledgers ({'processes' if 'processes' in r else 'in-process'})",
                "-",
                "-",
                "-",
                r["round_trips_per_request"],
                r["conflicts_per_request"],
                ", ".join(f"{k} x{v}" for k, v in r["round_trips_by_kind_per_request"].items()),
            ]
        )
    print(markdown_table(["case", "auth", "admit", "settle", "total", "conflicts", "HTTP calls"], rows))

    print("\n### 3. HTTP, one tenant, 16 concurrent clients\n")
    rows = []
    for scenario, runs in results["http"].items():
        for name in ("limits on (container host)", "no-limits pipeline"):
            r = runs[name]
            cpu = r["cpu_ms_per_request"]
            rows.append(
                [
                    scenario,
                    name,
                    r["requests"],
                    r["non_200"],
                    r["rps"],
                    r["p50_ms"],
                    r["p99_ms"],
                    cpu["service"],
                    cpu["azurite"],
                    cpu["stub"],
                    cpu["bench (load generator)"],
                ]
            )
        ratio = runs["ratio"]
        rows.append(
            [
                scenario,
                "ratio limits/no-limits",
                "",
                "",
                ratio["rps_limits_over_nolimits"],
                ratio["p50_limits_over_nolimits"],
                ratio["p99_limits_over_nolimits"],
                "",
                "",
                "",
                "",
            ]
        )
    print(
        markdown_table(
            [
                "stub delay",
                "pipeline",
                "requests",
                "non-200",
                "req/s",
                "p50 ms",
                "p99 ms",
                "service CPU ms/req",
                "Azurite CPU ms/req",
                "stub CPU ms/req",
                "loadgen CPU ms/req",
            ],
            rows,
        )
    )

    print("\n### 4. Ledger contention across OS processes (admit+settle loop, no model call)\n")
    mp = results.get("multiprocess")
    if mp is None:
        print("skipped (--no-multiprocess)")
        return
    rows = [
        [
            f"{r['processes']} process(es)",
            r["requests"],
            r["rps_total"],
            r["admit"]["p50_ms"],
            r["admit"]["p99_ms"],
            r["settle"]["p50_ms"],
            r["settle"]["p99_ms"],
            r["conflicts_per_request"],
            r["round_trips_per_request"],
        ]
        for r in mp.values()
    ]
    print(
        markdown_table(
            [
                "ledgers",
                "requests",
                "req/s total",
                "admit p50",
                "admit p99",
                "settle p50",
                "settle p99",
                "conflicts/req",
                "round trips/req",
            ],
            rows,
        )
    )


@contextlib.contextmanager
def redirect_stderr_log_handlers(path: Path) -> Iterator[None]:
    """Point root stream handlers that write to stderr at ``path``; count every record."""
    root = logging.getLogger()
    root.addHandler(_LOG_RECORDS)
    with path.open("w", encoding="utf-8") as log:
        moved = [
            h
            for h in root.handlers
            if isinstance(h, logging.StreamHandler) and h.stream in (sys.stderr, sys.__stderr__)
        ]
        for handler in moved:
            handler.setStream(log)
        try:
            yield
        finally:
            for handler in moved:
                handler.setStream(sys.stderr)
            root.removeHandler(_LOG_RECORDS)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every section; everything started here is stopped in the ``finally``."""
    from sk_core.composition import Service
    from tests.support.stub_model import start_stub_model

    install_round_trip_hooks()
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        logs = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-limits-")))
        stub = start_stub_model()
        stack.callback(stub.stop)
        stub.client.reset()
        stub.client.set_default(delay=0)
        from sk_core.storage import development_connection_string

        azurite_port = free_port()
        azurite = start_azurite(port=azurite_port, log=logs / "azurite.log")
        stack.callback(azurite.stop)
        env = service_env(stub.base_url, development_connection_string(azurite_port))
        settings = settings_from_env(env)
        results["settings"] = {
            # No secrets in results: the pepper is dropped and the connection string (Azurite's
            # published development key) is replaced by what it points at.
            "env": {
                **{
                    k: v
                    for k, v in env.items()
                    if k not in ("SKF_API_KEY_PEPPER", "SKF_STORAGE_CONNECTION_STRING")
                },
                "SKF_STORAGE_CONNECTION_STRING": f"Azurite development account on 127.0.0.1:{azurite_port}",
            },
            "auth_cache_seconds": settings.auth_cache_seconds,
            "tenant_limits": GENEROUS,
            "concurrency": CONCURRENCY,
            **{
                name: getattr(args, name)
                for name in (
                    "inproc_requests",
                    "inproc_seconds",
                    "profile_requests",
                    "concurrent_requests",
                    "concurrent_seconds",
                    "contention_requests",
                    "contention_seconds",
                    "seconds",
                    "http_requests",
                    "warmup",
                    "mp_requests",
                    "mp_seconds",
                )
            },
            "settle_usage": [SETTLE_PROMPT_TOKENS, SETTLE_COMPLETION_TOKENS],
            "storage": "Azurite in memory (node), loopback",
        }

        # Tenants are created through a separate context, so the measured one starts cold.
        admin = Service.create(settings)
        # Service.create may install the service's logging (sk_core.telemetry: root at
        # INFO, a JSON handler on stderr). Keep it, since it is part of what a request costs,
        # but write it to a file as the service process does, so the tables stay readable.
        stack.enter_context(redirect_stderr_log_handlers(logs / "bench-process.log"))
        try:
            inproc_keys = await provision(admin, "bench-inproc", keys=2)
            [http_key] = await provision(admin, "bench-http")
            await provision(admin, "bench-contend")
            await provision(admin, "bench-mp1")
            await provision(admin, "bench-mp4")
        finally:
            await admin.aclose()

        service = Service.create(settings)
        try:
            _TRIPS.set(RoundTrips())
            inproc = await section_inproc(service, azurite.process.pid, inproc_keys, args)
            results["inproc"] = inproc
            results["round_trips"] = {
                "cold_process_first_request": inproc.pop("cold_process_first_request"),
                "cold_key_first_request": inproc.pop("cold_key_first_request"),
                "steady": inproc["sequential"]["round_trips_by_kind"],
                "contention_inproc": await section_contention_inproc(
                    service, "bench-contend", args.contention_requests, args.contention_seconds, 4
                ),
            }
        finally:
            await service.aclose()

        results["http"] = await section_http(
            stub,
            azurite,
            env,
            http_key,
            logs,
            seconds=args.seconds,
            max_requests=args.http_requests,
            warmup=args.warmup,
        )

        if args.multiprocess:
            results["multiprocess"] = {
                "1_process": await run_workers(env, "bench-mp1", 1, args.mp_requests, args.mp_seconds, logs),
                "4_processes": await run_workers(
                    env, "bench-mp4", 4, args.mp_requests, args.mp_seconds, logs
                ),
            }
            results["round_trips"]["contention_processes"] = results["multiprocess"]["4_processes"]
        else:
            results["multiprocess_skipped"] = "--no-multiprocess"
    results["analysis"] = analysis(results)
    return results


def analysis(results: Mapping[str, Any]) -> dict[str, Any]:
    """The figures the conclusions rest on, side by side.

    Admit and settle of one tenant run one at a time per process (``Ledger``'s
    per-tenant ``asyncio.Lock``), so one process cannot admit a tenant's requests faster
    than ``1 / (admit + settle)`` whatever the concurrency; the HTTP figure is compared
    with that ceiling.
    """
    stages = results["inproc"]["sequential"]["stages"]
    ledger_ms = stages["admit"]["mean_ms"] + stages["settle"]["mean_ms"]
    http = {scenario: runs["limits on (container host)"]["rps"] for scenario, runs in results["http"].items()}
    return {
        "admit_plus_settle_mean_ms": round(ledger_ms, 2),
        "lock_ceiling_rps": round(1000 / ledger_ms, 1),
        "inproc_16_concurrent_rps": results["inproc"]["concurrent_16"]["rps"],
        "http_limits_on_rps": http,
    }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: the benchmark, or one of its child roles."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    # Every phase ends at its request count or its time limit, whichever comes first, so
    # the whole run stays bounded (about 3 minutes) however slow the machine is today.
    parser.add_argument("--inproc-requests", type=int, default=300)
    parser.add_argument("--inproc-seconds", type=float, default=15.0)
    parser.add_argument("--profile-requests", type=int, default=25)
    parser.add_argument("--concurrent-requests", type=int, default=600)
    parser.add_argument("--concurrent-seconds", type=float, default=8.0)
    parser.add_argument("--contention-requests", type=int, default=100, help="per in-process ledger")
    parser.add_argument("--contention-seconds", type=float, default=8.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="per HTTP scenario and pipeline")
    parser.add_argument("--http-requests", type=int, default=1500, help="per HTTP scenario and pipeline")
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--mp-requests", type=int, default=300, help="per worker process")
    parser.add_argument("--mp-seconds", type=float, default=8.0, help="per worker process")
    parser.add_argument("--no-multiprocess", dest="multiprocess", action="store_false")
    parser.add_argument("--serve-nolimits", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--contend-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tenant", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_nolimits:
        serve_nolimits(args.port)
        return
    if args.contend_worker:
        asyncio.run(contend_worker(args.tenant, args.mp_requests, args.mp_seconds))
        return
    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the finally blocks still
    # stop Azurite, the stub, both servers and the workers.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.perf_counter()
    load_before = os.getloadavg()
    results = asyncio.run(bench(args))
    data = {
        **machine(),
        "nproc": len(os.sched_getaffinity(0)),
        "loadavg_at_start": [round(x, 2) for x in load_before],
        # Other work shares this machine; the load around the run says how far to trust it.
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "run_seconds": round(time.perf_counter() - started, 1),
        **results,
    }
    print_tables(data)
    path = write_results("limits", data)
    print(f"\nwrote {path.relative_to(ROOT)} in {data['run_seconds']} s")


if __name__ == "__main__":
    main()
