"""The OpenAI-compatible routes through real clients: the openai SDK (sync, async,
streaming with and without ``include_usage``) and Semantic Kernel's own
``OpenAIChatCompletion``, against the container host over real HTTP, which talks to the
stub model process; tenants and the ledger in Azurite.

What must hold: the SDKs work unchanged; every refusal reaches the SDK as its own typed
exception with our ``code`` (and ``Retry-After``); an unsupported parameter is refused
by name; streamed usage and cost equal what the ledger charged.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from sk_core.accounts import Limits, Tenant
from sk_core.composition import Service
from sk_core.limits import window_keys
from tests.support.hosts import ContainerHost
from tests.support.stub_model import SECRET_MARKER, StubModel

MODEL = "stub-model"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello to the team."}]


async def new_key(
    service: Service, limits: Limits | None = None, scopes: tuple[str, ...] | None = None
) -> tuple[str, str]:
    """A fresh tenant (so limits and spend start at zero) and one key: (tenant id, key)."""
    tenant = Tenant(id="oai-" + secrets.token_hex(4), display_name="OpenAI tests", limits=limits or Limits())
    await service.tenants.create_tenant(tenant)
    issued = await (
        service.tenants.issue_key(tenant.id, scopes=scopes)
        if scopes is not None
        else service.tenants.issue_key(tenant.id)
    )
    return tenant.id, issued.secret


@pytest.fixture
async def caller(functions_service: Service) -> tuple[str, str]:
    """A fresh tenant with default limits and its key: (tenant id, key)."""
    return await new_key(functions_service)


_OPEN: list[openai.OpenAI | openai.AsyncOpenAI] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    # filterwarnings = error: a client left open is a failing ResourceWarning.
    yield
    while _OPEN:
        client = _OPEN.pop()
        if isinstance(client, openai.AsyncOpenAI):
            await client.close()
        else:
            client.close()


def sdk(host: ContainerHost, key: str) -> openai.OpenAI:
    # The SDK's own retries off: each test sees the first answer.
    client = openai.OpenAI(base_url=f"{host.base_url}/api/v1", api_key=key, max_retries=0)
    _OPEN.append(client)
    return client


def async_sdk(host: ContainerHost, key: str) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=f"{host.base_url}/api/v1", api_key=key, max_retries=0)
    _OPEN.append(client)
    return client


async def ledger_settles_to(service: Service, tenant_id: str, spent_nano: int) -> dict[str, int]:
    """The tenant's day row once the service process has reported its leases: nothing
    held or leased to a call in flight, and ``spent_nano`` spent (or the last reading)."""
    day = window_keys(datetime.now(UTC))[0]
    deadline = time.monotonic() + 10
    while True:
        usage = await service.ledger.usage(tenant_id, day)
        if (usage["spent_nano"] == spent_nano and usage["held_nano"] == 0) or time.monotonic() > deadline:
            return usage
        await asyncio.sleep(0.1)


async def test_the_sync_sdk_gets_a_chat_completion(
    container_host: ContainerHost, functions_service: Service, stub: StubModel, caller: tuple[str, str]
) -> None:
    tenant_id, key = caller
    stub.script({"content": "Hello, team!", "prompt_tokens": 21, "completion_tokens": 4})
    raw = sdk(container_host, key).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Say hello "}, {"type": "text", "text": "now."}],
            },
        ],
        max_completion_tokens=40,
        temperature=0.2,
        top_p=0.9,
        stop=["\n\n"],
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        user="end-user-42",
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello, team!"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (21, 4)
    cost = functions_service.settings.price.cost_nano(21, 4)
    assert raw.headers["x-request-cost-usd"] == f"{cost / 1e9:.9f}"
    assert int(raw.headers["ratelimit-limit"]) == Limits().requests_per_minute
    # What reached the model: the chat function's system prompt first, then the
    # caller's conversation (content parts joined), and every sampling parameter.
    sent = stub.requests()[-1]["json"]
    assert sent["messages"][0]["role"] == "system"
    assert [m["content"] for m in sent["messages"][1:]] == ["Be brief.", "Say hello now."]
    assert {k: sent[k] for k in ("max_tokens", "temperature", "top_p", "stop", "seed", "user")} == {
        "max_tokens": 40, "temperature": 0.2, "top_p": 0.9, "stop": ["\n\n"], "seed": 7,
        "user": "end-user-42",
    }
    assert (sent["presence_penalty"], sent["frequency_penalty"]) == (0.5, -0.5)
    assert "stream" not in sent or sent["stream"] is False
    assert (await ledger_settles_to(functions_service, tenant_id, cost))["spent_nano"] == cost


async def test_the_async_sdk_streams_with_usage_and_the_ledger_agrees(
    container_host: ContainerHost, functions_service: Service, stub: StubModel, caller: tuple[str, str]
) -> None:
    tenant_id, key = caller
    stub.script({"content": "One two three four five six.", "prompt_tokens": 30, "completion_tokens": 6})
    client = async_sdk(container_host, key)
    stream = await client.chat.completions.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "One two three four five six."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1]
    assert chunks[-1].choices == []
    usage = usage_chunks[0].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (30, 6, 36)
    streamed_cost = (usage_chunks[0].model_extra or {})["cost_usd"]
    cost = functions_service.settings.price.cost_nano(30, 6)
    assert streamed_cost == cost / 1e9
    # We always ask the provider for usage, whatever the client asked.
    assert stub.requests()[-1]["json"]["stream_options"] == {"include_usage": True}
    assert (await ledger_settles_to(functions_service, tenant_id, cost))["spent_nano"] == cost
    await client.close()


async def test_a_stream_without_include_usage_has_no_usage_chunk_but_is_charged_exactly(
    container_host: ContainerHost, functions_service: Service, stub: StubModel, caller: tuple[str, str]
) -> None:
    tenant_id, key = caller
    stub.script({"content": "Short answer here.", "prompt_tokens": 12, "completion_tokens": 3})
    with sdk(container_host, key).chat.completions.create(model=MODEL, messages=HELLO, stream=True) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Short answer here."
    assert all(c.usage is None for c in chunks)
    # The provider was still asked for usage, and the call settled from it.
    assert stub.requests()[-1]["json"]["stream_options"] == {"include_usage": True}
    cost = functions_service.settings.price.cost_nano(12, 3)
    assert (await ledger_settles_to(functions_service, tenant_id, cost))["spent_nano"] == cost


async def test_the_stream_is_openai_sse_ending_with_done(
    container_host: ContainerHost, stub: StubModel, caller: tuple[str, str]
) -> None:
    key = caller[1]
    stub.script({"content": "A B", "prompt_tokens": 5, "completion_tokens": 2})
    async with httpx.AsyncClient(base_url=container_host.base_url, timeout=30) as client:
        response = await client.post(
            "/api/v1/chat/completions",
            json={"model": MODEL, "messages": HELLO, "stream": True},
            headers={"authorization": f"Bearer {key}"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    events = [block for block in response.text.split("\n\n") if block]
    assert all(block.startswith("data: ") for block in events)
    assert events[-1] == "data: [DONE]"


async def test_semantic_kernels_openai_connector_works_against_the_endpoint(
    container_host: ContainerHost, functions_service: Service, stub: StubModel
) -> None:
    from semantic_kernel.connectors.ai.open_ai import (
        OpenAIChatCompletion,
        OpenAIChatPromptExecutionSettings,
    )
    from semantic_kernel.contents import ChatHistory

    _, key = await new_key(functions_service)
    client = async_sdk(container_host, key)
    service = OpenAIChatCompletion(ai_model_id=MODEL, async_client=client)
    history = ChatHistory()
    history.add_user_message("Say hello to the team.")
    settings = OpenAIChatPromptExecutionSettings(max_tokens=50, temperature=0.1)

    stub.script({"content": "Hello from SK.", "prompt_tokens": 9, "completion_tokens": 3})
    answer = await service.get_chat_message_content(history, settings)
    assert answer is not None
    assert str(answer) == "Hello from SK."
    assert answer.metadata["usage"].completion_tokens == 3

    stub.script({"content": "Streamed via SK.", "prompt_tokens": 9, "completion_tokens": 3})
    pieces = [
        message
        async for batch in service.get_streaming_chat_message_contents(history, settings)
        for message in batch
    ]
    assert "".join(str(p) for p in pieces) == "Streamed via SK."
    # SK asks for usage when streaming, and gets it on the last chunk.
    assert any(p.metadata.get("usage") is not None for p in pieces)
    await client.close()


async def test_models_lists_what_the_key_may_use(
    container_host: ContainerHost, functions_service: Service
) -> None:
    _, key = await new_key(functions_service)
    models = [m.id async for m in async_sdk(container_host, key).models.list()]
    assert models == [MODEL]
    _, scoped = await new_key(functions_service, scopes=("text/summarize",))
    assert [m.id async for m in async_sdk(container_host, scoped).models.list()] == []


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),  # tools are supported (tests/tools/)
        ({"logprobs": True}, "logprobs"),
        ({"n": 2}, "n"),
    ],
)
async def test_an_unsupported_parameter_is_refused_by_name(
    container_host: ContainerHost,
    functions_service: Service,
    stub: StubModel,
    extra: dict[str, Any],
    param: str,
) -> None:
    tenant_id, key = await new_key(functions_service)
    with pytest.raises(openai.BadRequestError) as caught:
        await async_sdk(container_host, key).chat.completions.create(
            model=MODEL, messages=HELLO, extra_body=extra
        )
    error = caught.value
    assert error.status_code == 400
    assert (error.code, error.param) == ("unsupported_parameter", param)
    assert param in error.message
    assert stub.stats()["count"] == 0
    assert (await ledger_settles_to(functions_service, tenant_id, 0))["spent_nano"] == 0


async def test_invalid_values_and_unknown_models_get_the_sdks_typed_errors(
    container_host: ContainerHost, stub: StubModel, caller: tuple[str, str]
) -> None:
    key = caller[1]
    client = async_sdk(container_host, key)
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        await client.chat.completions.create(model=MODEL, messages=HELLO, temperature=3)
    assert (invalid.value.code, invalid.value.param) == ("validation_error", "temperature")
    with pytest.raises(openai.UnprocessableEntityError) as control:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a\x00b"}])
    assert control.value.param == "messages[0].content"
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="gpt-9", messages=HELLO)
    assert unknown.value.code == "not_found"
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        await async_sdk(container_host, "skf_000000000000_" + "x" * 43).chat.completions.create(
            model=MODEL, messages=HELLO
        )
    assert unauthorized.value.code == "unauthorized"
    assert unauthorized.value.body is not None
    assert stub.stats()["count"] == 0


async def test_provider_failures_keep_their_text_out(
    container_host: ContainerHost, stub: StubModel, caller: tuple[str, str]
) -> None:
    key = caller[1]
    stub.set_default(status=400)
    with pytest.raises(openai.InternalServerError) as caught:
        await async_sdk(container_host, key).chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    assert caught.value.status_code == 502
    assert caught.value.code == "model_error"
    assert SECRET_MARKER not in str(caught.value.body)
    assert SECRET_MARKER not in caught.value.message


async def test_budget_rpm_and_tpm_refusals_are_the_sdks_rate_limit_errors(
    container_host: ContainerHost, functions_service: Service, stub: StubModel
) -> None:
    def client_for(key: str) -> openai.AsyncOpenAI:
        return async_sdk(container_host, key)

    _, broke = await new_key(functions_service, Limits(daily_budget_nano=1_000, monthly_budget_nano=1_000))
    with pytest.raises(openai.RateLimitError) as budget:
        await client_for(broke).chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    assert budget.value.code == "budget_exceeded"
    assert int(budget.value.response.headers["retry-after"]) >= 1
    assert budget.value.body["budget_remaining_usd"] == 1e-6  # type: ignore[index]

    _, one_rpm = await new_key(functions_service, Limits(requests_per_minute=1))
    stub.script({"content": "First."})
    await client_for(one_rpm).chat.completions.create(model=MODEL, messages=HELLO)
    with pytest.raises(openai.RateLimitError) as rpm:
        await client_for(one_rpm).chat.completions.create(model=MODEL, messages=HELLO)
    assert rpm.value.code == "rate_limited"
    assert 1 <= int(rpm.value.response.headers["retry-after"]) <= 60
    assert rpm.value.response.headers["ratelimit-remaining"] == "0"

    _, few_tokens = await new_key(functions_service, Limits(tokens_per_minute=100))
    with pytest.raises(openai.RateLimitError) as tpm:
        await client_for(few_tokens).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 200}]
        )
    assert tpm.value.code == "tokens_rate_limited"
    assert stub.stats()["count"] == 1


async def test_concurrency_refusal_while_a_stream_is_open_then_an_abort_frees_everything(
    container_host: ContainerHost, functions_service: Service, stub: StubModel
) -> None:
    tenant_id, key = await new_key(functions_service, Limits(max_concurrent=1))
    stub.script(
        {"content": " ".join(["word"] * 40), "prompt_tokens": 10, "completion_tokens": 40, "chunk_delay": 0.1}
    )
    client = async_sdk(container_host, key)
    stream = await client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=64, stream=True)
    iterator = stream.__aiter__()
    first = await anext(iterator)  # the role chunk: the call is admitted and streaming
    assert first.choices[0].delta.role == "assistant"
    await anext(iterator)
    with pytest.raises(openai.RateLimitError) as busy:
        await client.chat.completions.create(model=MODEL, messages=HELLO)
    assert busy.value.code == "concurrency_limited"

    await stream.close()  # the client goes away mid-answer
    for _ in range(100):
        if stub.stats()["streams_aborted"] >= 1:
            break
        await asyncio.sleep(0.05)
    stats = stub.stats()
    # The provider's stream was closed long before its 4 s of answer were out.
    assert (stats["streams_aborted"], stats["streams_open"]) == (1, 0)

    # The slot is free again at once...
    stub.script({"content": "Next.", "prompt_tokens": 5, "completion_tokens": 1})
    answer = await client.chat.completions.create(model=MODEL, messages=HELLO)
    assert answer.choices[0].message.content == "Next."
    # ...and the aborted call was charged its reservation (it may have done the work:
    # README, "Settle"), the next one exactly; nothing is left held.
    spec = functions_service.catalog.get("chat", "chat")
    assert spec is not None
    bound = spec.prompt_token_bound({"messages": HELLO})
    price = functions_service.settings.price
    expected = price.cost_nano(bound, 64) + price.cost_nano(5, 1)
    usage = await ledger_settles_to(functions_service, tenant_id, expected)
    assert (usage["spent_nano"], usage["held_nano"]) == (expected, 0)
    await client.close()
