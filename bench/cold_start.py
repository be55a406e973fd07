"""Cold start: how long a fresh process takes to index the app and answer its first request.

    PYTHONPATH=. .venv/bin/python bench/cold_start.py [--trials 5] [--import-trials 7]

Measures, against the stub model (tests/stub_model.py) with zero delay:

a. ``import function_app`` in a fresh interpreter (what the Functions host pays to
   index the app), checking Semantic Kernel stayed unloaded, plus where that import
   time goes (one ``python -X importtime`` run, grouped by top-level package).
b. Functions host: process spawn -> first 200 from the summarize trigger, in a child
   that imports ``function_app``, indexes it and awaits the trigger once
   (``bench/probe_functions.py``).
c. Container host: spawn of ``uvicorn sk_core.asgi:app`` (1 worker) -> first 200 from
   ``POST /api/v1/summarize``.
d. Naive baseline (``bench/naive_app.py``, SK imported at module top and a kernel built
   per request): spawn -> first 200, and the steady-state cost of 20 sequential
   requests against it and against the container host.

Prints Markdown tables and writes ``bench/results/cold_start.json``. This is a
measurement, not a test: it fails only if something does not answer 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    SUMMARIZE_BODY,
    SUMMARIZE_PATH,
    machine,
    markdown_table,
    ms,
    service_env,
    summary,
    uvicorn_argv,
    wait_for_200,
    write_results,
)
from scripts.devservices import ROOT, ManagedProcess, free_port
from tests.stub_model import start_stub_model

PROBE = ROOT / "bench" / "probe_functions.py"
OURS = "sk_core.asgi:app"
NAIVE = "bench.naive_app:app"
_IMPORTTIME_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)")


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # The probe runs as a script (sys.path[0] is bench/), so the repo root must be on
    # PYTHONPATH for ``import function_app``; absolute, because cwd is not the parent's.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def _run_probe(
    mode: str, env: Mapping[str, str], *, python_flags: tuple[str, ...] = ()
) -> tuple[dict[str, Any], str]:
    completed = subprocess.run(
        [sys.executable, *python_flags, str(PROBE), mode],
        cwd=ROOT, env=dict(env), capture_output=True, text=True, timeout=120, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"probe {mode} failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.stderr


# --------------------------------------------------------------------------- a. import


def measure_interpreter(trials: int) -> dict[str, Any]:
    """Spawn -> exit of ``python -c pass``: the floor under every process-level number."""
    samples = []
    for _ in range(trials):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, env=_child_env())
        samples.append(time.perf_counter() - started)
    return summary(samples)


def measure_import(trials: int) -> dict[str, Any]:
    """``import function_app`` timed inside fresh interpreters; SK must stay unloaded."""
    samples: list[float] = []
    sk_loaded: list[bool] = []
    openai_loaded: list[bool] = []
    modules = 0
    for _ in range(trials):
        result, _ = _run_probe("import", _child_env())
        samples.append(float(result["import_s"]))
        sk_loaded.append(bool(result["semantic_kernel_loaded"]))
        openai_loaded.append(bool(result["openai_loaded"]))
        modules = int(result["modules_loaded"])
    return {
        **summary(samples),
        "semantic_kernel_loaded": any(sk_loaded),
        "openai_loaded": any(openai_loaded),
        "modules_loaded_after_import": modules,
    }


def parse_importtime(stderr: str, root_module: str = "function_app") -> dict[str, Any]:
    """Attribute ``root_module``'s import time (``-X importtime`` output) to packages.

    Returns the direct imports of ``root_module`` with their cumulative time (who pulled
    the cost in) and the self time summed per top-level package (where it is spent).
    """
    entries: list[tuple[int, int, int, str]] = []  # (level, self_us, cumulative_us, name)
    for line in stderr.splitlines():
        match = _IMPORTTIME_LINE.match(line)
        if match:
            level = (len(match.group(3)) - 1) // 2
            entries.append((level, int(match.group(1)), int(match.group(2)), match.group(4)))
    end = next(i for i, e in enumerate(entries) if e[0] == 0 and e[3] == root_module)
    start = end
    # -X importtime prints children before parents: the subtree is the run of deeper
    # entries right above the root's own line.
    while start > 0 and entries[start - 1][0] > 0:
        start -= 1
    subtree = entries[start : end + 1]
    by_package: dict[str, int] = defaultdict(int)
    for _, self_us, _, name in subtree:
        by_package[name.split(".")[0]] += self_us
    total = entries[end][2]
    return {
        "total_ms": round(total / 1000, 1),
        "direct_imports": [
            {"module": name, "cumulative_ms": round(cum / 1000, 1)}
            for level, _, cum, name in sorted(subtree, key=lambda e: -e[2])
            if level == 1
        ],
        "self_time_by_package": [
            {"package": pkg, "self_ms": round(us / 1000, 1), "share": round(us / total, 3)}
            for pkg, us in sorted(by_package.items(), key=lambda kv: -kv[1])
        ],
    }


def measure_import_breakdown(mode: str = "import", root_module: str = "function_app") -> dict[str, Any]:
    """One ``-X importtime`` run of a probe (its own overhead inflates totals by ~20-50%)."""
    result, stderr = _run_probe(mode, _child_env(), python_flags=("-X", "importtime"))
    return {**parse_importtime(stderr, root_module), "timer_ms": ms(float(result["import_s"]))}


# --------------------------------------------------------------------- b. Functions host


def measure_functions_first_call(trials: int, env: Mapping[str, str]) -> dict[str, Any]:
    """Spawn -> first 200 from the summarize trigger, with the child's own breakdown."""
    runs: list[dict[str, Any]] = []
    for _ in range(trials):
        # Wall clock on purpose: it is the only clock both processes can read alike.
        spawn_env = _child_env({**env, "BENCH_SPAWN_WALL": repr(time.time())})
        result, _ = _run_probe("first-call", spawn_env)
        runs.append(result)
    out = summary([float(r["total_s"]) for r in runs])
    for part in ("spawn_to_main_s", "import_s", "index_s", "first_invoke_s"):
        out[part.replace("_s", "_median_ms")] = ms(statistics.median(float(r[part]) for r in runs))
    out["semantic_kernel_loaded_after_first_call"] = all(bool(r["semantic_kernel_loaded"]) for r in runs)
    return out


