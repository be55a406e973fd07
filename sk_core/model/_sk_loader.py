"""Import Semantic Kernel without paying for its handlebars engine until a prompt uses it.

``import semantic_kernel`` always imports ``prompt_template.handlebars_prompt_template``,
which does ``from pybars import Compiler, PybarsError``; importing pybars builds two
PEG grammars with PyMeta at import time: about 1.2 s of CPU on this machine, a third of
SK's import and a quarter of a cold start, for a template format our prompt files do
not use.

:func:`import_semantic_kernel` imports SK with a placeholder ``pybars`` module in
``sys.modules`` for the duration of that one import, then removes it, so only SK's
handlebars module holds the placeholder names and any other ``import pybars`` gets the
real package. The placeholder ``Compiler`` loads the real pybars on first use (a prompt
file with ``template_format: handlebars``) and rebinds the handlebars module's
``Compiler`` and ``PybarsError`` globals to the real ones. SK's methods look those
globals up when they run (including ``except PybarsError`` clauses, which are evaluated
only once an exception is raised, after the rebinding), so handlebars prompts behave
exactly as without this module; they just pay the import when first compiled.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types
from typing import Any

HANDLEBARS_MODULE = "semantic_kernel.prompt_template.handlebars_prompt_template"

_lock = threading.RLock()


class _PlaceholderError(Exception):
    """Stands in for ``pybars.PybarsError`` until pybars loads; never raised."""


def _load_handlebars() -> types.ModuleType:
    """Import the real pybars and bind it into SK's handlebars module (idempotent)."""
    with _lock:
        pybars = importlib.import_module("pybars")
        handlebars = sys.modules.get(HANDLEBARS_MODULE)
        if handlebars is not None:
            handlebars.Compiler = pybars.Compiler  # type: ignore[attr-defined]
            handlebars.PybarsError = pybars.PybarsError  # type: ignore[attr-defined]
        return pybars


class _DeferredCompiler:
    """``pybars.Compiler`` as SK's handlebars module sees it before the first handlebars prompt."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return _load_handlebars().Compiler(*args, **kwargs)


def import_semantic_kernel() -> None:
    """Import ``semantic_kernel`` with pybars deferred (a no-op once SK is imported)."""
    with _lock:
        if HANDLEBARS_MODULE in sys.modules:
            return
        if "pybars" in sys.modules:  # someone already paid for it: nothing to save
            importlib.import_module("semantic_kernel")
            return
        placeholder = types.ModuleType("pybars", "Placeholder for pybars while Semantic Kernel imports.")
        placeholder.Compiler = _DeferredCompiler  # type: ignore[attr-defined]
        placeholder.PybarsError = _PlaceholderError  # type: ignore[attr-defined]
        sys.modules["pybars"] = placeholder
        try:
            importlib.import_module("semantic_kernel")
        finally:
            if sys.modules.get("pybars") is placeholder:
                del sys.modules["pybars"]
