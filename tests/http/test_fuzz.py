"""Property-based API fuzzing against the live OpenAPI document, plus hostile-body edge cases.

``test_openapi_fuzz`` is the Hardening issue's proof: Schemathesis reads the document the
container host serves at ``/api/openapi.json`` and sends at least ``MIN_CASES`` generated
requests over real HTTP (its coverage phase, then Hypothesis-driven fuzzing, positive and
negative), and no response may be a server error or disagree with the document.

Schemathesis' engine (what ``schemathesis run`` drives) is used rather than its pytest
integration: the document only exists once the ``container_host`` fixture is up, and the
lazy ``schemathesis.pytest.from_fixture`` loader (4.32.5) sets ``Node._nodeid``, which
pytest 9.2 no longer has.

The edge tests cover inputs Schemathesis does not generate: bodies nested far deeper than
any schema, byte sequences that are not UTF-8, JSON escapes of lone surrogates, number
literals beyond what Python parses, and an endless chunked upload.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.engine import StopReason, events, from_schema

from tests.support.hosts import ContainerHost, Host, HostResponse
from tests.support.stub_model import StubModel

# The issue asks for at least 1,000 generated cases. With MAX_EXAMPLES per operation the
# run makes ~1,200 requests: ~210 from the coverage phase plus up to MAX_EXAMPLES from
# fuzzing for each operation that has inputs (summarize, chat, list_functions, invoke).
# The operations without inputs (health, ready, openapi) are exhausted after a case or two.
MIN_CASES = 1000
MAX_EXAMPLES = 250
# Fixed seed plus Hypothesis' derandomize: the same document yields the same cases on every
# run, so a CI failure reproduces locally and a green run stays green.
SEED = 20_240_611
PROBLEM_JSON = "application/problem+json"

# A request Schemathesis generated outside the document (a negative case) must be refused
# with a 4xx. 413 is such a refusal (a 64-message chat at the 32,000-character limit
# exceeds the 100 KiB body limit), but it is missing from Schemathesis' default list.
NEGATIVE_REJECTION_STATUSES = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx",
]  # fmt: skip

CHECKS: dict[str, Any] = {
    # The four the issue requires: no 5xx, and status code, content type and body all as
    # documented for that operation.
    "not_a_server_error": {"enabled": True},
    "status_code_conformance": {"enabled": True},
    "content_type_conformance": {"enabled": True},
    "response_schema_conformance": {"enabled": True},
    # Free extras that hold today: documented headers present, invalid input refused,
    # missing or bad credentials refused (401), undeclared methods answered 405.
    "response_headers_conformance": {"enabled": True},
    "negative_data_rejection": {"enabled": True, "expected-statuses": NEGATIVE_REJECTION_STATUSES},
    "missing_required_header": {"enabled": True},
    "ignored_auth": {"enabled": True},
    "unsupported_method": {"enabled": True},
    # Off until the document describes every rule the server enforces: today it accepts
    # neither control characters in text fields nor 5.0 for an integer, while the schema
    # allows both. Turn on once sk_core/openapi.py states those rules.
    "positive_data_acceptance": {"enabled": False},
}


def _credentials(document: dict[str, Any], api_key: str) -> dict[str, dict[str, str]]:
    """Schemathesis auth config for the document's API-key schemes, matched by shape rather
    than by name so renaming a scheme does not silently turn every case into a 401."""
    found: dict[str, dict[str, str]] = {}
    schemes: dict[str, dict[str, Any]] = document.get("components", {}).get("securitySchemes", {})
    for name, scheme in schemes.items():
        if (
            scheme.get("type") == "apiKey"
            and scheme.get("in") == "header"
            and str(scheme.get("name", "")).lower() == "x-api-key"
        ):
            found[name] = {"api_key": api_key}
        elif scheme.get("type") == "http" and str(scheme.get("scheme", "")).lower() == "bearer":
            found[name] = {"bearer": api_key}
    return found


def _config(document: dict[str, Any], base_url: str, api_key: str) -> schemathesis.Config:
    credentials = _credentials(document, api_key)
    assert credentials, "the document declares no X-API-Key or bearer scheme to authenticate with"
    return schemathesis.Config.from_dict(
        {
            "base-url": base_url,
            "seed": SEED,
            "auth": {"openapi": credentials},
            "generation": {
                "mode": "all",  # valid and invalid inputs
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                # No example database: nothing to write, and no replays of cases that are
                # not in the seed's sequence. (Hypothesis still keeps its own caches in the
                # git-ignored .hypothesis/.)
                "database": "none",
            },
            "checks": CHECKS,
            # Health checks guard Hypothesis tests that generate slowly; the limit here is
            # the number of cases, and a slow generator is not a defect of the API.
            "suppress-health-check": ["all"],
            # One worker: with two, Hypothesis (not thread-safe) sometimes ended an
            # operation's fuzzing after ~10 cases, so the case count varied from run to run
            # (722-1205). With one the run is identical every time (1,205 requests, ~50 s).
            "workers": 1,
            "request-timeout": 15,
        }
    )


@dataclass
class FuzzRun:
    """What a Schemathesis run did and found."""

    requests: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop_reason: StopReason | None = None

    @property
    def total(self) -> int:
        return sum(self.requests.values())


def _clip(data: bytes | str | None, limit: int = 600) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _describe_failures(event: events.ScenarioFinished) -> Iterator[str]:
    recorder = event.recorder
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.failure_info is None:
                continue
            failure = check.failure_info.failure
            lines = [
                f"[{event.phase.value}] {event.label}: {check.name} - {failure.title}",
                f"  {_clip(failure.message)}",
            ]
            interaction = recorder.interactions.get(case_id)
            if interaction is not None:
                request = interaction.request
                lines.append(f"  request: {request.method} {request.uri} body={_clip(request.body, 300)}")
                if interaction.response is not None:
                    response = interaction.response
                    lines.append(
                        f"  response: {response.status_code} {response.headers.get('content-type')} "
                        f"{_clip(response.content, 300)}"
                    )
            yield "\n".join(lines)


def run_schemathesis(schema: schemathesis.BaseSchema) -> FuzzRun:
    """Drive every phase of Schemathesis' engine; collect requests, failures and errors."""
    run = FuzzRun()

    def after_call(context: Any, case: schemathesis.Case[Any], response: schemathesis.Response) -> None:
        run.requests[(case.operation.label, response.status_code)] += 1

    # Counting at the transport is the honest measure of "cases executed": a case that
    # never reached the server does not count.
    schema.hook(after_call)
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            run.failures.extend(_describe_failures(event))
        elif isinstance(event, events.NonFatalError):
            run.errors.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            run.errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            run.stop_reason = event.stop_reason
    return run


