"""A content part other than text (an image, audio, a file) is refused with one clear
error on the message's ``content``, naming the part and its type, before any call:
not a list of the union's alternatives (``content[1].text``, which the client never
sent)."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from sk_core.composition import Service
from tests.http.test_openai_compat import MODEL, async_sdk, new_key
from tests.support.hosts import ContainerHost
from tests.support.stub_model import StubModel

TEXT_ONLY = "only text parts are supported, not "
PARTS: list[Any] = [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
]


async def test_a_part_other_than_text_is_refused_naming_it(
    container_host: ContainerHost, functions_service: Service, stub: StubModel
) -> None:
    _, key = await new_key(functions_service)
    client = async_sdk(container_host, key)
    cases: list[Any] = [
        [{"role": "system", "content": "s"}, {"role": "user", "content": PARTS}],
        [{"role": "user", "content": [{"text": "no type"}]}],
    ]
    refused = []
    for messages in cases:
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            await client.chat.completions.create(model=MODEL, messages=messages)
        refused.append((caught.value.param, caught.value.message))
    assert refused == [
        (
            "messages[1].content",
            "Error code: 422 - Invalid messages[1].content[1]: " + TEXT_ONLY + "'image_url'.",
        ),
        ("messages[0].content", "Error code: 422 - Invalid messages[0].content[0]: " + TEXT_ONLY + "None."),
    ]
    assert stub.stats()["count"] == 0
