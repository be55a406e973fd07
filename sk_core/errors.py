"""Domain errors: plain exceptions with data.

Every error a client can see is an ``ApiError``: it carries a stable machine-readable
``code``, the HTTP status it maps to and a human ``detail`` written by us. Provider
messages, keys and stack traces never go into ``detail``; they go to the log. The data
a response needs (retry delay, rate-limit state) is kept as values here; turning it
into headers and a problem+json body is the HTTP side's job (``sk_core.http.rendering``).
This module imports nothing outside the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ApiError(Exception):
    """Base of every error mapped to an HTTP answer."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal server error"
    # Whether the model provider may have done (and billed) work for the request before
    # it failed: the pipeline then keeps the reservation as the charge (README, "What
    # a failed call costs"). An instance may set it when an earlier attempt was uncertain.
    billable: bool = False

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        retry_after: int | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        # Seconds a client should wait before retrying (the ``Retry-After`` header).
        self.retry_after = retry_after
        self.extensions = extensions or {}

    def body(self) -> dict[str, Any]:
        """The problem+json body (RFC 9457 members plus our ``code``)."""
        body: dict[str, Any] = {
            "type": f"https://sk-functions.dev/errors/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extensions)
        return body


class MalformedJson(ApiError):
    status, code, title = 400, "malformed_json", "Malformed JSON"


class BadRequest(ApiError):
    status, code, title = 400, "bad_request", "Bad request"


class MalformedHttp(ApiError):
    """A request the HTTP parser refused before any route saw it (container host)."""

    status, code, title = 400, "malformed_http", "Malformed HTTP request"


class HeadersTooLarge(ApiError):
    status, code, title = 431, "headers_too_large", "Request header fields too large"


class UnsupportedParameter(ApiError):
    """A request parameter we do not implement: refused by name, never silently dropped."""

    status, code, title = 400, "unsupported_parameter", "Unsupported parameter"

    def __init__(self, name: str, detail: str | None = None) -> None:
        super().__init__(
            detail or f"The parameter '{name}' is not supported.",
            errors=[{"field": name, "message": "not supported"}],
        )


class NotFound(ApiError):
    status, code, title = 404, "not_found", "Not found"


class PayloadTooLarge(ApiError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(ApiError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class ValidationFailed(ApiError):
    status, code, title = 422, "validation_error", "Request body failed validation"


class ModelError(ApiError):
    """The provider answered with an error we could not retry away (5xx, 4xx, bad answer)."""

    status, code, title = 502, "model_error", "The model provider failed"


class ModelUnavailable(ApiError):
    """The connection broke after the request was sent: the provider may have run it."""

    status, code, title = 502, "model_unavailable", "The model provider is unreachable"
    billable = True


class ModelUnreachable(ModelUnavailable):
    """No connection was ever made (refused, DNS, connect timeout, every breaker open):
    no provider received the request, so it costs nothing. Same answer as above."""

    billable = False


class ModelBadAnswer(ModelError):
    """A 200 whose body is not a usable completion (malformed JSON, no usage): the
    provider has probably billed it, so the reservation is charged."""

    billable = True


class ModelRateLimited(ApiError):
    status, code, title = 503, "model_rate_limited", "The model provider is rate limiting us"


class ModelTimeout(ApiError):
    status, code, title = 504, "model_timeout", "The model provider did not answer in time"
    billable = True


class ServiceUnavailable(ApiError):
    status, code, title = 503, "service_unavailable", "Service unavailable"


class Unauthorized(ApiError):
    """No key, a malformed, unknown or revoked key: all look the same to the caller."""

    status, code, title = 401, "unauthorized", "Missing or invalid API key"



class Forbidden(ApiError):
    status, code, title = 403, "forbidden", "Not allowed"


class LimitExceeded(ApiError):
    """A rate, concurrency or budget refusal (429); ``code`` says which."""

    status, title = 429, "Limit exceeded"

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        retry_after: int,
        limit: int,
        remaining: int,
        reset: int,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            detail,
            retry_after=retry_after,
            extensions={"retry_after_seconds": retry_after, **(extensions or {})},
        )
        self.code = code
        # The requests-per-minute window at the time of the refusal (RateLimit headers).
        self.rate = RateState(limit=limit, remaining=remaining, reset=reset)


class LimitsUnavailable(ApiError):
    """Limits could not be checked (storage unreachable): fail closed, admit nothing."""

    status, code, title = 503, "limits_unavailable", "Usage limits unavailable"

    def __init__(self, reason: str) -> None:
        # The reason is for logs; the client learns only that nothing was admitted.
        super().__init__(
            "Usage limits could not be checked, so the request was not admitted; retry shortly.",
            retry_after=1,
        )
        self.reason = reason


class StorageUnavailable(Exception):
    """Table Storage could not be reached or answered unexpectedly.

    Not an ``ApiError``: storage is a dependency, not an answer. Where a request needs
    it (authentication, admission) the pipeline fails closed as ``LimitsUnavailable``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RateState:
    """A requests-per-minute window as a client sees it (IETF RateLimit fields)."""

    limit: int
    remaining: int
    reset: int
