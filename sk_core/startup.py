"""Cold start: the cyclic garbage collector pauses while a host process starts.

Starting up (importing the Functions SDK and FastAPI, Semantic Kernel, the OpenAI SDK,
the Azure SDK, and building their pydantic schemas) allocates hundreds of thousands of
long-lived objects, and each few hundred allocations trigger a collection pass that walks
them again and finds almost nothing to free. Measured with ``bench/cold_start.py``'s
Functions probe on this 2-core machine: spawn -> first answer went from 3.65 s to
3.0 s (median of 7) with the collector off until the kernel was built.

Both hosts call :func:`begin` before their first heavy import, and the kernel build
calls :func:`end` when it finishes (or fails), which freezes what startup created
(``gc.freeze``: moved to a generation later collections skip, as the Python docs
suggest for long-lived startup state) and turns the collector back on. The garbage
left from startup then stays (about 1.5 MB of RSS, measured) instead of costing a
0.2 s full collection on the first request. A timer ends the pause after
:data:`SAFETY_SECONDS` in case the kernel is never built (a process that only answers
health probes). The pause happens once per process, and never if something else had
already disabled the collector.
"""

from __future__ import annotations

import gc
import importlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

SAFETY_SECONDS = 60.0

_lock = threading.Lock()
_state = "idle"  # idle -> paused -> done; "done" also when we never paused
_timer: threading.Timer | None = None


def begin(safety_seconds: float = SAFETY_SECONDS) -> None:
    """Turn the collector off for the start of this process (once per process)."""
    global _state, _timer
    with _lock:
        if _state != "idle":
            return
        if not gc.isenabled():  # someone else manages the collector: leave it to them
            _state = "done"
            return
        gc.disable()
        _state = "paused"
        _timer = threading.Timer(safety_seconds, end)
        _timer.daemon = True
        _timer.name = "sk-startup-gc"
        _timer.start()


def end() -> None:
    """Freeze what startup allocated and turn the collector back on (idempotent)."""
    global _state, _timer
    with _lock:
        if _state != "paused":
            _state = "done"
            return
        _state = "done"
        if _timer is not None:
            _timer.cancel()
            _timer = None
        gc.freeze()
        gc.enable()


def paused() -> bool:
    """True while the startup pause is on."""
    return _state == "paused"


def lazy_attributes(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A package face's ``__getattr__`` (PEP 562) that imports ``names[name]``, a private
    module of ``package``, on first use of ``name``: the face re-exports a heavy half (an
    SDK behind it) without importing it when the package is imported at cold start."""

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
