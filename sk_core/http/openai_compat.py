"""The OpenAI wire format: ``POST /api/v1/chat/completions`` and ``GET /api/v1/models``.

So that ``OpenAI(base_url="https://<app>/api/v1", api_key=<tenant key>)``, Semantic
Kernel's ``OpenAIChatCompletion``, LangChain and curl scripts written for OpenAI work
unchanged. This is another entry into the same use case, not a second one: a chat
completion here *is* the catalog's ``chat/chat`` function (its system prompt, scopes,
guard and redaction policy, limits and audit), called with the request's messages as
the conversation and the request's sampling parameters over the prompt file's. The
parameters we implement are listed in ``SUPPORTED`` (``sk_core.http.openai_models``,
with the wire models); any other (``logprobs``,
``n`` > 1 ...) is refused with a 400 naming it, never silently dropped; one sent at the
value that asks for nothing (``NO_OP_VALUES``: ``logprobs: false`` ...) is as if left out.

A request that brings its own tools (``tools``, ``tool_choice``,
``parallel_tool_calls``), carries tool calls or ``role: "tool"`` results or message
``name``s, or asks for ``response_format`` JSON, takes ``Pipeline.complete_messages``:
one model call (the caller runs its tools, as with OpenAI), the same limits and
accounting; a ``response_format`` answer is validated before it reaches the client.
Errors come in OpenAI's shape (the route table says so), so the SDK raises its typed
exceptions with our ``code``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from starlette.requests import Request
from starlette.responses import Response

from sk_core import telemetry
from sk_core.errors import ApiError, NotFound, UnsupportedParameter, ValidationFailed
from sk_core.http import sse
from sk_core.http.handlers import answer_headers, function_spec
from sk_core.http.openai_models import (
    NO_OP_VALUES,
    SUPPORTED,
    AnswerMessage,
    CalledFunction,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelList,
    NamedToolChoice,
    ResponseFormat,
    ToolCallOut,
)
from sk_core.http.rendering import json_response, openai_error_body
from sk_core.http.request_body import read_json_body, validate_body
from sk_core.http.streams import stream_failure, stream_headers
from sk_core.pricing import usd

if TYPE_CHECKING:
    from sk_core.accounts import Principal
    from sk_core.catalog import FunctionSpec
    from sk_core.composition import Service
    from sk_core.http.context import RequestContext
    from sk_core.pipeline import Outcome, StreamedCall
    from sk_core.usage import AuditEntry

# The catalog function a chat completion runs.
CHAT_FUNCTION = ("chat", "chat")


def _asks_nothing(name: str, value: object) -> bool:
    """``value`` is the value of ``name`` that asks for nothing (``NO_OP_VALUES``); the
    type too, or ``logprobs: 0`` would pass as ``false``."""
    default = NO_OP_VALUES.get(name)
    return name in NO_OP_VALUES and type(value) is type(default) and value == default


def _refuse_unsupported(data: Any) -> Any:
    """``data`` without the unsupported parameters that are null (a null is the same as
    leaving it out: ``"tools": null``), refusing any other by name. Before schema
    validation, so the answer names the parameter rather than calling it an unknown field."""
    if not isinstance(data, dict):
        return data
    for name, value in data.items():
        if name not in SUPPORTED and value is not None and not _asks_nothing(name, value):
            raise UnsupportedParameter(name)
    if data.get("n") not in (None, 1):
        raise UnsupportedParameter("n", "Only n = 1 is supported.")
    kept = {name: value for name, value in data.items() if name in SUPPORTED}
    options = data.get("stream_options")
    if isinstance(options, dict) and "include_obfuscation" in options:
        # Streams are not padded: false (or null) asks for what we do; true is refused.
        padding = options["include_obfuscation"]
        if padding is not None and padding is not False:
            raise UnsupportedParameter("stream_options.include_obfuscation", "Streams are not padded.")
        kept["stream_options"] = {k: v for k, v in options.items() if k != "include_obfuscation"}
    return kept


def _refuse_non_text_parts(data: Any) -> None:
    """A content part other than text (image, audio, file) named with its type, before
    schema validation would list every alternative of the content union instead."""
    messages = data.get("messages") if isinstance(data, dict) else None
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        parts = message.get("content") if isinstance(message, dict) else None
        for number, part in enumerate(parts if isinstance(parts, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                why = f"only text parts are supported, not {kind!r}"
                raise ValidationFailed(
                    f"Invalid messages[{index}].content[{number}]: {why}.",
                    errors=[{"field": f"messages[{index}].content", "message": why}],
                )


def _models(service: Service) -> dict[str, str | None]:
    """The ``model`` values a caller may send, each with the fallback chain it picks:
    the configured model id (the chat function's chain, else the default one) and,
    when deployments are configured, every chain by its name."""
    settings = service.settings
    models: dict[str, str | None] = {settings.resolved_model_id: None}
    if settings.model_deployments:
        models.update({name: name for name in service.routing.chains})
    return models


async def list_models(request: Request, service: Service, context: RequestContext) -> Response:
    """``GET /api/v1/models``: the models this key may use (none if it may not chat)."""
    principal = await context.authenticate(service.pipeline, request.headers, None)
    function_id = "/".join(CHAT_FUNCTION)
    allowed = principal.key.allows(function_id) and principal.tenant.allows(function_id)
    data = [
        {"id": model, "object": "model", "created": 0, "owned_by": "sk-functions"}
        for model in (_models(service) if allowed else [])
    ]
    return json_response(ModelList.model_validate({"object": "list", "data": data}))


async def chat_completions(request: Request, service: Service, context: RequestContext) -> Response:
    """``POST /api/v1/chat/completions``: the ``chat/chat`` function in OpenAI's format."""
    spec = function_spec(service, *CHAT_FUNCTION)
    pipeline, record = service.pipeline, context.audit
    principal = await context.authenticate(pipeline, request.headers, spec.id)
    with telemetry.tracer().start_as_current_span("validate"):
        data = await read_json_body(request, max_bytes=service.settings.max_body_bytes)
        data = _refuse_unsupported(data)
        _refuse_non_text_parts(data)
        body = validate_body(ChatCompletionRequest, data)
        models = _models(service)
        if body.model not in models:
            raise NotFound(f"The model '{body.model}' does not exist or this key may not use it.")
        chain = models[body.model]
        if body.stream_options is not None and not body.stream:
            raise ValidationFailed(
                "stream_options is only allowed with stream: true.",
                errors=[{"field": "stream_options", "message": "only allowed with stream: true"}],
            )
        if body.structured:
            messages = _wire_messages(body)
        else:
            # The messages as the chat function's conversation, checked by its own rules
            # (text hygiene, sizes); errors name the request's fields (messages[2].content).
            history = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages
            ]
            arguments = validate_body(spec.arguments_model, {"messages": history}).model_dump()
    if body.structured:
        return await _structured(service, spec, principal, body, messages, chain, record)
    max_tokens = body.answer_cap()
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        call = await pipeline.stream(
            principal, spec, arguments,
            max_tokens=max_tokens, options=body.options(), record=record, chain=chain,
        )
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = _chunks(context, call, completion_id, body.model, include_usage)
        return sse.event_stream(chunks, stream_headers(call))
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


