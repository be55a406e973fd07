"""The cached kernel: built once per worker process, lazily, concurrency-safe.

Importing Semantic Kernel and the OpenAI SDK costs seconds, so nothing here imports
them at module level: the Functions host indexes ``function_app.py`` without paying
for SK, and the first request (or the first readiness probe) pays once.

The build runs in a worker thread so the event loop keeps answering ``/api/health``
while SK imports. All callers share one ``concurrent.futures.Future``: 50 simultaneous
first requests trigger exactly one build, whichever event loop or thread they are on.
A failed build is not cached; the next caller tries again.

The model key comes from the secret source on every call (a cache hit, no I/O). When
its version changes (rotated in Key Vault), the next caller builds a new runtime with
the new key; the old one keeps serving the requests already using it and is closed
after a grace period.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from sk_core import startup

if TYPE_CHECKING:
    from sk_core.catalog import Catalog
    from sk_core.model._runtime import ModelRuntime
    from sk_core.settings import Settings

logger = logging.getLogger(__name__)

RuntimeBuilder = Callable[["Settings", "Catalog", "str | None"], "ModelRuntime"]
# Returns (key or None, version); the version changes when the key is rotated.
KeyProvider = Callable[[], Awaitable[tuple[str | None, str]]]


def _default_builder(settings: Settings, catalog: Catalog, api_key: str | None) -> ModelRuntime:
    from sk_core.model._sk_loader import import_semantic_kernel

    import_semantic_kernel()  # first, so SK's handlebars engine is deferred (sk_loader.py)
    # Deferred: SK and the OpenAI SDK load on the first model call, not at cold start.
    from sk_core.model._runtime import build_runtime

    return build_runtime(settings, catalog, api_key)


async def _no_key() -> tuple[str | None, str]:
    return None, ""


class RuntimeProvider:
    """Hands out the process's one ``ModelRuntime`` (kernel + chat service + functions)."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        builder: RuntimeBuilder = _default_builder,
        key_provider: KeyProvider = _no_key,
    ) -> None:
        self._settings = settings
        self._catalog = catalog
        self._builder = builder
        self._key_provider = key_provider
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[ModelRuntime] | None = None
        self._version: str | None = None
        self._retiring: dict[asyncio.Task[None], ModelRuntime] = {}
        self._warming: asyncio.Task[None] | None = None
        self.build_count = 0
        self.build_seconds: float | None = None

    def _build_into(self, future: concurrent.futures.Future[ModelRuntime], api_key: str | None) -> None:
        started = time.perf_counter()
        with self._lock:
            self.build_count += 1
        try:
            runtime = self._builder(self._settings, self._catalog, api_key)
        except BaseException as exc:  # handed to every waiter; they map it to a 503
            startup.end()  # before waking the waiters, so they see the collector back on
            logger.exception("kernel build failed")
            future.set_exception(exc)
            return
        # The process has done its heavy imports: collector back on (sk_core/startup.py).
        startup.end()
        self.build_seconds = time.perf_counter() - started
        logger.info("kernel built in %.2fs", self.build_seconds)
        future.set_result(runtime)

    def _current_future(self, api_key: str | None, version: str) -> concurrent.futures.Future[ModelRuntime]:
        with self._lock:
            future = self._future
            stale = (
                future is not None
                and future.done()
                and future.exception() is None
                and self._version != version
            )
            if future is None or stale or (future.done() and future.exception() is not None):
                if stale and future is not None:
                    self._retire(future.result())
                future = concurrent.futures.Future()
                # RUNNING futures cannot be cancelled: a waiter whose request is cancelled
                # (client gone) must not cancel the build everyone else is waiting for.
                future.set_running_or_notify_cancel()
                self._future, self._version = future, version
                threading.Thread(
                    target=self._build_into, args=(future, api_key), name="kernel-build", daemon=True
                ).start()
            return future

    def _retire(self, runtime: ModelRuntime) -> None:
        # Requests already inside the old runtime finish on it; close it afterwards.
        logger.info("model key rotated: rebuilding the model client")
        grace = self._settings.model_deadline_seconds + 5

        async def close_later() -> None:
            await asyncio.sleep(grace)
            await runtime.aclose()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring[task] = runtime
        task.add_done_callback(lambda done: self._retiring.pop(done, None))

    @property
    def is_built(self) -> bool:
        """True once a build has succeeded."""
        future = self._future
        return future is not None and future.done() and future.exception() is None

    async def get(self) -> ModelRuntime:
        """The runtime for the current model key, building it on first use or rotation."""
        api_key, version = await self._key_provider()
        future = self._future
        if future is not None and self._version == version and future.done() and future.exception() is None:
            return future.result()
        return await asyncio.wrap_future(self._current_future(api_key, version))

    def warm(self) -> None:
        """Start building in the background if nothing is built yet (no one waits on it).

        Hosts call this at startup, and the request pipeline calls it before its storage
        round trips, so the seconds of SK import overlap work that has to happen anyway.
        """
        if self.is_built or self._warming is not None:
            return

        async def build() -> None:
            try:
                await self.get()
            except Exception:
                logger.warning("kernel warm-up failed; the next request retries", exc_info=True)
            finally:
                self._warming = None

        self._warming = asyncio.get_running_loop().create_task(build())

    async def aclose(self) -> None:
        """Close the provider client of the built runtime (host shutdown, tests)."""
        if self._warming is not None:
            await asyncio.gather(self._warming, return_exceptions=True)
        for task, runtime in list(self._retiring.items()):
            task.cancel()
            await runtime.aclose()
        if self.is_built:
            assert self._future is not None
            await self._future.result().aclose()
            with self._lock:
                self._future = None
