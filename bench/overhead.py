"""Overhead: what the service adds to a model call, under concurrent load.

    PYTHONPATH=. .venv/bin/python bench/overhead.py [--requests 2000] [--seconds 20] [--concurrency 16]

For each stub delay (0 s and 0.05 s) the same summarize request goes, with 16
concurrent clients, through:

* container host: ``uvicorn sk_core.asgi:app`` (1 worker), real HTTP with
  ``httpx.AsyncClient`` from this process;
* Functions host, in process: awaiting the registered summarize trigger with a
  Starlette request, as the FastAPI-streaming worker would (no HTTP, no worker);
* bare ``kernel.invoke``: the same prompt function and settings on a kernel built by
  ``build_runtime``, in this process; the floor the service is compared with.

All three talk to one stub model process in one run. Each path gets a warm-up
(50 requests by default), then ``--requests`` requests or ``--seconds`` seconds,
whichever ends first. Reports p50/p99 latency, requests/s, and the ratios service p50 /
bare p50 and bare rps / service rps. Writes ``bench/results/overhead.json``.

On a 2-core machine the load generator, the service and the stub share the cores, so
the figures are relative, not capacity numbers (see bench/README.md).
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    SUMMARIZE_BODY,
    SUMMARIZE_PATH,
    machine,
    markdown_table,
    ms,
    percentile,
    service_env,
    write_results,
)
from scripts.devservices import ROOT, free_port, start_service
from sk_core.settings import Provider, Settings
from tests.stub_model import StubModelProcess, start_stub_model

Call = Callable[[], Awaitable[bool]]

CONTAINER = "container host (uvicorn, HTTP)"
FUNCTIONS = "Functions trigger (in-process)"
BARE = "bare kernel.invoke (in-process)"


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; fields after its ')' are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU used by the bench process, the service process and the stub during a run.

    Latency and req/s on a shared 2-core box move with whatever else runs there; CPU
    time per request does not, so it is the steadier measure of what each path costs.
    """

    service_pid: int
    stub_pid: int

    def read(self) -> tuple[float, float, float]:
        """(bench, service, stub) CPU seconds so far."""
        return time.process_time(), process_cpu_seconds(self.service_pid), process_cpu_seconds(self.stub_pid)


@dataclass
class LoadResult:
    """Latencies of the completed requests of one or more load runs of one path."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    wall: float = 0.0
    cpu: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # bench, service, stub

    def add(self, other: LoadResult, cpu_delta: tuple[float, float, float]) -> None:
        """Fold one round into the total."""
        self.latencies += other.latencies
        self.errors += other.errors
        self.wall += other.wall
        self.cpu = [a + b for a, b in zip(self.cpu, cpu_delta, strict=True)]

    def stats(self) -> dict[str, Any]:
        """p50/p99/mean in ms, throughput, and CPU ms per request by process."""
        n = len(self.latencies)
        bench, service, stub = (ms(c / n) if n else 0.0 for c in self.cpu)
        return {
            "requests": n,
            "errors": self.errors,
            "seconds": round(self.wall, 2),
            "rps": round(n / self.wall, 1) if self.wall else 0.0,
            "p50_ms": ms(percentile(self.latencies, 50)),
            "p90_ms": ms(percentile(self.latencies, 90)),
            "p99_ms": ms(percentile(self.latencies, 99)),
            "mean_ms": ms(statistics.fmean(self.latencies)),
            "max_ms": ms(max(self.latencies)),
            "cpu_ms_per_request": {"bench_process": bench, "service_process": service, "stub": stub,
                                   "total": round(bench + service + stub, 2)},
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
                ok = await call()
            except Exception:
                ok = False
            if ok:
                result.latencies.append(time.perf_counter() - begun)
            else:
                result.errors += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.wall = time.perf_counter() - started
    return result


# ------------------------------------------------------------------------------ paths


def container_call(client: httpx.AsyncClient) -> Call:
    """POST summarize to the running uvicorn over keep-alive HTTP."""

    async def call() -> bool:
        response = await client.post(SUMMARIZE_PATH, json=SUMMARIZE_BODY)
        return response.status_code == 200

    return call


def functions_call(trigger: Callable[[Any], Awaitable[Any]]) -> Call:
    """Await the Functions summarize trigger with a fresh Starlette request each time."""
    from tests.hosts import make_request

    body = json.dumps(SUMMARIZE_BODY).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body))}

    async def call() -> bool:
        response = await trigger(make_request("POST", SUMMARIZE_PATH, headers, body))
        return int(response.status_code) == 200

    return call


def bare_call(stub_base_url: str) -> Call:
    """``kernel.invoke`` of the catalog's summarize function, nothing else.

    Same prompt, model, service id and ``max_tokens`` as the service sends for
    SUMMARIZE_BODY, so the stub does identical work on both paths.
    """
    from semantic_kernel.connectors.ai.open_ai import OpenAIChatPromptExecutionSettings
    from semantic_kernel.functions import KernelArguments

    from sk_core.catalog import Catalog
    from sk_core.model_runtime import SERVICE_ID, build_runtime

    runtime = build_runtime(stub_settings(stub_base_url), Catalog.load())
    kernel, function = runtime.kernel, runtime.functions["text/summarize"]
    values = dict(SUMMARIZE_BODY)
    # The handler's rule (2 * max_words + 16, capped by the prompt's 512).
    max_tokens = min(512, 2 * int(values["max_words"]) + 16)

    async def call() -> bool:
        execution = OpenAIChatPromptExecutionSettings(
            service_id=SERVICE_ID, max_tokens=max_tokens, temperature=0.2
        )
        result = await kernel.invoke(function, KernelArguments(settings=execution, **values))
        return result is not None and bool(str(result))

    return call


def stub_settings(stub_base_url: str) -> Settings:
    """The service's settings for the stub, the same values ``service_env`` gives uvicorn."""
    return Settings(
        model_provider=Provider.OPENAI_COMPATIBLE, model_base_url=stub_base_url, model_id="stub-model"
    )


