"""The tail at 64 concurrent clients on one process, next to LiteLLM (issue #23, defect 6).

    PYTHONPATH=. .venv/bin/python bench/load.py [--clients 64] [--seconds 20] [--rounds 2]
        [--tree before=/path/to/other/checkout] [--litellm /path/to/venv/bin/litellm] [--profile]

Closed-loop ``httpx`` clients (one ``AsyncClient`` per target, as many pooled connections
as clients, httpx's default 5 s keep-alive expiry) POST the same non-streamed
``/chat/completions`` to each target in turn, round after round, against one stub model
answering at once (delay 0) and one Azurite:

* ``service``: this checkout's container host (uvicorn, 1 worker, the production
  ``UVICORN_FLAGS``), auth, limits, the audit: everything a tenant's call pays;
* ``<label>`` for each ``--tree label=PATH``: the same from another checkout (its own
  ``UVICORN_FLAGS``), e.g. the base commit, so before and after share the machine's load;
* ``litellm`` with ``--litellm``: the LiteLLM proxy (1 worker, no database) forwarding to
  the same stub, the reference the issue compares with.

Per target: p50/p99/max latency, requests/s, every failure by kind (status code or
exception type: ``ReadError`` is a connection closed without a response), the CPU ms per
request of the serving process and of Azurite, and the load average. ``--profile`` runs
``py-spy record`` on each service process during its rounds (needs ptrace rights) and
keeps the flame graphs' raw stacks in ``.run/bench/``. Writes ``bench/results/load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    backends,
    machine,
    markdown_table,
    ms,
    percentile,
    process_cpu_seconds,
    write_results,
)
from scripts.devservices import ManagedProcess, free_port, service_argv

BODY = {
    "model": "stub-model",
    "messages": [{"role": "user", "content": "Say something short about load tests."}],
    "max_tokens": 64,
}

# LiteLLM refuses to start without a master key (a loopback-only bench key, no database).
LITELLM_KEY = "sk-bench-" + "0123456789abcdef" * 2


@dataclass
class Target:
    """One server under load and what it has answered so far."""

    name: str
    base_url: str
    process: ManagedProcess
    headers: dict[str, str]
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    cpu: float = 0.0
    storage_cpu: float = 0.0
    client_cpu: float = 0.0  # this process's (the load generator's) CPU
    rounds: list[dict[str, Any]] = field(default_factory=list)


def _flags(tree: Path) -> list[str]:
    """That checkout's own uvicorn connection flags (so a before tree runs as it shipped)."""
    code = (
        "import json; from scripts.devservices import UVICORN_FLAGS; print(json.dumps(list(UVICORN_FLAGS)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout))


def start_tree(
    tree: Path, env: dict[str, str], log: Path, *, stalls: bool, workers: int = 1
) -> tuple[ManagedProcess, str]:
    """uvicorn serving ``tree``'s ``sk_core.asgi:app`` as ``start_service`` does (under
    ``bench/_stallwatch.py`` with ``stalls``: its report goes next to the log), with
    ``workers`` processes (the image runs 2, ``WEB_CONCURRENCY``)."""
    port = free_port()
    runner = (
        [str(Path(__file__).with_name("_stallwatch.py")), str(log.with_suffix(".stalls.json"))]
        if stalls
        else ["-m", "uvicorn"]
    )
    argv = service_argv(port=port, runner=runner, flags=_flags(tree), workers=workers)
    process = ManagedProcess(
        f"service ({tree.name})", argv, env={**env, "PYTHONPATH": str(tree)}, log=log, cwd=tree
    )
    process.wait_until(f"http://127.0.0.1:{port}/api/ready", timeout=120)
    return process, f"http://127.0.0.1:{port}/api/v1"


def start_litellm(binary: str, stub_url: str, log: Path) -> tuple[ManagedProcess, str]:
    """The LiteLLM proxy in front of the stub: one worker, no database, no callbacks."""
    config = log.with_suffix(".yaml")
    config.write_text(
        "model_list:\n  - model_name: stub-model\n    litellm_params:\n"
        f"      model: openai/stub-model\n      api_base: {stub_url}\n      api_key: none\n"
        "litellm_settings:\n  telemetry: false\n"
        f"general_settings:\n  master_key: {LITELLM_KEY}\n"
    )
    port = free_port()
    process = ManagedProcess(
        "litellm",
        [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        log=log,
        env={"LITELLM_LOG": "ERROR", "DISABLE_ADMIN_UI": "True"},
    )
    process.wait_until(f"http://127.0.0.1:{port}/health/liveliness", timeout=180)
    return process, f"http://127.0.0.1:{port}/v1"


async def load_round(
    target: Target, client: httpx.AsyncClient, clients: int, seconds: float
) -> dict[str, Any]:
    """``clients`` closed-loop clients for ``seconds``; folds the samples into ``target``."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.perf_counter() + seconds

    async def one_client() -> None:
        while time.perf_counter() < deadline:
            begun = time.perf_counter()
            try:
                response = await client.post("/chat/completions", json=BODY)
                failure = None if response.status_code == 200 else str(response.status_code)
            except httpx.HTTPError as exc:
                failure = type(exc).__name__
            if failure is None:
                latencies.append(time.perf_counter() - begun)
            else:
                errors[failure] += 1

    cpu0, began, load0 = (
        process_cpu_seconds(target.process.process.pid),
        time.perf_counter(),
        os.getloadavg()[0],
    )
    client0 = time.process_time()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    wall = time.perf_counter() - began
    target.cpu += process_cpu_seconds(target.process.process.pid) - cpu0
    target.client_cpu += time.process_time() - client0
    target.latencies += latencies
    target.errors += errors
    target.wall += wall
    figures = {
        "requests": len(latencies),
        "errors": dict(errors),
        "rps": round(len(latencies) / wall, 1),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(max(latencies)),
        "load_average": [load0, os.getloadavg()[0]],
    }
    target.rounds.append(figures)
    return figures


@contextlib.contextmanager
def profiling(enabled: bool, pid: int, out: Path) -> Iterator[None]:
    """``py-spy record`` of ``pid`` while the block runs (raw collapsed stacks in ``out``)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not enabled:
        yield
        return
    recorder = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "200",
            "--output",
            str(out),
            "--nonblocking",
            "--threads",
            "--gil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        recorder.send_signal(2)  # SIGINT: py-spy writes its output and exits
        recorder.wait(timeout=30)


async def run(targets: list[Target], args: argparse.Namespace, storage_pid: int | None, logs: Path) -> None:
    """Every target in turn, ``--rounds`` times, the order rotated each round."""
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    clients = {
        t.name: httpx.AsyncClient(
            base_url=t.base_url, headers=t.headers, limits=limits, timeout=60, trust_env=False
        )
        for t in targets
    }
    try:
        for target in targets:  # warm-up: connections, leases, the kernel
            await load_round(target, clients[target.name], args.clients, 3)
            target.latencies.clear()
            target.errors.clear()
            target.rounds.clear()
            target.wall = target.cpu = target.client_cpu = 0.0
        for round_ in range(args.rounds):
            order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
            for target in order:
                storage0 = process_cpu_seconds(storage_pid) if storage_pid else 0.0
                with profiling(
                    args.profile and target.name != "litellm",
                    target.process.process.pid,
                    logs / f"load-{target.name}-{round_}.txt",
                ):
                    figures = await load_round(target, clients[target.name], args.clients, args.seconds)
                if storage_pid:
                    spent = process_cpu_seconds(storage_pid) - storage0
                    target.storage_cpu += spent
                    figures["azurite_cpu_ms_per_request"] = ms(spent / max(1, figures["requests"]))
                print(f"round {round_ + 1} {target.name}: {figures}", file=sys.stderr)
    finally:
        for client in clients.values():
            await client.aclose()


def main() -> None:
    """Start the backends and the targets, run the rounds, print and write the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tree", action="append", default=[], help="label=PATH of another checkout")
    parser.add_argument("--litellm", help="the litellm proxy executable (in its own venv)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--stalls", action="store_true", help="run the services under bench/_stallwatch.py")
    parser.add_argument("--no-service", action="store_true", help="only the --tree targets")
    parser.add_argument("--server-env", action="append", default=[], help="K=V for the service processes")
    args = parser.parse_args()
    logs = Path(os.environ.get("BENCH_LOGS", ".run/bench")).resolve()
    logs.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    trees = [] if args.no_service else [("service", Path.cwd())]
    trees += [(label, Path(path).resolve()) for label, path in (t.split("=", 1) for t in args.tree)]
    with backends(logs) as backing:
        targets: list[Target] = []
        try:
            for label, tree in trees:
                extra = dict(kv.split("=", 1) for kv in args.server_env)
                process, url = start_tree(
                    tree, {**backing.env, **extra}, logs / f"load-{label}.log", stalls=args.stalls
                )
                targets.append(Target(label, url, process, backing.headers))
            if args.litellm:
                process, url = start_litellm(args.litellm, backing.stub.base_url, logs / "load-litellm.log")
                targets.append(Target("litellm", url, process, {"authorization": f"Bearer {LITELLM_KEY}"}))
            storage_pid = backing.azurite.process.pid if backing.azurite else None
            asyncio.run(run(targets, args, storage_pid, logs))
        finally:
            for target in targets:
                target.process.stop()
    results: dict[str, dict[str, Any]] = {}
    for t in targets:
        n = len(t.latencies)
        results[t.name] = {
            "requests": n,
            "errors": dict(t.errors),
            "rps": round(n / t.wall, 1) if t.wall else 0.0,
            "p50_ms": ms(percentile(t.latencies, 50)),
            "p99_ms": ms(percentile(t.latencies, 99)),
            "max_ms": ms(max(t.latencies)),
            "server_cpu_ms_per_request": ms(t.cpu / max(1, n)),
            "azurite_cpu_ms_per_request": ms(t.storage_cpu / max(1, n)),
            "client_cpu_ms_per_request": ms(t.client_cpu / max(1, n)),
            "rounds": t.rounds,
        }
    print(
        markdown_table(
            [
                "target",
                "requests",
                "failures",
                "p50 ms",
                "p99 ms",
                "max ms",
                "req/s",
                "server CPU ms/req",
                "Azurite CPU ms/req",
                "client CPU ms/req",
            ],
            [
                [
                    name,
                    r["requests"],
                    ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0",
                    r["p50_ms"],
                    r["p99_ms"],
                    r["max_ms"],
                    r["rps"],
                    r["server_cpu_ms_per_request"],
                    r["azurite_cpu_ms_per_request"],
                    r["client_cpu_ms_per_request"],
                ]
                for name, r in results.items()
            ],
        )
    )
    load_end = os.getloadavg()
    print(f"load average: start {load_start}, end {load_end}")
    path = write_results(
        "load",
        {
            "config": {
                "clients": args.clients,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "body": BODY,
                "trees": {label: str(tree) for label, tree in trees},
                "litellm": bool(args.litellm),
            },
            "results": results,
            "machine": machine(),
            "load_average": {"start": load_start, "end": load_end},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
