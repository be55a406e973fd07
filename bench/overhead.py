"""Overhead: what the service adds to a model call, under concurrent load.

    PYTHONPATH=. .venv/bin/python bench/overhead.py [--requests 2000] [--seconds 15] [--rounds 4]

For each stub delay (0 s and 0.05 s) the same summarize request goes, with 16
concurrent clients, through:

* container host: ``uvicorn sk_core.asgi:app`` (1 worker), real HTTP with
  ``httpx.AsyncClient`` from this process;
* Functions host, in process: awaiting the registered summarize trigger with a
  Starlette request, as the FastAPI-streaming worker would (no HTTP, no worker);
* bare ``kernel.invoke``: the same prompt function and settings on a kernel built by
  ``build_runtime``, in this process; the floor the service is compared with.

All three talk to one stub model process in one run; when the service authenticates
callers, both hosts get a provisioned API key and use one Azurite (so the two service
paths include auth and the ledger, and the bare path does not). Each path gets a
warm-up (50 requests or 5 s), then ``--requests`` requests or ``--seconds`` seconds,
whichever ends first, split into ``--rounds`` rounds with the path order rotated.
Reports p50/p99 latency, requests/s, CPU ms per request per process, and the ratios
service p50 / bare p50 and bare rps / service rps. Writes ``bench/results/overhead.json``.

On a 2-core machine the load generator, the service, the stub and Azurite share the
cores, so the figures are relative, not capacity numbers (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from scripts.devservices import ROOT, free_port, start_service
from tests.support.stub_model import StubModelProcess

if TYPE_CHECKING:
    from sk_core.model import ModelRuntime

# A call returns None on success, else a short label of what went wrong (HTTP status,
# exception type), so a run reports which failures it saw, not only how many.
Call = Callable[[], Awaitable[str | None]]

CONTAINER = "container host (uvicorn, HTTP)"
FUNCTIONS = "Functions trigger (in-process)"
BARE = "bare kernel.invoke (in-process)"


Cpu = tuple[float, float, float, float]  # bench process, service process, stub, storage


@dataclass
class CpuMeter:
    """CPU used by the bench process, the service, the stub and Azurite during a run.

    Latency and req/s on a shared 2-core box move with whatever else runs there; CPU
    time per request does not, so it is the steadier measure of what each path costs.
    """

    service_pid: int
    stub_pid: int
    storage_pid: int | None

    def read(self) -> Cpu:
        """CPU seconds so far, per process."""
        storage = process_cpu_seconds(self.storage_pid) if self.storage_pid is not None else 0.0
        return (time.process_time(), process_cpu_seconds(self.service_pid),
                process_cpu_seconds(self.stub_pid), storage)


@dataclass
class LoadResult:
    """Latencies of the completed requests of one or more load runs of one path."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    cpu: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])  # as in Cpu

    def add(self, other: LoadResult, cpu_delta: Cpu) -> None:
        """Fold one round into the total."""
        self.latencies += other.latencies
        self.errors += other.errors
        self.wall += other.wall
        self.cpu = [a + b for a, b in zip(self.cpu, cpu_delta, strict=True)]

    def stats(self) -> dict[str, Any]:
        """p50/p99/mean in ms, throughput, and CPU ms per request by process."""
        n = len(self.latencies)
        bench, service, stub, storage = (ms(c / n) if n else 0.0 for c in self.cpu)
        return {
            "requests": n,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "seconds": round(self.wall, 2),
            "rps": round(n / self.wall, 1) if self.wall else 0.0,
            "p50_ms": ms(percentile(self.latencies, 50)),
            "p90_ms": ms(percentile(self.latencies, 90)),
            "p99_ms": ms(percentile(self.latencies, 99)),
            "mean_ms": ms(statistics.fmean(self.latencies)),
            "max_ms": ms(max(self.latencies)),
            "cpu_ms_per_request": {"bench_process": bench, "service_process": service, "stub": stub,
                                   "storage": storage, "total": round(bench + service + stub + storage, 2)},
        }


async def run_load(call: Call, *, concurrency: int, max_requests: int, max_seconds: float) -> LoadResult:
    """``concurrency`` closed-loop clients issue ``call`` until either budget runs out.

    Closed loop (each client waits for its answer before the next request) is what
    "16 concurrent clients" means; it measures latency at that concurrency and the
    throughput it yields, not a fixed-rate open-loop arrival process.
    """
    result = LoadResult()
    issued = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    async def client() -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            begun = time.perf_counter()
            try:
                failure = await call()
            except Exception as exc:
                failure = type(exc).__name__
            if failure is None:
                result.latencies.append(time.perf_counter() - begun)
            else:
                result.errors[failure] += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.wall = time.perf_counter() - started
    return result


