"""Leases: storage round trips, conflicts and throughput on one hot tenant, leases on vs off.

    PYTHONPATH=. .venv/bin/python bench/leases.py [--seconds 10] [--clients 16]

One run starts its own in-memory Azurite, a counting TCP proxy in front of it (so round
trips and conflicts are counted **at the storage endpoint**: every HTTP exchange that
crosses it, audit writes and lease syncs included), and the stub model (delay 0). Then,
for ``SKF_LEASES=true`` and ``=false`` in turn, on one tenant with limits far above the
load:

1. **1 process**: one container host (uvicorn, 1 worker), ``--clients`` closed-loop
   clients for ``--seconds`` after a warm-up: req/s, storage round trips and conflicts
   per request, and the service process's CPU per request.
2. **4 processes**: four container hosts, the same clients spread over them: total
   req/s (and its ratio to 1 process), round trips and conflicts per request.
3. **Added latency**: 1 client, sequential: p50 through the service minus p50 of the
   same chat completion sent straight to the stub.
4. **First request of a new process**: a fresh host answers ``/api/ready`` (kernel
   built, its start-up done), then its first summarize request, on a tenant that has
   served requests before: the storage exchanges up to its admission (the first
   ``$batch``, the admission's transaction) and up to the answer, in order.
   ``--only first`` runs this part alone (``bench/results/leases-first.json``).
5. **Budget race** (leases on only): 8 processes x 32 clients, the stub answering
   exactly ``max_tokens``, on a budget of ~300 calls; clients retry a refusal for 2 s
   (as ones honouring ``Retry-After`` do). settled / budget, and the ledger against the
   sum of the answers' costs.

Prints Markdown tables and writes ``bench/results/leases.json``. On 2 shared cores the
load generator, the hosts, the stub and Azurite compete: compare within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    SUMMARIZE_BODY,
    SUMMARIZE_PATH,
    machine,
    markdown_table,
    ms,
    process_cpu_seconds,
    service_env,
    settings_from_env,
    wait_ready,
    write_results,
)
from scripts.devservices import ManagedProcess, free_port, start_azurite, start_service
from tests.support.stub_model import StubModelProcess, start_stub_model


@dataclass
class _Counts:
    exchanges: int = 0
    conflicts: int = 0
    log: list[tuple[float, str]] = field(default_factory=list)
    logging: bool = False


class CountingProxy:
    """A TCP proxy that counts HTTP exchanges (a request sent after the previous answer)
    and 409/412 statuses (inside batch answers too) on their way to Azurite."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.counts = _Counts()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def reset(self) -> None:
        self.counts = _Counts()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        state = {"answered": True}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while data := await src.read(65536):
                    counts = self.counts
                    if upstream:
                        if state["answered"]:
                            counts.exchanges += 1
                            if counts.logging:
                                counts.log.append(
                                    (time.perf_counter(), data.split(b"\r\n", 1)[0].decode()[:90])
                                )
                        state["answered"] = False
                    else:
                        state["answered"] = True
                        counts.conflicts += data.count(b"HTTP/1.1 412") + data.count(b"HTTP/1.1 409")
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))


async def _provision(env: dict[str, str], tenant_id: str, **limits: int) -> str:
    from sk_core.accounts import Limits, Tenant
    from sk_core.composition import make_store, make_tenant_store

    settings = settings_from_env(env)
    store = make_store(settings)
    try:
        tenants = make_tenant_store(settings, store)
        await tenants.create_tenant(Tenant(id=tenant_id, display_name="bench", limits=Limits(**limits)))
        return (await tenants.issue_key(tenant_id)).secret
    finally:
        await store.aclose()


