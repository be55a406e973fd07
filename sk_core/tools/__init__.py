"""Tools: plugin functions a prompt function's model may call, run under per-step limits.

A prompt file's ``tools:`` block (``ToolSettings``) names the plugin functions
(``sk_core/plugins/``) its model may call, the choice behaviour and the run limits.
``ToolRun`` is the loop: each model round trip is admitted and settled by the caller's
``StepGate`` (the pipeline's stages), tools run with a timeout each, their results are
size-capped and screened before the model reads them.

This face imports no Semantic Kernel: the catalog reads plugin metadata from source
(``available_tools``); ``load_toolbox`` (which imports SK and the plugins) loads on
first use, from the kernel build.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sk_core.tools._discovery import ToolInfo, available_tools
from sk_core.tools._run import (
    RunReport,
    RunStopped,
    StepGate,
    ToolCallReport,
    ToolError,
    ToolRun,
    Verdict,
    prompt_bound,
)
from sk_core.tools._settings import RunLimits, ToolSettings, parse_tool_settings

if TYPE_CHECKING:
    from sk_core.tools._kernel import Toolbox, load_toolbox

_LAZY = {"Toolbox": "sk_core.tools._kernel", "load_toolbox": "sk_core.tools._kernel"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RunLimits",
    "RunReport",
    "RunStopped",
    "StepGate",
    "ToolCallReport",
    "ToolError",
    "ToolInfo",
    "ToolRun",
    "ToolSettings",
    "Toolbox",
    "Verdict",
    "available_tools",
    "load_toolbox",
    "parse_tool_settings",
    "prompt_bound",
]
