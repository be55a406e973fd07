"""The stub model's protocol mode: a deterministic stand-in for a model that follows
the request's tools, ``tool_choice`` and ``response_format``.

The local model (SmolLM2-135M) cannot call tools, and a scripted answer per request
cannot follow a third-party suite (LangChain's standard tests) whose requests we do not
write. This answers from the request alone, by fixed rules, so that what such a suite
checks is the wire protocol through our endpoint, not model quality:

* the last message is a tool result: a text answer quoting it;
* tools are offered and ``tool_choice`` is not ``none``: a call of the named function, or
  of the tool whose name (or a word of it) the prompt mentions, or (``required``) of the
  first tool; its arguments are built from the tool's JSON schema, integers taken from the
  prompt's numbers and strings from its quoted text, in order (else the prompt itself);
* ``response_format`` ``json_schema``: an instance of the schema, built the same way;
  ``json_object``: an object whose keys are the prompt's quoted words;
* otherwise nothing: the stub's default text answer.

Enabled with ``StubModel.set_default(protocol=True)``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["protocol_behaviour"]

_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")
_INTEGER = re.compile(r"-?\d+")


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class _Prompt:
    """The last user message, read as a source of argument values (each used once)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._numbers: Iterator[str] = iter(_INTEGER.findall(text))
        self._quoted: Iterator[str] = iter(a or b for a, b in _QUOTED.findall(text))

    def quoted_words(self) -> list[str]:
        return [a or b for a, b in _QUOTED.findall(self.text)]

    def integer(self, schema: Mapping[str, Any]) -> int:
        number = next(self._numbers, None)
        if number is not None:
            return int(number)
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        return max(0, int(low))

    def string(self, name: str) -> str:
        return next(self._quoted, None) or f"{name}: {self.text}"


def _instance(
    schema: Mapping[str, Any], prompt: _Prompt, defs: Mapping[str, Any], name: str = "value"
) -> Any:
    """A value matching ``schema`` (the subset tool and answer schemas use)."""
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(("#/$defs/", "#/definitions/")):
        return _instance(defs.get(ref.rsplit("/", 1)[1], {}), prompt, defs, name)
    for key in ("anyOf", "oneOf", "allOf"):
        options = [s for s in schema.get(key) or () if s.get("type") != "null"]
        if options:
            return _instance(options[0], prompt, defs, name)
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        properties: Mapping[str, Any] = schema.get("properties") or {}
        return {key: _instance(sub, prompt, defs, key) for key, sub in properties.items()}
    if kind == "array":
        return [_instance(schema.get("items") or {}, prompt, defs, name)]
    if kind in ("integer", "number"):
        return prompt.integer(schema)
    if kind == "boolean":
        return False
    return prompt.string(name)


def _mentioned(tool: Mapping[str, Any], prompt: str) -> bool:
    name = str(tool.get("name", ""))
    words = [w for w in name.lower().split("_") if len(w) > 3]
    lowered = prompt.lower()
    return name.lower() in lowered or any(w in lowered for w in words)


def _chosen_tool(tools: list[Mapping[str, Any]], choice: object, prompt: str) -> Mapping[str, Any] | None:
    if isinstance(choice, dict):
        named = choice.get("function", {}).get("name")
        return next((t for t in tools if t.get("name") == named), None)
    if choice == "none":
        return None
    mentioned = next((t for t in tools if _mentioned(t, prompt)), None)
    return mentioned or (tools[0] if choice == "required" else None)


def protocol_behaviour(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``content`` or ``tool_calls`` the stub answers ``payload`` with (empty: its
    default answer)."""
    messages = [m for m in payload.get("messages") or () if isinstance(m, dict)]
    if messages and messages[-1].get("role") == "tool":
        return {"content": f"The tool answered: {_text(messages[-1].get('content'))}"}
    last_user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    prompt = _Prompt(last_user)
    tools = [t["function"] for t in payload.get("tools") or () if isinstance(t, dict) and "function" in t]
    tool = _chosen_tool(tools, payload.get("tool_choice", "auto"), last_user) if tools else None
    if tool is not None:
        parameters = tool.get("parameters") or {}
        arguments = _instance(parameters, prompt, parameters.get("$defs", {})) if parameters else {}
        return {"tool_calls": ({"name": tool["name"], "arguments": arguments},)}
    response_format = payload.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = response_format.get("json_schema", {}).get("schema", {})
        return {"content": json.dumps(_instance(schema, prompt, schema.get("$defs", {})), ensure_ascii=False)}
    if response_format.get("type") == "json_object":
        keys = prompt.quoted_words() or ["answer"]
        return {"content": json.dumps({key: f"{key}: {last_user}" for key in keys}, ensure_ascii=False)}
    return {}