def _functions_trigger(stub_base_url: str) -> Callable[[Any], Awaitable[Any]]:
    """Index ``function_app`` (once per process) and point its service context at the stub."""
    import function_app
    from sk_core.service import Service, set_service

    set_service(Service.create(stub_settings(stub_base_url)))
    summarize = next(f for f in function_app.app.get_functions() if f.get_function_name() == "summarize")
    trigger: Callable[[Any], Awaitable[Any]] = summarize.get_user_function()
    return trigger


# ---------------------------------------------------------------------------- driver


async def run_scenarios(args: argparse.Namespace, stub: StubModelProcess, service_url: str,
                        meter: CpuMeter) -> list[dict[str, Any]]:
    """Every path under every stub delay, in one event loop, against one stub.

    Each scenario's budget is split into ``--rounds`` rounds and the path order rotates
    between rounds, so a burst of background load lands on every path, not on one.
    """
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=service_url, limits=limits, timeout=60, trust_env=False) as client:
        paths: dict[str, Call] = {
            CONTAINER: container_call(client),
            FUNCTIONS: functions_call(_functions_trigger(stub.base_url)),
            BARE: bare_call(stub.base_url),
        }
        scenarios = []
        for delay in args.delays:
            # Reset clears the stub's request log, which otherwise grows with every call.
            stub.client.reset()
            stub.client.set_default(delay=delay)
            print(f"stub delay {delay}s: warm-up ...", file=sys.stderr)
            for name, call in paths.items():
                warm = await run_load(call, concurrency=args.concurrency, max_requests=args.warmup,
                                      max_seconds=args.seconds)
                if warm.errors:
                    raise RuntimeError(f"{name}: {warm.errors} errors during warm-up")
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
                    totals[name].add(load, (after[0] - before[0], after[1] - before[1], after[2] - before[2]))
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
    if path == CONTAINER:
        return f"{cpu['service_process']:.2f} (+{cpu['bench_process']:.2f} client, +{cpu['stub']:.2f} stub)"
    return f"{cpu['bench_process']:.2f} (+0 client, +{cpu['stub']:.2f} stub)"


def report(results: dict[str, Any]) -> str:
    """The Markdown table printed at the end of a run."""
    rows: list[list[object]] = []
    for scenario in results["scenarios"]:
        bare = scenario["paths"][BARE]
        for name, stats in scenario["paths"].items():
            rows.append([
                f"{scenario['stub_delay_s']:g}", name, stats["requests"], stats["p50_ms"], stats["p99_ms"],
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
             "bare rps / rps", "CPU ms/req: serving path (+client, +stub)"],
            rows,
        ),
    ])


def main() -> None:
    """Start the stub and the container host, run every scenario, print and write results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per path and scenario")
    parser.add_argument("--seconds", type=float, default=20.0, help="time cap per path and scenario")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up requests per path and scenario")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per scenario, path order rotated")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.05], help="stub delays, seconds")
    args = parser.parse_args()

    results: dict[str, Any] = {"machine": machine(), "load_average_start": os.getloadavg()}
    results["config"] = dict(vars(args)) | {"body": SUMMARIZE_BODY, "uvicorn_workers": 1}
    stub = start_stub_model()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
            port = free_port()
            service = start_service(port=port, env=service_env(stub.base_url), log=Path(tmp) / "service.log")
            try:
                meter = CpuMeter(service_pid=service.process.pid, stub_pid=stub.process.pid)
                results["scenarios"] = asyncio.run(
                    run_scenarios(args, stub, f"http://127.0.0.1:{port}", meter)
                )
            finally:
                service.stop()
    finally:
        stub.stop()
    results["load_average_end"] = os.getloadavg()
    path = write_results("overhead", results)
    print(report(results))
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
