"""The per-process service context: settings, catalog, the cached kernel, storage.

Both hosts call the same handlers, and neither host has a place to hang state that the
other shares (a Functions trigger has no Starlette ``app.state``), so the context is a
process-wide singleton created on first use. Tests install their own with
``set_service``. Storage modules are imported here, on first use, not at module import:
``function_app.py`` indexing stays free of the Azure SDKs.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from sk_core.catalog import Catalog
from sk_core.kernel import KernelProvider
from sk_core.settings import Settings, get_settings

if TYPE_CHECKING:
    from sk_core.auth import Authenticator
    from sk_core.ledger import Ledger
    from sk_core.storage import TableStore
    from sk_core.tenants import TenantStore


class Service:
    """Everything a request handler needs, created once per worker process."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        kernels: KernelProvider,
        store: TableStore,
        tenants: TenantStore,
        auth: Authenticator,
        ledger: Ledger,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.kernels = kernels
        self.store = store
        self.tenants = tenants
        self.auth = auth
        self.ledger = ledger

    async def aclose(self) -> None:
        """Release network resources (called on host shutdown)."""
        await self.kernels.aclose()
        await self.store.aclose()

    @classmethod
    def create(cls, settings: Settings | None = None) -> Service:
        """Build the context from settings (default: the environment)."""
        from sk_core.auth import Authenticator
        from sk_core.ledger import Ledger
        from sk_core.telemetry import setup_telemetry

        settings = settings or get_settings()
        # Once per process (a no-op if a host or a test installed providers already).
        setup_telemetry(
            settings, host="functions" if os.environ.get("FUNCTIONS_WORKER_RUNTIME") else "container"
        )
        catalog = Catalog.load()
        store = make_store(settings)
        tenants = make_tenant_store(settings, store)
        return cls(
            settings=settings,
            catalog=catalog,
            kernels=KernelProvider(settings=settings, catalog=catalog),
            store=store,
            tenants=tenants,
            auth=Authenticator(tenants=tenants, ttl_seconds=settings.auth_cache_seconds),
            ledger=Ledger(
                store=store,
                lease_seconds=settings.hold_lease_seconds,
                min_answer_tokens=settings.min_answer_tokens,
            ),
        )


def make_store(settings: Settings) -> TableStore:
    """The Table Storage client the settings describe."""
    from sk_core.storage import TableStore

    return TableStore(
        connection_string=""
        if settings.storage_account_endpoint
        else settings.storage_connection_string.get_secret_value(),
        endpoint=settings.storage_account_endpoint,
        table_prefix=settings.storage_table_prefix,
        retries=settings.storage_retries,
    )


def make_tenant_store(settings: Settings, store: TableStore) -> TenantStore:
    """Tenants and keys over ``store``, hashing keys with the configured pepper."""
    from sk_core.tenants import TenantStore

    return TenantStore(store=store, pepper=settings.api_key_pepper.get_secret_value())


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
