"""API-key authentication: header → key record → tenant, with a short-lived cache.

The cache keeps Table Storage off the hot path; its TTL (``SKF_AUTH_CACHE_SECONDS``,
default 30 s) is the bound on how long a revoked key or a disabled tenant keeps working.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sk_core.accounts._values import ADMIN_SCOPE, ApiKey, Tenant, parse_admin_key, parse_key
from sk_core.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from sk_core.accounts._store import TenantStore


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and the key they used."""

    tenant: Tenant
    key: ApiKey


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``.

    ``headers`` maps lower-case names to values, as ASGI delivers them (Starlette's
    ``Headers`` is such a mapping, and looks names up case-insensitively besides).
    """
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return ""  # present but not a bearer token: malformed
    api_key = headers.get("x-api-key")
    return api_key.strip() if api_key is not None else None


class Authenticator:
    """Resolves a presented key to a ``Principal`` or raises 401/403."""

    def __init__(
        self, *, tenants: TenantStore, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._tenants = tenants
        self._ttl = ttl_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey | None, Tenant | None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def _lookup(self, key_id: str, *, admin: bool = False) -> tuple[ApiKey | None, Tenant | None]:
        # Admin and tenant key ids are separate namespaces (separate partitions).
        cache_key = f"admin:{key_id}" if admin else key_id
        cached = self._cache.get(cache_key)
        if cached is not None and cached[0] > self._clock():
            return cached[1], cached[2]
        # One storage lookup per key id at a time, however many requests arrive with it.
        lock = self._locks.setdefault(cache_key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(cache_key)
            if cached is not None and cached[0] > self._clock():
                return cached[1], cached[2]
            key = await self._tenants.get_key(key_id, admin=admin)
            tenant = await self._tenants.get_tenant(key.tenant_id) if key is not None and not admin else None
            self._cache[cache_key] = (self._clock() + self._ttl, key, tenant)
            if key is not None:
                # Bookkeeping off the request path (once per key per cache period).
                task = asyncio.get_running_loop().create_task(
                    self._tenants.touch_key(key_id, datetime.now(UTC), admin=admin)
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return key, tenant

    async def aclose(self) -> None:
        """Let pending last-used updates finish (they are short and bounded by retries)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def authenticate(self, headers: Mapping[str, str], function_id: str | None) -> Principal:
        """Check the key, its status, the tenant's status and (if given) the function scope."""
        presented = presented_key(headers)
        if presented is None:
            raise Unauthorized("Send an API key as 'Authorization: Bearer <key>' or 'X-API-Key'.")
        key_id = parse_key(presented)
        if key_id is None:
            raise Unauthorized("The API key is malformed.")
        key, tenant = await self._lookup(key_id)
        if not await self._tenants.verify(presented, key) or key is None or tenant is None:
            raise Unauthorized("The API key is not valid.")
        if key.status != "active":
            raise Unauthorized("The API key is not valid.")
        if not tenant.active:
            raise Forbidden("The tenant is disabled.")
        if function_id is not None and not (key.allows(function_id) and tenant.allows(function_id)):
            raise Forbidden(f"This key may not call {function_id}.")
        return Principal(tenant=tenant, key=key)

    async def authenticate_admin(self, headers: Mapping[str, str]) -> ApiKey:
        """An operator's admin key, or 401 (no or bad key) / 403 (a valid tenant key).

        A tenant key is checked like on any tenant route first, so that an invalid one
        still reads 401 and only a working tenant key learns it lacks the admin scope.
        """
        presented = presented_key(headers)
        if presented is None:
            raise Unauthorized("Send an admin key as 'Authorization: Bearer <key>' or 'X-API-Key'.")
        key_id = parse_admin_key(presented)
        if key_id is None:
            if parse_key(presented) is not None:
                await self.authenticate(headers, None)
                raise Forbidden("This route needs an admin key; a tenant key cannot use it.")
            raise Unauthorized("The API key is malformed.")
        key, _ = await self._lookup(key_id, admin=True)
        if not await self._tenants.verify(presented, key) or key is None or key.status != "active":
            raise Unauthorized("The API key is not valid.")
        if ADMIN_SCOPE not in key.scopes:
            raise Forbidden("This key lacks the admin scope.")
        return key