class ModelOutputInvalid(ApiError):
    """The model's answer does not match the requested ``response_format`` (it was made,
    and is charged at its usage, as every answer; the text is not passed on)."""

    status, code, title = 502, "model_output_invalid", "The model's answer is not the requested format"


def _wire_messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The messages as sent to the model, their text cleaned as the chat function's are."""
    messages = []
    for index, message in enumerate(body.messages):
        try:
            messages.append(message.wire())
        except ValueError as exc:
            field = f"messages[{index}].content"
            raise ValidationFailed(
                f"Invalid {field}: {exc}", errors=[{"field": field, "message": str(exc)}]
            ) from None
    return messages


async def _structured(
    service: Service,
    spec: FunctionSpec,
    principal: Principal,
    body: ChatCompletionRequest,
    messages: list[dict[str, Any]],
    chain: str | None,
    record: AuditEntry | None,
) -> Response:
    """A request with tools, tool messages, names or a JSON answer: one model call over
    the messages as given (``Pipeline.complete_messages``); the model's tool calls are
    returned for the caller to run."""
    choice = body.tool_choice
    outcome = await service.pipeline.complete_messages(
        principal, spec, messages,
        tools=[t.model_dump(exclude_none=True) for t in body.tools or ()],
        tool_choice=choice.model_dump() if isinstance(choice, NamedToolChoice) else (choice or "auto"),
        extra=body.extra(),
        max_tokens=body.answer_cap(),
        options=body.options(), record=record, chain=chain,
    )
    completion = outcome.completion
    calls = [
        ToolCallOut(id=c.id, function=CalledFunction(name=c.name, arguments=c.arguments))
        for c in getattr(completion, "tool_calls", ())
    ]
    if body.response_format is not None and not calls:
        _check_format(body.response_format, outcome.text, outcome.cost_nano)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        pieces = _whole_answer_chunks(outcome, calls, completion_id, body.model, include_usage)
        return sse.event_stream(pieces, answer_headers(outcome))
    answer = ChatCompletion(
        id=completion_id,
        created=int(time.time()),
        model=completion.model,
        choices=[
            Choice(
                message=AnswerMessage(
                    content=outcome.text or (None if calls else ""), tool_calls=calls or None
                ),
                finish_reason=completion.finish_reason,
            )
        ],
        usage=completion.usage,
        cost_usd=usd(outcome.cost_nano),
    )
    return json_response(answer, headers=answer_headers(outcome))


