"""Helpers shared by the benchmark scripts: statistics, tables, results files, servers.

Kept free of Semantic Kernel imports: ``cold_start.py`` imports this module in the
parent process, and the parent must not have paid for SK when it times children.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from scripts.devservices import ROOT, ManagedProcess, free_port, start_azurite
from tests.support.stub_model import StubModelProcess, start_stub_model

if TYPE_CHECKING:
    from sk_core.settings import Settings

RESULTS_DIR = ROOT / "bench" / "results"

# One request body for every path and script, so all numbers describe the same work.
SUMMARIZE_BODY: dict[str, Any] = {
    "text": (
        "Semantic Kernel lets a service expose prompt functions as HTTP APIs. "
        "This benchmark measures what the service adds on top of the model call."
    ),
    "style": "bullets",
    "max_words": 50,
}
SUMMARIZE_PATH = "/api/v1/summarize"


# Limits high enough that the benchmark measures the admission path, never a refusal.
_BENCH_TENANT = "bench"
_BENCH_LIMITS = {
    "requests_per_minute": 10**7,
    "tokens_per_minute": 10**10,
    "max_concurrent": 10**4,
    "daily_budget_nano": 10**15,
    "monthly_budget_nano": 10**15,
}


def service_env(stub_base_url: str, storage_connection_string: str | None = None) -> dict[str, str]:
    """Environment that points either host (or the naive baseline) at the stub model.

    The stub's model id has no list price, and the service refuses to start with an
    unpriced model; it is priced like gpt-4o-mini so the cost arithmetic runs for real.
    """
    env = {
        "SKF_MODEL_PROVIDER": "openai_compatible",
        "SKF_MODEL_BASE_URL": stub_base_url,
        "SKF_MODEL_ID": "stub-model",
        "SKF_MODEL_PRICES": json.dumps({"stub-model": {"input": 0.15, "output": 0.6}}),
        "SKF_API_KEY_PEPPER": "bench-pepper-0123456789",
    }
    if storage_connection_string is not None:
        env["SKF_STORAGE_CONNECTION_STRING"] = storage_connection_string
    return env


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from ``/proc/<pid>/stat``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may contain spaces; fields after its ')' are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


async def wait_ready(client: httpx.AsyncClient, base: str, limit_seconds: float = 120) -> None:
    """GET /api/ready until 200: load must not start while the kernel is still building."""
    deadline = time.monotonic() + limit_seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get(f"{base}/api/ready", timeout=30)).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{base} never became ready")


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """In-process ``Settings`` from the very ``SKF_*`` environment given to uvicorn."""
    from sk_core.settings import Settings

    return Settings.model_validate({key.removeprefix("SKF_").lower(): value for key, value in env.items()})


def service_has_auth() -> bool:
    """Whether this checkout's service authenticates callers against Table Storage.

    The benchmarks predate auth and the ledger; detecting them keeps the scripts usable
    on either side of that change instead of pinning them to one commit.
    """
    return importlib.util.find_spec("sk_core.accounts._store") is not None


async def _provision_key(env: Mapping[str, str], tenant_id: str = _BENCH_TENANT) -> str:
    # Through the service's own stores, so keys are hashed exactly as it verifies them.
    from sk_core.accounts import Limits, Tenant
    from sk_core.composition import Service

    service = Service.create(settings_from_env(env))
    try:
        await service.tenants.create_tenant(
            Tenant(id=tenant_id, display_name="Benchmark", limits=Limits(**_BENCH_LIMITS))
        )
        issued = await service.tenants.issue_key(tenant_id, name="bench")
        return str(issued.secret)
    finally:
        await service.aclose()


@dataclass
class Backends:
    """What the service needs around it: the stub model and, with auth, Azurite and a key."""

    stub: StubModelProcess
    azurite: ManagedProcess | None
    env: dict[str, str]
    headers: dict[str, str]

    def tenant_key(self, tenant_id: str) -> str:
        """A key of another tenant with the bench's limits ("none" without auth): services
        compared side by side on one Azurite serve a tenant each, or they are instances of
        one tenant and the first started holds its allocator, doing the work of both."""
        return asyncio.run(_provision_key(self.env, tenant_id)) if self.azurite is not None else "none"


@contextlib.contextmanager
def backends(logs: Path) -> Iterator[Backends]:
    """Start the stub (delay 0) and, if the service has auth, Azurite plus a tenant and key."""
    stub = start_stub_model()
    azurite: ManagedProcess | None = None
    try:
        stub.client.reset()
        stub.client.set_default(delay=0)
        headers: dict[str, str] = {}
        if service_has_auth():
            from sk_core.storage import development_connection_string

            port = free_port()
            azurite = start_azurite(port=port, log=logs / "azurite.log")
            env = service_env(stub.base_url, development_connection_string(port))
            headers = {"x-api-key": asyncio.run(_provision_key(env))}
        else:
            env = service_env(stub.base_url)
        yield Backends(stub=stub, azurite=azurite, env=env, headers=headers)
    finally:
        stub.stop()
        if azurite is not None:
            azurite.stop()


def ms(seconds: float) -> float:
    """Seconds to milliseconds, rounded for tables and JSON."""
    return round(seconds * 1000, 2)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 2000 samples is a real sample)."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the raw samples (in ms) of a list of durations in seconds."""
    return {
        "median_ms": ms(statistics.median(values)),
        "min_ms": ms(min(values)),
        "max_ms": ms(max(values)),
        "n": len(values),
        "samples_ms": [ms(v) for v in values],
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; numbers are right-aligned."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
        return str(value)

    align = ["---:" if rows and isinstance(rows[0][i], int | float) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def source_revision() -> str:
    """The commit measured, with ``+dirty`` if the service code (not bench/) has local edits."""
    def git(*argv: str) -> str:
        completed = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return completed.stdout.strip() if completed.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    dirty = git("status", "--porcelain", "--", ".", ":(exclude)bench", ":(exclude)node_modules")
    return commit + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What the numbers were measured on; benchmarks are meaningless without it."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "revision": source_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "executable": sys.executable,
    }


def write_results(name: str, data: Mapping[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` atomically (the ``.tmp`` is git-ignored)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def uvicorn_argv(app: str, port: int) -> list[str]:
    """The same command line as ``scripts.devservices.start_service`` (1 worker), for any app."""
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--no-access-log", "--log-level", "warning"]


def wait_for_200(process: ManagedProcess, client: httpx.Client, method: str, url: str, *,
                 json_body: Any = None, headers: Mapping[str, str] | None = None,
                 timeout: float = 60.0, interval: float = 0.01) -> float:
    """Poll ``url`` until it answers 200; return ``time.perf_counter()`` at that answer.

    ``start_service`` polls every 50 ms; cold-start timing needs a finer grain, so the
    benchmark polls itself. Connection errors mean "not listening yet"; any non-200
    answer is a failure, not something to wait out.
    """
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(f"{process.name} exited: {process.log_tail()}")
        try:
            response = client.request(method, url, json=json_body, headers=headers)
        except httpx.TransportError:
            time.sleep(interval)
            continue
        if response.status_code != 200:
            raise RuntimeError(f"{method} {url} answered {response.status_code}: {response.text[:500]}")
        return time.perf_counter()
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s: {process.log_tail()}")