def test_openapi_fuzz(
    container_host: ContainerHost,
    api_key: str,
    stub: StubModel,  # requested for its reset: the stub answers with its default behaviour
) -> None:
    """≥1,000 generated requests against the live document: no 5xx, nothing undocumented."""
    # The document the host serves right now, not a copy: the proof is about what is live.
    # (Loaded by hand because Schemathesis' URL loader skips the operation serving the
    # document; this way GET /api/openapi.json is fuzzed too.)
    response = httpx.get(
        f"{container_host.base_url}/api/openapi.json", headers={"X-API-Key": api_key}, timeout=30
    )
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    schema = schemathesis.openapi.from_dict(
        document, config=_config(document, container_host.base_url, api_key)
    )

    started = time.monotonic()
    run = run_schemathesis(schema)
    elapsed = time.monotonic() - started

    # No allowance for the host's parser refusals: Schemathesis' negative cases put
    # characters HTTP forbids into header values (session 14: "Invalid header value
    # char" on GET /api/v1/usage, once per fresh-clone run), and the host's answer is a
    # documented 400 in the route's error shape (tests/test_asgi.py), checked as any other.
    # The key is a throwaway test key, but it has no business in CI logs either.
    report = "\n\n".join(run.errors + run.failures).replace(api_key, "<api-key>")
    assert not run.errors, f"Schemathesis could not test everything:\n{report}"
    assert not run.failures, f"{len(run.failures)} failing check(s) in {run.total} requests:\n\n{report}"
    assert run.stop_reason == StopReason.COMPLETED, run.stop_reason
    statuses = ", ".join(f"{label} {status}: {n}" for (label, status), n in sorted(run.requests.items()))
    assert run.total >= MIN_CASES, f"only {run.total} requests in {elapsed:.0f}s ({statuses})"
    # Every operation in the document was exercised.
    operations = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}
    assert operations <= {label for label, _ in run.requests}, statuses


