"""``ModelStream``'s deadline: one timer per stream, cancelling only a wait for a chunk.

The provider's stream here is a small in-process stand-in (what ``open_stream`` returns
is any async iterable of chunk dicts with an async ``close``): the subject is the
deadline's bookkeeping, which no HTTP exchange would make more real, and whose
outcomes (timeout or not, which exception) must not depend on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from sk_core.errors import ModelTimeout
from sk_core.model import ModelStream
from sk_core.model._deployments import Deployment
from sk_core.pricing import Price

PRICE = Price(Decimal(1), Decimal(1))
DEPLOYMENT = Deployment(name="d", provider="openai_compatible", model="m", price=PRICE)


class Provider:
    """Chunks of one word each; ``hold`` blocks before the chunk of that index until
    ``release`` is set (a model that stops answering)."""

    def __init__(self, words: int, hold: int | None = None) -> None:
        self.words = words
        self.hold = hold
        self.release = asyncio.Event()
        self.held = asyncio.Event()  # the stream reached ``hold`` and waits there

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        for index in range(self.words):
            if index == self.hold:
                self.held.set()
                await self.release.wait()
            yield {"model": "m", "choices": [{"delta": {"content": f"w{index} "}}]}
        yield {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": self.words}}

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._chunks()

    async def close(self) -> None:
        """Nothing to close."""


async def _consume(stream: ModelStream, into: list[str], pause: float = 0.0) -> None:
    async for piece in stream:
        into.append(piece)
        if pause:
            await asyncio.sleep(pause)


def _stream(provider: Provider, seconds: float) -> ModelStream:
    return ModelStream(provider, deadline=asyncio.get_running_loop().time() + seconds, deployment=DEPLOYMENT)


async def test_a_stream_arms_one_timer_not_one_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per chunk an ``asyncio.timeout_at`` armed and cancelled a timer handle (about
    12 % of a chunk's cost under load); the deadline needs one per stream."""
    loop = asyncio.get_running_loop()
    armed: list[object] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        armed.append(callback)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    stream = _stream(Provider(words=50), 60)
    text = "".join([piece async for piece in stream])
    monkeypatch.undo()
    assert text.split() == [f"w{i}" for i in range(50)]
    assert stream.usage is not None
    assert stream.usage.completion_tokens == 50
    assert len(armed) == 1


async def test_a_model_that_stops_answering_times_out_at_the_deadline() -> None:
    provider = Provider(words=5, hold=2)
    stream = _stream(provider, 0.05)
    received: list[str] = []
    with pytest.raises(ModelTimeout):
        await _consume(stream, received)
    assert received == ["w0 ", "w1 "]
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0  # our cancel was taken back


async def test_the_deadline_never_cancels_the_consumer_between_chunks() -> None:
    """Time the consumer spends sending a chunk on is not the model's: the deadline
    passing then cancels nothing there; the next wait for the model fails at once."""
    stream = _stream(Provider(words=5), 0.02)
    received: list[str] = []
    with pytest.raises(ModelTimeout):
        await _consume(stream, received, pause=0.05)  # past the deadline, not cancelled
    assert received == ["w0 "]


async def test_someone_elses_cancel_stays_a_cancel() -> None:
    provider = Provider(words=5, hold=1)

    async def consume() -> list[str]:
        return [piece async for piece in _stream(provider, 60)]

    task = asyncio.create_task(consume())
    await provider.held.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
