"""The one route table both hosts read.

``path`` is relative to the ``/api`` prefix (the Functions host's default
``routePrefix``; the container host mounts the same paths under ``/api``), and uses
the ``{name}`` placeholder syntax that both Functions route templates and Starlette
understand.

This module is data plus the standard library, on purpose: the Functions host imports
it to index the app, and indexing should not pay for the handlers' imports (pydantic
models, settings, the catalog, telemetry: about 0.1 s here). Handlers are named as
``"module:function"`` and imported, wrapped in the shared boundary
(``sk_core.http.boundary.instrumented``), the first time a route is called.

Handlers are given what they need: ``handler(request, service, context)``. A host binds
each route to the composition root once (``RouteSpec.bind``); the endpoint it gets
back resolves the service once per request and passes it in. Nothing under
``sk_core.http`` looks the service up itself (an import-linter contract keeps
``sk_core.composition`` out of it, but for type annotations).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from sk_core.composition import Service
    from sk_core.http.boundary import Bounded, Handler

# What a host serves: a request in, a response out.
Endpoint = Callable[["Request"], Awaitable["Response"]]
# Where an endpoint gets the service from: the composition root's (built on first use).
ServiceSource = Callable[[], "Service"]
API_PREFIX = "/api"


@dataclass(frozen=True)
class RouteSpec:
    """One HTTP endpoint: a Functions trigger in one host, a Starlette route in the other."""

    name: str
    path: str
    methods: tuple[str, ...]
    # "module:function", resolved on first use; or the handler itself (benchmarks, tests).
    handler: str | Handler
    auth: Literal["function", "anonymous"]
    summary: str
    tag: str
    audited: bool = False
    # "openai": errors in OpenAI's shape ({"error": {...}}), for OpenAI's own clients.
    errors: Literal["problem", "openai"] = "problem"

    @property
    def full_path(self) -> str:
        """The path clients call, prefix included."""
        return f"{API_PREFIX}/{self.path}"

    def resolve_handler(self) -> Handler:
        """The handler function itself (imports its module the first time)."""
        if not isinstance(self.handler, str):
            return self.handler
        module, _, attribute = self.handler.partition(":")
        handler: Handler = getattr(importlib.import_module(module), attribute)
        return handler

    @functools.cached_property
    def _bounded(self) -> Bounded:
        # Imported on the first call: indexing reads the table, not the handlers.
        from sk_core.http.boundary import instrumented

        return instrumented(
            self.resolve_handler(),
            name=self.name,
            template=self.full_path,
            audited=self.audited,
            errors=self.errors,
        )

    def bind(self, services: ServiceSource) -> Endpoint:
        """This route as a host serves it: each request gets the service from
        ``services`` once and runs the handler inside the shared boundary (errors,
        tracing, metrics, audit) with that service."""

        async def endpoint(request: Request) -> Response:
            return await self._bounded(request, services())

        endpoint.__name__ = endpoint.__qualname__ = self.name
        return endpoint


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec(
        "summarize", "v1/summarize", ("POST",), "sk_core.http.handlers:summarize", "function",
        "Summarize a text", "functions", audited=True,
    ),
    RouteSpec(
        "chat", "v1/chat", ("POST",), "sk_core.http.handlers:chat", "function",
        "Continue a conversation", "functions", audited=True,
    ),
    RouteSpec(
        "list_functions", "v1/functions", ("GET",), "sk_core.http.handlers:list_functions", "function",
        "List exposed functions and their inputs", "catalog",
    ),
    RouteSpec(
        "invoke_function", "v1/functions/{plugin}/{function}", ("POST",),
        "sk_core.http.handlers:invoke_function", "function", "Invoke a catalog function", "catalog",
        audited=True,
    ),
    RouteSpec(
        "chat_completions", "v1/chat/completions", ("POST",), "sk_core.http.openai_compat:chat_completions",
        "function", "Chat completion in the OpenAI wire format (streams with stream: true)", "openai",
        audited=True, errors="openai",
    ),
    RouteSpec(
        "list_models", "v1/models", ("GET",), "sk_core.http.openai_compat:list_models", "function",
        "Models this key may use (OpenAI wire format)", "openai", errors="openai",
    ),
    RouteSpec(
        "health", "health", ("GET",), "sk_core.http.handlers:health", "anonymous", "Liveness", "operations"
    ),
    RouteSpec(
        "ready", "ready", ("GET",), "sk_core.http.handlers:ready", "anonymous",
        "Readiness (kernel built, model reachable)", "operations",
    ),
    RouteSpec(
        "usage", "v1/usage", ("GET",), "sk_core.http.usage_api:usage", "function",
        "The caller's spend, holds and rates against its budgets and limits", "usage",
    ),
    RouteSpec(
        "admin_tenants", "v1/admin/tenants", ("GET",), "sk_core.http.admin_api:admin_tenants", "function",
        "Every tenant with its usage (admin key)", "admin",
    ),
    RouteSpec(
        "admin_tenant", "v1/admin/tenants/{tenant_id}", ("GET",), "sk_core.http.admin_api:admin_tenant",
        "function", "One tenant's usage, series, recent calls and expired holds (admin key)", "admin",
    ),
    RouteSpec(
        "admin_tenant_csv", "v1/admin/tenants/{tenant_id}/usage.csv", ("GET",),
        "sk_core.http.admin_api:admin_tenant_csv", "function",
        "One tenant's last 30 days and this month as CSV (admin key)", "admin",
    ),
    RouteSpec(
        "dashboard", "dashboard", ("GET",), "sk_core.http.dashboard:page", "function",
        "The operators' usage dashboard (a static page; its data needs an admin key)", "admin",
    ),
    RouteSpec(
        "dashboard_asset", "dashboard/{asset}", ("GET",), "sk_core.http.dashboard:asset", "function",
        "The dashboard's scripts and stylesheets", "admin",
    ),
    RouteSpec(
        "openapi", "openapi.json", ("GET",), "sk_core.http.openapi:openapi_document", "function",
        "This API's OpenAPI 3.1 document", "operations",
    ),
    # Document memory (sk_core/memory, issue 24).
    RouteSpec(
        "memory_ingest", "v1/collections/{collection}/documents", ("POST",),
        "sk_core.http.memory_api:ingest", "function",
        "Queue documents for ingestion into a collection (202, then poll the job)", "memory",
    ),
    RouteSpec(
        "memory_job", "v1/jobs/{job_id}", ("GET",), "sk_core.http.memory_api:job_status", "function",
        "An ingestion job's status", "memory",
    ),
    RouteSpec(
        "memory_search", "v1/collections/{collection}/search", ("POST",), "sk_core.http.memory_api:search",
        "function", "The chunks of a collection nearest a query", "memory",
    ),
    RouteSpec(
        "memory_ask", "v1/collections/{collection}/ask", ("POST",), "sk_core.http.memory_api:ask",
        "function", "An answer grounded in a collection, with citations (streams with text/event-stream)",
        "memory",
        audited=True,
    ),
    RouteSpec(
        "memory_delete_document", "v1/collections/{collection}/documents/{document_id}", ("DELETE",),
        "sk_core.http.memory_api:delete_document", "function", "Remove a document from a collection",
        "memory",
    ),
    RouteSpec(
        "memory_delete_collection", "v1/collections/{collection}", ("DELETE",),
        "sk_core.http.memory_api:delete_collection", "function", "Remove a collection", "memory",
    ),
    RouteSpec(
        "memory_collections", "v1/collections", ("GET",), "sk_core.http.memory_api:list_collections",
        "function", "The caller's collections", "memory",
    ),
)
