"""The admin CLI (``python -m sk_core.admin``): tenants, keys, usage and maintenance.

- ``_cli``: the parser and the run (settings, storage, exit codes, output);
- ``_command``: what every command shares (context, output, errors);
- ``_arguments``: argument types, checked before anything reaches storage;
- ``_format``: USD, times, tables, the JSON of tenants and keys;
- one module per command family: ``_tenants``, ``_keys`` (tenant and operator keys),
  ``_usage`` (usage, sweep, audit), ``_cache``.
"""

from sk_core.admin._cli import main

__all__ = ["main"]
