"""Cold start: how long a fresh process takes to index the app and answer its first request.

    PYTHONPATH=. .venv/bin/python bench/cold_start.py [--trials 5] [--import-trials 7]

Measures, against the stub model (tests/support/stub_model.py) with zero delay:

a. ``import function_app`` in a fresh interpreter (what the Functions host pays to
   index the app), checking Semantic Kernel stayed unloaded, plus where that import
   time goes (one ``python -X importtime`` run, grouped by top-level package); and
   the lazy ``import sk_core.model._runtime`` (Semantic Kernel + OpenAI SDK) that the
   first model-backed request pays in either host, timed and broken down the same way.
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
import compileall
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    SUMMARIZE_BODY,
    SUMMARIZE_PATH,
    backends,
    machine,
    markdown_table,
    ms,
    summary,
    uvicorn_argv,
    wait_for_200,
    write_results,
)
from scripts.devservices import ROOT, ManagedProcess, free_port

PROBE = ROOT / "bench" / "probe_functions.py"
OURS = "sk_core.asgi:app"
NAIVE = "bench.naive_app:app"
_TOP = 20
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


class Budget:
    """The script's wall-clock allowance, so it stays bounded on a loaded machine.

    Trial loops ask before each further trial whether it (plus what later sections
    still need) fits; a loop that stops early records fewer samples and says so,
    rather than overrunning.
    """

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def allows(self, seconds: float) -> bool:
        """True if ``seconds`` more work ends before the deadline."""
        return time.perf_counter() + seconds < self.deadline


def _note_truncated(out: dict[str, Any], requested: int) -> None:
    if out["n"] < requested:
        out["truncated_from"] = requested
        print(f"  time budget: stopped after {out['n']} of {requested} trials", file=sys.stderr)


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
    # One untimed run first, so the OS file cache is warm as on a running instance.
    _run_probe("import", _child_env())
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


def measure_import_split(trials: int) -> dict[str, Any]:
    """The required Functions SDK + FastAPI extension alone, then function_app on top."""
    sdk: list[float] = []
    ours: list[float] = []
    for _ in range(trials):
        result, _ = _run_probe("import-split", _child_env())
        sdk.append(float(result["sdk_s"]))
        ours.append(float(result["ours_s"]))
    return {"sdk": summary(sdk), "ours": summary(ours)}


def parse_importtime(stderr: str, root_module: str | tuple[str, ...] = "function_app") -> dict[str, Any]:
    """Attribute the import time of ``root_module`` (one or several top-level imports in
    ``-X importtime`` output) to packages.

    Returns the direct imports of the roots with their cumulative time (who pulled the
    cost in) and the self time summed per top-level package (where it is spent).
    """
    roots = (root_module,) if isinstance(root_module, str) else root_module
    entries: list[tuple[int, int, int, str]] = []  # (level, self_us, cumulative_us, name)
    for line in stderr.splitlines():
        match = _IMPORTTIME_LINE.match(line)
        if match:
            level = (len(match.group(3)) - 1) // 2
            entries.append((level, int(match.group(1)), int(match.group(2)), match.group(4)))
    subtree: list[tuple[int, int, int, str]] = []
    total = 0
    for root in roots:
        end = next(i for i, e in enumerate(entries) if e[0] == 0 and e[3] == root)
        start = end
        # -X importtime prints children before parents: the subtree is the run of deeper
        # entries right above the root's own line.
        while start > 0 and entries[start - 1][0] > 0:
            start -= 1
        subtree.extend(entries[start : end + 1])
        total += entries[end][2]
    by_package: dict[str, int] = defaultdict(int)
    for _, self_us, _, name in subtree:
        by_package[name.split(".")[0]] += self_us
    # The top entries carry the story; the long tail would only bloat the results file.
    return {
        "total_ms": round(total / 1000, 1),
        "direct_imports": [
            {"module": name, "cumulative_ms": round(cum / 1000, 1)}
            for level, _, cum, name in sorted(subtree, key=lambda e: -e[2])
            if level == 1
        ][:_TOP],
        "self_time_by_package": [
            {"package": pkg, "self_ms": round(us / 1000, 1), "share": round(us / total, 3)}
            for pkg, us in sorted(by_package.items(), key=lambda kv: -kv[1])
        ][:_TOP],
    }


def measure_runtime_import(trials: int, budget: Budget) -> dict[str, Any] | None:
    """``import sk_core.model._runtime`` (SK + OpenAI SDK) after ``function_app``, fresh each time.

    The lazy import the first model-backed request pays in either host. Optional: runs
    last, only as many times as the budget allows (None if not even once).
    """
    samples: list[float] = []
    last = 10.0  # generous guess for the first run on a loaded 2-core box
    while len(samples) < trials and budget.allows(last * 1.5):
        started = time.perf_counter()
        samples.append(float(_run_probe("runtime-import", _child_env())[0]["import_s"]))
        last = time.perf_counter() - started
    if not samples:
        return None
    out = summary(samples)
    _note_truncated(out, trials)
    return out


def measure_import_breakdown(mode: str = "import", after: str | None = None) -> dict[str, Any]:
    """One ``-X importtime`` run of a probe (its own overhead inflates totals by ~20-50%).

    Attributes ``function_app``'s import, or with ``after``, every top-level import
    that follows that module's (the probe's timed section).
    """
    result, stderr = _run_probe(mode, _child_env(), python_flags=("-X", "importtime"))
    roots: str | tuple[str, ...] = "function_app"
    if after is not None:
        lines = map(_IMPORTTIME_LINE.match, stderr.splitlines())
        top = [m.group(4) for m in lines if m and m.group(3) == " "]
        roots = tuple(top[top.index(after) + 1 :])
    return {**parse_importtime(stderr, roots), "timer_ms": ms(float(result["import_s"]))}


# --------------------------------------------------------------------- b. Functions host


def measure_functions_first_call(
    trials: int,
    env: Mapping[str, str],
    headers: Mapping[str, str],
    budget: Budget,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Spawn -> first 200 from the summarize trigger, with the child's own breakdown."""
    runs: list[dict[str, Any]] = []
    key = {"BENCH_API_KEY": headers["x-api-key"]} if "x-api-key" in headers else {}
    fastest = 0.0
    # Later, c./d. need about 2 x trials spawns of similar length: reserve them. The
    # fastest trial so far is the estimate, so one slow outlier does not cut the loop.
    while len(runs) < trials and (not runs or budget.allows(fastest * (1 + 2 * trials))):
        started = time.perf_counter()
        # Wall clock on purpose: it is the only clock both processes can read alike.
        spawn_env = _child_env({**env, **key, **(extra_env or {}), "BENCH_SPAWN_WALL": repr(time.time())})
        result, _ = _run_probe("first-call", spawn_env)
        runs.append(result)
        elapsed = time.perf_counter() - started
        fastest = min(fastest, elapsed) if fastest else elapsed
    out = summary([float(r["total_s"]) for r in runs])
    _note_truncated(out, trials)
    for part in ("spawn_to_main_s", "import_s", "index_s", "first_invoke_s"):
        out[part.replace("_s", "_median_ms")] = ms(statistics.median(float(r[part]) for r in runs))
    out["semantic_kernel_loaded_after_first_call"] = all(bool(r["semantic_kernel_loaded"]) for r in runs)
    return out


