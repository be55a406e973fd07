"""The stub model's protocol mode: its fixed rules, request by request (no server)."""

from __future__ import annotations

import json
from typing import Any

from tests.support.protocol_model import protocol_behaviour

ADDER: Any = {
    "type": "function",
    "function": {
        "name": "my_adder_tool",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
CUSTOMER: Any = {
    "type": "function",
    "function": {
        "name": "unicode_customer",
        "parameters": {
            "type": "object",
            "properties": {"customer_name": {"type": "string"}, "vip": {"type": "boolean"}},
        },
    },
}


def _user(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": text}], **extra}


def test_a_required_tool_gets_the_prompts_numbers_in_order() -> None:
    answer = protocol_behaviour(_user("What is 3 + 4", tools=[ADDER], tool_choice="required"))
    assert answer == {"tool_calls": ({"name": "my_adder_tool", "arguments": {"a": 3, "b": 4}},)}


def test_auto_calls_only_a_tool_the_prompt_mentions() -> None:
    assert protocol_behaviour(_user("Hello!", tools=[ADDER, CUSTOMER], tool_choice="auto")) == {}
    named = protocol_behaviour(_user("Create a customer named '你好' now", tools=[ADDER, CUSTOMER]))
    assert named == {
        "tool_calls": ({"name": "unicode_customer", "arguments": {"customer_name": "你好", "vip": False}},)
    }


def test_a_named_tool_choice_wins_and_none_calls_nothing() -> None:
    choice = {"type": "function", "function": {"name": "my_adder_tool"}}
    answer = protocol_behaviour(_user("a customer", tools=[ADDER, CUSTOMER], tool_choice=choice))
    assert answer["tool_calls"][0]["name"] == "my_adder_tool"
    assert answer["tool_calls"][0]["arguments"] == {"a": 0, "b": 0}  # no numbers in the prompt
    assert protocol_behaviour(_user("What is 3 + 4", tools=[ADDER], tool_choice="none")) == {}


def test_a_tool_result_is_answered_in_text() -> None:
    payload = {
        "messages": [
            {"role": "user", "content": "What is 1 + 2"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
             "function": {"name": "my_adder_tool", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"result": 3}'},
        ],
        "tools": [ADDER],
        "tool_choice": "required",
    }  # fmt: skip
    assert protocol_behaviour(payload) == {"content": 'The tool answered: {"result": 3}'}


def test_a_json_schema_answer_matches_its_schema() -> None:
    schema = {
        "type": "object",
        "$defs": {"Part": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5}}}},
        "properties": {
            "setup": {"type": "string"},
            "punchline": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "kind": {"enum": ["pun", "other"]},
            "parts": {"type": "array", "items": {"$ref": "#/$defs/Part"}},
        },
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "joke", "schema": schema}}
    answer = json.loads(
        protocol_behaviour(_user("Tell me a joke about cats.", response_format=fmt))["content"]
    )
    assert answer == {
        "setup": "setup: Tell me a joke about cats.",
        "punchline": "punchline: Tell me a joke about cats.",
        "kind": "pun",
        "parts": [{"n": 5}],
    }


def test_a_json_object_answer_has_the_prompts_quoted_keys() -> None:
    prompt = "Return JSON with 'setup' and 'punchline' keys."
    answer = protocol_behaviour(_user(prompt, response_format={"type": "json_object"}))
    assert set(json.loads(answer["content"])) == {"setup", "punchline"}
    assert protocol_behaviour(_user("Hi")) == {}  # plain text: the stub's default answer
