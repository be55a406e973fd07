"""HTTP handlers, written once against Starlette's Request/Response.

The Functions host passes the same ``Request`` type (through
``azurefunctions-extensions-http-fastapi``) and the container host is Starlette itself.
Each handler parses, calls the pipeline (``sk_core.pipeline``) and renders; the route
table (``sk_core.http.routes``) lists them. A handler is given the service and the
request's context (``handler(request, service, context)``); it looks nothing up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from sk_core import telemetry
from sk_core.cache import directive
from sk_core.errors import NotFound, StorageUnavailable
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
from sk_core.http.streams import DEPLOYMENT_HEADER, stream_failure, stream_headers, text_events
from sk_core.pricing import usd

if TYPE_CHECKING:
    from sk_core.accounts import Principal
    from sk_core.catalog import FunctionSpec, RequestOptions
    from sk_core.composition import Service
    from sk_core.http.context import RequestContext
    from sk_core.model import ModelRuntime
    from sk_core.pipeline import Outcome, StreamedCall

logger = logging.getLogger(__name__)

# A caller may pick a configured model fallback chain (sk_core/model/_deployments.py) per request.
MODEL_CHAIN_HEADER = "x-model-chain"
# Which deployment of the chain answered (and so set the price charged).


def function_spec(service: Service, plugin: str, name: str) -> FunctionSpec:
    """The exposed catalog function, or 404."""
    spec = service.catalog.get(plugin, name)
    if spec is None:
        raise NotFound(f"No function {plugin}/{name} is exposed.")
    return spec


async def _prepare(
    request: Request, service: Service, context: RequestContext, spec: FunctionSpec
) -> tuple[Principal, dict[str, Any], RequestOptions]:
    """Authenticate and read the body: the caller, the function's arguments and the
    request's own options (``max_tokens``, ``run_limits``)."""
    principal = await context.authenticate(service.pipeline, request.headers, spec.id)
    with telemetry.tracer().start_as_current_span("validate"):
        data = await read_json_body(request, max_bytes=service.settings.max_body_bytes)
        arguments, options = spec.split_request(validate_body(spec.request_model, data))
    return principal, arguments, options


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


async def _answer(
    request: Request,
    service: Service,
    context: RequestContext,
    spec: FunctionSpec,
    render: Callable[[Outcome], BaseModel],
) -> Response:
    """Run a catalog function: JSON rendered by ``render``, or Server-Sent Events when
    the client accepts ``text/event-stream``."""
    principal, arguments, options = await _prepare(request, service, context, spec)
    pipeline, record = service.pipeline, context.audit
    if wants_event_stream(request) and spec.tools is not None:
        return await _tool_run_events(request, service, context, principal, spec, arguments, options)
    if wants_event_stream(request):
        call = await pipeline.stream(
            principal, spec, arguments, max_tokens=options.max_tokens, record=record, chain=_chain(request)
        )
        return event_stream(_function_events(context, call), stream_headers(call))
    outcome = await pipeline.call(
        principal,
        spec,
        arguments,
        max_tokens=options.max_tokens,
        run_limits=options.run_limits,
        record=record,
        cache_mode=directive(request.headers.get("cache-control")),
        chain=_chain(request),
    )
    return json_response(render(outcome), headers=answer_headers(outcome))


async def _function_events(context: RequestContext, call: StreamedCall) -> AsyncIterator[bytes]:
    """``delta`` events with text, then one ``done`` event with the call's accounting,
    or one ``error`` event (problem+json) if it fails after the response has started."""
    async for event in text_events(context, call):
        yield event
    if call.outcome is not None:  # a stream that ended normally has settled
        yield sse.event(StreamDone(**call.outcome.fields()).model_dump(), "done")


