"""Helpers shared by the benchmark scripts: statistics, tables, results files, servers.

Kept free of Semantic Kernel imports: ``cold_start.py`` imports this module in the
parent process, and the parent must not have paid for SK when it times children.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from scripts.devservices import ROOT, ManagedProcess

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


def service_env(stub_base_url: str) -> dict[str, str]:
    """Environment that points either host (or the naive baseline) at the stub model."""
    return {
        "SKF_MODEL_PROVIDER": "openai_compatible",
        "SKF_MODEL_BASE_URL": stub_base_url,
        "SKF_MODEL_ID": "stub-model",
    }


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


def machine() -> dict[str, Any]:
    """What the numbers were measured on; benchmarks are meaningless without it."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
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
                 json_body: Any = None, timeout: float = 60.0, interval: float = 0.01) -> float:
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
            response = client.request(method, url, json=json_body)
        except httpx.TransportError:
            time.sleep(interval)
            continue
        if response.status_code != 200:
            raise RuntimeError(f"{method} {url} answered {response.status_code}: {response.text[:500]}")
        return time.perf_counter()
    raise RuntimeError(f"{url} did not answer 200 within {timeout}s: {process.log_tail()}")
