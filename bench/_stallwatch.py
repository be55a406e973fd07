"""uvicorn with an event-loop stall watcher: ``python bench/_stallwatch.py OUT.json <uvicorn args>``.

A task on the served loop stamps a heartbeat every 5 ms; a thread checks it every 2 ms
and, while the heartbeat is older than ``STALL_MS``, samples the loop thread's Python
stack (``sys._current_frames``). At exit it writes every stall (duration, the stack seen
most often during it) and a histogram of loop lag to OUT.json. uvloop does not log slow
callbacks the way asyncio's debug mode does, hence this; it measures one loop turn that
ran long, whatever the reason (one slow callback, many ready ones, or the process not
being scheduled on a busy machine: the stacks tell which).
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import threading
import time
import traceback
from typing import Any

import uvicorn
import uvicorn.main

STALL_MS = 50.0
_beat = time.monotonic()
_stalls: list[dict[str, Any]] = []
_lag_histogram: collections.Counter[str] = collections.Counter()


def _frames(thread_id: int) -> str:
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return ""
    summary = traceback.extract_stack(frame)
    # The innermost frames, ours and libraries', are what says where the turn went.
    return " <- ".join(
        f"{f.filename.rsplit('/site-packages/', 1)[-1]}:{f.lineno} {f.name}" for f in reversed(summary[-14:])
    )


def _watch(loop_thread: int) -> None:
    current: collections.Counter[str] | None = None
    began = 0.0
    while True:
        time.sleep(0.002)
        lag = (time.monotonic() - _beat) * 1000
        if lag > STALL_MS:
            if current is None:
                current, began = collections.Counter(), _beat
            current[_frames(loop_thread)] += 1
        elif current is not None:
            _stalls.append(
                {
                    "ms": round((time.monotonic() - began) * 1000, 1),
                    "at": began,
                    "stacks": current.most_common(3),
                }
            )
            current = None


async def _heartbeat() -> None:
    global _beat
    from opentelemetry import trace

    last = time.monotonic()
    hooked = False
    while True:
        await asyncio.sleep(0.005)
        now = time.monotonic()
        lag = (now - last - 0.005) * 1000
        _lag_histogram[next(f"<{b}ms" for b in (1, 5, 10, 25, 50, 100, 250, 1000, 10**9) if lag < b)] += 1
        _beat = last = now
        provider = trace.get_tracer_provider()
        if not hooked and hasattr(provider, "add_span_processor"):  # once the app set up telemetry
            provider.add_span_processor(_span_log())
            hooked = True


_spans: list[tuple[int, int | None, str, int, int]] = []  # trace, parent span, name, start, end (ns)


def _span_log() -> Any:
    from opentelemetry.sdk.trace import SpanProcessor

    class SpanLog(SpanProcessor):
        """Keeps every ended span's name and times: which stage the slowest requests waited in."""

        def on_end(self, span: Any) -> None:
            parent = span.parent.span_id if span.parent is not None else None
            _spans.append((span.context.trace_id, parent, span.name, span.start_time, span.end_time))

    return SpanLog()


def _slowest_breakdown() -> dict[str, Any]:
    """For the slowest 2 % of requests (root spans) and for the median ones, the time
    spent in each direct child stage (ms, summed per stage name, averaged)."""
    roots = sorted((s for s in _spans if s[1] is None), key=lambda s: s[4] - s[3])
    if not roots:
        return {}
    children: dict[int, list[tuple[int, int | None, str, int, int]]] = collections.defaultdict(list)
    for s in _spans:
        if s[1] is not None:
            children[s[0]].append(s)

    def breakdown(group: list[tuple[int, int | None, str, int, int]]) -> dict[str, float]:
        total: dict[str, float] = collections.defaultdict(float)
        for root in group:
            total["(request)"] += (root[4] - root[3]) / 1e6
            for child in children[root[0]]:
                total[child[2]] += (child[4] - child[3]) / 1e6
        return {k: round(v / len(group), 1) for k, v in sorted(total.items(), key=lambda kv: -kv[1])}

    n = max(1, len(roots) // 50)
    middle = len(roots) // 2
    return {
        "requests": len(roots),
        "slowest_2pct": breakdown(roots[-n:]),
        "median_2pct": breakdown(roots[middle - n // 2 : middle + n // 2 + 1]),
    }


def _write(path: str) -> None:
    with open(path, "w") as out:
        json.dump(
            {"lag_histogram": dict(_lag_histogram), "spans": _slowest_breakdown(), "stalls": _stalls},
            out,
            indent=1,
        )


def main() -> None:
    """Install the watcher, then run uvicorn's command line with the rest of argv."""
    out = sys.argv.pop(1)
    # _serve, not serve: serve re-raises a caught SIGTERM on its way out, which ends the
    # process before a finally around it (or atexit) could write the report.
    serve = uvicorn.Server._serve

    async def watched(self: uvicorn.Server, *args: Any, **kwargs: Any) -> None:
        if threading.current_thread().name == "stallwatch-served":  # a second server (metrics port)
            return await serve(self, *args, **kwargs)
        threading.current_thread().name = "stallwatch-served"
        task = asyncio.get_running_loop().create_task(_heartbeat())
        threading.Thread(target=_watch, args=(threading.get_ident(),), daemon=True).start()
        try:
            await serve(self, *args, **kwargs)
        finally:
            task.cancel()
            _write(out)

    uvicorn.Server._serve = watched  # type: ignore[method-assign]
    uvicorn.main.main()


if __name__ == "__main__":
    main()
