"""The OpenAI wire format: ``POST /api/v1/chat/completions`` and ``GET /api/v1/models``.

So that ``OpenAI(base_url="https://<app>/api/v1", api_key=<tenant key>)``, Semantic
Kernel's ``OpenAIChatCompletion``, LangChain and curl scripts written for OpenAI work
unchanged. This is another entry into the same use case, not a second one: a chat
completion here *is* the catalog's ``chat/chat`` function (its system prompt, scopes,
guard and redaction policy, limits and audit), called with the request's messages as
the conversation and the request's sampling parameters over the prompt file's. The
parameters we implement are listed in ``_SUPPORTED``; any other (``tools``,
``response_format``, ``logprobs``, ``n`` > 1 ...) is refused with a 400 naming it,
never silently dropped. Errors come in OpenAI's shape (the route table says so), so
the SDK raises its typed exceptions with our ``code``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from sk_core import telemetry
from sk_core.catalog import MAX_TOKENS_LIMIT
from sk_core.composition import Service, get_service
from sk_core.errors import NotFound, UnsupportedParameter, ValidationFailed
from sk_core.http import sse
from sk_core.http.handlers import answer_headers, function_spec, stream_failure, stream_headers
from sk_core.http.rendering import json_response, openai_error_body
from sk_core.http.request_body import read_json_body, validate_body
from sk_core.pricing import Usage, usd

if TYPE_CHECKING:
    from sk_core.pipeline import StreamedCall

# The catalog function a chat completion runs.
CHAT_FUNCTION = ("chat", "chat")
_SUPPORTED = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop",
        "seed", "presence_penalty", "frequency_penalty", "user", "stream", "stream_options", "n",
    }
)
# Sampling parameters passed to the model as given (the answer cap is admission's).
_SAMPLING = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "user")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """A content part; only text parts are supported (no images or audio)."""

    type: Literal["text"]
    text: str


class Message(_Strict):
    """One message. ``developer`` is OpenAI's newer name for ``system``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        """The content as one string (text parts joined, as OpenAI reads them)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Strict):
    """``stream_options``: whether the client wants the usage chunk."""

    include_usage: Annotated[bool, Field(strict=True)] = False


Tokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_LIMIT, strict=True)]


class ChatCompletionRequest(_Strict):
    """The request body of ``POST /api/v1/chat/completions`` (the subset we implement)."""

    model: str
    messages: Annotated[list[Message], Field(min_length=1, max_length=64)]
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    user: Annotated[str, Field(max_length=256)] | None = None
    stream: Annotated[bool, Field(strict=True)] = False  # true or false; "yes" is refused
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = None

    def options(self) -> dict[str, Any]:
        """The sampling parameters the caller set."""
        return {name: value for name in _SAMPLING if (value := getattr(self, name)) is not None}


def _refuse_unsupported(data: Any) -> Any:
    """``data`` without the unsupported parameters that are null (a null is the same as
    leaving it out: ``"tools": null``), refusing any other by name. Before schema
    validation, so the answer names the parameter rather than calling it an unknown field."""
    if not isinstance(data, dict):
        return data
    for name, value in data.items():
        if name not in _SUPPORTED and value is not None:
            raise UnsupportedParameter(name)
    if data.get("n") not in (None, 1):
        raise UnsupportedParameter("n", "Only n = 1 is supported.")
    return {name: value for name, value in data.items() if name in _SUPPORTED}


def _models(service: Service) -> dict[str, str | None]:
    """The ``model`` values a caller may send, each with the fallback chain it picks:
    the configured model id (the chat function's chain, else the default one) and,
    when deployments are configured, every chain by its name."""
    settings = service.settings
    models: dict[str, str | None] = {settings.resolved_model_id: None}
    if settings.model_deployments.strip():
        models.update({name: name for name in settings.routing.chains})
    return models


async def list_models(request: Request) -> Response:
    """``GET /api/v1/models``: the models this key may use (none if it may not chat)."""
    service = get_service()
    principal = await service.pipeline.authenticate(request.headers, None)
    request.state.tenant_id = principal.tenant.id
    function_id = "/".join(CHAT_FUNCTION)
    allowed = principal.key.allows(function_id) and principal.tenant.allows(function_id)
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": "sk-functions"}
        for model in (_models(service) if allowed else [])
    ]
    return json_response(ModelList.model_validate({"object": "list", "data": data}))