async def _tool_run_events(
    request: Request,
    service: Service,
    context: RequestContext,
    principal: Principal,
    spec: FunctionSpec,
    arguments: dict[str, Any],
    options: RequestOptions,
) -> Response:
    """A tool run as Server-Sent Events: a ``tool`` event per tool call as it finishes
    (name, arguments, outcome, duration), then the answer in a ``delta`` event and a
    ``done`` event with the run's usage, cost and report. The model's steps are not
    streamed token by token. A failure before the first event (a refusal of the first
    step) answers with its own status; after it, as an ``error`` event. A client that
    leaves cancels the run (the pipeline settles what was started)."""
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    run: asyncio.Future[Any] = asyncio.ensure_future(
        service.pipeline.run_tools(
            principal, spec, arguments, max_tokens=options.max_tokens, run_limits=options.run_limits,
            record=context.audit, chain=_chain(request), on_tool=events.put_nowait,
        )
    )
    getter: asyncio.Future[Any] = asyncio.ensure_future(events.get())
    try:
        await asyncio.wait({run, getter}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        await _abandon(run, getter)
        raise
    if run.done() and not getter.done() and run.exception() is not None:
        getter.cancel()
        run.result()  # raises: the error's own status, nothing streamed yet

    async def body() -> AsyncIterator[bytes]:
        waiting = getter
        try:
            while True:
                if waiting.done():
                    yield sse.event(waiting.result(), "tool")
                    waiting = asyncio.ensure_future(events.get())
                    continue
                if run.done():
                    break
                await asyncio.wait({run, waiting}, return_when=asyncio.FIRST_COMPLETED)
            try:
                outcome = run.result()
            except Exception as exc:
                yield sse.event(problem_body(stream_failure(context, exc)), "error")
                return
            yield sse.event({"text": outcome.text}, "delta")
            yield sse.event(StreamDone(**outcome.fields()).model_dump(exclude_none=True), "done")
        finally:
            await _abandon(run, waiting)

    return sse.event_stream(body(), {})


async def _abandon(run: asyncio.Future[Any], waiting: asyncio.Future[Any]) -> None:
    """Stop a streamed run whose client is gone (or that is over), and wait for it to
    unwind: its steps settle, its tools are cancelled."""
    waiting.cancel()
    if not run.done():
        run.cancel()
    with contextlib.suppress(BaseException):
        await run


async def summarize(request: Request, service: Service, context: RequestContext) -> Response:
    """Summarize ``text`` in ``style`` within ``max_words``."""
    return await _answer(
        request,
        service,
        context,
        function_spec(service, "text", "summarize"),
        lambda outcome: SummarizeResponse(summary=outcome.text.strip(), **outcome.fields()),
    )


async def chat(request: Request, service: Service, context: RequestContext) -> Response:
    """Answer the next assistant message of a conversation."""
    return await _answer(
        request,
        service,
        context,
        function_spec(service, "chat", "chat"),
        lambda outcome: ChatResponse(message=AssistantMessage(content=outcome.text), **outcome.fields()),
    )


async def list_functions(request: Request, service: Service, context: RequestContext) -> Response:
    """The catalog: every function this key may call, with its input variables."""
    principal = await context.authenticate(service.pipeline, request.headers, None)
    visible = [
        s.public() for s in service.catalog if principal.key.allows(s.id) and principal.tenant.allows(s.id)
    ]
    return json_response(FunctionList.model_validate({"functions": visible}))


async def invoke_function(request: Request, service: Service, context: RequestContext) -> Response:
    """Invoke any catalog function with JSON arguments validated against its inputs."""
    plugin, name = request.path_params.get("plugin", ""), request.path_params.get("function", "")
    if service.catalog.get(plugin, name) is None:
        # Authenticated before the 404: which functions exist is not public.
        await context.authenticate(service.pipeline, request.headers, None)
    return await _answer(
        request,
        service,
        context,
        function_spec(service, plugin, name),
        lambda outcome: InvokeResponse(plugin=plugin, function=name, result=outcome.text, **outcome.fields()),
    )


async def health(request: Request, service: Service, context: RequestContext) -> Response:
    """Liveness: answers without touching any dependency."""
    return json_response(HealthResponse(status="ok"))


async def ready(request: Request, service: Service, context: RequestContext) -> Response:
    """Readiness: the kernel is built, the model endpoint, storage and secrets answer.

    Anonymous callers see only each dependency's status and a code; the details (which
    secret, what failed) go to the log, not to whoever can reach the probe.
    """
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
            # One listing, as a ping would be; it also re-creates a table lost since
            # start-up (or never made: storage was down then) before a request finds it.
            await service.prepare_tables()
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
    # Deferred: the memory package loads numpy (~0.4 s), not wanted at cold start.
    from sk_core.http.memory_api import ready_checks

    checks.update(await ready_checks(service, timeout))
    return json_response(
        ReadyResponse(status="ready" if is_ready else "not_ready", checks=checks),
        status_code=200 if is_ready else 503,
    )
