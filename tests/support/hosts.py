"""Drive both hosts through one small client interface for the contract suite.

- ``ContainerHost``: real HTTP on loopback to uvicorn serving ``sk_core.asgi:app`` in
  its own process.
- ``FunctionsHost``: Azure Functions Core Tools cannot be installed here, so we do what
  the worker does after indexing: find the registered trigger whose route template and
  methods match, build the Starlette ``Request`` the FastAPI extension would hand it
  (route parameters synced into ``path_params``), and await its user function.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message

_CHUNK = 64 * 1024


@dataclass
class HostResponse:
    """What either host answered."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


class Host(Protocol):
    """Something that answers HTTP requests the way one of our hosts does."""

    name: str
    default_headers: dict[str, str]

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str | None] | None = None,
    ) -> HostResponse: ...


def _body_and_headers(
    json_body: Any, content: bytes | None, headers: dict[str, str | None] | None, defaults: dict[str, str]
) -> tuple[bytes, dict[str, str]]:
    # Explicit headers override the host's defaults; None removes a default (no API key).
    merged: dict[str, str | None] = {**defaults, **{k.lower(): v for k, v in (headers or {}).items()}}
    final = {k: v for k, v in merged.items() if v is not None}
    if json_body is not None:
        content = json.dumps(json_body).encode()
        final.setdefault("content-type", "application/json")
    return content or b"", final


class ContainerHost:
    """The container host over real HTTP."""

    name = "container"

    def __init__(self, base_url: str, default_headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self.default_headers = default_headers or {}
        self._client = httpx.AsyncClient(base_url=base_url, timeout=30)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str | None] | None = None,
    ) -> HostResponse:
        body, final = _body_and_headers(json_body, content, headers, self.default_headers)
        response = await self._client.request(method, path, content=body or None, headers=final)
        return HostResponse(response.status_code, dict(response.headers), response.content)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()


@dataclass
class _Trigger:
    name: str
    pattern: re.Pattern[str]
    methods: set[str]
    function: Any


def _route_regex(route: str) -> re.Pattern[str]:
    # Functions route templates: literal segments and {name} placeholders.
    parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", route)
    regex = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^/api/{regex}$")


class FunctionsHost:
    """The Functions host, by awaiting each registered trigger's user function."""

    name = "functions"

    def __init__(self, functions: list[Any], default_headers: dict[str, str] | None = None) -> None:
        self.default_headers = default_headers or {}
        self.triggers = [
            _Trigger(
                name=f.get_function_name(),
                pattern=_route_regex(f.get_trigger().route),
                methods={str(m.value if hasattr(m, "value") else m) for m in f.get_trigger().methods},
                function=f.get_user_function(),
            )
            for f in functions
            if f.get_trigger().get_binding_name() == "httpTrigger"
        ]

    def _match(self, method: str, path: str) -> tuple[_Trigger, dict[str, str]] | None:
        for trigger in self.triggers:
            found = trigger.pattern.match(path)
            if found and method in trigger.methods:
                return trigger, found.groupdict()
        return None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        headers: dict[str, str | None] | None = None,
    ) -> HostResponse:
        body, final = _body_and_headers(json_body, content, headers, self.default_headers)
        if body and "content-length" not in final:
            final["content-length"] = str(len(body))
        matched = self._match(method, path)
        if matched is None:
            # The Functions host itself answers 404 for unknown routes and methods.
            return HostResponse(404, {}, b"")
        trigger, path_params = matched
        request = make_request(method, path, final, body, path_params)
        response: Response = await trigger.function(request)
        if isinstance(response, StreamingResponse):
            # What the worker does with an HTTP stream: read the body as it is produced.
            body = b"".join(
                [c if isinstance(c, bytes) else str(c).encode() async for c in response.body_iterator]
            )
        else:
            body = bytes(response.body)
        return HostResponse(
            response.status_code, {k.decode().lower(): v.decode() for k, v in response.raw_headers}, body
        )


def make_request(
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    path_params: dict[str, str] | None = None,
    *,
    chunk_size: int = _CHUNK,
    consumed: list[int] | None = None,
) -> Request:
    """A Starlette request whose body arrives in chunks; ``consumed`` counts what was read."""
    chunks = [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)] or [b""]
    position = 0

    async def receive() -> Message:
        nonlocal position
        if position >= len(chunks):
            return {"type": "http.disconnect"}
        chunk = chunks[position]
        position += 1
        if consumed is not None:
            consumed.append(len(chunk))
        return {"type": "http.request", "body": chunk, "more_body": position < len(chunks)}

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 7071),
        "path_params": path_params or {},
    }
    return Request(scope, receive)


@contextlib.contextmanager
def container_fleet(count: int, env: Mapping[str, str], logs: Path) -> Iterator[list[str]]:
    """``count`` container hosts (each its own uvicorn process) with one environment,
    as instances or pods share a storage account; yields their base URLs, stops them all."""
    from scripts.devservices import ManagedProcess, free_port, start_service

    processes: list[ManagedProcess] = []
    ports = [free_port() for _ in range(count)]
    try:
        for index, port in enumerate(ports):
            processes.append(start_service(port=port, env=env, log=logs / f"service-{index}.log"))
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.stop()
