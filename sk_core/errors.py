"""Domain errors and their one mapping to HTTP.

Every error a client can see is an ``ApiError``: it carries a stable machine-readable
``code``, the HTTP status and a human ``detail`` written by us. Provider messages,
keys and stack traces never go into ``detail``; they go to the log.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.responses import Response

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ApiError(Exception):
    """Base of every error mapped to an HTTP answer."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
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
    """The provider could not be reached (connection refused, DNS, TLS)."""

    status, code, title = 502, "model_unavailable", "The model provider is unreachable"


class ModelRateLimited(ApiError):
    status, code, title = 503, "model_rate_limited", "The model provider is rate limiting us"


class ModelTimeout(ApiError):
    status, code, title = 504, "model_timeout", "The model provider did not answer in time"


class ServiceUnavailable(ApiError):
    status, code, title = 503, "service_unavailable", "Service unavailable"


class Unauthorized(ApiError):
    """No key, a malformed, unknown or revoked key: all look the same to the caller."""

    status, code, title = 401, "unauthorized", "Missing or invalid API key"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="sk-functions"'})


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
            headers={"Retry-After": str(retry_after), **rate_limit_headers(limit, remaining, reset)},
            extensions={"retry_after_seconds": retry_after, **(extensions or {})},
        )
        self.code = code
        self.retry_after = retry_after


class LimitsUnavailable(ApiError):
    """Limits could not be checked (storage unreachable): fail closed, admit nothing."""

    status, code, title = 503, "limits_unavailable", "Usage limits unavailable"

    def __init__(self, reason: str) -> None:
        # The reason is for logs; the client learns only that nothing was admitted.
        super().__init__(
            "Usage limits could not be checked, so the request was not admitted; retry shortly.",
            headers={"Retry-After": "1"},
        )
        self.reason = reason


# On every response from every route: these answers are JSON for programs, never pages
# to render, frame, cache or sniff.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
}

# Headers a browser client may read on a cross-origin response.
CORS_EXPOSED_HEADERS = (
    "Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, X-Request-Cost-USD, X-Trace-Id"
)


def rate_limit_headers(limit: int, remaining: int, reset: int) -> dict[str, str]:
    """The IETF RateLimit header fields (requests per minute window)."""
    return {
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(max(0, remaining)),
        "RateLimit-Reset": str(reset),
    }


def problem_response(error: ApiError) -> Response:
    """Render an ``ApiError`` as the one error shape every route uses."""
    return Response(
        content=json.dumps(error.body()),
        status_code=error.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=error.headers,
    )


def internal_error_response() -> Response:
    """A 500 that says nothing about the cause; the cause is logged by the caller."""
    return problem_response(ApiError("An unexpected error occurred; it has been logged."))
