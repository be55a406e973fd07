"""The container host's ASGI app with tracemalloc on (``bench/soak.py --tracemalloc``).

Tracing starts once ``sk_core.asgi`` is imported (tracing the imports too slowed
start-up past the soak's patience): growth under load is allocated later, so it is all
seen. ``SIGUSR1`` collects garbage and writes a snapshot to
``$SOAK_TRACEMALLOC_DIR/snapshot-<n>.pickle`` (written under another name, then renamed:
the soak waits for the name to appear). The signal handler runs on the event loop's
thread between two bytecodes, so the server pauses while it writes (a second or two);
the soak marks those minutes. uvicorn handles SIGINT and SIGTERM only: SIGUSR1 is free.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

_DIR = Path(os.environ.get("SOAK_TRACEMALLOC_DIR", "."))
_taken = 0


def _dump(_signum: int, _frame: FrameType | None) -> None:
    global _taken
    gc.collect()
    # Live objects by type (what a leak of Python objects shows as), and the allocator's
    # view: blocks pymalloc holds, and the process's memory as the kernel counts it.
    types = Counter(type(o).__qualname__ for o in gc.get_objects())
    rollup = Path("/proc/self/smaps_rollup").read_text() if Path("/proc/self/smaps_rollup").exists() else ""
    counts = {
        "allocated_blocks": sys.getallocatedblocks(),
        "types": dict(types.most_common(400)),
        "smaps_rollup": rollup,
    }
    (_DIR / f"objects-{_taken}.json").write_text(json.dumps(counts))
    tmp = _DIR / f"snapshot-{_taken}.pickle.tmp"
    # Frames 0: no tracing (full speed; the type counts only).
    snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else tracemalloc.Snapshot((), 1)
    snapshot.dump(str(tmp))
    tmp.replace(_DIR / f"snapshot-{_taken}.pickle")
    _taken += 1


from sk_core.asgi import app  # noqa: E402

if (_frames := int(os.environ.get("SOAK_TRACEMALLOC_FRAMES", "1"))) > 0:
    tracemalloc.start(_frames)
signal.signal(signal.SIGUSR1, _dump)

__all__ = ["app"]
