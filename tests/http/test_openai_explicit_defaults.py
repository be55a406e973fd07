"""Parameters a client may send at their default value, which asks for nothing we do not
do (no log probabilities, no stored completion, no bias, no stream padding): answered as
if left out. Any other value of them is still refused by name (400, nothing called)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from sk_core.composition import Service
from tests.http.test_openai_compat import HELLO, MODEL, async_sdk, new_key
from tests.support.hosts import ContainerHost
from tests.support.stub_model import StubModel

DEFAULTS: dict[str, Any] = {"logprobs": False, "store": False, "logit_bias": {}}


async def test_explicit_defaults_are_answered_as_if_left_out(
    container_host: ContainerHost, functions_service: Service, stub: StubModel
) -> None:
    _, key = await new_key(functions_service)
    client = async_sdk(container_host, key)
    answer = await client.chat.completions.create(model=MODEL, messages=HELLO, **DEFAULTS)
    assert answer.choices[0].message.content == "Stub answer: Say hello to the team."
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
        **DEFAULTS,
    )
    chunks = [chunk async for chunk in stream]
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == answer.choices[0].message.content
    )
    assert chunks[-1].usage is not None
    assert all("obfuscation" not in (c.model_extra or {}) for c in chunks)
    sent = [r["json"] for r in stub.requests()]
    assert len(sent) == 2
    assert not {"logprobs", "store", "logit_bias"} & (set(sent[0]) | set(sent[1]))


# Any other value of them, and the parameter each refusal names.
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"logprobs": True}, "logprobs"),
    ({"logprobs": 0}, "logprobs"),  # equal to false in Python, but not false
    ({"store": True}, "store"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"stream": True, "stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
]


async def test_any_other_value_of_them_is_refused_by_name(
    container_host: ContainerHost, functions_service: Service, stub: StubModel
) -> None:
    _, key = await new_key(functions_service)
    client = async_sdk(container_host, key)
    refused = []
    for extra, _param in REFUSED:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(model=MODEL, messages=HELLO, extra_body=extra)
        refused.append((caught.value.code, caught.value.param))
    assert refused == [("unsupported_parameter", param) for _, param in REFUSED]
    assert stub.stats()["count"] == 0