class AnswerMessage(BaseModel):
    """The assistant's message of a chat completion."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """The one choice of a chat completion (``n`` = 1)."""

    index: int = 0
    message: AnswerMessage
    finish_reason: str | None = None


class ChatCompletion(BaseModel):
    """``POST /api/v1/chat/completions`` without ``stream``: OpenAI's ``chat.completion``,
    plus what it cost (``cost_usd``, also in ``X-Request-Cost-USD``)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    cost_usd: float = Field(ge=0)


class ErrorDetail(BaseModel):
    """OpenAI's error object, with our ``code`` and the refused field as ``param``."""

    model_config = ConfigDict(extra="allow")  # a budget refusal adds its figures

    message: str
    type: str
    param: str | None = None
    code: str


class ErrorBody(BaseModel):
    """The error body of the OpenAI-compatible routes."""

    error: ErrorDetail


class ModelInfo(BaseModel):
    """One model of ``GET /api/v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """``GET /api/v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelInfo]


async def chat_completions(request: Request) -> Response:
    """``POST /api/v1/chat/completions``: the ``chat/chat`` function in OpenAI's format."""
    service = get_service()
    spec = function_spec(service, *CHAT_FUNCTION)
    pipeline = service.pipeline
    record = getattr(request.state, "audit", None)
    principal = await pipeline.authenticate(request.headers, spec.id, record)
    request.state.tenant_id = principal.tenant.id
    with telemetry.tracer().start_as_current_span("validate"):
        data = await read_json_body(request, max_bytes=service.settings.max_body_bytes)
        data = _refuse_unsupported(data)
        body = validate_body(ChatCompletionRequest, data)
        models = _models(service)
        if body.model not in models:
            raise NotFound(f"The model '{body.model}' does not exist or this key may not use it.")
        chain = models[body.model]
        # The messages as the chat function's conversation, checked by its own rules
        # (text hygiene, sizes); errors name the request's fields (messages[2].content).
        history = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        arguments = validate_body(spec.arguments_model, {"messages": history}).model_dump()
    max_tokens = body.max_completion_tokens or body.max_tokens
    arguments.pop("max_tokens", None)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        call = await pipeline.stream(
            principal, spec, arguments,
            max_tokens=max_tokens, options=body.options(), record=record, chain=chain,
        )
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _chunks(request, call, completion_id, body.model, include_usage)
        return sse.event_stream(chunks, stream_headers(call))
    if body.stream_options is not None:
        raise ValidationFailed(
            "stream_options is only allowed with stream: true.",
            errors=[{"field": "stream_options", "message": "only allowed with stream: true"}],
        )
    outcome = await pipeline.call(
        principal, spec, arguments,
        max_tokens=max_tokens, options=body.options(), record=record, chain=chain,
    )
    completion = outcome.completion
    answer = ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=completion.model,
        choices=[
            Choice(message=AnswerMessage(content=outcome.text), finish_reason=completion.finish_reason)
        ],
        usage=completion.usage,
        cost_usd=usd(outcome.cost_nano),
    )
    return json_response(answer, headers=answer_headers(outcome))


async def _chunks(
    request: Request, call: StreamedCall, completion_id: str, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """OpenAI's ``chat.completion.chunk`` events, ``data: [DONE]`` last."""
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = None  # as OpenAI: null on every chunk but the usage chunk
        body.update(extra)
        return sse.event(body)

    def delta(content: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return chunk([{"index": 0, "delta": content, "finish_reason": finish_reason, "logprobs": None}])

    try:
        yield delta({"role": "assistant", "content": ""})
        async for text in call:
            yield delta({"content": text})
    except Exception as exc:
        # OpenAI's SDK raises APIError on a chunk that carries "error".
        yield sse.event(openai_error_body(stream_failure(request, exc)))
        return
    outcome = call.outcome
    assert outcome is not None  # a stream that ended normally has settled
    yield delta({}, outcome.completion.finish_reason)
    if include_usage:
        yield chunk([], usage=outcome.completion.usage.model_dump(), cost_usd=usd(outcome.cost_nano))
    yield sse.event("[DONE]")