def _check_format(response_format: ResponseFormat, text: str, cost_nano: int) -> None:
    """Raise ``ModelOutputInvalid`` unless ``text`` is what ``response_format`` asked for."""
    if response_format.type == "text":
        return
    charged = {"cost_usd": usd(cost_nano)}
    try:
        value = json.loads(text)
    except ValueError:
        raise ModelOutputInvalid("The model's answer is not JSON.", extensions=charged) from None
    if response_format.json_schema is None:
        if not isinstance(value, dict):
            raise ModelOutputInvalid("The model's answer is not a JSON object.", extensions=charged)
        return
    error = next(iter(Draft202012Validator(response_format.json_schema.schema_).iter_errors(value)), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ModelOutputInvalid(
            f"The model's answer does not match the schema at {where}.", extensions=charged
        )


def _chunk_writers(
    completion_id: str, model: str, include_usage: bool
) -> tuple[Callable[..., bytes], Callable[..., bytes]]:
    """``chunk(choices, **extra)`` and ``delta(content, finish_reason)``: OpenAI's
    ``chat.completion.chunk`` events of one answer."""
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

    return chunk, delta


async def _whole_answer_chunks(
    outcome: Outcome, calls: list[ToolCallOut], completion_id: str, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """A complete answer (tools, structured output) as OpenAI's stream: the text or the
    tool calls in one delta each (their ``index`` numbering the calls), then the finish
    reason, the usage chunk if asked for, ``[DONE]``. The model's answer was not
    streamed to us: the stream shape is for clients that always stream."""
    chunk, delta = _chunk_writers(completion_id, model, include_usage)
    yield delta({"role": "assistant", "content": ""})
    if outcome.text:
        yield delta({"content": outcome.text})
    if calls:
        yield delta({"tool_calls": [{"index": i, **call.model_dump()} for i, call in enumerate(calls)]})
    yield delta({}, outcome.completion.finish_reason)
    if include_usage:
        yield chunk([], usage=outcome.completion.usage.model_dump(), cost_usd=usd(outcome.cost_nano))
    yield sse.event("[DONE]")


async def _chunks(
    context: RequestContext, call: StreamedCall, completion_id: str, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    """OpenAI's ``chat.completion.chunk`` events, ``data: [DONE]`` last."""
    chunk, delta = _chunk_writers(completion_id, model, include_usage)

    try:
        yield delta({"role": "assistant", "content": ""})
        async for text in call:
            yield delta({"content": text})
    except Exception as exc:
        # OpenAI's SDK raises APIError on a chunk that carries "error".
        yield sse.event(openai_error_body(stream_failure(context, exc)))
        return
    outcome = call.outcome
    assert outcome is not None  # a stream that ended normally has settled
    yield delta({}, outcome.completion.finish_reason)
    if include_usage:
        yield chunk([], usage=outcome.completion.usage.model_dump(), cost_usd=usd(outcome.cost_nano))
    yield sse.event("[DONE]")
