"""What the plugins offer, read from their source without importing them.

The catalog lists each function's tools (``GET /api/v1/functions``) and validates the
``tools:`` block of every prompt file when it loads, at cold start; importing a plugin
module imports Semantic Kernel (its ``@kernel_function`` decorator), seconds we do not
spend before the first tool-using call. So this module parses each plugin module with
``ast`` and reads the decorator's ``name`` and ``description`` literals; the kernel
side (``_kernel.py``) checks, when it imports the modules, that Semantic Kernel sees
the same functions (a mismatch fails the kernel build, visibly in /api/ready).
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

PLUGINS_DIR = Path(__file__).resolve().parent.parent / "plugins"
PLUGINS_PACKAGE = "sk_core.plugins"
# Semantic Kernel's fully qualified function name on the wire: plugin-function.
SEPARATOR = "-"


@dataclass(frozen=True)
class ToolInfo:
    """One plugin function a model may call."""

    plugin: str
    name: str
    description: str
    class_name: str  # the plugin class in sk_core/plugins/<plugin>.py

    @property
    def qualified(self) -> str:
        """``plugin-name``, as prompt files and the model name it."""
        return f"{self.plugin}{SEPARATOR}{self.name}"

    def public(self) -> dict[str, str]:
        """What the catalog shows."""
        return {"plugin": self.plugin, "name": self.name, "description": self.description}


def _literal(call: ast.Call, keyword: str) -> str | None:
    for item in call.keywords:
        if item.arg == keyword and isinstance(item.value, ast.Constant) and isinstance(item.value.value, str):
            return item.value.value
    return None


def _decorator_call(function: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.Call | None:
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "kernel_function":
            return decorator
        if getattr(decorator, "id", None) == "kernel_function":
            raise ValueError(
                f"{function.name}: use @kernel_function(name=..., description=...) so the catalog "
                "can describe it without importing the plugin"
            )
    return None


def read_plugin(path: Path) -> list[ToolInfo]:
    """The ``@kernel_function`` methods of the one plugin class in ``path``."""
    plugin = path.stem
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[ToolInfo] = []
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    for cls in classes:
        for node in cls.body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            call = _decorator_call(node)
            if call is None:
                continue
            description = _literal(call, "description")
            if not description:
                raise ValueError(f"{path}: {cls.name}.{node.name} needs a literal description=")
            name = _literal(call, "name") or node.name
            found.append(ToolInfo(plugin, name, description, cls.name))
    if len({tool.class_name for tool in found}) > 1:
        raise ValueError(f"{path}: one plugin class per module")
    return found


@functools.cache
def available_tools(directory: Path = PLUGINS_DIR) -> dict[str, ToolInfo]:
    """Every plugin function under ``directory``, by qualified name (read once)."""
    tools: dict[str, ToolInfo] = {}
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        for tool in read_plugin(path):
            tools[tool.qualified] = tool
    return tools
