"""What every streamed answer shares, whichever route streams it: the headers known
before the first byte, and what a client is told when the stream fails after it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from sk_core.errors import ApiError
from sk_core.http import sse
from sk_core.http.rendering import problem_body, rate_limit_headers

if TYPE_CHECKING:
    from sk_core.http.context import RequestContext
    from sk_core.pipeline import StreamedCall

logger = logging.getLogger(__name__)

# Which deployment of the fallback chain answered (its price was charged).
DEPLOYMENT_HEADER = "X-Model-Deployment"


def stream_headers(call: StreamedCall) -> dict[str, str]:
    """A streamed answer's headers, known before its first byte."""
    return {**rate_limit_headers(call.rate), DEPLOYMENT_HEADER: call.deployment}


def stream_failure(context: RequestContext, exc: Exception) -> ApiError:
    """What to tell a client whose stream failed after its first byte (no status left
    to set): the error, noted in the context for the audit row; anything unexpected
    is logged."""
    if not isinstance(exc, ApiError):
        logger.error("streamed answer failed", exc_info=exc)
        exc = ApiError("An unexpected error occurred; it has been logged.")
    context.stream_error = exc.code
    return exc


async def text_events(context: RequestContext, call: StreamedCall) -> AsyncIterator[bytes]:
    """``delta`` events of a streamed call's text, or an ``error`` event (problem+json)
    if it fails after the response has started; then ``call.outcome`` stays None and
    the caller sends nothing more."""
    try:
        async for text in call:
            yield sse.event({"text": text}, "delta")
    except Exception as exc:
        yield sse.event(problem_body(stream_failure(context, exc)), "error")
