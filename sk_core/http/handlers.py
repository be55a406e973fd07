"""HTTP handlers, written once against Starlette's Request/Response.

The Functions host passes the same ``Request`` type (through
``azurefunctions-extensions-http-fastapi``) and the container host is Starlette itself.
Each handler parses, calls the pipeline (``sk_core.pipeline``) and renders; the route
table (``sk_core.route_table``) lists them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from sk_core import telemetry
from sk_core.catalog import FunctionSpec
from sk_core.errors import NotFound, StorageUnavailable
from sk_core.http.rendering import json_response, rate_limit_headers
from sk_core.http.request_body import read_json_body, validate_body
from sk_core.pricing import usd
from sk_core.schemas import (
    AssistantMessage,
    ChatResponse,
    DependencyStatus,
    FunctionList,
    HealthResponse,
    InvokeResponse,
    ReadyResponse,
    SummarizeResponse,
)
from sk_core.service import Service, get_service

if TYPE_CHECKING:
    from sk_core.model_runtime import ModelRuntime
    from sk_core.pipeline import Outcome

logger = logging.getLogger(__name__)


def _spec(service: Service, plugin: str, name: str) -> FunctionSpec:
    spec = service.catalog.get(plugin, name)
    if spec is None:
        raise NotFound(f"No function {plugin}/{name} is exposed.")
    return spec


async def _call(request: Request, service: Service, spec: FunctionSpec) -> tuple[Outcome, dict[str, str]]:
    """Authenticate, read the body, run the pipeline; the headers every answer carries."""
    pipeline = service.pipeline
    record = getattr(request.state, "audit", None)
    principal = await pipeline.authenticate(request.headers, spec.id, record)
    request.state.tenant_id = principal.tenant.id
    with telemetry.tracer().start_as_current_span("validate"):
        data = await read_json_body(request, max_bytes=service.settings.max_body_bytes)
        arguments = validate_body(spec.arguments_model, data).model_dump()
    max_tokens = arguments.pop("max_tokens")
    outcome = await pipeline.call(
        principal,
        spec,
        arguments,
        max_tokens=max_tokens,
        record=record,
        cache_control=request.headers.get("cache-control"),
    )
    headers = {**rate_limit_headers(outcome.rate), "X-Request-Cost-USD": f"{usd(outcome.cost_nano):.9f}"}
    return outcome, {**headers, **_cache_headers(outcome)}


def _cache_headers(outcome: Outcome) -> dict[str, str]:
    """``X-Cache: hit|miss`` for a cacheable function, and ``Age`` on a hit."""
    if outcome.cache is None:
        return {}
    return {"X-Cache": outcome.cache, **({"Age": str(outcome.age)} if outcome.cache == "hit" else {})}


async def summarize(request: Request) -> Response:
    """Summarize ``text`` in ``style`` within ``max_words``."""
    service = get_service()
    outcome, headers = await _call(request, service, _spec(service, "text", "summarize"))
    body = SummarizeResponse(summary=outcome.text.strip(), **outcome.fields())
    return json_response(body, headers=headers)


async def chat(request: Request) -> Response:
    """Answer the next assistant message of a conversation."""
    service = get_service()
    outcome, headers = await _call(request, service, _spec(service, "chat", "chat"))
    body = ChatResponse(message=AssistantMessage(content=outcome.text), **outcome.fields())
    return json_response(body, headers=headers)


async def list_functions(request: Request) -> Response:
    """The catalog: every function this key may call, with its input variables."""
    service = get_service()
    principal = await service.pipeline.authenticate(request.headers, None)
    request.state.tenant_id = principal.tenant.id
    visible = [
        s.public() for s in service.catalog if principal.key.allows(s.id) and principal.tenant.allows(s.id)
    ]
    return json_response(FunctionList.model_validate({"functions": visible}))


async def invoke_function(request: Request) -> Response:
    """Invoke any catalog function with JSON arguments validated against its inputs."""
    service = get_service()
    plugin, name = request.path_params.get("plugin", ""), request.path_params.get("function", "")
    outcome, headers = await _call(request, service, _spec(service, plugin, name))
    body = InvokeResponse(plugin=plugin, function=name, result=outcome.text, **outcome.fields())
    return json_response(body, headers=headers)


async def health(request: Request) -> Response:
    """Liveness: answers without touching any dependency."""
    return json_response(HealthResponse(status="ok"))


async def ready(request: Request) -> Response:
    """Readiness: the kernel is built, the model endpoint, storage and secrets answer.

    Anonymous callers see only each dependency's status and a code; the details (which
    secret, what failed) go to the log, not to whoever can reach the probe.
    """
    service = get_service()
    timeout = service.settings.ready_timeout_seconds
    checks: dict[str, DependencyStatus] = {}
    runtime: ModelRuntime | None = None
    try:
        # The first probe starts the build; a pod stays unready until the kernel is warm.
        runtime = await asyncio.wait_for(service.runtimes.get(), timeout)
        checks["kernel"] = DependencyStatus(status="ok")
    except TimeoutError:
        checks["kernel"] = DependencyStatus(status="starting")
    except Exception:
        checks["kernel"] = DependencyStatus(status="error", code="kernel_build_failed")
    if runtime is None:
        checks["model"] = DependencyStatus(status="starting")
    else:
        code = await runtime.check_model(timeout)
        checks["model"] = DependencyStatus(status="ok" if code is None else "error", code=code)
    try:
        async with asyncio.timeout(timeout):
            await service.store.ping()
        checks["storage"] = DependencyStatus(status="ok")
    except (TimeoutError, StorageUnavailable):
        checks["storage"] = DependencyStatus(status="error", code="storage_unreachable")
    problems = await service.secrets.check(service.settings.required_secrets())
    for problem in problems:
        logger.error("readiness: %s", problem)
    checks["secrets"] = (
        DependencyStatus(status="ok")
        if not problems
        else DependencyStatus(status="error", code="secret_unavailable")
    )
    is_ready = all(c.status == "ok" for c in checks.values())
    return json_response(
        ReadyResponse(status="ready" if is_ready else "not_ready", checks=checks),
        status_code=200 if is_ready else 503,
    )
