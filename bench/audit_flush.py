"""What an audit flush costs the event loop: one transaction of ``--rows`` rows to Azurite.

    PYTHONPATH=. .venv/bin/python bench/audit_flush.py [--rows 96] [--flushes 12]
        [--tree before=/path/to/other/checkout]

A heartbeat task sleeps 1 ms at a time on the loop while ``AuditLog.flush`` writes the
rows (and their rollups); reported per flush: the loop thread's CPU (``thread_time``),
the heartbeat's worst lateness, and the flush's wall time; medians over the flushes
after two warm-ups (issue #23, defect 6: the SDK builds and parses a transaction with
the ``email`` package, synchronously). ``--tree`` runs the same measurement on another
checkout's ``sk_core`` (a subprocess with that tree first on ``sys.path``), so both
land in one run. Writes ``bench/results/audit_flush.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import machine, markdown_table, ms, write_results
from scripts.devservices import ROOT, free_port, start_azurite


async def measure(port: int, rows: int, flushes: int) -> dict[str, Any]:
    from sk_core.storage import TableStore, development_connection_string
    from sk_core.usage import AuditEntry, AuditLog

    store = TableStore(connection_string=development_connection_string(port), table_prefix=f"af{os.getpid()}")
    log = AuditLog(store=store, retention_days=1)
    await store.table("audit")
    cpu: list[float] = []
    late: list[float] = []
    wall: list[float] = []
    try:
        for _ in range(flushes + 2):
            for n in range(rows):  # queued directly: no background flusher racing this one
                entry = AuditEntry(route="/api/v1/chat/completions", status=200, tenant_id="acme",
                                   prompt_tokens=12, completion_tokens=40, cost_nano=n, latency_ms=9.5,
                                   trace_id="ab" * 16, guard={"verdict": "allow"})
                log._queue.append(log.row(entry))
            lateness: list[float] = []
            done = asyncio.Event()
            beat = asyncio.create_task(heartbeat(lateness, done))
            await asyncio.sleep(0.01)
            started, started_cpu = time.perf_counter(), time.thread_time()
            await log.flush()
            cpu.append(time.thread_time() - started_cpu)
            wall.append(time.perf_counter() - started)
            done.set()
            await beat
            late.append(max(lateness))
    finally:
        await log.aclose()
        await store.aclose()
    kept = slice(2, None)
    return {
        "loop_cpu_ms_per_flush": ms(statistics.median(cpu[kept])),
        "worst_lateness_ms_median": ms(statistics.median(late[kept])),
        "worst_lateness_ms_max": ms(max(late[kept])),
        "flush_wall_ms": ms(statistics.median(wall[kept])),
    }


async def heartbeat(lateness: list[float], done: asyncio.Event) -> None:
    """Sleep 1 ms at a time until ``done``, noting how late each wake-up was."""
    loop = asyncio.get_running_loop()
    while not done.is_set():
        before = loop.time()
        await asyncio.sleep(0.001)
        lateness.append(loop.time() - before - 0.001)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--flushes", type=int, default=12)
    parser.add_argument("--tree", action="append", default=[], help="label=PATH of another checkout")
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)  # a --tree child: Azurite's port
    args = parser.parse_args()
    if args.port:  # a child measuring its own tree against the parent's Azurite
        print(json.dumps(asyncio.run(measure(args.port, args.rows, args.flushes))))
        return
    load_start = os.getloadavg()
    port = free_port()
    azurite = start_azurite(port=port)
    results: dict[str, Any] = {}
    try:
        for label, tree in [("service", ROOT), *(t.split("=", 1) for t in args.tree)]:
            child = subprocess.run(
                [sys.executable, __file__, "--port", str(port), "--rows", str(args.rows),
                 "--flushes", str(args.flushes)],
                env={**os.environ, "PYTHONPATH": f"{Path(tree).resolve()}{os.pathsep}{ROOT}"},
                cwd=tree, capture_output=True, text=True, check=True,
            )
            results[label] = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        azurite.stop()
    print(markdown_table(
        ["tree", "loop CPU ms/flush", "worst heartbeat lateness ms (median)", "(max)", "flush wall ms"],
        [[label, r["loop_cpu_ms_per_flush"], r["worst_lateness_ms_median"], r["worst_lateness_ms_max"],
          r["flush_wall_ms"]] for label, r in results.items()],
    ))
    path = write_results("audit_flush", {
        "config": {"rows": args.rows, "flushes": args.flushes},
        "results": results,
        "machine": machine(),
        "load_average": {"start": load_start, "end": os.getloadavg()},
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
