"""A local stand-in for Azure AI Content Safety Prompt Shields (``text:shieldPrompt``).

Serves ``POST /contentsafety/text:shieldPrompt?api-version=...`` with the REST shape of
api-version 2024-09-01::

    request:  {"userPrompt": "...", "documents": ["...", ...]}
    response: {"userPromptAnalysis": {"attackDetected": bool},
               "documentsAnalysis": [{"attackDetected": bool}, ...]}

Verdicts are deterministic: a text is an attack when it contains :data:`ATTACK_MARKER`
(the stub is not a classifier; tests choose the verdict by choosing the text). Tests can
also make every request fail with a status (500, 429...), delay answers (timeouts), or
return a malformed body, and read back what arrived (headers that carry credentials, the
query and the JSON body).

Error bodies contain :data:`SECRET_MARKER`, so tests can assert that provider error text
never leaks into the client's exceptions.

It runs uvicorn in a background thread with its own event loop (like
``tests/support/keyvault_stub.py``), so a test's event loop can await the client while the
server answers. Plain HTTP on 127.0.0.1: the client under test only needs an endpoint.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.threaded_server import ThreadedServer

__all__ = [
    "ATTACK_MARKER",
    "SECRET_MARKER",
    "STUB_KEY",
    "STUB_TOKEN",
    "ContentSafetyStub",
    "RecordedShieldRequest",
]

#: A text containing this is judged an attack.
ATTACK_MARKER = "ATTACK-MARKER"
#: Put in every error body; must never appear in what the client raises.
SECRET_MARKER = "SECRET-PROVIDER-TEXT"
#: The resource key the stub accepts by default.
STUB_KEY = "stub-content-safety-key"
#: The bearer token the stub accepts by default.
STUB_TOKEN = "stub-content-safety-token"

# Only headers that carry credentials are kept: enough to check which one was sent.
_RECORDED_HEADERS = ("ocp-apim-subscription-key", "authorization", "content-type")


@dataclass(frozen=True)
class RecordedShieldRequest:
    """One request as the stub saw it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class _State:
    requests: list[RecordedShieldRequest] = field(default_factory=list)
    fail_status: int | None = None
    fail_times: int | None = None  # None: fail every request while fail_status is set
    delay: float = 0.0
    malformed: bool = False
    keep_alive: bool = False


def _error(status: int, code: str, message: str) -> JSONResponse:
    # Content Safety's error envelope; the message carries the marker on purpose.
    return JSONResponse(
        {"error": {"code": code, "message": f"{message} {SECRET_MARKER}"}}, status_code=status
    )


class ContentSafetyStub(ThreadedServer):
    """The server and its control surface. Use as a context manager or call start/stop."""

    def __init__(self, *, key: str = STUB_KEY, token: str = STUB_TOKEN) -> None:
        super().__init__()
        self.key = key
        self.token = token
        self._lock = threading.Lock()
        self._state = _State()
        self.app = Starlette(
            routes=[Route("/contentsafety/text:shieldPrompt", self._shield, methods=["POST"])]
        )

    @property
    def endpoint(self) -> str:
        """What a PromptShieldsClient is given as ``endpoint``."""
        return f"http://127.0.0.1:{self.port}"

    # -- control ---------------------------------------------------------------------

    def fail_with(self, status: int | None, *, times: int | None = None) -> None:
        """Answer with ``status`` (every request, or the next ``times``); None restores service."""
        with self._lock:
            self._state.fail_status = status
            self._state.fail_times = times

    def delay(self, seconds: float) -> None:
        """Wait this long before every answer (to exercise client timeouts)."""
        with self._lock:
            self._state.delay = seconds

    def keep_connections(self, on: bool = True) -> None:
        """Keep connections alive, as the real service does (the client then closes them)."""
        with self._lock:
            self._state.keep_alive = on

    def malformed(self, on: bool = True) -> None:
        """Answer 200 with a body that is not the Prompt Shields shape."""
        with self._lock:
            self._state.malformed = on

    @property
    def requests(self) -> list[RecordedShieldRequest]:
        """Every request received since the last reset, oldest first."""
        with self._lock:
            return list(self._state.requests)

    def reset(self) -> None:
        """Forget requests and failure modes."""
        with self._lock:
            self._state = _State()

    # -- the REST API ----------------------------------------------------------------

    async def _shield(self, request: Request) -> Response:
        try:
            body: Any = await request.json()
        except ValueError:
            body = None
        recorded = RecordedShieldRequest(
            path=request.url.path,
            query=dict(request.query_params),
            headers={k: v for k, v in request.headers.items() if k in _RECORDED_HEADERS},
            body=body,
        )
        with self._lock:
            self._state.requests.append(recorded)
            state = self._state
            delay, malformed, keep_alive = state.delay, state.malformed, state.keep_alive
            fail_status = state.fail_status
            if fail_status is not None and state.fail_times is not None:
                state.fail_times -= 1
                if state.fail_times <= 0:
                    state.fail_status = state.fail_times = None
        if delay:
            await asyncio.sleep(delay)
        response = self._answer(recorded, fail_status, malformed)
        if not keep_alive:  # (by default: an idle pooled connection would hold up stop())
            response.headers["Connection"] = "close"
        return response

    def _answer(self, recorded: RecordedShieldRequest, fail_status: int | None, malformed: bool) -> Response:
        if "api-version" not in recorded.query:
            return _error(400, "InvalidRequestBody", "The api-version query parameter is missing.")
        key = recorded.headers.get("ocp-apim-subscription-key")
        bearer = recorded.headers.get("authorization", "")
        if key != self.key and bearer != f"Bearer {self.token}":
            return _error(401, "Unauthorized", "Access denied due to invalid subscription key.")
        if fail_status is not None:
            return _error(fail_status, "ServiceError", "The stub is failing on purpose.")
        body = recorded.body
        if not isinstance(body, dict) or not isinstance(body.get("userPrompt"), str):
            return _error(400, "InvalidRequestBody", "userPrompt must be a string.")
        documents = body.get("documents") or []
        if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
            return _error(400, "InvalidRequestBody", "documents must be a list of strings.")
        if malformed:
            return JSONResponse({"unexpected": True})
        return JSONResponse(
            {
                "userPromptAnalysis": {"attackDetected": ATTACK_MARKER in body["userPrompt"]},
                "documentsAnalysis": [{"attackDetected": ATTACK_MARKER in d} for d in documents],
            }
        )
