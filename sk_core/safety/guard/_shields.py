"""Azure AI Content Safety Prompt Shields: the trained classifier behind the local rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import httpx

from sk_core.errors import ServiceUnavailable

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

CONTENT_SAFETY_SCOPE: Final = "https://cognitiveservices.azure.com/.default"


class GuardUnavailable(ServiceUnavailable):
    """Screening was required (fail-closed) but could not be done: 503, retry later."""

    code, title = "guard_unavailable", "Prompt screening unavailable"

    def __init__(self, reason: str) -> None:
        # ``reason`` is ours ("http 500", "timeout"), never provider text; it is for logs.
        super().__init__(
            "The request could not be screened for prompt injection right now; retry shortly.",
            retry_after=1,
        )
        self.reason = reason


class PromptShieldsError(GuardUnavailable):
    """A Prompt Shields call failed. ``reason`` is a short text of ours, safe to log."""


@dataclass(frozen=True, slots=True)
class ShieldResult:
    """Prompt Shields' answer for one call."""

    user_prompt_attack: bool
    document_attacks: tuple[bool, ...] = ()

    @property
    def attack_detected(self) -> bool:
        """True when the prompt or any document was judged an attack."""
        return self.user_prompt_attack or any(self.document_attacks)


class PromptShieldsClient:
    """Async client for ``POST {endpoint}/contentsafety/text:shieldPrompt``.

    Authenticates with a resource key (``Ocp-Apim-Subscription-Key``) or, given an
    azure-identity async ``credential``, with an Entra ID bearer token for
    :data:`CONTENT_SAFETY_SCOPE` (cached until five minutes before expiry). One
    ``httpx.AsyncClient`` per instance; call :meth:`aclose` (or use ``async with``).

    Every failure - transport error, timeout, non-200 status, malformed body - raises
    :class:`PromptShieldsError` with a reason of our own; the provider's response text is
    never put into an exception or a log line. 429 and 5xx are retried ``max_retries``
    times within the same ``timeout`` budget.
    """

    def __init__(
        self,
        endpoint: str,
        key: str | None = None,
        *,
        credential: AsyncTokenCredential | None = None,
        api_version: str = "2024-09-01",
        timeout: float = 3.0,
        max_retries: int = 1,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if (key is None) == (credential is None):
            raise ValueError("PromptShieldsClient needs exactly one of key or credential")
        if not endpoint.startswith(("https://", "http://")):
            raise ValueError("Prompt Shields endpoint must be an http(s) URL")
        self._url = endpoint.rstrip("/") + "/contentsafety/text:shieldPrompt"
        self._params = {"api-version": api_version}
        self._key = key
        self._credential = credential
        self._token: tuple[str, float] | None = None  # (token, refresh after monotonic)
        self._token_lock = asyncio.Lock()
        self._timeout = timeout
        self._max_retries = max_retries
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            transport=transport,
            # Keep-alive for every connection it may open (httpx's default 100). httpcore
            # 1.0.9 counts *all* connections against max_keepalive_connections (default
            # 20) when it tidies the pool, so past 20 open it closes "surplus idle" ones,
            # among them one just handed to a request that has not sent yet: that call
            # fails with a ReadError, unanswered (encode/httpcore#1110, #1000; traced in
            # bench/budget_race.py's client). (The OpenAI SDK here runs on httpx2, whose
            # pool leaves a connection handed to a request alone.)
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )

    def __repr__(self) -> str:
        # The key must never show up in a log through a repr.
        return f"PromptShieldsClient({self._url!r}, auth={'key' if self._key else 'entra'})"

    async def shield(self, user_prompt: str, documents: Sequence[str] = ()) -> ShieldResult:
        """Analyse one user prompt and its documents; raises PromptShieldsError on any failure."""
        body = {"userPrompt": user_prompt, "documents": list(documents)}
        deadline = time.monotonic() + self._timeout
        attempt = 0
        while True:
            response = await self._post(body, deadline)
            if response.status_code == 200:
                return self._parse(response, len(documents))
            retryable = response.status_code == 429 or response.status_code >= 500
            reason = f"http {response.status_code}"
            if not retryable or attempt >= self._max_retries or time.monotonic() + 0.1 >= deadline:
                raise PromptShieldsError(reason)
            attempt += 1
            await asyncio.sleep(min(0.1 * 2**attempt, max(0.0, deadline - time.monotonic() - 0.05)))

    async def _post(self, body: dict[str, Any], deadline: float) -> httpx.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PromptShieldsError("timeout")
        try:
            headers = await self._auth_headers()
            return await self._client.post(
                self._url, params=self._params, json=body, headers=headers, timeout=remaining
            )
        except httpx.TimeoutException:
            raise PromptShieldsError("timeout") from None
        except httpx.HTTPError as exc:
            # type(exc).__name__ only: httpx messages can carry the URL, which is config.
            raise PromptShieldsError(f"transport error ({type(exc).__name__})") from None
        except PromptShieldsError:
            raise
        except Exception as exc:  # a credential failure must follow the failure policy too
            raise PromptShieldsError(f"credential error ({type(exc).__name__})") from None

    async def _auth_headers(self) -> dict[str, str]:
        if self._key is not None:
            return {"Ocp-Apim-Subscription-Key": self._key}
        assert self._credential is not None
        async with self._token_lock:
            if self._token is None or time.monotonic() >= self._token[1]:
                token = await self._credential.get_token(CONTENT_SAFETY_SCOPE)
                lifetime = max(0.0, token.expires_on - time.time() - 300)
                self._token = (token.token, time.monotonic() + lifetime)
            return {"Authorization": f"Bearer {self._token[0]}"}

    @staticmethod
    def _parse(response: httpx.Response, documents: int) -> ShieldResult:
        try:
            payload = response.json()
            user = payload["userPromptAnalysis"]["attackDetected"]
            docs = [item["attackDetected"] for item in payload.get("documentsAnalysis") or []]
        except (ValueError, KeyError, TypeError):
            raise PromptShieldsError("malformed response") from None
        if not isinstance(user, bool) or not all(isinstance(d, bool) for d in docs) or len(docs) != documents:
            raise PromptShieldsError("malformed response")
        return ShieldResult(user_prompt_attack=user, document_attacks=tuple(docs))

    async def aclose(self) -> None:
        """Close the HTTP client (the credential belongs to the caller)."""
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
