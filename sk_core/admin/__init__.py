"""The admin CLI (``python -m sk_core.admin``): tenants, keys, usage and maintenance."""

from sk_core.admin._cli import main

__all__ = ["main"]
