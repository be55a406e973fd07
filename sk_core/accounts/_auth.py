"""API-key authentication: header → key record → tenant, with a short-lived cache.

The cache keeps Table Storage off the hot path; its TTL (``SKF_AUTH_CACHE_SECONDS``,
default 30 s) is the bound on how long a revoked key or a disabled tenant keeps working.

Anyone can present a well-formed key id, so what unknown ids cost is bounded: found
keys and unknown ids live in separate LRUs of fixed size (a flood of unknown ids cannot
evict the keys of real callers), an unknown id is remembered only briefly
(``negative_seconds``: a key issued a moment later works soon), and each client address
may cause at most ``unknown_per_minute`` storage lookups that find nothing; past that,
its uncached lookups are refused with 429 until the minute ends, without a storage read.
The client address comes from :data:`client_address`, which the HTTP boundary sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, TypeVar

from sk_core.accounts._values import ADMIN_SCOPE, ApiKey, Tenant, parse_admin_key, parse_key
from sk_core.errors import ApiError, Forbidden, Unauthorized

if TYPE_CHECKING:
    from sk_core.accounts._store import TenantStore


#: The caller's network address for this request (None: unknown), set by the HTTP
#: boundary; the key that counts unknown-key lookups.
client_address: contextvars.ContextVar[str | None] = contextvars.ContextVar("client_address", default=None)

_V = TypeVar("_V")


class _Lru(Generic[_V]):
    """At most ``size`` entries, each alive until its deadline; the least recently used goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[float, _V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> _V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[1]

    def put(self, key: str, value: _V, until: float) -> None:
        self._entries[key] = (until, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class TooManyUnknownKeys(ApiError):
    """A client presented too many unknown keys this minute (429)."""

    status, code, title = 429, "auth_rate_limited", "Too many invalid API keys"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and the key they used."""

    tenant: Tenant
    key: ApiKey


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key`` (which wins over an
    ``Authorization`` of another scheme).

    ``headers`` maps lower-case names to values, as ASGI delivers them (Starlette's
    ``Headers`` is such a mapping, and looks names up case-insensitively besides).
    """
    authorization = headers.get("authorization")
    api_key = headers.get("x-api-key")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if api_key is None:
            return ""  # present but not a bearer token: malformed
        # Another scheme (Basic from a proxy or a browser) next to X-API-Key: the key is ours.
    return api_key.strip() if api_key is not None else None


class Authenticator:
    """Resolves a presented key to a ``Principal`` or raises 401/403 (429: see the module)."""

    def __init__(
        self,
        *,
        tenants: TenantStore,
        ttl_seconds: float,
        negative_seconds: float = 5.0,
        max_keys: int = 10_000,
        max_unknown: int = 2_048,
        unknown_per_minute: int = 60,
        max_clients: int = 4_096,
        touch_delay_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tenants = tenants
        self._ttl = ttl_seconds
        self._negative_ttl = min(negative_seconds, ttl_seconds)
        self._clock = clock
        self._known: _Lru[tuple[ApiKey, Tenant | None]] = _Lru(max_keys)
        self._unknown: _Lru[bool] = _Lru(max_unknown)
        self._unknown_per_minute = unknown_per_minute
        # Per client address: unknown-key lookups in the current minute (window start, count).
        self._clients: _Lru[list[float]] = _Lru(max_clients)
        # One storage lookup per key id at a time, however many requests arrive with it;
        # an entry lives only while its lookup runs.
        self._flights: dict[str, asyncio.Task[tuple[ApiKey | None, Tenant | None]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # A key's last use is written this long after its lookup: bookkeeping must not
        # compete with the request's own storage exchanges (a new process's first request
        # waits for its admission, issue 23); closing writes the pending ones at once.
        self._touch_delay = touch_delay_seconds
        self._closing = asyncio.Event()

    @property
    def cached(self) -> tuple[int, int]:
        """Entries held: (keys found, unknown ids); both bounded."""
        return len(self._known), len(self._unknown)

    def _cached(self, cache_key: str) -> tuple[bool, tuple[ApiKey | None, Tenant | None]]:
        now = self._clock()
        known = self._known.get(cache_key, now)
        if known is not None:
            return True, known
        return self._unknown.get(cache_key, now) is not None, (None, None)

    def _client_window(self, *, create: bool) -> tuple[list[float] | None, float]:
        """The calling address's minute of unknown-key lookups ([start, count]; None
        without an address, or when it has none and ``create`` is false), and now."""
        now = self._clock()
        address = client_address.get()
        if address is None:
            return None, now
        window = self._clients.get(address, now)
        if window is None and create:
            window = [now, 0]
            self._clients.put(address, window, now + 60)
        return window, now

    def _admit_unknown_lookup(self) -> None:
        """Refuse a client that has already had its share of lookups that found nothing."""
        window, now = self._client_window(create=False)
        if window is not None and window[1] >= self._unknown_per_minute:
            raise TooManyUnknownKeys(
                "Too many requests with unknown API keys from this address; retry later.",
                retry_after=max(1, math.ceil(window[0] + 60 - now)),
            )

    def _note_unknown(self) -> None:
        window, _ = self._client_window(create=True)
        if window is not None:
            window[1] += 1

    async def _lookup(self, key_id: str, *, admin: bool = False) -> tuple[ApiKey | None, Tenant | None]:
        # Admin and tenant key ids are separate namespaces (separate partitions).
        cache_key = f"admin:{key_id}" if admin else key_id
        hit, found = self._cached(cache_key)
        if hit:
            return found
        flight = self._flights.get(cache_key)
        if flight is None:
            self._admit_unknown_lookup()
            # A task of its own: a caller that goes away does not cancel the lookup that
            # others wait for.
            flight = self._flights[cache_key] = asyncio.get_running_loop().create_task(
                self._fetch(cache_key, key_id, admin)
            )
            flight.add_done_callback(lambda done: self._landed(cache_key, done))
        return await asyncio.shield(flight)

    def _landed(self, cache_key: str, flight: asyncio.Task[tuple[ApiKey | None, Tenant | None]]) -> None:
        self._flights.pop(cache_key, None)
        if not flight.cancelled():
            flight.exception()  # retrieved: every waiter re-raises it; none may be left

    async def _fetch(self, cache_key: str, key_id: str, admin: bool) -> tuple[ApiKey | None, Tenant | None]:
        # One read: the key row carries its tenant's copy (an older key: two, see lookup).
        key, tenant, uncopied = await self._tenants.lookup(key_id, admin=admin)
        now = self._clock()
        if key is None:
            self._unknown.put(cache_key, True, now + self._negative_ttl)
            self._note_unknown()
        else:
            self._known.put(cache_key, (key, tenant), now + self._ttl)
            # Bookkeeping off the request path (once per key per cache period).
            task = asyncio.get_running_loop().create_task(
                self._touch(key_id, datetime.now(UTC), admin, tenant if uncopied else None, uncopied)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return key, tenant

    async def _touch(
        self, key_id: str, when: datetime, admin: bool, tenant: Tenant | None, etag: str | None
    ) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), self._touch_delay)
        await self._tenants.touch_key(key_id, when, admin=admin, tenant=tenant, etag=etag)

    async def aclose(self) -> None:
        """Write pending last-used updates now (they are short and bounded by retries)."""
        self._closing.set()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def authenticate(self, headers: Mapping[str, str], function_id: str | None) -> Principal:
        """Check the key, its status, the tenant's status and (if given) the function scope."""
        presented = presented_key(headers)
        if presented is None:
            raise Unauthorized("Send an API key as 'Authorization: Bearer <key>' or 'X-API-Key'.")
        key_id = parse_key(presented)
        if key_id is None:
            if parse_admin_key(presented) is not None:
                raise Unauthorized("This route needs a tenant API key (skf_...), not an admin key.")
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