# --- Hostile bodies Schemathesis does not generate ------------------------------------------


def _assert_client_error(response: HostResponse, *statuses: int) -> None:
    """A refusal in the one error shape, never a 500."""
    assert response.status in statuses, (response.status, response.body[:500])
    assert response.headers.get("content-type", "").startswith(PROBLEM_JSON), response.headers
    assert response.json()["status"] == response.status


def _nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


# Depth 1,000 reaches the parser's recursion limit; 50,000 is as deep as fits the body
# limit; 100,000 (the classic "billion brackets" probe) is over it and must be a 413.
@pytest.mark.parametrize(
    ("body", "statuses"),
    [
        pytest.param(b'{"text": ' + _nested(1_000) + b"}", (400, 422), id="array-1k"),
        pytest.param(b'{"text": ' + _nested(50_000) + b"}", (400, 422), id="array-50k"),
        pytest.param(b'{"text": ' + _nested(10_000, b'{"a":', b"}") + b"}", (400, 422), id="object-10k"),
        pytest.param(_nested(50_000), (400, 422), id="top-level-50k"),
        pytest.param(b'{"text": ' + _nested(100_000) + b"}", (413,), id="array-100k"),
    ],
)
async def test_deeply_nested_json_is_refused(host: Host, body: bytes, statuses: tuple[int, ...]) -> None:
    response = await host.request(
        "POST", "/api/v1/summarize", content=body, headers={"content-type": "application/json"}
    )
    _assert_client_error(response, *statuses)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"text": "\xff\xfe"}', id="invalid-bytes"),
        pytest.param(b'{"text": "\xc0\xaf"}', id="overlong-slash"),
        pytest.param(b'{"text": "\xe2\x82"}', id="truncated-sequence"),
        # Not UTF-8, yet json.loads(bytes) decodes with "surrogatepass": a lone surrogate.
        pytest.param(b'{"text": "\xed\xa0\x80"}', id="encoded-surrogate"),
        pytest.param(b'{"te\xf8xt": "a"}', id="in-a-key"),
    ],
)
async def test_invalid_utf8_is_refused(host: Host, body: bytes) -> None:
    response = await host.request(
        "POST", "/api/v1/summarize", content=body, headers={"content-type": "application/json"}
    )
    _assert_client_error(response, 400)


# Valid JSON, but a lone surrogate is not a Unicode scalar value: Python decodes it to a
# str that cannot be encoded back to UTF-8, which anything downstream (token bounds,
# the provider request, logs) will try to do.
@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/v1/summarize", {"text": "a\\ud800b"}, id="summarize"),
        pytest.param("/api/v1/chat", {"messages": [{"role": "user", "content": "\\udfff"}]}, id="chat"),
        pytest.param(
            "/api/v1/functions/text/translate", {"text": "\\ud83d", "language": "French"}, id="invoke"
        ),
    ],
)
async def test_lone_surrogate_escape_is_refused(host: Host, path: str, body: dict[str, Any]) -> None:
    # json.dumps would escape the backslash; write the escape into the bytes by hand.
    raw = json.dumps(body).replace("\\\\u", "\\u").encode()
    response = await host.request("POST", path, content=raw, headers={"content-type": "application/json"})
    _assert_client_error(response, 400, 422)


