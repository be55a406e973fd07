"""The one route table both hosts read.

``path`` is relative to the ``/api`` prefix (the Functions host's default
``routePrefix``; the container host mounts the same paths under ``/api``), and uses
the ``{name}`` placeholder syntax that both Functions route templates and Starlette
understand.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from sk_core import handlers
from sk_core.errors import ApiError, internal_error_response, problem_response
from sk_core.openapi import openapi_document

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
API_PREFIX = "/api"


def error_boundary(handler: Handler) -> Handler:
    """Map domain errors to their HTTP answer and anything else to an opaque 500."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as error:
            return problem_response(error)
        except Exception:
            logger.exception("unhandled error in %s", handler.__name__)
            return internal_error_response()

    return wrapped


@dataclass(frozen=True)
class RouteSpec:
    """One HTTP endpoint: a Functions trigger in one host, a Starlette route in the other."""

    name: str
    path: str
    methods: tuple[str, ...]
    handler: Handler
    auth: Literal["function", "anonymous"]
    summary: str
    tag: str

    @property
    def full_path(self) -> str:
        """The path clients call, prefix included."""
        return f"{API_PREFIX}/{self.path}"

    @property
    def endpoint(self) -> Handler:
        """The handler wrapped in the shared error boundary."""
        return error_boundary(self.handler)


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec(
        "summarize",
        "v1/summarize",
        ("POST",),
        handlers.summarize,
        "function",
        "Summarize a text",
        "functions",
    ),
    RouteSpec(
        "chat", "v1/chat", ("POST",), handlers.chat, "function", "Continue a conversation", "functions"
    ),
    RouteSpec(
        "list_functions",
        "v1/functions",
        ("GET",),
        handlers.list_functions,
        "function",
        "List exposed functions and their inputs",
        "catalog",
    ),
    RouteSpec(
        "invoke_function",
        "v1/functions/{plugin}/{function}",
        ("POST",),
        handlers.invoke_function,
        "function",
        "Invoke a catalog function",
        "catalog",
    ),
    RouteSpec("health", "health", ("GET",), handlers.health, "anonymous", "Liveness", "operations"),
    RouteSpec(
        "ready",
        "ready",
        ("GET",),
        handlers.ready,
        "anonymous",
        "Readiness (kernel built, model reachable)",
        "operations",
    ),
    RouteSpec(
        "openapi",
        "openapi.json",
        ("GET",),
        openapi_document,
        "function",
        "This API's OpenAPI 3.1 document",
        "operations",
    ),
)
