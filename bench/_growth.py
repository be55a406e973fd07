"""The soak's tracemalloc mode (``bench/soak.py --tracemalloc``): have the traced service
(``bench/_traced_asgi.py``) write snapshots, and compare them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any


async def snapshot(pid: int, folder: Path, index: int) -> float:
    """Have the traced service write snapshot ``index``; the seconds it took."""
    started = time.perf_counter()
    os.kill(pid, signal.SIGUSR1)
    # Another process writes the file: nothing here to wait on but its name.
    while not (folder / f"snapshot-{index}.pickle").exists():  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    return round(time.perf_counter() - started, 1)


async def snapshot_at(pid: int, folder: Path, at: float, taken: dict[str, float]) -> None:
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    taken["minute_2_seconds"] = await snapshot(pid, folder, 0)


def growth_sites(folder: Path, top: int = 25) -> dict[str, Any]:
    """The top growth sites from snapshot 0 (after minute 2) to snapshot 1 (the end)."""
    import tracemalloc

    ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
    first, last = (
        tracemalloc.Snapshot.load(str(folder / f"snapshot-{i}.pickle")).filter_traces(ignore) for i in (0, 1)
    )
    root = str(Path(__file__).resolve().parents[1]) + "/"

    def where(frame: Any) -> str:
        return f"{frame.filename.removeprefix(root)}:{frame.lineno}"

    lines = last.compare_to(first, "lineno")
    stacks = last.compare_to(first, "traceback")
    before, after = (json.loads((folder / f"objects-{i}.json").read_text()) for i in (0, 1))
    types = Counter(after["types"])
    types.subtract(before["types"])
    return {
        "allocated_blocks": [before["allocated_blocks"], after["allocated_blocks"]],
        "object_types_growing": dict(types.most_common(15)),
        "smaps_rollup": [before["smaps_rollup"], after["smaps_rollup"]],
        "total_kib_after_minute_2": round(sum(s.size for s in first.statistics("filename")) / 1024, 1),
        "total_kib_at_end": round(sum(s.size for s in last.statistics("filename")) / 1024, 1),
        "top_lines": [
            {
                "site": where(stat.traceback[0]),
                "size_diff_kib": round(stat.size_diff / 1024, 1),
                "count_diff": stat.count_diff,
                "size_kib": round(stat.size / 1024, 1),
            }
            for stat in lines[:top]
        ],
        "top_stacks": [
            {
                "size_diff_kib": round(stat.size_diff / 1024, 1),
                "count_diff": stat.count_diff,
                "stack": [where(frame) for frame in stat.traceback][-12:],
            }
            for stat in stacks[:8]
        ],
    }
