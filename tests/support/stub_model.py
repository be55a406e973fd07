"""OpenAI-compatible stub chat-completions server that tests can control.

The service under test talks to models through the ``openai`` SDK (via
Semantic Kernel), so the most faithful test double is a real HTTP server that
speaks the OpenAI wire format. This module provides:

* :func:`create_app` - a Starlette app implementing ``/v1/chat/completions``
  (plus the bare ``/chat/completions`` and the Azure
  ``/openai/deployments/{deployment}/chat/completions`` shapes), streaming via
  SSE, ``/v1/models``, ``/health`` and a ``/_control/*`` API for scripting
  responses and inspecting what was received.
* :class:`StubModel` - a small synchronous httpx client for the control API.
* :func:`start_stub_model` - spawns the server as a separate OS process (so it
  is isolated from the event loop of the code under test) and returns a
  :class:`StubModelProcess` handle.

Run it standalone from the repository root with
``python -m tests.support.stub_model --host 127.0.0.1 --port N`` (as a module: it imports
``tests.support.protocol_model``). Importing the module has no side effects.

Typical pytest fixture::

    @pytest.fixture
    def stub_model() -> Iterator[StubModel]:
        proc = start_stub_model()
        yield proc.client
        proc.stop()
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypedDict, TypeGuard, cast

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.support.protocol_model import protocol_behaviour

__all__ = [
    "DEFAULT_ERROR_BODY",
    "DEFAULT_MODEL_ID",
    "SECRET_MARKER",
    "Behaviour",
    "RecordedRequest",
    "StubModel",
    "StubModelProcess",
    "StubStats",
    "create_app",
    "main",
    "start_stub_model",
]

#: Marker embedded in the default upstream error body. Tests assert that the
#: service never forwards provider error text to its own clients.
SECRET_MARKER = "SECRET-PROVIDER-TEXT"

#: Body returned for error statuses when the behaviour does not supply one.
DEFAULT_ERROR_BODY: dict[str, Any] = {
    "error": {
        "message": f"stub upstream failure {SECRET_MARKER}",
        "type": "server_error",
    }
}

#: Model id reported by ``/v1/models`` and used when a request names no model.
DEFAULT_MODEL_ID = "stub-model"

# Only these request headers are recorded: enough to assert which credential
# the service sent (OpenAI uses ``Authorization``, Azure uses ``api-key``)
# without keeping every SDK telemetry header in the log.
_RECORDED_HEADERS = ("authorization", "api-key")

# Header on /health carrying the nonce given by start_stub_model.
_INSTANCE_HEADER = "x-stub-instance"

_BEHAVIOUR_KEYS = frozenset(
    {
        "status",
        "content",
        "prompt_tokens",
        "completion_tokens",
        "delay",
        "chunk_delay",
        "headers",
        "body",
        "model",
        "finish_reason",
        "raw",
        "drop",
        "tool_calls",
        "protocol",
    }
)


# --------------------------------------------------------------------------
# Shared types
# --------------------------------------------------------------------------


class RecordedRequest(TypedDict):
    """One chat-completion request as seen by the stub."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    received_at: float


class StubStats(TypedDict):
    """Counters exposed by ``GET /_control/stats``."""

    count: int
    max_concurrent: int
    streams_open: int  # streamed answers still being sent
    streams_aborted: int  # streamed answers the client closed before the end


class _BehaviourError(ValueError):
    """Raised when a scripted behaviour is malformed (reported as HTTP 400)."""


