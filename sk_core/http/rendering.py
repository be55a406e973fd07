"""Domain values and errors as HTTP: problem+json bodies, RateLimit and security headers.

The one place where an ``ApiError``'s data (status, code, retry delay, rate state)
becomes a response, for every route of both hosts.
"""

from __future__ import annotations

import json

from pydantic import BaseModel
from starlette.responses import Response

from sk_core.errors import ApiError, LimitExceeded, RateState, Unauthorized

PROBLEM_CONTENT_TYPE = "application/problem+json"

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

# The dashboard page only (sk_core/http/dashboard.py): its own scripts and styles from
# this origin, data from this origin, nothing inline, nothing from anywhere else.
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# Headers a browser client may read on a cross-origin response.
CORS_EXPOSED_HEADERS = (
    "Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, RateLimit, RateLimit-Policy, "
    "X-Request-Cost-USD, X-Trace-Id, X-Cache, Age"
)


# The one quota policy the RateLimit fields describe: requests per minute (a fixed UTC
# minute window). Its name is what the draft's two fields share.
RATE_POLICY = "requests"


def rate_limit_headers(rate: RateState) -> dict[str, str]:
    """The rate limit of the requests-per-minute window, in two notations.

    The current IETF draft (draft-ietf-httpapi-ratelimit-headers: ``RateLimit-Policy``
    names the quota and its window, ``RateLimit`` the remaining quota and the seconds
    until it resets, both Structured Fields) and the three fields of its earlier
    drafts, which clients already read. Remaining is, under quota leases, an estimate of
    the tenant's remaining (it errs low, and never rises within a window).
    """
    remaining = max(0, rate.remaining)
    return {
        "RateLimit-Limit": str(rate.limit),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(rate.reset),
        "RateLimit-Policy": f'"{RATE_POLICY}";q={rate.limit};w=60',
        "RateLimit": f'"{RATE_POLICY}";r={remaining};t={rate.reset}',
    }


def problem_body(error: ApiError) -> dict[str, object]:
    """The problem+json body (RFC 9457 members plus our ``code`` and the error's extensions)."""
    body: dict[str, object] = {
        "type": f"https://sk-functions.dev/errors/{error.code}",
        "title": error.title,
        "status": error.status,
        "code": error.code,
        "detail": error.detail,
    }
    if error.errors:
        body["errors"] = error.errors
    body.update(error.extensions)
    return body


def error_headers(error: ApiError) -> dict[str, str]:
    """The headers an error's data calls for."""
    headers: dict[str, str] = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="sk-functions"'
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, LimitExceeded):
        headers.update(rate_limit_headers(error.rate))
    return headers


def problem_response(error: ApiError, extra_headers: dict[str, str] | None = None) -> Response:
    """Render an ``ApiError`` as the one error shape every route uses."""
    return Response(
        content=json.dumps(problem_body(error)),
        status_code=error.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers={**error_headers(error), **(extra_headers or {})},
    )


# OpenAI's error ``type`` by status, so clients that branch on it (and the SDK's typed
# exceptions, which follow the status) behave as against OpenAI.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error_body(error: ApiError) -> dict[str, object]:
    """The error body of the OpenAI-compatible routes: ``{"error": {message, type, param, code}}``
    with our ``code`` and, for a refused field, its name as ``param``."""
    return {
        "error": {
            "message": error.detail,
            "type": _OPENAI_TYPES.get(error.status, "server_error" if error.status >= 500 else "api_error"),
            "param": error.errors[0]["field"] if error.errors else None,
            "code": error.code,
            **error.extensions,
        }
    }


def openai_error_response(error: ApiError, extra_headers: dict[str, str] | None = None) -> Response:
    """Render an ``ApiError`` in OpenAI's shape, with the same status and headers."""
    return Response(
        content=json.dumps(openai_error_body(error)),
        status_code=error.status,
        media_type="application/json",
        headers={**error_headers(error), **(extra_headers or {})},
    )


def json_response(
    model: BaseModel, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Serialize a response model."""
    return Response(
        content=model.model_dump_json(by_alias=True, exclude_none=True),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )
