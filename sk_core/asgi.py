"""Container host: the route table as a Starlette app, served by uvicorn.

    uvicorn sk_core.asgi:app --host 0.0.0.0 --port 8000 <scripts/devservices.py UVICORN_FLAGS>

Only wiring lives here; behaviour is in the handlers. Starlette's own 404/405 answers
are re-shaped into the same problem+json body the handlers use.

**Connection limits.** uvicorn bounds the idle time between requests on a kept-alive
connection (``--timeout-keep-alive``) and the requests in flight per worker
(``--limit-concurrency``: beyond it, an immediate 503), but not how long a client may
take to send a request. ``BoundedHttpProtocol`` (``--http``) adds that: a connection
must deliver a request's headers within ``SKF_HTTP_HEADER_TIMEOUT_SECONDS`` of
connecting (or of its first byte, on a kept-alive connection) and the whole request
within ``SKF_HTTP_REQUEST_TIMEOUT_SECONDS``, or it is closed; the handler of a request cut off mid-body
sees a disconnect, recorded as 499. The numbers, and why, are in the README
("Connection limits").
"""

from __future__ import annotations

from sk_core import startup

# Before the heavy imports: the cyclic GC stays off until the kernel is built (why:
# sk_core/startup.py).
startup.begin()

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from http import HTTPStatus
from typing import Any

import httptools
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sk_core.composition import get_service, sweep_periodically
from sk_core.errors import ApiError, HeadersTooLarge, MalformedHttp
from sk_core.http.rendering import (
    CORS_EXPOSED_HEADERS,
    PROBLEM_CONTENT_TYPE,
    SECURITY_HEADERS,
    openai_error_body,
    problem_body,
    problem_response,
)
from sk_core.http.routes import ROUTES
from sk_core.settings import get_settings
from sk_core.telemetry import prometheus_payload, setup_telemetry

logger = logging.getLogger(__name__)

# The read deadlines are settings (SKF_HTTP_HEADER_TIMEOUT_SECONDS, default 10:
# a real client sends its headers in one packet, and idle connections that never send
# anything are closed; SKF_HTTP_REQUEST_TIMEOUT_SECONDS, default 30: bodies are at
# most SKF_MAX_BODY_BYTES, 100 KiB, so ~3.4 KB/s, far below any real link, while a
# 1 byte/s sender is cut off instead of holding a slot forever).
class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines on receiving a request."""

    _read_timer: asyncio.TimerHandle | None = None
    _request_began = 0.0  # loop time the current request's deadlines count from
    _parse_error = ""  # httptools' reason for the last request it could not parse

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parser = _ReasonedParser(self.parser, self)  # type: ignore[assignment]  # (a proxy of it)

    def _begin(self) -> None:
        self._request_began = self.loop.time()
        self._arm(get_settings().http_header_timeout_seconds)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _too_slow(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            logger.info("closing a connection that was too slow to send its request")
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._begin()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        if self._read_timer is None:  # a kept-alive connection's next request
            self._begin()

    # Headers are bounded in total (request line included): uvicorn keeps every header in
    # memory and httptools sets no overall limit, so one connection could otherwise send
    # megabytes of headers that each request then carries through every middleware.
    _header_bytes = 0
    _headers_too_large = False

    def _count_header_bytes(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > get_settings().http_max_header_bytes:
            self._headers_too_large = True
            raise _HeadersTooLarge  # httptools stops parsing; uvicorn answers (431 below)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        spent = self.loop.time() - self._request_began
        self._arm(max(0.0, get_settings().http_request_timeout_seconds - spent))
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


    def send_400_response(self, msg: str) -> None:
        # uvicorn's own refusal of a request it cannot parse: in the error shape of the
        # route the request named (its text/plain answer is in no document and no client
        # reads it), with our security headers.
        if self._headers_too_large:
            limit = get_settings().http_max_header_bytes
            self._send_error(HeadersTooLarge(f"Request headers are limited to {limit} bytes."))
            return
        # uvicorn logs only "Invalid HTTP request received."; the parser's reason (never
        # the request's bytes, which may carry a key) says what was wrong with it.
        logger.warning("refused a request HTTP could not parse: %s", self._parse_error or "unknown")
        self._send_error(MalformedHttp(_UNPARSABLE))

    def _send_error(self, error: ApiError) -> None:
        """Answer ``error`` and close: after a parse failure nothing on this connection
        can be trusted to start where the next request does."""
        # The URL as far as the parser got (it stops at the first error, so a broken
        # request line may leave none): enough to pick the route's error shape.
        path = bytes(getattr(self, "url", b"")).split(b"?", 1)[0].decode("latin-1")
        if path in _OPENAI_ERROR_PATHS:
            body, media_type = json.dumps(openai_error_body(error)).encode(), b"application/json"
        else:
            body, media_type = json.dumps(problem_body(error)).encode(), PROBLEM_CONTENT_TYPE.encode()
        head = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}".encode()]
        headers = [*self.server_state.default_headers, *_SECURITY_HEADER_BYTES]
        head += [name + b": " + value for name, value in headers]
        head += [
            b"content-type: " + media_type,
            b"content-length: " + str(len(body)).encode(),
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()


class _ReasonedParser:
    """httptools' parser, remembering why it refused a request (uvicorn drops the reason)."""

    def __init__(self, parser: Any, protocol: BoundedHttpProtocol) -> None:
        self._parser = parser
        self._protocol = protocol

    def feed_data(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._protocol._parse_error = f"{type(exc).__name__}: {exc}"
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


class _HeadersTooLarge(Exception):
    """Raised from a parser callback once the headers pass SKF_HTTP_MAX_HEADER_BYTES."""


_UNPARSABLE = "The request is not valid HTTP/1.1: a header or the request line breaks its syntax."
_OPENAI_ERROR_PATHS = frozenset(route.full_path for route in ROUTES if route.errors == "openai")
_SECURITY_HEADER_BYTES = [(name.lower().encode(), value.encode()) for name, value in SECURITY_HEADERS.items()]


class _SecurityHeaders:
    """Outermost: the security headers on every answer that lacks them, including those
    no route produced (the CORS middleware's refusal of a preflight)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_hardened(message: Any) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in _SECURITY_HEADER_BYTES if name not in present]
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_hardened)


class _RouteError(ApiError):
    def __init__(self, status: int, code: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.title = status, code, title


def _hardened(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


async def _http_exception(request: Request, exc: Exception) -> Response:
    return _hardened(await _route_error(request, exc))


async def _route_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 404:
        return problem_response(_RouteError(404, "not_found", "Not found", "No such route."))
    if status == 405:
        error = _RouteError(
            405, "method_not_allowed", "Method not allowed", "This route does not accept that method."
        )
        allow = exc.headers.get("Allow") if isinstance(exc, HTTPException) and exc.headers else None
        return problem_response(error, {"Allow": allow} if allow else None)
    return problem_response(
        _RouteError(status, "http_error", "HTTP error", "The request could not be handled.")
    )


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    setup_telemetry(get_settings(), host="container")
    service = get_service()
    # A missing or unreachable secret is reported once, clearly, and by /api/ready;
    # the process stays up (no crash loop) so the probe can say what is wrong.
    for problem in await service.secrets.check(service.settings.required_secrets()):
        logger.error("startup check: %s", problem)
    await service.start()  # the tables, before uvicorn takes traffic
    service.runtimes.warm()  # build the kernel now, not on the first request
    # The Functions host runs the same sweep from a timer trigger (function_app.py).
    sweeper = asyncio.create_task(sweep_periodically(service, service.settings.sweep_interval_seconds))
    settings = service.settings
    metrics = _metrics_listener(settings.metrics_port) if settings.prometheus_metrics else None
    # Document memory's ingestion jobs; the Functions host runs them from a queue trigger.
    # Imported here: the memory package (onnxruntime, numpy) loads only in the container host.
    from sk_core.memory import start_worker

    ingester = start_worker(service)
    yield
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    if metrics is not None:
        metrics[0].should_exit = True
        await metrics[1]
    if ingester is not None:
        ingester.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ingester
    # Close connection pools so shutdown does not drop sockets mid-flight.
    await service.aclose()


async def _metrics(request: Request) -> Response:
    # Container only: Prometheus scrapes pods; Functions exports through OTel instead.
    payload = prometheus_payload()
    if payload is None:
        return problem_response(
            _RouteError(404, "not_found", "Not found", "Prometheus metrics are disabled.")
        )
    body, content_type = payload
    return _hardened(Response(body, media_type=content_type))


class _QuietServer(uvicorn.Server):
    """A second server in the process: the signals stay the API server's (it stops this
    one at the lifespan's end)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _metrics_listener(port: int) -> tuple[Any, asyncio.Task[None]] | None:
    """``/metrics`` on a port of its own (``SKF_METRICS_PORT``), not on the API's: it lists
    every tenant's id, tokens and spend, and the API port is the one the ingress publishes.

    Every uvicorn worker of a pod binds it with SO_REUSEPORT (a scrape reaches one of
    them, as on the API port). None when the port is 0 (``/metrics`` is then an API route).
    """
    if port == 0:
        return None
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("0.0.0.0", port))  # noqa: S104 (the pod's port; the Service does not publish it)
    app = Starlette(
        routes=[Route("/metrics", _metrics, methods=["GET"], name="metrics")],
        exception_handlers={HTTPException: _http_exception},
    )
    server = _QuietServer(
        uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, server_header=False)
    )
    return server, asyncio.create_task(server.serve(sockets=[listener]))


def create_app() -> Starlette:
    """A Starlette app serving every route of the table under ``/api`` (and ``/metrics``
    when ``SKF_METRICS_PORT`` is 0; else that port serves it)."""
    # Each route served with the composition root's service (built once, on first use).
    routes = [Route(r.full_path, r.bind(get_service), methods=list(r.methods), name=r.name) for r in ROUTES]
    settings = get_settings()
    if settings.metrics_port == 0:
        routes.append(Route("/metrics", _metrics, methods=["GET"], name="metrics"))
    middleware = [
        Middleware(_SecurityHeaders),
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization", "X-API-Key", "Content-Type", "traceparent", "tracestate", "Cache-Control"
            ],
            expose_headers=[h.strip() for h in CORS_EXPOSED_HEADERS.split(",")],
            max_age=600,
        )
    ]
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_exception},
        lifespan=_lifespan,
    )


app = create_app()
