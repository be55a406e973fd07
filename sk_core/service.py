"""The per-process service context: settings, catalog and the cached kernel.

Both hosts call the same handlers, and neither host has a place to hang state that the
other shares (a Functions trigger has no Starlette ``app.state``), so the context is a
process-wide singleton created on first use. Tests install their own with
``set_service``.
"""

from __future__ import annotations

import threading

from sk_core.catalog import Catalog
from sk_core.kernel import KernelProvider
from sk_core.settings import Settings, get_settings


class Service:
    """Everything a request handler needs, created once per worker process."""

    def __init__(self, *, settings: Settings, catalog: Catalog, kernels: KernelProvider) -> None:
        self.settings = settings
        self.catalog = catalog
        self.kernels = kernels

    async def aclose(self) -> None:
        """Release network resources (called on host shutdown)."""
        await self.kernels.aclose()

    @classmethod
    def create(cls, settings: Settings | None = None) -> Service:
        """Build the context from settings (default: the environment)."""
        settings = settings or get_settings()
        catalog = Catalog.load()
        return cls(
            settings=settings,
            catalog=catalog,
            kernels=KernelProvider(settings=settings, catalog=catalog),
        )


_lock = threading.Lock()
_service: Service | None = None


def get_service() -> Service:
    """The process's service context, created on first call."""
    global _service
    if _service is None:
        with _lock:
            if _service is None:
                _service = Service.create()
    return _service


def set_service(service: Service | None) -> None:
    """Replace the process's context (tests, or a host that builds its own)."""
    global _service
    with _lock:
        _service = service
