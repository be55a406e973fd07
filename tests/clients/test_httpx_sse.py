"""A client with nothing but httpx: it streams ``/api/v1/chat/completions`` and our own
``/api/v1/chat`` (``Accept: text/event-stream``), reads the events with a reader written
from the SSE specification (``tests/support/sse_client.py``), and gets exactly what the
same request answers without streaming: the text or tool calls, the finish reason, the
usage. The stub model is deterministic (its default answer, or its protocol mode), so
the streamed and the whole answer are the same answer made twice."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sk_core.composition import Service
from tests.http.test_openai_compat import MODEL, new_key
from tests.support.hosts import ContainerHost
from tests.support.sse_client import Event, aiter_events
from tests.support.stub_model import StubModel

CHAT_COMPLETIONS = "/api/v1/chat/completions"
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
async def client(container_host: ContainerHost, functions_service: Service) -> Any:
    _, key = await new_key(functions_service)
    async with httpx.AsyncClient(
        base_url=container_host.base_url,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
        trust_env=False,  # a developer's proxy must not sit in front of loopback
    ) as http:
        yield http


async def _events(client: httpx.AsyncClient, path: str, body: dict[str, Any], **headers: str) -> list[Event]:
    async with client.stream("POST", path, json=body, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [event async for event in aiter_events(response.aiter_bytes())]


def _chunks(events: list[Event]) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects, after checking the stream's frame: JSON
    events of one completion, ``[DONE]`` once and last."""
    assert [e.data for e in events].count("[DONE]") == 1
    assert events[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    return chunks


def _finish_and_usage(chunks: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    finishes = [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]]
    assert len(finishes) == 1
    # The usage chunk: last, no choices; every other chunk says usage null (as OpenAI).
    assert chunks[-1]["choices"] == []
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    return finishes[0], chunks[-1]["usage"]


async def test_a_streamed_chat_completion_read_with_httpx_equals_the_whole_answer(
    client: httpx.AsyncClient, stub: StubModel
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello to the whole team, please."}]}
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    chunks = _chunks(await _events(client, CHAT_COMPLETIONS, stream))
    pieces = [c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"]]
    assert len([p for p in pieces if p]) > 3  # several deltas: the reader had to reassemble
    finish, usage = _finish_and_usage(chunks)

    whole = (await client.post(CHAT_COMPLETIONS, json=body)).json()
    assert "".join(pieces) == whole["choices"][0]["message"]["content"]
    assert whole["choices"][0]["message"]["content"].startswith("Stub answer: ")
    assert finish == whole["choices"][0]["finish_reason"] == "stop"
    assert usage == whole["usage"]
    assert stub.stats()["count"] == 2  # both made by the model: nothing answered from a cache


async def test_streamed_tool_calls_read_with_httpx_equal_the_whole_answer(
    client: httpx.AsyncClient, stub: StubModel
) -> None:
    stub.set_default(protocol=True)  # calls the tool with the prompt's quoted city
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Weather in 'Lisbon', then 'Porto'?"}],
        "tools": [WEATHER],
        "tool_choice": "required",
    }
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    chunks = _chunks(await _events(client, CHAT_COMPLETIONS, stream))
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or ():
                call = calls.setdefault(delta["index"], {"name": "", "arguments": ""})
                call["name"] += delta["function"].get("name") or ""
                call["arguments"] += delta["function"].get("arguments") or ""
    finish, usage = _finish_and_usage(chunks)

    whole = (await client.post(CHAT_COMPLETIONS, json=body)).json()
    expected = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in whole["choices"][0]["message"]["tool_calls"]
    ]
    assert [calls[i] for i in sorted(calls)] == expected
    assert json.loads(expected[0]["arguments"]) == {"city": "Lisbon"}
    assert finish == whole["choices"][0]["finish_reason"] == "tool_calls"
    assert usage == whole["usage"]


async def test_our_own_chat_stream_read_with_httpx_equals_the_whole_answer(
    client: httpx.AsyncClient, stub: StubModel
) -> None:
    body = {"messages": [{"role": "user", "content": "Tell the team the release is on Friday."}]}
    events = await _events(client, "/api/v1/chat", body, accept="text/event-stream")
    assert [e.event for e in events[:-1]] == ["delta"] * (len(events) - 1)
    assert events[-1].event == "done"
    assert len(events) > 3
    text = "".join(json.loads(e.data)["text"] for e in events[:-1])
    done = json.loads(events[-1].data)

    whole = (await client.post("/api/v1/chat", json=body)).json()
    assert text == whole["message"]["content"]
    for field in ("usage", "finish_reason", "model", "cost_usd", "redacted"):
        assert done[field] == whole[field], field
    assert stub.stats()["count"] == 2
