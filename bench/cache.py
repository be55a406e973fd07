"""Response cache: what a hit costs next to the cheapest request, and next to a miss.

    PYTHONPATH=. .venv/bin/python bench/cache.py [--requests 300]

Two container hosts (uvicorn, 1 worker each) share one in-memory Azurite and the stub
model (delay 0), with the cache on for ``text/summarize`` (``SKF_CACHE_FUNCTIONS``):

* host A keeps answers in memory (the default): after one miss, every identical
  request is an **in-process hit**;
* host B has ``SKF_CACHE_MEMORY_BYTES=0``: every hit is a **Table hit** (one point read
  of the entry A stored).

One client, sequential requests (latency, not throughput), in this order per round:
``GET /api/health`` on A (the floor: no auth, no storage), ``GET /api/v1/functions`` on A
(authenticated from the per-process key cache, no body, no audit row: what any
authenticated route pays), the in-process hit on A, the
Table hit on B, a miss on A (``Cache-Control: no-cache``: admitted, invoked on the stub,
settled, stored), and a bare Table point read from this process (one storage round
trip, for comparison). Reports p50/p95 and the serving process's CPU per request
(from ``/proc``). Writes ``bench/results/cache.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    SUMMARIZE_BODY,
    SUMMARIZE_PATH,
    Backends,
    backends,
    machine,
    markdown_table,
    ms,
    percentile,
    process_cpu_seconds,
    settings_from_env,
    write_results,
)
from scripts.devservices import ManagedProcess, free_port, start_service

ROUNDS = 3


async def _timed(
    call: Callable[[], Awaitable[None]], n: int, pid: int | None
) -> tuple[list[float], float]:
    """``n`` sequential calls: their durations and the CPU seconds ``pid`` spent on them."""
    cpu_before = process_cpu_seconds(pid) if pid is not None else 0.0
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    cpu = (process_cpu_seconds(pid) if pid is not None else 0.0) - cpu_before
    return samples, cpu


async def measure(requests: int, a: str, b: str, pids: list[int], back: Backends) -> dict[str, Any]:
    """Every path against the running hosts; returns the results document."""
    from sk_core.cache import CACHE_TABLE
    from sk_core.composition import make_store

    store = make_store(settings_from_env(back.env))
    async with httpx.AsyncClient(timeout=30) as client:

        async def post(base: str, expect: str, **headers: str) -> None:
            response = await client.post(
                f"{base}{SUMMARIZE_PATH}", json=SUMMARIZE_BODY, headers={**back.headers, **headers}
            )
            got = response.headers.get("x-cache")
            if response.status_code != 200 or got != expect:
                raise RuntimeError(f"{base}: {response.status_code} X-Cache {got}, expected {expect}")

        async def get(path: str, **headers: str) -> None:
            if (await client.get(f"{a}{path}", headers=headers)).status_code != 200:
                raise RuntimeError(f"GET {path} failed")

        for base in (a, b):  # warm: the kernel is built before any timing
            for _ in range(300):
                if (await client.get(f"{base}/api/ready")).status_code == 200:
                    break
                await asyncio.sleep(0.2)
        await post(a, "miss", **{"cache-control": "no-cache"})
        await post(b, "hit")
        table = await store.table(CACHE_TABLE)
        entities = [e async for e in table.query_entities("PartitionKey eq 'bench'")]
        entity = entities[0]

        async def table_read() -> None:
            await table.get_entity(entity["PartitionKey"], entity["RowKey"])

        paths: dict[str, tuple[Callable[[], Awaitable[None]], int | None]] = {
            "GET /api/health (A)": (lambda: get("/api/health"), pids[0]),
            "GET /api/v1/functions (A: auth, no body)": (
                lambda: get("/api/v1/functions", **back.headers),
                pids[0],
            ),
            "in-process hit (A)": (lambda: post(a, "hit"), pids[0]),
            "Table hit (B, memory off)": (lambda: post(b, "hit"), pids[1]),
            "miss (A, no-cache: model call + store)": (
                lambda: post(a, "miss", **{"cache-control": "no-cache"}),
                pids[0],
            ),
            "bare Table point read (this process)": (table_read, None),
        }
        for call, _ in paths.values():  # warm every path (leases, connection pools)
            for _ in range(10):
                await call()
        samples: dict[str, list[float]] = {name: [] for name in paths}
        cpu: dict[str, float] = dict.fromkeys(paths, 0.0)
        per_round = max(1, requests // ROUNDS)
        for _ in range(ROUNDS):
            for name, (call, pid) in paths.items():
                taken, spent = await _timed(call, per_round, pid)
                samples[name] += taken
                cpu[name] += spent
    await store.aclose()
    results: dict[str, Any] = {"machine": machine(), "requests_per_path": per_round * ROUNDS, "paths": {}}
    for name, values in samples.items():
        results["paths"][name] = {
            "p50_ms": ms(statistics.median(values)),
            "p95_ms": ms(percentile(values, 95)),
            "server_cpu_ms_per_request": ms(cpu[name] / len(values)) if paths[name][1] is not None else None,
        }
    return results


def run(requests: int, logs: Path) -> dict[str, Any]:
    """Start the stub, Azurite and both hosts; measure; stop everything."""
    with backends(logs) as back:
        env = {**back.env, "SKF_CACHE_FUNCTIONS": json.dumps({"text/summarize": {"enabled": True}})}
        ports = [free_port(), free_port()]
        hosts: list[ManagedProcess] = []
        try:
            hosts.append(start_service(port=ports[0], env=env, log=logs / "host-a.log"))
            table_only = {**env, "SKF_CACHE_MEMORY_BYTES": "0"}
            hosts.append(start_service(port=ports[1], env=table_only, log=logs / "host-b.log"))
            a, b = (f"http://127.0.0.1:{port}" for port in ports)
            return asyncio.run(measure(requests, a, b, [host.process.pid for host in hosts], back))
        finally:
            for host in hosts:
                host.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per path (split in rounds)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        results = run(args.requests, Path(logs))
    path = write_results("cache", results)
    rows = [
        [name, p["p50_ms"], p["p95_ms"], "" if p["server_cpu_ms_per_request"] is None else cpu]
        for name, p in results["paths"].items()
        for cpu in [p["server_cpu_ms_per_request"]]
    ]
    print(f"## Response cache ({results['machine']['date']}, {results['machine']['cpus']} CPUs)\n")
    print(markdown_table(["path", "p50 ms", "p95 ms", "server CPU ms/request"], rows))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