def _is_int(value: object) -> TypeGuard[int]:
    # bool is a subclass of int; ``True`` as a token count is always a typo.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Behaviour:
    """How the stub answers one chat-completion request.

    Every field is optional; ``None`` means "compute the deterministic default"
    (see :func:`_build_completion`).
    """

    status: int = 200
    content: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    delay: float = 0.0
    # Streams: pause this long before each content piece (a model generating slowly).
    chunk_delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    model: str | None = None
    finish_reason: str | None = None
    #: Sent verbatim as the body (e.g. malformed JSON), with ``status``.
    raw: str | None = None
    #: Start a 200 answer, then break the connection mid-body (a broken connection
    #: after the request was received: the provider may have done the work).
    drop: bool = False
    #: Answer with these function calls (``{"name", "arguments", "id"?}``; arguments a
    #: JSON object or its text) and ``finish_reason: tool_calls``; ``content`` then
    #: defaults to none. Not for streamed answers.
    tool_calls: tuple[dict[str, Any], ...] = ()
    #: Answer each request from its own tools, ``tool_choice`` and ``response_format``
    #: by fixed rules (``tests.support.protocol_model``), unless content or tool calls
    #: are scripted: for suites whose requests the test does not write.
    protocol: bool = False

    @classmethod
    def from_json(cls, raw: object) -> Behaviour:
        """Validate a JSON object from the control API into a behaviour.

        Unknown keys are rejected so a typo in a test (``"conent"``) fails
        loudly instead of silently falling back to the default answer.
        """
        if not isinstance(raw, dict):
            raise _BehaviourError("behaviour must be a JSON object")
        unknown = set(raw) - _BEHAVIOUR_KEYS
        if unknown:
            raise _BehaviourError(f"unknown behaviour keys: {sorted(unknown)}")

        status = raw.get("status", 200)
        if not _is_int(status) or not 100 <= status <= 599:
            raise _BehaviourError("status must be an int in 100..599")
        for key in ("content", "model", "finish_reason", "raw"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise _BehaviourError(f"{key} must be a string")
        for key in ("prompt_tokens", "completion_tokens"):
            value = raw.get(key)
            if value is not None and (not _is_int(value) or value < 0):
                raise _BehaviourError(f"{key} must be a non-negative int")
        delay = raw.get("delay", 0.0)
        chunk_delay = raw.get("chunk_delay", 0.0)
        for key, value in (("delay", delay), ("chunk_delay", chunk_delay)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise _BehaviourError(f"{key} must be a non-negative number")
        tool_calls = raw.get("tool_calls") or []
        if not isinstance(tool_calls, list) or not all(
            isinstance(c, dict)
            and isinstance(c.get("name"), str)
            and isinstance(c.get("arguments", {}), dict | str)
            and set(c) <= {"name", "arguments", "id"}
            for c in tool_calls
        ):
            raise _BehaviourError('tool_calls must be a list of {"name", "arguments", "id"?}')
        headers = raw.get("headers") or {}
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise _BehaviourError("headers must map strings to strings")

        return cls(
            status=status,
            content=raw.get("content"),
            prompt_tokens=raw.get("prompt_tokens"),
            completion_tokens=raw.get("completion_tokens"),
            delay=float(delay),
            chunk_delay=float(chunk_delay),
            headers=dict(headers),
            body=raw.get("body"),
            model=raw.get("model"),
            finish_reason=raw.get("finish_reason"),
            raw=raw.get("raw"),
            drop=bool(raw.get("drop", False)),
            tool_calls=tuple(dict(c) for c in tool_calls),
            protocol=raw.get("protocol") is True,
        )


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------


def _text_of(content: object) -> str:
    """Flatten an OpenAI message ``content`` (string or parts list) to text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Multimodal messages carry a list of parts; only text parts count.
        return "".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _token_limit(payload: Mapping[str, Any]) -> int | None:
    # ``max_completion_tokens`` superseded ``max_tokens``; honour either.
    for key in ("max_completion_tokens", "max_tokens"):
        value = payload.get(key)
        if _is_int(value) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class _Completion:
    """Resolved answer for one request, shared by JSON and SSE rendering."""

    id: str
    created: int
    model: str
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tool_calls: tuple[dict[str, Any], ...] = ()  # OpenAI's wire shape, ids assigned

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def _arguments_text(arguments: object) -> str:
    # A test may script arguments as an object or as raw (possibly invalid) JSON text.
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _build_completion(payload: Mapping[str, Any], behaviour: Behaviour, fallback_model: str) -> _Completion:
    """Combine the request and a behaviour into a deterministic answer."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        messages = []
    texts = [_text_of(m.get("content")) for m in messages if isinstance(m, dict)]
    last_user = next(
        (
            _text_of(m.get("content"))
            for m in reversed(messages)
            if isinstance(m, dict) and m.get("role") == "user"
        ),
        "",
    )

    calls: tuple[dict[str, Any], ...] = tuple(
        {
            "id": call.get("id") or f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {"name": call["name"], "arguments": _arguments_text(call.get("arguments", {}))},
        }
        for call in behaviour.tool_calls
    )
    default_content = "" if calls else "Stub answer: " + last_user[:40]
    content = behaviour.content if behaviour.content is not None else default_content
    prompt_tokens = (
        behaviour.prompt_tokens
        if behaviour.prompt_tokens is not None
        else max(1, sum(len(t.encode("utf-8")) for t in texts) // 4)
    )
    finish_reason = "stop"
    if behaviour.completion_tokens is not None:
        # An explicit count is reported verbatim: the test knows what it wants.
        completion_tokens = behaviour.completion_tokens
    else:
        # Crude "one word = one token" so tests can predict usage exactly (a tool
        # call: one token per 4 bytes of its name and arguments).
        words = content.split()
        call_bytes = sum(len(str(c["function"]["name"]) + str(c["function"]["arguments"])) for c in calls)
        completion_tokens = max(1, len(words) + call_bytes // 4)
        limit = _token_limit(payload)
        if limit is not None and completion_tokens > limit:
            content = " ".join(words[:limit])
            completion_tokens = limit
            finish_reason = "length"
    if calls:
        finish_reason = "tool_calls"
    if behaviour.finish_reason is not None:
        finish_reason = behaviour.finish_reason

    requested_model = payload.get("model")
    model = behaviour.model or (
        requested_model if isinstance(requested_model, str) and requested_model else fallback_model
    )
    return _Completion(
        id=f"chatcmpl-stub-{uuid.uuid4().hex[:24]}",
        created=int(time.time()),
        model=model,
        content=content,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tool_calls=calls,
    )


def _completion_json(c: _Completion) -> dict[str, Any]:
    return {
        "id": c.id,
        "object": "chat.completion",
        "created": c.created,
        "model": c.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": c.content if c.content or not c.tool_calls else None,
                    **({"tool_calls": list(c.tool_calls)} if c.tool_calls else {}),
                },
                "finish_reason": c.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": c.usage(),
    }


def _sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


async def _stream_chunks(
    c: _Completion, include_usage: bool, chunk_delay: float = 0.0, on_close: Any = None
) -> AsyncIterator[bytes]:
    """Yield the SSE frames OpenAI sends for a streamed completion.

    ``on_close(finished)`` is called when the stream ends, ``finished`` False when the
    client closed it early (what ``streams_aborted`` in the stats counts).
    """
    finished = False
    try:
        async for frame in _frames(c, include_usage, chunk_delay):
            yield frame
        finished = True
    finally:
        if on_close is not None:
            on_close(finished)


async def _frames(c: _Completion, include_usage: bool, chunk_delay: float) -> AsyncIterator[bytes]:

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": c.id,
            "object": "chat.completion.chunk",
            "created": c.created,
            "model": c.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if include_usage:
            # OpenAI sends ``usage: null`` on every chunk but the last.
            obj["usage"] = None
        return obj

    yield _sse(chunk({"role": "assistant", "content": ""}, None))
    # Word-sized pieces (whitespace kept) so clients really have to reassemble.
    for piece in re.findall(r"\S+\s*|\s+", c.content):
        if chunk_delay:
            await asyncio.sleep(chunk_delay)
        yield _sse(chunk({"content": piece}, None))
    yield _sse(chunk({}, c.finish_reason))
    if include_usage:
        yield _sse(
            {
                "id": c.id,
                "object": "chat.completion.chunk",
                "created": c.created,
                "model": c.model,
                "choices": [],
                "usage": c.usage(),
            }
        )
    yield b"data: [DONE]\n\n"


async def _broken_body() -> AsyncIterator[bytes]:
    yield b'{"id": "chatcmpl-broken", "object": "chat.completion", '
    # uvicorn aborts the connection when a streamed body fails after it started: the
    # client sees the headers and part of the body, then the connection close mid-body.
    raise ConnectionAbortedError("stub: dropping the connection mid-answer")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error"}},
        status_code=status,
    )


# Sentinel for "body was not valid JSON" (``None`` is valid JSON: ``null``).
_INVALID = object()


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        return _INVALID


# How often a delayed request checks whether its client went away.
_DISCONNECT_POLL_SECONDS = 0.05


async def _sleep_unless_disconnected(request: Request, delay: float) -> bool:
    """Sleep ``delay`` seconds; return True early if the client disconnects.

    Uses ``asyncio.sleep`` (never ``time.sleep``) so concurrent requests
    overlap and ``max_concurrent`` reflects the client's real parallelism.
    Starlette does not cancel handlers when a client hangs up, so without the
    polling a timed-out request would stay "in flight" for the whole delay.
    """
    deadline = asyncio.get_running_loop().time() + delay
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(remaining, _DISCONNECT_POLL_SECONDS))
        if await request.is_disconnected():
            return True


class _StubServer:
    """Mutable state plus the endpoints that use it.

    All mutation happens on the single uvicorn event loop with no ``await``
    between read and write, so plain ints are race-free without locks.
    """

    def __init__(self, default_model: str, instance_id: str) -> None:
        self.default_model = default_model
        self.instance_id = instance_id
        self.queue: deque[Behaviour] = deque()
        self.default: Behaviour = Behaviour()
        self.log: list[RecordedRequest] = []
        self.count = 0
        self.in_flight = 0
        self.max_concurrent = 0
        self.streams_open = 0
        self.streams_aborted = 0

    def _stream_closed(self, finished: bool) -> None:
        self.streams_open -= 1
        if not finished:
            self.streams_aborted += 1

    # -- model endpoints ---------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        self.count += 1
        self.in_flight += 1
        self.max_concurrent = max(self.max_concurrent, self.in_flight)
        try:
            return await self._answer(request)
        finally:
            # For streams this runs before the body is sent; the stream itself
            # is emitted without pauses, so the delay dominates the window.
            self.in_flight -= 1

    async def _answer(self, request: Request) -> Response:
        payload = await _json_body(request)
        self.log.append(
            RecordedRequest(
                path=request.url.path,
                query=dict(request.query_params),
                headers={
                    name: request.headers[name] for name in _RECORDED_HEADERS if name in request.headers
                },
                json=None if payload is _INVALID else payload,
                received_at=time.time(),
            )
        )
        if not isinstance(payload, dict):
            return _error(400, "request body must be a JSON object")

        # Take the behaviour on arrival (before any delay) so the FIFO follows
        # request order, not completion order.
        behaviour = self.queue.popleft() if self.queue else self.default
        if behaviour.delay > 0 and await _sleep_unless_disconnected(request, behaviour.delay):
            # The client gave up (e.g. its timeout fired); nobody will read a
            # response, and leaving the handler now keeps in-flight honest.
            return Response(status_code=499)

        if behaviour.drop:
            return StreamingResponse(_broken_body(), status_code=200, media_type="application/json")
        if behaviour.raw is not None:
            return Response(behaviour.raw, status_code=behaviour.status, media_type="application/json")
        if behaviour.body is not None or behaviour.status >= 400:
            body = behaviour.body if behaviour.body is not None else DEFAULT_ERROR_BODY
            return JSONResponse(body, status_code=behaviour.status, headers=behaviour.headers)

        if behaviour.protocol and behaviour.content is None and not behaviour.tool_calls:
            behaviour = replace(behaviour, **protocol_behaviour(payload))
        fallback = request.path_params.get("deployment", self.default_model)
        completion = _build_completion(payload, behaviour, fallback)
        if payload.get("stream") is True:
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            self.streams_open += 1
            return StreamingResponse(
                _stream_chunks(completion, include_usage, behaviour.chunk_delay, self._stream_closed),
                status_code=behaviour.status,
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", **behaviour.headers},
            )
        return JSONResponse(
            _completion_json(completion),
            status_code=behaviour.status,
            headers=behaviour.headers,
        )

    async def models(self, request: Request) -> Response:
        # A default error status fails this route too, so readiness probes can be
        # tested against a provider that is down.
        if self.default.status >= 400:
            return JSONResponse(self.default.body or DEFAULT_ERROR_BODY, status_code=self.default.status)
        model = self.default.model or self.default_model
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": model, "object": "model", "owned_by": "stub"}],
            }
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"}, headers={_INSTANCE_HEADER: self.instance_id})

    # -- control endpoints -------------------------------------------------

    async def control_script(self, request: Request) -> Response:
        payload = await _json_body(request)
        items = payload.get("responses") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            return _error(400, 'expected {"responses": [...]}')
        try:
            behaviours = [Behaviour.from_json(item) for item in items]
        except _BehaviourError as exc:
            return _error(400, str(exc))
        # Validate everything before enqueuing so a bad item adds nothing.
        self.queue.extend(behaviours)
        return JSONResponse({"queued": len(self.queue)})

    async def control_default(self, request: Request) -> Response:
        payload = await _json_body(request)
        try:
            self.default = Behaviour.from_json(payload)
        except _BehaviourError as exc:
            return _error(400, str(exc))
        return JSONResponse({"status": "ok"})

    async def control_reset(self, request: Request) -> Response:
        self.queue.clear()
        self.default = Behaviour()
        self.log.clear()
        self.count = 0
        self.streams_aborted = 0
        # Requests may still be in flight; keep counting them honestly.
        self.max_concurrent = self.in_flight
        return JSONResponse({"status": "ok"})

    async def control_requests(self, request: Request) -> Response:
        return JSONResponse(self.log)

    async def control_stats(self, request: Request) -> Response:
        stats: StubStats = {
            "count": self.count,
            "max_concurrent": self.max_concurrent,
            "streams_open": self.streams_open,
            "streams_aborted": self.streams_aborted,
        }
        return JSONResponse(stats)