async def _load(
    client: httpx.AsyncClient, bases: Sequence[str], key: str, clients: int, seconds: float
) -> tuple[int, int, list[float]]:
    """Closed-loop clients spread over ``bases``: (ok, refused, latencies)."""
    until = time.perf_counter() + seconds
    ok = refused = 0
    latencies: list[float] = []

    async def one(base: str) -> None:
        nonlocal ok, refused
        while time.perf_counter() < until:
            started = time.perf_counter()
            response = await client.post(
                f"{base}{SUMMARIZE_PATH}", json=SUMMARIZE_BODY, headers={"x-api-key": key}
            )
            latencies.append(time.perf_counter() - started)
            if response.status_code == 200:
                ok += 1
            else:
                refused += 1

    await asyncio.gather(*(one(bases[i % len(bases)]) for i in range(clients)))
    return ok, refused, latencies


HUGE = {
    "requests_per_minute": 10**7,
    "tokens_per_minute": 10**10,
    "max_concurrent": 10**4,
    "daily_budget_nano": 10**15,
    "monthly_budget_nano": 10**15,
}


async def _fleet(env: dict[str, str], n: int, logs: Path, label: str) -> list[tuple[ManagedProcess, str]]:
    ports = [free_port() for _ in range(n)]
    # In threads: start_service blocks until the host answers, i.e. after its start-up,
    # whose storage calls cross the counting proxy, which runs on this event loop.
    processes = await asyncio.gather(
        *(
            asyncio.to_thread(start_service, port=port, env=env, log=logs / f"{label}-{index}.log")
            for index, port in enumerate(ports)
        )
    )
    started = [(process, f"http://127.0.0.1:{port}") for process, port in zip(processes, ports, strict=True)]
    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(wait_ready(client, base) for _, base in started))
    return started


async def throughput(
    env: dict[str, str], proxy: CountingProxy, processes: int, clients: int, seconds: float, logs: Path
) -> dict[str, Any]:
    tenant = f"hot-{processes}-{env['SKF_LEASES']}-{int(time.time() * 1000) % 10**8}"
    key = await _provision(env, tenant, **HUGE)
    fleet = await _fleet(env, processes, logs, tenant)
    try:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients * 2)) as client:
            bases = [base for _, base in fleet]
            await _load(client, bases, key, clients, min(5.0, seconds / 2))  # warm-up: leases, pools
            proxy.reset()
            cpu_before = sum(process_cpu_seconds(p.process.pid) for p, _ in fleet)
            started = time.perf_counter()
            ok, refused, latencies = await _load(client, bases, key, clients, seconds)
            wall = time.perf_counter() - started
            cpu = sum(process_cpu_seconds(p.process.pid) for p, _ in fleet) - cpu_before
            counts = proxy.counts
    finally:
        for process, _ in fleet:
            process.stop()
    return {
        "processes": processes,
        "requests": ok,
        "refused": refused,
        "rps": round(ok / wall, 1),
        "p50_ms": ms(statistics.median(latencies)),
        "round_trips_per_request": round(counts.exchanges / max(1, ok), 4),
        "conflicts_per_request": round(counts.conflicts / max(1, ok), 4),
        "service_cpu_ms_per_request": ms(cpu / max(1, ok)),
    }


async def added_latency(env: dict[str, str], stub: StubModelProcess, n: int, logs: Path) -> dict[str, Any]:
    key = await _provision(env, f"lat-{env['SKF_LEASES']}-{int(time.time()) % 10**6}", **HUGE)
    [(process, base)] = await _fleet(env, 1, logs, f"latency-{env['SKF_LEASES']}")
    direct_body = {
        "model": "stub-model",
        "messages": [{"role": "user", "content": SUMMARIZE_BODY["text"]}],
        "max_tokens": 216,
    }
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            service: list[float] = []
            direct: list[float] = []
            for index in range(n + 20):
                started = time.perf_counter()
                response = await client.post(
                    f"{base}{SUMMARIZE_PATH}", json=SUMMARIZE_BODY, headers={"x-api-key": key}
                )
                took = time.perf_counter() - started
                assert response.status_code == 200, response.text
                started = time.perf_counter()
                await client.post(f"{stub.base_url}/chat/completions", json=direct_body)
                took_direct = time.perf_counter() - started
                if index >= 20:  # warm-up
                    service.append(took)
                    direct.append(took_direct)
    finally:
        process.stop()
    return {
        "service_p50_ms": ms(statistics.median(service)),
        "direct_p50_ms": ms(statistics.median(direct)),
        "added_p50_ms": ms(statistics.median(service) - statistics.median(direct)),
    }