# ------------------------------------------------------------------------------ paths


def _problem_label(status: int, body: bytes) -> str:
    """``"503 limits_unavailable"``: the status and the problem+json ``code`` if there is one."""
    try:
        code = json.loads(body).get("code", "")
    except (ValueError, AttributeError):
        code = ""
    return f"{status} {code}".strip()


def container_call(client: httpx.AsyncClient) -> Call:
    """POST summarize to the running uvicorn over keep-alive HTTP."""

    async def call() -> str | None:
        response = await client.post(SUMMARIZE_PATH, json=SUMMARIZE_BODY)
        return None if response.status_code == 200 else _problem_label(response.status_code, response.content)

    return call


def functions_call(trigger: Callable[[Any], Awaitable[Any]], auth: Mapping[str, str]) -> Call:
    """Await the Functions summarize trigger with a fresh Starlette request each time."""
    from tests.support.hosts import make_request

    body = json.dumps(SUMMARIZE_BODY).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body)), **auth}

    async def call() -> str | None:
        response = await trigger(make_request("POST", SUMMARIZE_PATH, headers, body))
        status = int(response.status_code)
        return None if status == 200 else _problem_label(status, bytes(response.body))

    return call


def bare_call(runtime: ModelRuntime) -> Call:
    """``kernel.invoke`` of the catalog's summarize function, nothing else.

    Same prompt, model, service id and ``max_tokens`` as the service sends for
    SUMMARIZE_BODY, so the stub does identical work on both paths.
    """
    from semantic_kernel.functions import KernelArguments

    from sk_core.model import SERVICE_ID, ChatSettings

    kernel, function = runtime.kernel, runtime.functions["text/summarize"]
    values = dict(SUMMARIZE_BODY)
    # The handler's rule (2 * max_words + 16, capped by the prompt's 512).
    max_tokens = min(512, 2 * int(values["max_words"]) + 16)

    async def call() -> str | None:
        execution = ChatSettings(service_id=SERVICE_ID, max_tokens=max_tokens, temperature=0.2)
        result = await kernel.invoke(function, KernelArguments(settings=execution, **values))
        return None if result is not None and str(result) else "empty result"

    return call


def functions_trigger() -> Callable[[Any], Awaitable[Any]]:
    """Index ``function_app`` (allowed once per process) and return the summarize trigger."""
    import function_app

    summarize = next(f for f in function_app.app.get_functions() if f.get_function_name() == "summarize")
    trigger: Callable[[Any], Awaitable[Any]] = summarize.get_user_function()
    return trigger


# ---------------------------------------------------------------------------- driver


async def run_scenarios(args: argparse.Namespace, be: Backends, service_url: str,
                        meter: CpuMeter) -> list[dict[str, Any]]:
    """Every path under every stub delay, in one event loop, against one stub.

    Each scenario's budget is split into ``--rounds`` rounds and the path order rotates
    between rounds, so a burst of background load lands on every path, not on one.
    """
    from sk_core.catalog import Catalog
    from sk_core.composition import Service, set_service
    from sk_core.model import build_runtime

    # The Functions triggers read the process-wide service context: the same settings
    # (stub, storage, pepper) the uvicorn process got through its environment.
    settings = settings_from_env(be.env)
    service = Service.create(settings)
    set_service(service)
    # The bare path gets its own runtime (own client and pool), built the same way.
    bare_runtime = build_runtime(settings, Catalog.load())
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=service_url, limits=limits, timeout=60, trust_env=False,
                                 headers=be.headers) as client:
        try:
            return await _measure(args, be.stub, meter, {
                CONTAINER: container_call(client),
                FUNCTIONS: functions_call(functions_trigger(), be.headers),
                BARE: bare_call(bare_runtime),
            })
        finally:
            await bare_runtime.client.close()
            await service.aclose()
            set_service(None)


