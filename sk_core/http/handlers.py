"""HTTP handlers, written once against Starlette's Request/Response.

The Functions host passes the same ``Request`` type (through
``azurefunctions-extensions-http-fastapi``) and the container host is Starlette itself.
Each handler parses, calls the pipeline (``sk_core.pipeline``) and renders; the route
table (``sk_core.http.routes``) lists them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from sk_core import telemetry
from sk_core.catalog import FunctionSpec
from sk_core.composition import Service, get_service
from sk_core.errors import ApiError, NotFound, StorageUnavailable
from sk_core.http import sse
from sk_core.http.api_models import (
    AssistantMessage,
    ChatResponse,
    DependencyStatus,
    FunctionList,
    HealthResponse,
    InvokeResponse,
    ReadyResponse,
    StreamDone,
    SummarizeResponse,
)
from sk_core.http.rendering import json_response, problem_body, rate_limit_headers
from sk_core.http.request_body import read_json_body, validate_body
from sk_core.http.sse import event_stream, wants_event_stream
from sk_core.pricing import usd

if TYPE_CHECKING:
    from sk_core.accounts import Principal
    from sk_core.model import ModelRuntime
    from sk_core.pipeline import Outcome, StreamedCall
    from sk_core.usage import AuditEntry

logger = logging.getLogger(__name__)

# A caller may pick a configured model fallback chain (sk_core/model/_deployments.py) per request.
MODEL_CHAIN_HEADER = "x-model-chain"
# Which deployment of the chain answered (and so set the price charged).
DEPLOYMENT_HEADER = "X-Model-Deployment"


def function_spec(service: Service, plugin: str, name: str) -> FunctionSpec:
    """The exposed catalog function, or 404."""
    spec = service.catalog.get(plugin, name)
    if spec is None:
        raise NotFound(f"No function {plugin}/{name} is exposed.")
    return spec


async def _prepare(
    request: Request, service: Service, spec: FunctionSpec
) -> tuple[Principal, dict[str, Any], int | None]:
    """Authenticate and read the body: the caller, the function's arguments, the cap."""
    principal = await service.pipeline.authenticate(request.headers, spec.id, _record(request))
    request.state.tenant_id = principal.tenant.id
    with telemetry.tracer().start_as_current_span("validate"):
        data = await read_json_body(request, max_bytes=service.settings.max_body_bytes)
        arguments = validate_body(spec.arguments_model, data).model_dump()
    return principal, arguments, arguments.pop("max_tokens")


def _record(request: Request) -> AuditEntry | None:
    record: AuditEntry | None = getattr(request.state, "audit", None)
    return record


def _chain(request: Request) -> str | None:
    return request.headers.get(MODEL_CHAIN_HEADER) or None


def answer_headers(outcome: Outcome) -> dict[str, str]:
    """The headers every complete answer carries: its rate-limit state and its cost,
    the deployment that answered (``X-Model-Deployment``, which set the price), and
    for a cacheable function ``X-Cache: hit|miss`` (with ``Age`` on a hit)."""
    headers = {**rate_limit_headers(outcome.rate), "X-Request-Cost-USD": f"{usd(outcome.cost_nano):.9f}"}
    if outcome.deployment is not None:
        headers[DEPLOYMENT_HEADER] = outcome.deployment
    if outcome.cache is not None:
        headers["X-Cache"] = outcome.cache
        if outcome.cache == "hit":
            headers["Age"] = str(outcome.age)
    return headers


def stream_headers(call: StreamedCall) -> dict[str, str]:
    """A streamed answer's headers, known before its first byte."""
    return {**rate_limit_headers(call.rate), DEPLOYMENT_HEADER: call.deployment}


async def _answer(
    request: Request, service: Service, spec: FunctionSpec, render: Callable[[Outcome], BaseModel]
) -> Response:
    """Run a catalog function: JSON rendered by ``render``, or Server-Sent Events when
    the client accepts ``text/event-stream``."""
    principal, arguments, max_tokens = await _prepare(request, service, spec)
    pipeline, record = service.pipeline, _record(request)
    if wants_event_stream(request):
        call = await pipeline.stream(
            principal, spec, arguments, max_tokens=max_tokens, record=record, chain=_chain(request)
        )
        return event_stream(_function_events(request, call), stream_headers(call))
    outcome = await pipeline.call(
        principal,
        spec,
        arguments,
        max_tokens=max_tokens,
        record=record,
        cache_control=request.headers.get("cache-control"),
        chain=_chain(request),
    )
    return json_response(render(outcome), headers=answer_headers(outcome))


async def _function_events(request: Request, call: StreamedCall) -> AsyncIterator[bytes]:
    """``delta`` events with text, then one ``done`` event with the call's accounting,
    or one ``error`` event (problem+json) if it fails after the response has started."""
    try:
        async for text in call:
            yield sse.event({"text": text}, "delta")
    except Exception as exc:
        yield sse.event(problem_body(stream_failure(request, exc)), "error")
        return
    assert call.outcome is not None  # a stream that ended normally has settled
    yield sse.event(StreamDone(**call.outcome.fields()).model_dump(), "done")


def stream_failure(request: Request, exc: Exception) -> ApiError:
    """What to tell a client whose stream failed after its first byte (no status left
    to set): the error, noted for the audit row; anything unexpected is logged."""
    if not isinstance(exc, ApiError):
        logger.error("streamed answer failed", exc_info=exc)
        exc = ApiError("An unexpected error occurred; it has been logged.")
    request.state.stream_error = exc.code
    return exc


async def summarize(request: Request) -> Response:
    """Summarize ``text`` in ``style`` within ``max_words``."""
    service = get_service()
    return await _answer(
        request,
        service,
        function_spec(service, "text", "summarize"),
        lambda outcome: SummarizeResponse(summary=outcome.text.strip(), **outcome.fields()),
    )


async def chat(request: Request) -> Response:
    """Answer the next assistant message of a conversation."""
    service = get_service()
    return await _answer(
        request,
        service,
        function_spec(service, "chat", "chat"),
        lambda outcome: ChatResponse(message=AssistantMessage(content=outcome.text), **outcome.fields()),
    )


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
    return await _answer(
        request,
        service,
        function_spec(service, plugin, name),
        lambda outcome: InvokeResponse(plugin=plugin, function=name, result=outcome.text, **outcome.fields()),
    )


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
    # Document memory's vector store (sk_core/http/memory_api.py): reported, but not a
    # reason to take the pod out of rotation, since only the memory routes need it.
    from sk_core.http.memory_api import ready_checks

    checks.update(await ready_checks(service, timeout))
    return json_response(
        ReadyResponse(status="ready" if is_ready else "not_ready", checks=checks),
        status_code=200 if is_ready else 503,
    )
