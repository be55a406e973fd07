"""What a model call produced: a whole ``Completion`` (with any tool calls) or a
``ModelStream`` of text deltas whose accounting arrives with its last chunk."""


import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sk_core.errors import (
    ApiError,
    ModelBadAnswer,
    ModelTimeout,
)
from sk_core.model._deployments import Deployment
from sk_core.pricing import Price, Usage

if TYPE_CHECKING:
    pass

from sk_core.model._failures import classify_failure


@dataclass(frozen=True)
class ToolCall:
    """One function call the model asked for (OpenAI's ``tool_calls`` item)."""

    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it (not trusted to parse)


@dataclass(frozen=True)
class Completion:
    """What a function invocation produced, with the provider's own accounting."""

    text: str
    model: str
    usage: Usage
    finish_reason: str | None
    deployment: str = "default"  # the deployment that answered (routing.py)
    price: Price | None = None  # its price: what the settlement charges
    attempts: int = 1
    tool_calls: tuple[ToolCall, ...] = ()  # the calls the model asked for (tool runs)


class ModelStream:
    """A provider's streamed completion: text deltas, then the accounting of the whole.

    Iterate for the text; afterwards :meth:`completion` gives the model, usage and
    finish reason the stream reported (usage arrives on its last chunk). ``aclose``
    closes the provider's HTTP response at once (the provider stops generating).
    """

    def __init__(
        self,
        stream: Any,
        *,
        deadline: float,
        deployment: Deployment,
        attempts: int = 1,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self._stream = stream
        self._deadline = deadline
        self.deployment = deployment
        self.attempts = attempts
        self._release: Callable[[], None] | None = release  # the deployment's slot, once
        self.model = deployment.model
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self._waiter: asyncio.Task[Any] | None = None  # the task waiting for a chunk
        self._expired = False  # the deadline's timer cancelled that wait

    async def __aiter__(self) -> AsyncIterator[str]:
        # One timer for the whole stream, not an ``asyncio.timeout_at`` per chunk (a
        # timer handle armed and cancelled per chunk was about 12 % of a chunk's cost,
        # bench/README.md "load.py and streaming.py"). The timer cancels the consuming
        # task only while it waits for the provider's next chunk, never while it sends
        # one on: the deadline bounds the model, not our client. A wait that starts
        # after the deadline fails at once.
        chunks = self._stream.__aiter__()
        loop = asyncio.get_running_loop()
        timer = loop.call_at(self._deadline, self._expire)
        try:
            while True:
                if loop.time() >= self._deadline:
                    if self._expired and (task := asyncio.current_task()) is not None:
                        task.uncancel()  # the provider's client swallowed our cancel
                    raise ModelTimeout("The model did not finish within the deadline.")
                waiter = self._waiter = asyncio.current_task()
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError as exc:
                    # Ours (the deadline) unless someone else cancelled the task too:
                    # the same accounting as ``asyncio.timeout``.
                    if self._expired and waiter is not None and waiter.uncancel() == 0:
                        raise ModelTimeout("The model did not finish within the deadline.") from exc
                    raise
                except ApiError:
                    raise
                except Exception as exc:
                    # Mid-stream nothing is retried: part of the answer is already out.
                    raise classify_failure(exc)[0] from exc
                finally:
                    self._waiter = None
                for text in self._read(chunk):
                    yield text
        finally:
            timer.cancel()

    def _expire(self) -> None:
        """The deadline's timer: cancel the wait for a chunk, if one is under way."""
        if self._waiter is not None and not self._expired:
            self._expired = True
            self._waiter.cancel()

    def _read(self, chunk: Any) -> list[str]:
        """The text of one chunk (the provider's JSON object); notes its model, usage and
        finish reason. A chunk of another shape is a bad answer, not a crash."""
        try:
            self.model = chunk.get("model") or self.model
            usage = chunk.get("usage")
            if usage is not None:
                prompt, completion = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
                self.usage = Usage(
                    prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
                )
            texts = []
            # Azure sends chunks without choices (content-filter results); usage too.
            for choice in chunk.get("choices") or ():
                if choice.get("finish_reason"):
                    self.finish_reason = str(choice["finish_reason"])
                content = (choice.get("delta") or {}).get("content")
                if content:
                    texts.append(str(content))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ModelBadAnswer("The model's stream sent something that is not a completion chunk.") from exc
        return texts

    def completion(self, text: str) -> Completion:
        """What the finished stream produced; refused without reported usage, as every call."""
        if self.usage is None:
            # Text was generated, so it is charged its reservation either way.
            raise ModelBadAnswer("The model did not report token usage.")
        deployment = self.deployment
        return Completion(
            text=text,
            model=self.model,
            usage=self.usage,
            finish_reason=self.finish_reason,
            deployment=deployment.name,
            price=deployment.price,
            attempts=self.attempts,
        )

    async def aclose(self) -> None:
        """Close the provider's response and give the deployment's slot back (idempotent)."""
        release, self._release = self._release, None
        try:
            await self._stream.close()
        finally:
            if release is not None:
                release()
