"""A streamed call: the provider's stream, redacted as it goes, settled when it ends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from sk_core import telemetry
from sk_core.errors import RateState
from sk_core.pipeline._outcome import Outcome, rate_of

if TYPE_CHECKING:
    from sk_core.accounts import Principal
    from sk_core.catalog import FunctionSpec
    from sk_core.limits import Hold
    from sk_core.model import Completion, ModelStream
    from sk_core.safety import StreamingRedaction
    from sk_core.usage import AuditEntry

logger = logging.getLogger(__name__)
T = TypeVar("T")

if TYPE_CHECKING:
    from sk_core.pipeline._pipeline import Pipeline


@dataclass(eq=False)
class StreamedCall:
    """An admitted call whose provider stream is open: iterate it once for redacted text.

    When the iteration ends normally the call has been settled from the usage the
    provider streamed, and ``outcome`` says what it produced and cost. When it ends
    otherwise (the provider failed mid-stream, the client went away: the iterator is
    closed or cancelled), the provider's stream is closed at once and the call is
    charged its reservation: text was generated, usage never arrived. ``rate`` is known
    before the first byte (the RateLimit headers).
    """

    _pipeline: Pipeline
    _principal: Principal
    _spec: FunctionSpec
    _hold: Hold
    _model: ModelStream
    _redaction: StreamingRedaction
    _started: float
    _record: AuditEntry | None
    outcome: Outcome | None = field(default=None, init=False)

    @property
    def rate(self) -> RateState:
        """The requests-per-minute window after this admission."""
        return rate_of(self._hold)

    @property
    def deployment(self) -> str:
        """The deployment of the fallback chain whose stream this is (sets the price)."""
        return self._model.deployment.name

    async def __aiter__(self) -> AsyncIterator[str]:
        pipeline, model, redaction = self._pipeline, self._model, self._redaction
        raw: list[str] = []
        released: list[str] = []
        first_chunk: float | None = None
        first_text: float | None = None
        settled = False
        try:
            async for delta in model:
                if first_chunk is None:
                    first_chunk = time.perf_counter()
                raw.append(delta)
                piece = redaction.feed(delta)
                if piece:
                    if first_text is None:
                        first_text = time.perf_counter()
                    released.append(piece)
                    yield piece
            tail = redaction.finish()
            released.append(tail)
            completion = model.completion("".join(raw))
            # Settled before the last piece goes out: a client that leaves now has had
            # the whole answer, and is charged exactly for it.
            settled = True
            finished = time.perf_counter()
            self.outcome = await pipeline._settle_success(
                self._principal, self._spec, self._hold, completion, "".join(released),
                dict(redaction.counts), finished - self._started, self._record,
            )
            self._record_stream(completion, first_chunk, first_text or finished, finished)
            if tail:
                yield tail
        except BaseException as failure:
            if not settled:
                await pipeline._settle_failure(
                    self._hold, failure, self._record, did_work=first_chunk is not None
                )
            raise
        finally:
            # At once, also on cancellation: the provider stops generating for nobody.
            await asyncio.shield(model.aclose())

    def _record_stream(
        self, completion: Completion, first_chunk: float | None, first_text: float, finished: float
    ) -> None:
        meters = telemetry.instruments()
        dimensions = self._pipeline._dimensions(self._principal.tenant.id, self._spec.id, completion.model)
        if first_chunk is not None:
            meters.time_to_first_chunk.record(first_chunk - self._started, dimensions)
        meters.time_to_first_token.record(first_text - self._started, dimensions)
        tokens = completion.usage.completion_tokens
        if tokens > 1 and finished > first_text:
            meters.time_per_output_token.record((finished - first_text) / (tokens - 1), dimensions)
            meters.output_token_rate.record(tokens / (finished - first_text), dimensions)
