"""Admission fails closed: storage that does not answer in time admits nothing (503)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable

from sk_core.errors import LimitsUnavailable, StorageUnavailable

logger = logging.getLogger(__name__)

# However busy storage is (ETag contention near a limit), a decision waits no longer.
_MAX_DECISION_SECONDS = 10.0


@contextlib.asynccontextmanager
async def fail_closed(bound: float, silence: Callable[[], float] = lambda: math.inf) -> AsyncIterator[None]:
    """Storage trouble while deciding whether to serve: admit nothing (503).

    Decided once storage has been silent for ``bound`` seconds (``silence()``: how long
    it has kept this process waiting for an answer, a 412 being one), which a
    black-holed endpoint or a batch or lease sync stuck ahead of this request reach
    ``bound`` after they start. A wait while nothing is asked of storage (a lost race's
    back-off) is not its silence (issue 23, defect 5); a store that answers but is
    contended (many processes near one limit) is waited for, up to ``_MAX_DECISION_SECONDS``.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(None) as deadline:
            watchdog: asyncio.TimerHandle

            def check() -> None:
                nonlocal watchdog
                quiet = silence()
                if quiet >= bound or loop.time() - started >= _MAX_DECISION_SECONDS - bound:
                    deadline.reschedule(loop.time())
                else:
                    watchdog = loop.call_later(bound - quiet, check)

            watchdog = loop.call_later(bound, check)
            try:
                yield
            finally:
                watchdog.cancel()
    except StorageUnavailable as exc:
        logger.warning("failed closed after %.1fs: %s", loop.time() - started, exc.reason)
        raise LimitsUnavailable(exc.reason) from exc
    except TimeoutError as exc:
        # Why a decision failed closed is for the operator (the client learns only that
        # nothing was admitted): silent storage, or a decision past its longest wait.
        waited = loop.time() - started
        logger.warning("failed closed after %.1fs: storage silent for %.1fs", waited, silence())
        raise LimitsUnavailable(f"storage did not answer for {bound:g}s") from exc