async def first_request(env: dict[str, str], proxy: CountingProxy, logs: Path) -> dict[str, Any]:
    key = await _provision(env, f"first-{env['SKF_LEASES']}-{int(time.time()) % 10**6}", **HUGE)
    # The tenant has served before (its usage rows exist), from a process now gone.
    [(process, base)] = await _fleet(env, 1, logs, f"before-{env['SKF_LEASES']}")
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                f"{base}{SUMMARIZE_PATH}", json=SUMMARIZE_BODY, headers={"x-api-key": key}
            )
            assert response.status_code == 200, response.text
    finally:
        process.stop()
    [(process, base)] = await _fleet(env, 1, logs, f"first-{env['SKF_LEASES']}")
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            proxy.reset()
            proxy.counts.logging = True
            started = time.perf_counter()
            response = await client.post(
                f"{base}{SUMMARIZE_PATH}", json=SUMMARIZE_BODY, headers={"x-api-key": key}
            )
            finished = time.perf_counter()
            assert response.status_code == 200, response.text
            exchanges = [line for at, line in proxy.counts.log if at <= finished]
            proxy.counts.logging = False
    finally:
        process.stop()
    batches = [i for i, line in enumerate(exchanges) if "$batch" in line]
    return {
        "storage_exchanges": len(exchanges),
        "before_admission": batches[0] + 1 if batches else None,
        "sequence": exchanges,
        "ms": ms(finished - started),
    }


