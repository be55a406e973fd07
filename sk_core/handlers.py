"""HTTP handlers, written once against Starlette's Request/Response.

The Functions host passes the same ``Request`` type (through
``azurefunctions-extensions-http-fastapi``) and the container host is Starlette itself,
so these functions are the whole of the API's behaviour; ``routes.py`` lists them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from sk_core import telemetry
from sk_core.catalog import FunctionSpec
from sk_core.errors import (
    ApiError,
    LimitsUnavailable,
    ModelTimeout,
    ModelUnavailable,
    NotFound,
    ServiceUnavailable,
    rate_limit_headers,
)
from sk_core.pricing import usd
from sk_core.request_body import read_json_body, validate_body
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
    from sk_core.audit import AuditEntry
    from sk_core.ledger import Hold
    from sk_core.model_runtime import Completion, ModelRuntime

logger = logging.getLogger(__name__)


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """Serialize a response model."""
    return Response(
        content=model.model_dump_json(by_alias=True, exclude_none=True),
        status_code=status_code,
        media_type="application/json",
    )


def _spec(service: Service, plugin: str, name: str) -> FunctionSpec:
    spec = service.catalog.get(plugin, name)
    if spec is None:
        raise NotFound(f"No function {plugin}/{name} is exposed.")
    return spec


async def _runtime(service: Service) -> ModelRuntime:
    try:
        return await service.kernels.get()
    except Exception:
        # The cause (bad settings, missing package) is logged by the kernel provider.
        raise ServiceUnavailable("The model runtime could not be initialised.") from None


async def _arguments(request: Request, service: Service, spec: FunctionSpec) -> dict[str, Any]:
    data = await read_json_body(request, max_bytes=service.settings.max_body_bytes)
    return validate_body(spec.arguments_model, data).model_dump()


@dataclass(frozen=True)
class _Outcome:
    completion: Completion
    text: str  # the answer after output redaction
    redactions: dict[str, int]
    cost_nano: int
    headers: dict[str, str]

    def fields(self) -> dict[str, Any]:
        completion = self.completion
        return {
            "model": completion.model,
            "usage": completion.usage,
            "finish_reason": completion.finish_reason,
            "cost_usd": usd(self.cost_nano),
            "redacted": sum(self.redactions.values()),
            "redactions": self.redactions,
        }


# Failures after which the provider may still have done (and billed) the work: the
# request was sent and no answer came back. These keep their reserved charge.
_UNCERTAIN = (ModelTimeout, ModelUnavailable)


async def _call_model(
    request: Request,
    service: Service,
    spec: FunctionSpec,
    default_max_tokens: Callable[[dict[str, Any]], int],
) -> _Outcome:
    """Authenticate → validate → admit (reserve, clamp) → invoke → settle, a span each."""
    tracer = telemetry.tracer()
    service.kernels.warm()  # first request of a process: SK imports while we authenticate
    with tracer.start_as_current_span("authenticate"):
        principal = await service.auth.authenticate(request.headers, spec.id)
    request.state.tenant_id = principal.tenant.id
    audit: AuditEntry | None = getattr(request.state, "audit", None)
    if audit is not None:
        audit.tenant_id, audit.key_id, audit.function = principal.tenant.id, principal.key.key_id, spec.id
    with tracer.start_as_current_span("validate"):
        arguments = await _arguments(request, service, spec)
    requested = arguments.pop("max_tokens") or default_max_tokens(arguments)
    with tracer.start_as_current_span("guard") as span:
        # Before admission: a rejected prompt is neither charged nor counted.
        screening = await service.screen(spec.id, spec.user_texts(arguments))
        if screening is not None:
            span.set_attribute("sk.guard.flagged", screening.flagged)
            if audit is not None:
                audit.guard = screening.summary
            screening.enforce()
    price = service.settings.price
    with tracer.start_as_current_span("admit") as span:
        hold = await service.ledger.admit(
            principal.tenant,
            price=price,
            prompt_tokens_bound=spec.prompt_token_bound(arguments),
            requested_max_tokens=requested,
            function=spec.id,
            key_id=principal.key.key_id,
        )
        span.set_attribute("sk.max_tokens", hold.max_tokens)
        span.set_attribute("sk.hold_usd", usd(hold.amount_nano))
    started = time.perf_counter()
    try:
        with tracer.start_as_current_span("invoke", attributes={"sk.function": spec.id}):
            runtime = await _runtime(service)
            completion = await runtime.invoke(spec, arguments, max_tokens=hold.max_tokens)
    except BaseException as failure:
        # Settle even when the client has gone (cancellation): shielded, so the hold
        # does not sit until its lease expires and block a concurrency slot.
        charge = (
            hold.amount_nano if not isinstance(failure, ApiError) or isinstance(failure, _UNCERTAIN) else 0
        )
        with tracer.start_as_current_span("settle"):
            charged = await asyncio.shield(_settle_quietly(service, hold, charge, 0, 0))
        if audit is not None:
            audit.cost_nano = charged
        raise
    duration = time.perf_counter() - started
    redaction = service.redactor_for(spec.id).redact(completion.text)
    usage = completion.usage
    cost = price.cost_nano(usage.prompt_tokens, usage.completion_tokens)
    with tracer.start_as_current_span("settle") as span:
        # Shielded like the failure path: a cancellation here must not strand the hold.
        charged = await asyncio.shield(
            _settle_quietly(service, hold, cost, usage.prompt_tokens, usage.completion_tokens)
        )
        span.set_attribute("sk.cost_usd", usd(charged))
    _record_call(service, principal.tenant.id, spec.id, completion, duration, charged)
    if audit is not None:
        audit.prompt_tokens, audit.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        audit.cost_nano = charged
    headers = {
        **rate_limit_headers(hold.rpm_limit, hold.rpm_remaining, hold.rpm_reset),
        "X-Request-Cost-USD": f"{usd(charged):.9f}",
    }
    if audit is not None:
        audit.redactions = redaction.total
    return _Outcome(
        completion=completion,
        text=redaction.text,
        redactions=dict(redaction.counts),
        cost_nano=charged,
        headers=headers,
    )


def _record_call(
    service: Service,
    tenant_id: str,
    function_id: str,
    completion: Completion,
    duration: float,
    cost_nano: int,
) -> None:
    """gen_ai token and duration metrics plus our cost counter, with the same dimensions."""
    meters = telemetry.instruments()
    dimensions = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": service.settings.resolved_model_id,
        "gen_ai.response.model": completion.model,
        "sk.tenant": tenant_id,
        "sk.function": function_id,
    }
    meters.token_usage.record(completion.usage.prompt_tokens, {**dimensions, "gen_ai.token.type": "input"})
    meters.token_usage.record(
        completion.usage.completion_tokens, {**dimensions, "gen_ai.token.type": "output"}
    )
    meters.operation_duration.record(duration, dimensions)
    meters.cost.add(usd(cost_nano), dimensions)


async def _settle_quietly(
    service: Service, hold: Hold, cost_nano: int, prompt_tokens: int, completion_tokens: int
) -> int:
    """Settle; if storage fails now, the hold expires and is charged its reservation."""
    try:
        settlement = await service.ledger.settle(
            hold, cost_nano=cost_nano, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except LimitsUnavailable as exc:
        logger.error(
            "could not settle %s (%s); it will expire and be charged %d nano-USD",
            hold.request_id,
            exc.reason,
            hold.amount_nano,
        )
        return hold.amount_nano
    return settlement.cost_nano


def _json_with_headers(model: BaseModel, headers: dict[str, str]) -> Response:
    response = json_response(model)
    response.headers.update(headers)
    return response


async def summarize(request: Request) -> Response:
    """Summarize ``text`` in ``style`` within ``max_words``."""
    service = get_service()
    spec = _spec(service, "text", "summarize")
    # A word is ~1.3 tokens in English; twice the word limit plus slack never cuts a
    # compliant summary short while stopping a runaway answer early.
    outcome = await _call_model(
        request, service, spec, lambda args: min(spec.default_max_tokens, 2 * args["max_words"] + 16)
    )
    body = SummarizeResponse(summary=outcome.text.strip(), **outcome.fields())
    return _json_with_headers(body, outcome.headers)


async def chat(request: Request) -> Response:
    """Answer the next assistant message of a conversation."""
    service = get_service()
    spec = _spec(service, "chat", "chat")
    outcome = await _call_model(request, service, spec, lambda _: spec.default_max_tokens)
    body = ChatResponse(message=AssistantMessage(content=outcome.text), **outcome.fields())
    return _json_with_headers(body, outcome.headers)


async def list_functions(request: Request) -> Response:
    """The catalog: every function this key may call, with its input variables."""
    service = get_service()
    principal = await service.auth.authenticate(request.headers, None)
    request.state.tenant_id = principal.tenant.id
    visible = [
        s.public() for s in service.catalog if principal.key.allows(s.id) and principal.tenant.allows(s.id)
    ]
    return json_response(FunctionList.model_validate({"functions": visible}))


async def invoke_function(request: Request) -> Response:
    """Invoke any catalog function with JSON arguments validated against its inputs."""
    service = get_service()
    plugin, name = request.path_params.get("plugin", ""), request.path_params.get("function", "")
    spec = _spec(service, plugin, name)
    outcome = await _call_model(request, service, spec, lambda _: spec.default_max_tokens)
    body = InvokeResponse(plugin=plugin, function=name, result=outcome.text, **outcome.fields())
    return _json_with_headers(body, outcome.headers)


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
        runtime = await asyncio.wait_for(service.kernels.get(), timeout)
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
    except (TimeoutError, LimitsUnavailable):
        checks["storage"] = DependencyStatus(status="error", code="storage_unreachable")
    problems = await service.secrets.check(service.required_secrets())
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