def create_app(default_model: str = DEFAULT_MODEL_ID, instance_id: str = "") -> Starlette:
    """Build a fresh stub app with its own (empty) state.

    ``instance_id`` is echoed in the ``/health`` response header
    ``x-stub-instance`` so a launcher can tell its own child from whatever
    else might be listening on the port.
    """
    server = _StubServer(default_model, instance_id)
    chat = server.chat_completions
    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
        Route(
            "/openai/deployments/{deployment}/chat/completions",
            chat,
            methods=["POST"],
        ),
        Route("/v1/models", server.models, methods=["GET"]),
        Route("/models", server.models, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/_control/script", server.control_script, methods=["POST"]),
        Route("/_control/default", server.control_default, methods=["POST"]),
        Route("/_control/reset", server.control_reset, methods=["POST"]),
        Route("/_control/requests", server.control_requests, methods=["GET"]),
        Route("/_control/stats", server.control_stats, methods=["GET"]),
    ]
    return Starlette(routes=routes)


# --------------------------------------------------------------------------
# Client helpers
# --------------------------------------------------------------------------


class StubModel:
    """Synchronous client for a running stub's control API.

    ``base_url`` is what the ``openai`` SDK needs (``.../v1``); ``url`` is the
    server root, which is what ``AsyncAzureOpenAI(azure_endpoint=...)`` needs.
    """

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.base_url = f"{self.url}/v1"
        self._timeout = timeout

    def _call(self, method: str, path: str, body: object = None) -> Any:
        # trust_env=False: a developer's HTTP(S)_PROXY must not intercept
        # loopback traffic to the stub.
        response = httpx.request(
            method,
            f"{self.url}{path}",
            json=body,
            timeout=self._timeout,
            trust_env=False,
        )
        response.raise_for_status()
        return response.json()

    def script(self, *responses: Mapping[str, Any]) -> None:
        """Append behaviours to the FIFO queue, one per upcoming request.

        Each behaviour may set ``status``, ``content``, ``prompt_tokens``,
        ``completion_tokens``, ``delay``, ``headers``, ``body``, ``model``,
        ``finish_reason``, ``raw`` (a verbatim body), ``drop`` (break mid-body) and
        ``tool_calls`` (``[{"name": "calc-evaluate", "arguments": {...}}]``).
        Note the openai SDK retries 429/5xx by default, and
        each retry consumes the next queued behaviour.
        """
        self._call("POST", "/_control/script", {"responses": [dict(r) for r in responses]})

    def set_default(self, **behaviour: Any) -> None:
        """Replace the behaviour used when the queue is empty."""
        self._call("POST", "/_control/default", behaviour)

    def reset(self) -> None:
        """Clear the queue, the default behaviour, the request log and stats."""
        self._call("POST", "/_control/reset")

    def requests(self) -> list[RecordedRequest]:
        """Return every chat-completion request received since the last reset."""
        return cast(list[RecordedRequest], self._call("GET", "/_control/requests"))

    def stats(self) -> StubStats:
        """Return the request count and peak concurrency since the last reset."""
        return cast(StubStats, self._call("GET", "/_control/stats"))