async def budget_race(env: dict[str, str], stub: StubModelProcess, logs: Path) -> dict[str, Any]:
    from sk_core.composition import make_store
    from sk_core.limits import window_keys

    stub.client.set_default(content="word " * 5000)  # truncated to exactly max_tokens
    per_call = 60_000  # nano-USD, roughly one call's worst case at these prices
    budget = 300 * per_call
    tenant = f"race-{int(time.time()) % 10**6}"
    key = await _provision(env, tenant, **{**HUGE, "daily_budget_nano": budget})
    fleet = await _fleet(env, 8, logs, "race")
    costs: list[float] = []
    errors: list[int] = []
    try:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=300)) as client:

            async def caller(base: str) -> None:
                refused_since: float | None = None
                while True:
                    try:
                        response = await client.post(
                            f"{base}{SUMMARIZE_PATH}", json=SUMMARIZE_BODY, headers={"x-api-key": key}
                        )
                    except httpx.HTTPError:
                        errors.append(1)
                        await asyncio.sleep(0.2)
                        continue
                    if response.status_code == 200:
                        costs.append(response.json()["cost_usd"])
                        refused_since = None
                        continue
                    refused_since = refused_since or time.monotonic()
                    if time.monotonic() - refused_since > 2.0:
                        return
                    await asyncio.sleep(0.2)

            await asyncio.gather(*(caller(base) for _, base in fleet for _ in range(32)))
    finally:
        for process, _ in fleet:
            process.stop()  # SIGTERM: leases hand back and report on shutdown
        stub.client.reset()
        stub.client.set_default(delay=0)
    store = make_store(settings_from_env(env))
    try:
        from sk_core.limits import Ledger

        usage = await Ledger(store=store, lease_seconds=300, min_answer_tokens=16).usage(
            tenant, window_keys(datetime.now(UTC))[0]
        )
    finally:
        await store.aclose()
    return {
        "budget_nano": budget,
        "spent_nano": usage["spent_nano"],
        "settled_over_budget": round(usage["spent_nano"] / budget, 4),
        "answers": len(costs),
        "transport_errors": len(errors),
        "sum_of_answer_costs_nano": round(sum(costs) * 1e9),
        "leased_nano_after": usage["leased_nano"],
        "held_nano_after": usage["held_nano"],
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    logs = Path(tempfile.mkdtemp(prefix="bench-leases-"))
    azurite_port = free_port()
    azurite = start_azurite(port=azurite_port, log=logs / "azurite.log")
    stub = start_stub_model()
    stub.client.set_default(delay=0)
    proxy = CountingProxy(azurite_port)
    await proxy.start()
    from sk_core.storage import development_connection_string

    results: dict[str, Any] = {"machine": machine(), "config": vars(args), "runs": {}}
    try:
        for leases in ("true", "false"):
            env = {
                **service_env(stub.base_url, development_connection_string(proxy.port)),
                "SKF_LEASES": leases,
            }
            if args.only == "first":
                results["runs"][leases] = {"first": await first_request(env, proxy, logs)}
                continue
            run: dict[str, Any] = {}
            run["one"] = await throughput(env, proxy, 1, args.clients, args.seconds, logs)
            run["four"] = await throughput(env, proxy, 4, args.clients, args.seconds, logs)
            run["four"]["ratio_to_one"] = round(run["four"]["rps"] / run["one"]["rps"], 2)
            run["latency"] = await added_latency(env, stub, args.latency_requests, logs)
            run["first"] = await first_request(env, proxy, logs)
            results["runs"][leases] = run
            print(f"leases={leases}: {json.dumps(run, indent=1)}", file=sys.stderr)
        if args.only != "first":
            storage = development_connection_string(proxy.port)
            env = {**service_env(stub.base_url, storage), "SKF_LEASES": "true"}
            results["budget_race"] = await budget_race(env, stub, logs)
    finally:
        await proxy.stop()
        stub.stop()
        azurite.stop()
    return results


def print_tables(results: dict[str, Any]) -> None:
    if results["config"]["only"] == "first":
        first = [
            [f"leases={k}", r["first"]["before_admission"], r["first"]["storage_exchanges"], r["first"]["ms"]]
            for k, r in results["runs"].items()
        ]
        headers = ["run", "exchanges before admission", "exchanges before the answer", "ms"]
        print(markdown_table(headers, first))
        return
    rows = []
    for leases, run in results["runs"].items():
        for phase in ("one", "four"):
            r = run[phase]
            rows.append(
                [
                    f"leases={leases}",
                    r["processes"],
                    r["rps"],
                    r.get("ratio_to_one", ""),
                    r["p50_ms"],
                    r["round_trips_per_request"],
                    r["conflicts_per_request"],
                    r["service_cpu_ms_per_request"],
                ]
            )
    print(
        markdown_table(
            [
                "run",
                "processes",
                "req/s",
                "ratio to 1",
                "p50 ms",
                "storage RT / req",
                "conflicts / req",
                "service CPU ms / req",
            ],
            rows,
        )
    )
    print()
    print(
        markdown_table(
            [
                "run", "service p50 ms", "direct p50 ms", "added p50 ms",
                "first request: storage exchanges before admission / before the answer",
            ],
            [
                [
                    f"leases={k}",
                    r["latency"]["service_p50_ms"],
                    r["latency"]["direct_p50_ms"],
                    r["latency"]["added_p50_ms"],
                    f"{r['first']['before_admission']} / {r['first']['storage_exchanges']}",
                ]
                for k, r in results["runs"].items()
            ],
        )
    )
    if "budget_race" in results:
        print()
        print(markdown_table(list(results["budget_race"]), [list(results["budget_race"].values())]))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--only", choices=["first"], default=None, help="run one part alone")
    args = parser.parse_args(argv)
    results = asyncio.run(bench(args))
    print_tables(results)
    write_results("leases-first" if args.only == "first" else "leases", results)


if __name__ == "__main__":
    main()
