"""The openai SDK's structured-output helpers against ``/api/v1``: ``parse`` and the
``stream`` helper with a Pydantic ``response_format`` (the SDK builds the strict JSON
schema and parses the answer), and a forced tool call parsed by the same helper. The
stub answers in its protocol mode, an instance of the schema it was sent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from pydantic import BaseModel

from sk_core.composition import Service
from tests.http.test_openai_compat import MODEL, new_key
from tests.support.hosts import ContainerHost
from tests.support.stub_model import StubModel


class Weather(BaseModel):
    city: str
    celsius: int


@pytest.fixture
async def client(
    container_host: ContainerHost, functions_service: Service, stub: StubModel
) -> AsyncIterator[openai.AsyncOpenAI]:
    _, key = await new_key(functions_service)
    stub.set_default(protocol=True)
    sdk = openai.AsyncOpenAI(base_url=f"{container_host.base_url}/api/v1", api_key=key, max_retries=0)
    yield sdk
    await sdk.close()


async def test_parse_returns_the_schemas_instance(client: openai.AsyncOpenAI, stub: StubModel) -> None:
    prompt = "The weather in 'Lisbon' is 24 degrees."
    answer = await client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": prompt}], response_format=Weather
    )
    assert answer.choices[0].message.parsed == Weather(city="Lisbon", celsius=24)
    sent = stub.requests()[-1]["json"]["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["strict"] is True


async def test_the_stream_helper_assembles_the_same_parsed_answer(client: openai.AsyncOpenAI) -> None:
    prompt = "The weather in 'Porto' is 19 degrees."
    async with client.chat.completions.stream(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        response_format=Weather,
        stream_options={"include_usage": True},
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_completion()
    assert "content.done" in kinds
    assert final.choices[0].message.parsed == Weather(city="Porto", celsius=19)
    assert final.usage is not None


async def test_a_forced_strict_tool_call_is_parsed_into_its_model(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": "Record 'Faro' at 30."}],
        tools=[openai.pydantic_function_tool(Weather)],
        tool_choice={"type": "function", "function": {"name": "Weather"}},
    )
    calls = answer.choices[0].message.tool_calls or []
    assert [call.function.parsed_arguments for call in calls] == [Weather(city="Faro", celsius=30)]
    assert answer.choices[0].finish_reason == "tool_calls"