def _free_port(host: str) -> int:
    # Bind-to-0 then release: racy in theory, so start_stub_model retries.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class StubModelProcess:
    """Handle on a stub server running in a child process."""

    def __init__(self, process: subprocess.Popen[bytes], host: str, port: int, stderr: IO[bytes]) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.client = StubModel(f"http://{host}:{port}")
        self._stderr = stderr

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return self.client.base_url

    def stderr_text(self) -> str:
        """Return what the server wrote to stderr so far (for diagnostics)."""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server, escalating to kill; safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _spawn(host: str, port: int, startup_timeout: float) -> StubModelProcess:
    # Stderr goes to a temp file rather than a pipe: nobody drains a pipe, and
    # a full pipe would block the server; the file is read only on failure.
    # No ``with``: the file lives as long as the handle, which closes it.
    stderr = tempfile.TemporaryFile()  # noqa: SIM115
    instance_id = uuid.uuid4().hex
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.stub_model",
            "--host",
            host,
            "--port",
            str(port),
            "--instance-id",
            instance_id,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        # As a module from the repository root: it imports tests.support.protocol_model.
        cwd=Path(__file__).resolve().parents[2],
    )
    handle = StubModelProcess(process, host, port, stderr)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            response = httpx.get(f"{handle.client.url}/health", timeout=1.0, trust_env=False)
            # Matching the nonce guards against a port race in which another
            # server (e.g. a parallel test worker's stub) answered instead.
            if response.status_code == 200 and response.headers.get(_INSTANCE_HEADER) == instance_id:
                return handle
        except httpx.TransportError:
            pass  # Not listening yet.
        time.sleep(0.05)
    detail = handle.stderr_text().strip()
    handle.stop()
    raise RuntimeError(
        f"stub model did not become healthy on {host}:{port}" + (f": {detail[-2000:]}" if detail else "")
    )


def start_stub_model(
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    startup_timeout: float = 10.0,
) -> StubModelProcess:
    """Start the stub in a subprocess and wait until ``/health`` answers.

    With ``port=None`` a free loopback port is chosen; because another process
    could grab it between probe and bind, a failed start is retried on a new
    port. An explicit port is tried once.
    """
    attempts = 3 if port is None else 1
    last_error: RuntimeError | None = None
    for _ in range(attempts):
        chosen = port if port is not None else _free_port(host)
        try:
            return _spawn(host, chosen, startup_timeout)
        except RuntimeError as exc:
            last_error = exc
    assert last_error is not None
    raise last_error


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: serve the stub until terminated."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=DEFAULT_MODEL_ID, help="model id for /v1/models")
    parser.add_argument("--instance-id", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.model, args.instance_id),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        # Don't let a scripted long delay hold up SIGTERM-driven shutdown.
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
