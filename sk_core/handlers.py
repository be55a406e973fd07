"""HTTP handlers, written once against Starlette's Request/Response.

The Functions host passes the same ``Request`` type (through
``azurefunctions-extensions-http-fastapi``) and the container host is Starlette itself,
so these functions are the whole of the API's behaviour; ``routes.py`` lists them.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from sk_core.catalog import FunctionSpec
from sk_core.errors import NotFound, ServiceUnavailable
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
    from sk_core.model_runtime import Completion, ModelRuntime


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


async def _invoke(
    service: Service, spec: FunctionSpec, arguments: dict[str, Any], max_tokens: int
) -> Completion:
    runtime = await _runtime(service)
    return await runtime.invoke(spec, arguments, max_tokens=max_tokens)


def _answer_fields(completion: Completion) -> dict[str, Any]:
    return {"model": completion.model, "usage": completion.usage, "finish_reason": completion.finish_reason}


async def summarize(request: Request) -> Response:
    """Summarize ``text`` in ``style`` within ``max_words``."""
    service = get_service()
    spec = _spec(service, "text", "summarize")
    arguments = await _arguments(request, service, spec)
    requested = arguments.pop("max_tokens")
    # A word is ~1.3 tokens in English; twice the word limit plus slack never cuts a
    # compliant summary short while stopping a runaway answer early.
    max_tokens = requested or min(spec.default_max_tokens, 2 * arguments["max_words"] + 16)
    completion = await _invoke(service, spec, arguments, max_tokens)
    return json_response(SummarizeResponse(summary=completion.text.strip(), **_answer_fields(completion)))


async def chat(request: Request) -> Response:
    """Answer the next assistant message of a conversation."""
    service = get_service()
    spec = _spec(service, "chat", "chat")
    arguments = await _arguments(request, service, spec)
    max_tokens = arguments.pop("max_tokens") or spec.default_max_tokens
    completion = await _invoke(service, spec, arguments, max_tokens)
    return json_response(
        ChatResponse(message=AssistantMessage(content=completion.text), **_answer_fields(completion))
    )


async def list_functions(request: Request) -> Response:
    """The catalog: every exposed function with its input variables."""
    service = get_service()
    return json_response(FunctionList.model_validate({"functions": [s.public() for s in service.catalog]}))


async def invoke_function(request: Request) -> Response:
    """Invoke any catalog function with JSON arguments validated against its inputs."""
    service = get_service()
    plugin, name = request.path_params.get("plugin", ""), request.path_params.get("function", "")
    spec = _spec(service, plugin, name)
    arguments = await _arguments(request, service, spec)
    max_tokens = arguments.pop("max_tokens") or spec.default_max_tokens
    completion = await _invoke(service, spec, arguments, max_tokens)
    return json_response(
        InvokeResponse(plugin=plugin, function=name, result=completion.text, **_answer_fields(completion))
    )


async def health(request: Request) -> Response:
    """Liveness: answers without touching any dependency."""
    return json_response(HealthResponse(status="ok"))


async def ready(request: Request) -> Response:
    """Readiness: the kernel is built and the model endpoint answers (no paid call)."""
    service = get_service()
    timeout = service.settings.ready_timeout_seconds
    checks: dict[str, DependencyStatus] = {}
    runtime: ModelRuntime | None = None
    started = time.perf_counter()
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
        started = time.perf_counter()
        code = await runtime.check_model(timeout)
        latency = round((time.perf_counter() - started) * 1000, 1)
        checks["model"] = (
            DependencyStatus(status="ok", latency_ms=latency)
            if code is None
            else DependencyStatus(status="error", code=code, latency_ms=latency)
        )
    is_ready = all(c.status == "ok" for c in checks.values())
    return json_response(
        ReadyResponse(status="ready" if is_ready else "not_ready", checks=checks),
        status_code=200 if is_ready else 503,
    )
