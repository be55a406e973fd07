"""The cached kernel: built once per worker process, lazily, concurrency-safe.

Importing Semantic Kernel and the OpenAI SDK costs seconds, so nothing here imports
them at module level: the Functions host indexes ``function_app.py`` without paying
for SK, and the first request (or the first readiness probe) pays once.

The build runs in a worker thread so the event loop keeps answering ``/api/health``
while SK imports. All callers share one ``concurrent.futures.Future``: 50 simultaneous
first requests trigger exactly one build, whichever event loop or thread they are on.
A failed build is not cached; the next caller tries again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sk_core.catalog import Catalog
    from sk_core.model_runtime import ModelRuntime
    from sk_core.settings import Settings

logger = logging.getLogger(__name__)

RuntimeBuilder = Callable[["Settings", "Catalog"], "ModelRuntime"]


def _default_builder(settings: Settings, catalog: Catalog) -> ModelRuntime:
    from sk_core.model_runtime import build_runtime

    return build_runtime(settings, catalog)


class KernelProvider:
    """Hands out the process's one ``ModelRuntime`` (kernel + chat service + functions)."""

    def __init__(
        self, *, settings: Settings, catalog: Catalog, builder: RuntimeBuilder = _default_builder
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._builder = builder
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[ModelRuntime] | None = None
        self.build_count = 0
        self.build_seconds: float | None = None

    def _build_into(self, future: concurrent.futures.Future[ModelRuntime]) -> None:
        started = time.perf_counter()
        self.build_count += 1  # only ever runs in the single build thread
        try:
            runtime = self._builder(self._settings, self._catalog)
        except BaseException as exc:  # handed to every waiter; they map it to a 503
            logger.exception("kernel build failed")
            future.set_exception(exc)
            return
        self.build_seconds = time.perf_counter() - started
        logger.info("kernel built in %.2fs", self.build_seconds)
        future.set_result(runtime)

    def _current_future(self) -> concurrent.futures.Future[ModelRuntime]:
        with self._lock:
            future = self._future
            if future is None or (future.done() and future.exception() is not None):
                future = concurrent.futures.Future()
                # RUNNING futures cannot be cancelled: a waiter whose request is cancelled
                # (client gone) must not cancel the build everyone else is waiting for.
                future.set_running_or_notify_cancel()
                self._future = future
                threading.Thread(
                    target=self._build_into, args=(future,), name="kernel-build", daemon=True
                ).start()
            return future

    def start(self) -> None:
        """Begin building in the background (readiness probes and warm-up call this)."""
        self._current_future()

    @property
    def is_built(self) -> bool:
        """True once a build has succeeded."""
        future = self._future
        return future is not None and future.done() and future.exception() is None

    async def aclose(self) -> None:
        """Close the provider client of a built runtime (host shutdown, tests)."""
        if self.is_built:
            assert self._future is not None
            await self._future.result().aclose()
            with self._lock:
                self._future = None

    async def get(self) -> ModelRuntime:
        """The runtime, building it on first use; concurrent callers share one build."""
        future = self._future
        if future is not None and future.done() and future.exception() is None:
            return future.result()
        return await asyncio.wrap_future(self._current_future())