async def _measure(args: argparse.Namespace, stub: StubModelProcess, meter: CpuMeter,
                   paths: dict[str, Call]) -> list[dict[str, Any]]:
    """Warm up, then measure every path in rotating rounds, for each stub delay."""
    scenarios = []
    for delay in args.delays:
        # Reset clears the stub's request log, which otherwise grows with every call.
        stub.client.reset()
        stub.client.set_default(delay=delay)
        print(f"stub delay {delay}s: warm-up ...", file=sys.stderr)
        for name, call in paths.items():
            warm = await run_load(call, concurrency=args.concurrency, max_requests=args.warmup,
                                  max_seconds=args.warmup_seconds)
            if warm.errors:
                raise RuntimeError(f"{name}: errors during warm-up: {dict(warm.errors)}")
        totals = {name: LoadResult() for name in paths}
        peaks = dict.fromkeys(paths, 0)
        names = list(paths)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                print(f"stub delay {delay}s, round {round_ + 1}/{args.rounds}: {name}", file=sys.stderr)
                stub.client.reset()
                stub.client.set_default(delay=delay)
                before = meter.read()
                load = await run_load(paths[name], concurrency=args.concurrency,
                                      max_requests=args.requests // args.rounds,
                                      max_seconds=args.seconds / args.rounds)
                after = meter.read()
                totals[name].add(load, (after[0] - before[0], after[1] - before[1], after[2] - before[2],
                                        after[3] - before[3]))
                peaks[name] = max(peaks[name], stub.client.stats()["max_concurrent"])
        measured: dict[str, Any] = {}
        for name, total in totals.items():
            measured[name] = total.stats() | {"stub_peak_concurrency": peaks[name]}
        bare = measured[BARE]
        ratios = {
            f"{name} p50 / bare p50": round(measured[name]["p50_ms"] / bare["p50_ms"], 2)
            for name in (CONTAINER, FUNCTIONS)
        } | {
            f"bare rps / {name} rps": round(bare["rps"] / measured[name]["rps"], 2)
            for name in (CONTAINER, FUNCTIONS)
        } | {
            f"{name} p50 - bare p50 (ms)": round(measured[name]["p50_ms"] - bare["p50_ms"], 2)
            for name in (CONTAINER, FUNCTIONS)
        }
        scenarios.append({"stub_delay_s": delay, "paths": measured, "ratios": ratios})
    return scenarios


def _cpu_cell(path: str, cpu: dict[str, float]) -> str:
    # For the container host the serving path is the uvicorn process and the bench
    # process is only the HTTP client; in-process paths serve in the bench process.
    serving, client = (cpu["service_process"], cpu["bench_process"]) if path == CONTAINER else (
        cpu["bench_process"], 0.0)
    return f"{serving:.2f} (+{client:.2f} client, +{cpu['storage']:.2f} storage, +{cpu['stub']:.2f} stub)"


def report(results: dict[str, Any]) -> str:
    """The Markdown table printed at the end of a run."""
    rows: list[list[object]] = []
    for scenario in results["scenarios"]:
        bare = scenario["paths"][BARE]
        for name, stats in scenario["paths"].items():
            rows.append([
                f"{scenario['stub_delay_s']:g}", name,
                f"{stats['requests']}" + (f" (+{stats['errors']} failed)" if stats["errors"] else ""),
                stats["p50_ms"], stats["p99_ms"],
                stats["rps"],
                "1.00" if name == BARE else f"{stats['p50_ms'] / bare['p50_ms']:.2f}",
                "1.00" if name == BARE else f"{bare['rps'] / stats['rps']:.2f}",
                _cpu_cell(name, stats["cpu_ms_per_request"]),
            ])
    config = results["config"]
    return "\n\n".join([
        f"## Overhead ({results['machine']['date']}, {results['machine']['cpus']} CPUs, "
        f"{config['concurrency']} concurrent clients, load generator on the same cores)",
        markdown_table(
            ["stub delay s", "path", "requests", "p50 ms", "p99 ms", "req/s", "p50 / bare p50",
             "bare rps / rps", "CPU ms/req: serving process (+client, +Azurite, +stub)"],
            rows,
        ),
    ])


def main() -> None:
    """Start the stub and the container host, run every scenario, print and write results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per path and scenario")
    # 15 s, not 20: with auth and the ledger a path serves ~10-15 req/s here, so every
    # path runs into the time cap, and 6 of them must fit the 3-minute budget.
    parser.add_argument("--seconds", type=float, default=15.0, help="time cap per path and scenario")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up requests per path and scenario")
    parser.add_argument("--warmup-seconds", type=float, default=5.0,
                        help="time cap per warm-up (the kernel build finishes regardless)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per scenario, path order rotated")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.05], help="stub delays, seconds")
    args = parser.parse_args()

    results: dict[str, Any] = {"machine": machine(), "load_average_start": os.getloadavg()}
    results["config"] = dict(vars(args)) | {"body": SUMMARIZE_BODY, "uvicorn_workers": 1}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp, backends(Path(tmp)) as be:
        results["config"]["auth"] = bool(be.headers)
        port = free_port()
        service = start_service(port=port, env=be.env, log=Path(tmp) / "service.log")
        try:
            meter = CpuMeter(service_pid=service.process.pid, stub_pid=be.stub.process.pid,
                             storage_pid=be.azurite.process.pid if be.azurite else None)
            results["scenarios"] = asyncio.run(run_scenarios(args, be, f"http://127.0.0.1:{port}", meter))
        finally:
            service.stop()
    results["load_average_end"] = os.getloadavg()
    path = write_results("overhead", results)
    print(report(results))
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
