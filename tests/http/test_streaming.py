"""Streaming the catalog functions as Server-Sent Events (``Accept: text/event-stream``),
on both hosts: ``delta`` events carrying text, then one ``done`` event with the call's
usage, cost, finish reason and redactions; refusals before the first byte are plain
errors; the first event leaves before the model has finished.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from sk_core.composition import Service
from tests.support.hosts import ContainerHost, FunctionsHost, Host
from tests.support.stub_model import StubModel

SSE: dict[str, str | None] = {"accept": "text/event-stream"}
SUMMARIZE = {"text": "Streaming keeps chat interfaces responsive.", "style": "tldr", "max_words": 30}


def events(body: bytes) -> list[tuple[str, Any]]:
    """(event name, parsed data) for each event of an SSE body."""
    parsed = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((fields.get("event", "message"), json.loads(fields["data"])))
    return parsed


async def test_a_catalog_function_streams_deltas_then_its_accounting(host: Host, stub: StubModel) -> None:
    content = "Card 4111 1111 1111 1111 was mentioned, and nothing else."
    stub.script({"content": content, "prompt_tokens": 50, "completion_tokens": 11})
    path = "/api/v1/functions/text/summarize"
    response = await host.request("POST", path, json_body=SUMMARIZE, headers=SSE)
    assert response.status == 200, response.body
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "ratelimit-limit" in response.headers
    received = events(response.body)
    names = [name for name, _ in received]
    assert names[-1] == "done"
    assert set(names[:-1]) == {"delta"}
    assert len(names) > 2
    text = "".join(data["text"] for name, data in received if name == "delta")
    assert text == "Card [REDACTED:payment_card] was mentioned, and nothing else."
    done = received[-1][1]
    assert done["usage"] == {"prompt_tokens": 50, "completion_tokens": 11, "total_tokens": 61}
    assert done["cost_usd"] == (50 * 1.0 + 11 * 2.0) / 1e6
    assert done["finish_reason"] == "stop"
    assert (done["redacted"], done["redactions"]) == (1, {"payment_card": 1})
    # The same answer, not streamed, redacts the same way.
    stub.script({"content": content, "prompt_tokens": 50, "completion_tokens": 11})
    whole = await host.request("POST", "/api/v1/functions/text/summarize", json_body=SUMMARIZE)
    assert whole.json()["result"] == text


async def test_summarize_and_chat_stream_too(host: Host, stub: StubModel) -> None:
    stub.script({"content": "Short."}, {"content": "Hi there."})
    summary = await host.request("POST", "/api/v1/summarize", json_body=SUMMARIZE, headers=SSE)
    chat = await host.request(
        "POST", "/api/v1/chat", json_body={"messages": [{"role": "user", "content": "Hi"}]}, headers=SSE
    )
    for response, expected in ((summary, "Short."), (chat, "Hi there.")):
        received = events(response.body)
        assert "".join(d["text"] for n, d in received if n == "delta") == expected
        assert received[-1][0] == "done"


async def test_refusals_before_the_first_byte_are_plain_problems(host: Host, stub: StubModel) -> None:
    missing = await host.request(
        "POST", "/api/v1/functions/text/summarize", json_body={"style": "tldr"}, headers=SSE
    )
    assert missing.status == 422
    assert missing.headers["content-type"].startswith("application/problem+json")
    stub.set_default(status=500)
    failed = await host.request("POST", "/api/v1/summarize", json_body=SUMMARIZE, headers=SSE)
    assert failed.status == 502
    assert failed.json()["code"] == "model_error"


async def test_a_failure_mid_stream_ends_with_an_error_event(host: Host, stub: StubModel) -> None:
    # The provider's stream stalls past the deadline after it has started.
    stub.script({"content": "one two three four five six seven", "chunk_delay": 1.5})
    response = await host.request("POST", "/api/v1/summarize", json_body=SUMMARIZE, headers=SSE)
    assert response.status == 200
    received = events(response.body)
    name, problem = received[-1]
    assert name == "error"
    assert problem["code"] == "model_timeout"
    assert "done" not in [n for n, _ in received]


async def test_the_first_event_arrives_before_the_model_has_finished(
    container_host: ContainerHost, stub: StubModel
) -> None:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    stub.script({"content": " ".join(words), "chunk_delay": 0.25})
    arrivals: list[float] = []
    async with httpx.AsyncClient(base_url=container_host.base_url, timeout=30) as client:
        started = time.monotonic()
        async with client.stream(
            "POST",
            "/api/v1/summarize",
            json=SUMMARIZE,
            headers={**container_host.default_headers, "accept": "text/event-stream"},
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    arrivals.append(time.monotonic() - started)
    # The model takes 8 x 0.25 s; the first word is final (released) once the second
    # has started, at about 0.5 s, long before the model is done.
    assert len(arrivals) == len(words) + 1  # a delta per word, then done
    assert arrivals[0] < 0.25 * len(words) / 2, arrivals
    assert arrivals[-1] >= 0.25 * len(words) * 0.9, arrivals


async def test_a_stream_that_fails_after_its_first_byte_is_audited_with_its_error(
    functions_host: FunctionsHost, functions_service: Service, stub: StubModel
) -> None:
    # The status (200) went out with the first byte; the audit row still names the failure.
    stub.script({"content": "one two three four five six seven", "chunk_delay": 1.5})
    response = await functions_host.request("POST", "/api/v1/summarize", json_body=SUMMARIZE, headers=SSE)
    assert events(response.body)[-1][0] == "error"
    await functions_service.audit.flush()
    rows = await functions_service.audit.recent("contract", limit=50)
    [row] = [r for r in rows if r["trace_id"] == response.headers["x-trace-id"]]
    assert (row["status"], row["code"], row["route"]) == (200, "model_timeout", "/api/v1/summarize")
    assert row["key_id"]
    assert row["function"] == "text/summarize"
