"""The plugins inside the cached kernel: imported when the kernel is built, and only
those some prompt function may call (a catalog without tools imports none of them).

Imports Semantic Kernel: reached only from the kernel build (``sk_core.model``), through
the package face's lazy ``load_toolbox``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import importlib
import inspect
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from semantic_kernel.connectors.ai.function_calling_utils import (
    kernel_function_metadata_to_function_call_format,
)
from semantic_kernel.filters.functions.function_invocation_context import FunctionInvocationContext
from semantic_kernel.functions import KernelArguments
from semantic_kernel.functions.kernel_function_from_method import KernelFunctionFromMethod

from sk_core.tools._discovery import PLUGINS_PACKAGE, ToolInfo
from sk_core.tools._run import ToolError

if TYPE_CHECKING:
    from semantic_kernel import Kernel

    from sk_core.catalog import Catalog


# Synchronous plugin methods run here (see Toolbox.invoke); a few threads, as the
# shipped ones take microseconds and a worker serves one process's requests.
_SYNC_TOOLS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="sk-tool")


class Toolbox:
    """The callable plugin functions, by qualified name, and their OpenAI tool definitions."""

    def __init__(self, kernel: Kernel, functions: dict[str, KernelFunctionFromMethod]) -> None:
        self._kernel = kernel
        self._functions = functions
        self._definitions = {
            name: kernel_function_metadata_to_function_call_format(function.metadata)
            for name, function in functions.items()
        }
        # The definitions' size is part of every step's prompt (the tool schemas are
        # sent each time): counted in the step's prompt-token bound.
        self._sizes = {name: len(json.dumps(d).encode()) for name, d in self._definitions.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def definitions(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """The ``tools`` request member for ``names``."""
        return [self._definitions[name] for name in names]

    def definitions_bytes(self, names: Iterable[str]) -> int:
        """UTF-8 bytes of those definitions as JSON."""
        return sum(self._sizes[name] for name in names)

    async def invoke(self, name: str, arguments: dict[str, Any]) -> str:
        """Run one plugin function with the model's (decoded) arguments; its result as text.

        SK's own argument parsing (``gather_function_parameters``: types from the
        annotations, required parameters checked), then the method, awaited if async.
        Not through ``KernelFunction.invoke``: the run loop opens the ``execute_tool``
        span itself (with the call id, timeout and outcome), and SK's would nest a second.
        An ``async`` method runs on the event loop (a timeout cancels it); a synchronous
        one on a small thread pool (a timeout abandons it).
        A ``ValueError`` (the plugins' way to say the input is wrong) becomes ``ToolError``.
        """
        function = self._functions[name]
        # Constructed without validation: SK rebuilds this pydantic model lazily inside
        # KernelFunction.invoke, and gather_function_parameters reads only the kernel
        # and the arguments.
        context = FunctionInvocationContext.model_construct(
            function=function, kernel=self._kernel, arguments=KernelArguments(**arguments)
        )
        try:
            parameters = function.gather_function_parameters(context)
            if inspect.iscoroutinefunction(function.method):
                result = await function.method(**parameters)
            else:
                # A synchronous method runs on a small pool of its own, never on the
                # event loop: one that blocks (I/O, a slow computation) must not stall
                # every other request of the worker. Its timeout still ends the call for
                # the model; the thread itself cannot be stopped and finishes on its own.
                loop = asyncio.get_running_loop()
                # In this call's context (as asyncio.to_thread): the tool's own spans and
                # logs belong to its execute_tool span.
                in_context = functools.partial(contextvars.copy_context().run, function.method, **parameters)
                result = await loop.run_in_executor(_SYNC_TOOLS, in_context)
                if inspect.isawaitable(result):
                    result = await result
        except ValueError as exc:
            raise ToolError(str(exc)) from exc
        except Exception as exc:
            cause = exc.__cause__
            if type(exc).__name__ == "FunctionExecutionException":
                # SK's argument parsing: its message names the parameter, not user data.
                raise ToolError(str(exc)) from exc
            if isinstance(cause, ValueError):
                raise ToolError(str(cause)) from exc
            raise
        return result if isinstance(result, str) else json.dumps(result, default=str)


def load_toolbox(kernel: Kernel, catalog: Catalog) -> Toolbox:
    """Import the plugins the catalog's functions may call and add them to ``kernel``.

    Each plugin is checked against what the catalog read from its source
    (``_discovery``): a function the catalog promised but SK does not see, or another
    description, fails the build.
    """
    wanted: dict[str, list[ToolInfo]] = {}
    for spec in catalog:
        settings = getattr(spec, "tools", None)
        for tool in settings.tools if settings is not None else ():
            if tool not in wanted.setdefault(tool.plugin, []):
                wanted[tool.plugin].append(tool)
    functions: dict[str, KernelFunctionFromMethod] = {}
    for plugin_name, tools in wanted.items():
        module = importlib.import_module(f"{PLUGINS_PACKAGE}.{plugin_name}")
        plugin = kernel.add_plugin(getattr(module, tools[0].class_name)(), plugin_name=plugin_name)
        for tool in tools:
            function = plugin.functions.get(tool.name)
            if not isinstance(function, KernelFunctionFromMethod) or function.description != tool.description:
                raise ValueError(f"plugin function {tool.qualified} differs from its source's declaration")
            functions[tool.qualified] = function
    return Toolbox(kernel, functions)
