"""The error and tracing boundary every route's handler runs inside, in both hosts.

The route table (``sk_core.http.routes``, data only, cheap to import for indexing)
wraps each handler here on its first call: one server span, domain errors rendered as
problem+json, request metrics, security and CORS headers, the audit row. The boundary
is handed the service with each request (it never looks one up) and passes it on to
the handler, with the request's ``RequestContext``.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from sk_core import telemetry
from sk_core.accounts import client_address
from sk_core.errors import ApiError, LimitsUnavailable, StorageUnavailable
from sk_core.http.context import RequestContext
from sk_core.http.rendering import (
    CORS_EXPOSED_HEADERS,
    SECURITY_HEADERS,
    openai_error_response,
    problem_response,
)
from sk_core.usage import AuditEntry

if TYPE_CHECKING:
    from sk_core.composition import Service

# A route's handler: the request, the service it runs against, the request's context.
Handler = Callable[[Request, "Service", RequestContext], Awaitable[Response]]
# The handler inside the boundary: what a host's endpoint adapter calls.
Bounded = Callable[[Request, "Service"], Awaitable[Response]]
ErrorFormat = Literal["problem", "openai"]

logger = logging.getLogger(__name__)

# Nobody reads this answer; the status is for audit, metrics and the span.
CLIENT_CLOSED_STATUS = 499
CLIENT_CLOSED_CODE = "client_closed_request"


# Refusal reasons for the ``sk.refusals`` metric, by error code.
_REFUSAL_REASONS = {
    "unauthorized": "auth",
    "forbidden": "auth",
    "auth_rate_limited": "auth",
    "malformed_json": "validation",
    "unsupported_media_type": "validation",
    "payload_too_large": "validation",
    "validation_error": "validation",
    "rate_limited": "rate",
    "tokens_rate_limited": "rate",
    "concurrency_limited": "concurrency",
    "budget_exceeded": "budget",
    "budget_held": "budget",
    "prompt_rejected": "guard",
    "limits_unavailable": "limits_unavailable",
}


def instrumented(
    handler: Handler, *, name: str, template: str, audited: bool, errors: ErrorFormat = "problem"
) -> Bounded:
    """A route's handler inside the shared boundary: one server span (continuing the
    caller's W3C trace context), domain errors mapped to HTTP (problem+json, or OpenAI's
    error shape on the OpenAI-compatible routes), anything else an opaque 500, the trace
    id echoed in ``X-Trace-Id``, request metrics and the audit row.

    A streamed answer (``StreamingResponse``) leaves the handler before its body is
    produced: its span, duration metric and audit row are finished when the body ends
    (or the client leaves), and each step of the body runs inside the server span, so
    the stages it runs (settle) nest under the request like any other.
    """
    render = openai_error_response if errors == "openai" else problem_response

    @functools.wraps(handler)
    async def wrapped(request: Request, service: Service) -> Response:
        started = time.perf_counter()
        # Who is asking, for the authenticator's limit on unknown-key lookups (a
        # context variable: the key check runs deep inside the pipeline's authenticate).
        client_address.set(request.client.host if request.client is not None else None)
        attributes: dict[str, str | int] = {"http.request.method": request.method, "http.route": template}
        parent = propagate.extract(dict(request.headers))  # the caller's W3C trace context
        span = telemetry.tracer().start_span(
            f"{request.method} {template}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        with trace.use_span(span, end_on_exit=False):
            context = RequestContext(
                route=template,
                trace_id=telemetry.current_trace_id(),
                audit=AuditEntry(route=template) if audited else None,
            )
            error_code: str | None = None
            try:
                try:
                    response = await handler(request, service, context)
                except StorageUnavailable as outage:  # storage a route needed: fail closed
                    raise LimitsUnavailable(outage.reason) from outage
            except ApiError as error:
                error_code = error.code
                response = render(error)
                _refused(context, error)
                span.set_attribute("sk.error.code", error.code)
                if error.status >= 500:
                    span.set_status(StatusCode.ERROR, error.code)
            except ClientDisconnect:
                # The client went away mid-body: its doing, not ours. 499 as proxies
                # record it (nginx), so audit, metrics and alerts do not count a 500.
                error_code = CLIENT_CLOSED_CODE
                span.set_attribute("sk.error.code", error_code)
                response = Response(status_code=CLIENT_CLOSED_STATUS)
            except Exception as exc:
                error_code = "internal_error"
                logger.exception("unhandled error in %s", name)
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, "internal_error")
                response = render(ApiError("An unexpected error occurred; it has been logged."))
            span.set_attribute("http.response.status_code", response.status_code)
            for key, value in context.tenant_attributes().items():
                span.set_attribute(key, value)
            if context.trace_id:
                response.headers[telemetry.TRACE_ID_HEADER] = context.trace_id
        for header, value in SECURITY_HEADERS.items():
            # A handler's own value stands: the dashboard page sends a CSP that lets it
            # run its scripts; every other answer gets the strict default.
            if header not in response.headers:
                response.headers[header] = value
        _allow_origin(request, response, service)

        def finish() -> None:
            elapsed = time.perf_counter() - started
            attributes["http.response.status_code"] = response.status_code
            telemetry.instruments().http_duration.record(elapsed, attributes)
            audit = context.audit
            if audit is not None:
                audit.status, audit.trace_id = response.status_code, context.trace_id
                audit.latency_ms = elapsed * 1000
                # A streamed answer that failed after its first byte keeps its 200.
                audit.code = error_code or context.stream_error
                service.audit.record(audit)
            span.end()

        if isinstance(response, StreamingResponse):
            response.body_iterator = _inside(span, response.body_iterator, finish)
        else:
            finish()
        return response

    return wrapped


async def _inside(
    span: Span, body: AsyncIterable[Any], finish: Callable[[], None]
) -> AsyncIterator[Any]:
    """``body``, each step run inside ``span``; ``finish`` once it ends, however it ends."""
    iterator = aiter(body)
    try:
        while True:
            with trace.use_span(span, end_on_exit=False):
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    return
            yield chunk
    finally:
        try:
            # Closed early (the client left while we were not waiting on the body):
            # close the handler's stream now, which closes the provider's.
            closer = getattr(iterator, "aclose", None)
            if closer is not None:
                with trace.use_span(span, end_on_exit=False):
                    await closer()
        finally:
            finish()


def _refused(context: RequestContext, error: ApiError) -> None:
    """Count a refusal in ``sk.refusals``."""
    reason = _REFUSAL_REASONS.get(error.code)
    if reason is not None:
        attributes = {"reason": reason, "code": error.code, **context.tenant_attributes()}
        telemetry.instruments().refusals.add(1, attributes)


def _allow_origin(request: Request, response: Response, service: Service) -> None:
    # Actual (non-preflight) cross-origin requests. Preflights: the container host's
    # CORSMiddleware with the same list; on Azure Functions, the platform's CORS setting.
    origin = request.headers.get("origin")
    if origin is None:
        return
    response.headers["Vary"] = "Origin"
    if origin.rstrip("/") in service.settings.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS
