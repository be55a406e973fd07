"""Provider failures as our errors: which are retried, which are charged, and how long
to wait (``Retry-After`` within the deadline, else jittered backoff)."""


import email.utils
import logging
import random
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import openai

from sk_core.errors import (
    ApiError,
    ModelBadAnswer,
    ModelError,
    ModelRateLimited,
    ModelTimeout,
    ModelUnavailable,
    ModelUnreachable,
)
from sk_core.model._chat_service import UnusableAnswer

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)

_BACKOFF_BASE_SECONDS = 0.25
_BACKOFF_CAP_SECONDS = 4.0


def _causes(exc: BaseException) -> Iterator[BaseException]:
    # SK wraps the SDK's exception (ServiceResponseException, KernelInvokeException...),
    # which wraps httpx's: what we need is down the chain. Bounded against cycles.
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            return
        yield current
        current = current.__cause__ or current.__context__


def _caused_by(exc: BaseException, *kinds: type[BaseException]) -> bool:
    return any(isinstance(cause, kinds) for cause in _causes(exc))


# The HTTP stack's "no connection was made" errors. By name: the OpenAI SDK runs on its
# own copy of httpx (``httpx2``/``httpcore2`` in this release), not the ``httpx`` we
# could import, and the names are what both share.
_CONNECT_FAILURES = frozenset({"ConnectError", "ConnectTimeout"})


def _never_connected(exc: BaseException) -> bool:
    return any(type(cause).__name__ in _CONNECT_FAILURES for cause in _causes(exc))


def _provider_exception(exc: BaseException) -> openai.OpenAIError | None:
    return next((c for c in _causes(exc) if isinstance(c, openai.OpenAIError)), None)


def _retry_after_seconds(headers: Any) -> float | None:
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


def classify_failure(exc: BaseException) -> tuple[ApiError, bool, float | None]:
    """Map a failed invoke to (client-facing error, retryable?, provider's Retry-After)."""
    if _caused_by(exc, UnusableAnswer):
        # A 200 we cannot use (malformed JSON, no usage): the provider has probably
        # billed it, so it is charged, and not retried (a retry would be billed again).
        logger.error("model answer unusable", exc_info=exc)
        return ModelBadAnswer("The model provider returned an unusable answer."), False, None
    provider = _provider_exception(exc)
    if isinstance(provider, openai.APIConnectionError) and _never_connected(provider):
        # No connection was made, so no request was sent: free, and worth a fallback.
        return ModelUnreachable("The model endpoint could not be reached."), True, None
    if isinstance(provider, openai.APITimeoutError):
        return ModelTimeout("The model did not answer in time."), True, None
    if isinstance(provider, openai.APIConnectionError):
        # Sent, then the connection broke: the provider may have run (and billed) it.
        return ModelUnavailable("The connection to the model endpoint broke."), True, None
    if isinstance(provider, openai.APIStatusError):
        status = provider.status_code
        retry_after = _retry_after_seconds(provider.response.headers)
        logger.warning("model provider answered HTTP %d", status)
        if status == 429:
            return ModelRateLimited("The model provider is rate limiting; retry later."), True, retry_after
        if status == 408:
            return ModelTimeout("The model did not answer in time."), True, retry_after
        if status >= 500:
            return ModelError("The model provider failed."), True, retry_after
        return ModelError(f"The model provider rejected the request (HTTP {status})."), False, None
    if isinstance(exc, ApiError):
        return exc, False, None
    logger.error("model invocation failed", exc_info=exc)
    return ModelError("The model invocation failed."), False, None


def _backoff(attempt: int) -> float:
    # Full jitter: spreads retries of many workers hit by the same provider hiccup.
    return random.uniform(0, min(_BACKOFF_CAP_SECONDS, _BACKOFF_BASE_SECONDS * 2**attempt))