@pytest.mark.parametrize(
    "literal",
    [
        pytest.param(b"9" * 90_000, id="int-90k-digits"),  # over sys.get_int_max_str_digits()
        pytest.param(b"9" * 4_000, id="int-4k-digits"),  # parses; far out of range
        pytest.param(b"1e999999", id="float-overflow"),  # inf
        pytest.param(b"-1e999999", id="float-negative-overflow"),
        pytest.param(b"1e-999999", id="float-underflow"),  # 0.0
        pytest.param(b"1." + b"1" * 90_000, id="float-90k-digits"),
        pytest.param(b"NaN", id="nan"),
    ],
)
@pytest.mark.parametrize(
    ("path", "template"),
    [
        pytest.param("/api/v1/summarize", b'{"text": "a", "max_words": %s}', id="summarize"),
        pytest.param(
            "/api/v1/chat", b'{"messages": [{"role": "user", "content": "a"}], "max_tokens": %s}', id="chat"
        ),
        pytest.param(
            "/api/v1/functions/text/translate",
            b'{"text": "a", "language": "French", "max_tokens": %s}',
            id="invoke",
        ),
    ],
)
async def test_huge_number_literals_are_refused(
    host: Host, path: str, template: bytes, literal: bytes
) -> None:
    response = await host.request(
        "POST", path, content=template % literal, headers={"content-type": "application/json"}
    )
    _assert_client_error(response, 400, 422)


UPLOAD_BYTES = 50 * 1024 * 1024
CHUNK = 64 * 1024


def test_50mb_chunked_body_gets_413(container_host: ContainerHost, api_key: str) -> None:
    """A chunked (no Content-Length) 50 MB upload through httpx ends in a 413, quickly.

    httpx writes the whole body before reading the answer, so this shows the service
    survives the upload and refuses it; ``test_oversized_upload_is_refused_before_it_ends``
    shows the refusal comes as soon as the limit is passed."""

    def body() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(UPLOAD_BYTES // CHUNK):
            yield b"a" * CHUNK

    started = time.monotonic()
    response = httpx.post(
        f"{container_host.base_url}/api/v1/summarize",
        content=body(),
        headers={"content-type": "application/json", "x-api-key": api_key},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert response.json()["code"] == "payload_too_large"
    assert time.monotonic() - started < 10


async def test_oversized_upload_is_refused_before_it_ends(
    container_host: ContainerHost, api_key: str
) -> None:
    """Raw HTTP/1.1 so we can read while still writing: the 413 must arrive after the limit,
    long before the 50 MB the client means to send."""
    # Warm the key cache first: the handler authenticates before it reads the body, and a
    # cold key lookup would be time in which the paced client keeps sending.
    warm = await container_host.request("GET", "/api/v1/functions")
    assert warm.status == 200, warm.body
    host, port = container_host.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        "POST /api/v1/summarize HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"X-API-Key: {api_key}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    status_line = asyncio.ensure_future(reader.readline())
    sent = 0
    chunk = f"{CHUNK:x}\r\n".encode() + b"a" * CHUNK + b"\r\n"
    started = time.monotonic()
    try:
        writer.write(head.encode() + b'a\r\n{"text": "\r\n')
        while sent < UPLOAD_BYTES and not status_line.done():
            writer.write(chunk)
            await writer.drain()
            sent += CHUNK
            # Pace the upload (~6 MB/s) so the client cannot race megabytes into socket
            # buffers before the answer can be seen; all 50 MB would take ~8 s.
            await asyncio.wait({status_line}, timeout=0.01)
        status = (await asyncio.wait_for(status_line, 10)).decode()
    finally:
        status_line.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    elapsed = time.monotonic() - started
    assert status.split(" ")[1] == "413", status
    # The server stops at the 100 KiB limit; the margin is for chunks in flight and a busy
    # CI machine, not for reading on: the answer must come within the first tenth.
    assert sent <= UPLOAD_BYTES // 10, f"{sent} bytes were sent before the 413 arrived"
    assert elapsed < 5, elapsed