# ------------------------------------------------------------- c./d. uvicorn-served apps


def _steady_state(client: httpx.Client, base: str, requests: int) -> dict[str, Any]:
    """Latency of ``requests`` sequential summarize calls to a server that already answered one.

    The naive baseline reports its per-request build time in ``Server-Timing``; it is
    collected too, to split its latency into "build" and "the rest".
    """
    samples: list[float] = []
    builds: list[float] = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.post(f"{base}{SUMMARIZE_PATH}", json=SUMMARIZE_BODY)
        samples.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise RuntimeError(f"{base} answered {response.status_code}: {response.text[:500]}")
        timing = re.search(r"build;dur=([0-9.]+)", response.headers.get("server-timing", ""))
        if timing:
            builds.append(float(timing.group(1)) / 1000)
    out = {**summary(samples), "mean_ms": ms(statistics.fmean(samples))}
    if builds:
        out["build_median_ms"] = ms(statistics.median(builds))
    return out


def measure_servers(
    apps: Sequence[str], trials: int, requests: int, env: Mapping[str, str], headers: Mapping[str, str],
    logs: Path, budget: Budget,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Per app: spawn of ``uvicorn <app>`` -> /api/health 200 -> first summarize 200.

    Trials of the apps alternate (and swap order every trial) so background load on a
    shared machine drifts over all of them alike instead of favouring one. The first
    trial's servers, warm once they have answered, also serve the steady-state requests
    (saves a spawn, and survives a budget cut). Returns (first-call, steady-state)
    results, keyed by app.
    """
    listen: dict[str, list[float]] = {app: [] for app in apps}
    first: dict[str, list[float]] = {app: [] for app in apps}
    steady: dict[str, dict[str, Any]] = {}
    last_round = 0.0
    with httpx.Client(timeout=60, trust_env=False, headers=dict(headers)) as client:
        for trial in range(trials):
            if trial and not budget.allows(last_round * 1.2):
                break
            round_started = time.perf_counter()
            for app in apps if trial % 2 == 0 else list(reversed(apps)):
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                started = time.perf_counter()
                log = logs / f"{app}-{trial}.log"
                with ManagedProcess(app, uvicorn_argv(app, port), env=env, log=log) as proc:
                    listening = wait_for_200(proc, client, "GET", f"{base}/api/health")
                    answered = wait_for_200(
                        proc, client, "POST", f"{base}{SUMMARIZE_PATH}", json_body=SUMMARIZE_BODY
                    )
                    if trial == 0:
                        steady[app] = _steady_state(client, base, requests)
                listen[app].append(listening - started)
                first[app].append(answered - started)
            last_round = time.perf_counter() - round_started
    out: dict[str, dict[str, Any]] = {}
    for app in apps:
        out[app] = summary(first[app])
        _note_truncated(out[app], trials)
        out[app]["listening_median_ms"] = ms(statistics.median(listen[app]))
        out[app]["listening_samples_ms"] = [ms(v) for v in listen[app]]
    return out, steady


# ----------------------------------------------------------------------------- report


def report(results: dict[str, Any]) -> str:
    """The Markdown tables printed at the end of a run."""
    imp, fn = results["import_function_app"], results["functions_first_call"]
    box, naive = results["container_first_call"], results["naive_first_call"]
    interp = results["interpreter_start"]
    split, nogc = results["import_split"], results["functions_first_call_no_gc_pause"]
    # Optional measurement: fall back to the -X importtime run's own timer (inflated).
    rt = results["runtime_import"] or {"median_ms": results["runtime_import_breakdown"]["timer_ms"],
                                       "min_ms": "-", "n": "1 (-X importtime)"}
    cold = markdown_table(
        ["measurement", "median ms", "min ms", "N", "notes"],
        [
            ["interpreter start (`python -c pass`, spawn -> exit)", interp["median_ms"], interp["min_ms"],
             interp["n"], "floor under every process-level figure"],
            ["a. `import function_app` (in-process timer)", imp["median_ms"], imp["min_ms"], imp["n"],
             f"semantic_kernel loaded: {imp['semantic_kernel_loaded']}, "
             f"openai loaded: {imp['openai_loaded']}"],
            ["a'. of which `azure.functions` + FastAPI extension alone (required to index)",
             split["sdk"]["median_ms"], split["sdk"]["min_ms"], split["sdk"]["n"],
             "the floor for any app on the FastAPI HTTP extension"],
            ["a''. of which `function_app` on top of them (ours)",
             split["ours"]["median_ms"], split["ours"]["min_ms"], split["ours"]["n"], "same interpreters"],
            ["lazy SK import (`semantic_kernel` + `sk_core.model._runtime`), after function_app",
             rt["median_ms"], rt["min_ms"], rt["n"], "paid by the first model-backed request"],
            ["b. Functions host: spawn -> first 200 (summarize)", fn["median_ms"], fn["min_ms"], fn["n"],
             f"start {fn['spawn_to_main_median_ms']:.0f} + import {fn['import_median_ms']:.0f} + "
             f"index {fn['index_median_ms']:.0f} + first invoke {fn['first_invoke_median_ms']:.0f} ms"],
            ["b'. the same without the startup GC pause", nogc["median_ms"], nogc["min_ms"], nogc["n"],
             "BENCH_NO_GC_PAUSE=1: what sk_core/startup.py saves"],
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
    ours, theirs = results["steady_ours"], results["steady_naive"]
    steady = markdown_table(
        ["steady state, sequential summarize over HTTP", "median ms", "mean ms", "min ms", "N"],
        [
            ["container host (kernel cached)", ours["median_ms"], ours["mean_ms"], ours["min_ms"], ours["n"]],
            ["naive baseline (kernel built per request)", theirs["median_ms"], theirs["mean_ms"],
             theirs["min_ms"], theirs["n"]],
            ["naive: of which building client + kernel + function (Server-Timing)",
             theirs.get("build_median_ms", "-"), "-", "-", theirs["n"]],
        ],
    )
    return "\n\n".join([
        f"## Cold start ({results['machine']['date']}, {results['machine']['cpus']} CPUs, stub delay 0)",
        cold,
        f"### Where `import function_app` goes (-X importtime total {breakdown['total_ms']:.0f} ms)",
        direct,
        packages,
        "### Where the first request's SK import goes "
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
    parser.add_argument("--runtime-trials", type=int, default=3,
                        help="fresh interpreters for the lazy SK import")
    parser.add_argument("--requests", type=int, default=20, help="sequential requests for the steady state")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="wall-clock seconds; trial loops stop early rather than overrun it")
    args = parser.parse_args()

    results: dict[str, Any] = {"machine": machine(), "load_average_start": os.getloadavg()}
    results["config"] = {"trials": args.trials, "import_trials": args.import_trials,
                         "runtime_trials": args.runtime_trials,
                         "requests": args.requests, "stub_delay_s": 0.0, "body": SUMMARIZE_BODY}
    budget = Budget(args.budget)
    # Bytecode as a deployment ships it (the container image runs compileall at build):
    # with PYTHONDONTWRITEBYTECODE set, as on this machine, every probe would otherwise
    # recompile our sources, which no deployed worker should do.
    for target in ("sk_core", "function_app.py", "bench", "tests"):
        path = ROOT / target
        compile_ = compileall.compile_dir if path.is_dir() else compileall.compile_file
        if not compile_(path, quiet=1):
            raise RuntimeError(f"compileall failed for {target}")
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp, backends(Path(tmp)) as be:
        env, headers, logs = be.env, be.headers, Path(tmp)
        results["config"]["auth"] = bool(headers)
        print("a. import function_app ...", file=sys.stderr)
        results["interpreter_start"] = measure_interpreter(args.import_trials)
        results["import_function_app"] = measure_import(args.import_trials)
        results["import_split"] = measure_import_split(args.import_trials)
        results["import_breakdown"] = measure_import_breakdown()
        # What the first model-backed request pays on top, in either host (also writes
        # model_runtime's __pycache__ before anything is timed).
        results["runtime_import_breakdown"] = measure_import_breakdown("runtime-import", after="function_app")
        print("b. Functions host first call ...", file=sys.stderr)
        results["functions_first_call"] = measure_functions_first_call(args.trials, env, headers, budget)
        results["functions_first_call_no_gc_pause"] = measure_functions_first_call(
            args.trials, env, headers, budget, {"BENCH_NO_GC_PAUSE": "1"}
        )
        print("c./d. container host and naive baseline: first call, steady state ...", file=sys.stderr)
        first, steady = measure_servers([OURS, NAIVE], args.trials, args.requests, env, headers, logs, budget)
        results["container_first_call"], results["naive_first_call"] = first[OURS], first[NAIVE]
        results["steady_ours"], results["steady_naive"] = steady[OURS], steady[NAIVE]
        print("extra: lazy SK import, as the budget allows ...", file=sys.stderr)
        results["runtime_import"] = measure_runtime_import(args.runtime_trials, budget)
    results["load_average_end"] = os.getloadavg()
    path = write_results("cold_start", results)
    print(report(results))
    print(f"\nwrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
