"""A prompt file's ``tools:`` block and a request's ``run_limits``: plain values, no SK.

::

    tools:
      functions: [calc-evaluate, clock-add]   # plugin-function, see sk_core/plugins/
      choice: auto                            # auto | required | none
      limits:
        max_steps: 4              # model round trips in one run
        max_tool_calls: 8         # tool executions in one run
        max_cost_usd: 0.01        # the run's own ceiling (the tenant's budget applies too)
        tool_timeout_seconds: 5   # each tool execution
        max_result_chars: 4000    # a tool result is cut to this before the model reads it

A request may lower any limit in its ``run_limits`` member, never raise one (a larger
value is a 400 naming the field).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from sk_core.pricing import nano
from sk_core.tools._discovery import ToolInfo, available_tools

Choice = Literal["auto", "required", "none"]
_CHOICES = ("auto", "required", "none")

# Above these a file is refused: a run is one HTTP request, and its wall time and cost
# grow with every step.
_CEILINGS: dict[str, float] = {
    "max_steps": 16,
    "max_tool_calls": 64,
    "max_cost_usd": 10.0,
    "tool_timeout_seconds": 60.0,
    "max_result_chars": 32_000,
}


@dataclass(frozen=True)
class RunLimits:
    """Per-run limits (the file's, or lower ones a request asked for)."""

    max_steps: int = 4
    max_tool_calls: int = 8
    max_cost_usd: float | None = None  # None: only the tenant's budget bounds the run
    tool_timeout_seconds: float = 5.0
    max_result_chars: int = 4000

    @property
    def max_cost_nano(self) -> int | None:
        """The run's cost ceiling in nano-USD, or None."""
        return None if self.max_cost_usd is None else nano(str(self.max_cost_usd))

    def lowered(self, request: Mapping[str, Any] | None) -> RunLimits:
        """These limits with a request's (validated, never higher) values applied."""
        if not request:
            return self
        return replace(self, **{k: v for k, v in request.items() if v is not None})

    def public(self) -> dict[str, Any]:
        """As the catalog and a run's report show them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ToolSettings:
    """Which plugin functions a prompt function may call, how, and within what limits."""

    tools: tuple[ToolInfo, ...]
    choice: Choice
    limits: RunLimits

    @property
    def names(self) -> tuple[str, ...]:
        """The qualified names (``plugin-function``)."""
        return tuple(tool.qualified for tool in self.tools)

    def public(self) -> list[dict[str, str]]:
        """The catalog's ``tools`` member."""
        return [tool.public() for tool in self.tools]

    def request_model(self) -> type[BaseModel]:
        """The request's ``run_limits`` member: each limit optional and at most the file's."""
        limits = self.limits
        specs: dict[str, Any] = {
            "max_steps": (int | None, Field(None, ge=1, le=limits.max_steps, strict=True)),
            "max_tool_calls": (int | None, Field(None, ge=0, le=limits.max_tool_calls, strict=True)),
            "max_cost_usd": (
                float | None,
                Field(None, gt=0, le=limits.max_cost_usd if limits.max_cost_usd is not None else None),
            ),
            "tool_timeout_seconds": (float | None, Field(None, gt=0, le=limits.tool_timeout_seconds)),
            "max_result_chars": (int | None, Field(None, ge=1, le=limits.max_result_chars, strict=True)),
        }
        return create_model("RunLimits", __config__=ConfigDict(extra="forbid"), **specs)


def _limits(raw: Any, where: str) -> RunLimits:
    if raw is None:
        return RunLimits()
    if not isinstance(raw, dict) or set(raw) - set(_CEILINGS):
        raise ValueError(f"{where}: tools.limits may set only {', '.join(_CEILINGS)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        integer = key in ("max_steps", "max_tool_calls", "max_result_chars")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (integer and not isinstance(value, int)) or not 0 < value <= _CEILINGS[key]:
            raise ValueError(f"{where}: tools.limits.{key} must be a number in (0, {_CEILINGS[key]}]")
        values[key] = value if integer else float(value)
    return RunLimits(**values)


def parse_tool_settings(raw: Any, where: str) -> ToolSettings | None:
    """The settings a ``tools:`` value declares (None when absent); ``ValueError`` names ``where``."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"functions", "choice", "limits"}:
        raise ValueError(f"{where}: tools must be a mapping of functions, choice, limits")
    names = raw.get("functions")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{where}: tools.functions must list plugin-function names")
    known = available_tools()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"{where}: tools.functions names unknown plugin functions {unknown}")
    choice = raw.get("choice", "auto")
    if choice not in _CHOICES:
        raise ValueError(f"{where}: tools.choice must be one of {', '.join(_CHOICES)}")
    return ToolSettings(
        tools=tuple(known[name] for name in dict.fromkeys(names)),
        choice=choice,
        limits=_limits(raw.get("limits"), where),
    )
