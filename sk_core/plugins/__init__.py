"""Native plugins: Python classes whose ``@kernel_function`` methods the model may call.

One module per plugin, named after it (``clock.py`` is the plugin ``clock``), holding
one class with ``@kernel_function(name=..., description=...)`` methods whose parameters
are typed and described with ``typing.Annotated``. A prompt file names the functions it
may call as ``<plugin>-<function>`` (``tools:`` block, see ``sk_core.tools``).

Nothing here is imported at cold start: the catalog reads each module's metadata from
its source (``sk_core.tools``, no Semantic Kernel import), and the modules are imported
when the kernel is built, only if some prompt function uses one of their functions.
"""