# ------------------------------------------------------------- c./d. uvicorn-served apps


def measure_server_first_call(app: str, trials: int, env: Mapping[str, str], logs: Path) -> dict[str, Any]:
    """Spawn of ``uvicorn <app>`` -> /api/health 200 -> first summarize 200."""
    listen: list[float] = []
    first: list[float] = []
    with httpx.Client(timeout=60, trust_env=False) as client:
        for trial in range(trials):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            started = time.perf_counter()
            log = logs / f"{app}-{trial}.log"
            with ManagedProcess(app, uvicorn_argv(app, port), env=env, log=log) as proc:
                listening = wait_for_200(proc, client, "GET", f"{base}/api/health")
                answered = wait_for_200(
                    proc, client, "POST", f"{base}{SUMMARIZE_PATH}", json_body=SUMMARIZE_BODY
                )
            listen.append(listening - started)
            first.append(answered - started)
    out = summary(first)
    out["listening_median_ms"] = ms(statistics.median(listen))
    out["listening_samples_ms"] = [ms(v) for v in listen]
    return out


def measure_steady_state(app: str, requests: int, env: Mapping[str, str], logs: Path) -> dict[str, Any]:
    """Latency of ``requests`` sequential summarize calls to a warm server (first call excluded)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    samples: list[float] = []
    with (
        httpx.Client(base_url=base, timeout=60, trust_env=False) as client,
        ManagedProcess(app, uvicorn_argv(app, port), env=env, log=logs / f"{app}-steady.log") as proc,
    ):
        wait_for_200(proc, client, "GET", "/api/health")
        wait_for_200(proc, client, "POST", SUMMARIZE_PATH, json_body=SUMMARIZE_BODY)  # pays the build
        for _ in range(requests):
            started = time.perf_counter()
            response = client.post(SUMMARIZE_PATH, json=SUMMARIZE_BODY)
            samples.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{app} answered {response.status_code}: {response.text[:500]}")
    return {**summary(samples), "mean_ms": ms(statistics.fmean(samples))}


def measure_naive_build(requests: int, stub_base_url: str) -> dict[str, Any]:
    """In-process cost of the naive per-request build alone (client + service + kernel + function).

    Imports Semantic Kernel into this process, so it runs after every child measurement.
    """
    from bench.naive_app import build

    async def one() -> float:
        started = time.perf_counter()
        _, _, client = build(stub_base_url, "stub-model")
        elapsed = time.perf_counter() - started
        await client.close()
        return elapsed

    async def run() -> list[float]:
        await one()  # first build pays one-off lazy imports inside SK
        return [await one() for _ in range(requests)]

    return summary(asyncio.run(run()))


# ----------------------------------------------------------------------------- report


def report(results: dict[str, Any]) -> str:
    """The Markdown tables printed at the end of a run."""
    imp, fn = results["import_function_app"], results["functions_first_call"]
    box, naive = results["container_first_call"], results["naive_first_call"]
    interp = results["interpreter_start"]
    cold = markdown_table(
        ["measurement", "median ms", "min ms", "N", "notes"],
        [
            ["interpreter start (`python -c pass`, spawn -> exit)", interp["median_ms"], interp["min_ms"],
             interp["n"], "floor under every process-level figure"],
            ["a. `import function_app` (in-process timer)", imp["median_ms"], imp["min_ms"], imp["n"],
             f"semantic_kernel loaded: {imp['semantic_kernel_loaded']}, "
             f"openai loaded: {imp['openai_loaded']}"],
            ["b. Functions host: spawn -> first 200 (summarize)", fn["median_ms"], fn["min_ms"], fn["n"],
             f"start {fn['spawn_to_main_median_ms']:.0f} + import {fn['import_median_ms']:.0f} + "
             f"index {fn['index_median_ms']:.0f} + first invoke {fn['first_invoke_median_ms']:.0f} ms"],
            ["c. container host: spawn -> first 200 (summarize)", box["median_ms"], box["min_ms"], box["n"],
             f"listening (/api/health 200) after {box['listening_median_ms']:.0f} ms"],
            ["d. naive baseline: spawn -> first 200 (summarize)", naive["median_ms"], naive["min_ms"],
             naive["n"], f"listening after {naive['listening_median_ms']:.0f} ms"],
        ],
    )
    breakdown = results["import_breakdown"]
    packages = markdown_table(
        ["package (self time, -X importtime)", "ms", "share"],
        [[p["package"], p["self_ms"], f"{p['share']:.0%}"] for p in breakdown["self_time_by_package"][:12]],
    )
    direct = markdown_table(
        ["imported by function_app", "cumulative ms"],
        [[d["module"], d["cumulative_ms"]] for d in breakdown["direct_imports"]],
    )
    runtime = results["runtime_import_breakdown"]
    runtime_packages = markdown_table(
        ["package (self time, -X importtime)", "ms", "share"],
        [[p["package"], p["self_ms"], f"{p['share']:.0%}"] for p in runtime["self_time_by_package"][:8]],
    )
    ours, theirs, build = results["steady_ours"], results["steady_naive"], results["naive_build_in_process"]
    steady = markdown_table(
        ["steady state, sequential summarize over HTTP", "median ms", "mean ms", "min ms", "N"],
        [
            ["container host (kernel cached)", ours["median_ms"], ours["mean_ms"], ours["min_ms"], ours["n"]],
            ["naive baseline (kernel built per request)", theirs["median_ms"], theirs["mean_ms"],
             theirs["min_ms"], theirs["n"]],
            ["naive per-request build alone (in-process)", build["median_ms"], "-", build["min_ms"],
             build["n"]],
        ],
    )
    return "\n\n".join([
        f"## Cold start ({results['machine']['date']}, {results['machine']['cpus']} CPUs, stub delay 0)",
        cold,
        f"### Where `import function_app` goes (-X importtime total {breakdown['total_ms']:.0f} ms)",
        direct,
        packages,
        f"### Where the first request's `import sk_core.model_runtime` goes "
        f"(-X importtime total {runtime['total_ms']:.0f} ms, one run)",
        runtime_packages,
        "### Steady state",
        steady,
    ])


def main() -> None:
    """Run every cold-start measurement, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=5, help="spawns per process-level measurement")
    parser.add_argument("--import-trials", type=int, default=7, help="fresh interpreters for the import time")
    parser.add_argument("--requests", type=int, default=20, help="sequential requests for the steady state")
    args = parser.parse_args()

    results: dict[str, Any] = {"machine": machine(), "load_average_start": os.getloadavg()}
    results["config"] = {"trials": args.trials, "import_trials": args.import_trials,
                         "requests": args.requests, "stub_delay_s": 0.0, "body": SUMMARIZE_BODY}
    stub = start_stub_model()
    try:
        stub.client.reset()
        stub.client.set_default(delay=0)
        env = service_env(stub.base_url)
        with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
            logs = Path(tmp)
            print("a. import function_app ...", file=sys.stderr)
            results["interpreter_start"] = measure_interpreter(args.import_trials)
            results["import_function_app"] = measure_import(args.import_trials)
            results["import_breakdown"] = measure_import_breakdown()
            # What the first model-backed request pays on top, in either host.
            results["runtime_import_breakdown"] = measure_import_breakdown(
                "runtime-import", "sk_core.model_runtime"
            )
            print("b. Functions host first call ...", file=sys.stderr)
            results["functions_first_call"] = measure_functions_first_call(args.trials, env)
            print("c. container host first call ...", file=sys.stderr)
            results["container_first_call"] = measure_server_first_call(OURS, args.trials, env, logs)
            print("d. naive baseline first call and steady state ...", file=sys.stderr)
            results["naive_first_call"] = measure_server_first_call(NAIVE, args.trials, env, logs)
            results["steady_ours"] = measure_steady_state(OURS, args.requests, env, logs)
            results["steady_naive"] = measure_steady_state(NAIVE, args.requests, env, logs)
        results["naive_build_in_process"] = measure_naive_build(args.requests, stub.base_url)
    finally:
        stub.stop()
    results["load_average_end"] = os.getloadavg()
    path = write_results("cold_start", results)
    print(report(results))
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
