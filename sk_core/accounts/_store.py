"""Tenants and their API keys, in Table Storage: the store and the entity encoding.

The values themselves (``Tenant``, ``Limits``, ``ApiKey``, the key format) are
``sk_core.accounts._values``; they are re-exported here for callers that use both.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from sk_core.accounts._values import (
    ADMIN_KEY_PREFIX,
    ADMIN_SCOPE,
    ALL,
    KEY_PREFIX,
    OPERATORS,
    ApiKey,
    IssuedKey,
    Limits,
    Tenant,
    TenantError,
    hash_key,
    parse_key,
)
from sk_core.secrets import SecretReader
from sk_core.storage import TableStore, get_or_none, int64, read_int, storage_errors

__all__ = [
    "ALL",
    "KEY_PREFIX",
    "ApiKey",
    "IssuedKey",
    "Limits",
    "Tenant",
    "TenantError",
    "TenantStore",
    "hash_key",
    "parse_key",
    "tenant_entity",
    "tenant_from_entity",
    "validate_tenant_id",
]

_TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
TENANT_PARTITION = "tenant"
KEY_PARTITION = "key"
# Operator keys live beside tenant keys, in their own partition: a tenant key id can
# never find an admin record, whatever its secret.
ADMIN_KEY_PARTITION = "adminkey"


def tenant_entity(tenant: Tenant) -> dict[str, Any]:
    """The Table Storage entity of a tenant."""
    limits = tenant.limits
    return {
        "PartitionKey": TENANT_PARTITION,
        "RowKey": tenant.id,
        "display_name": tenant.display_name,
        "status": tenant.status,
        "requests_per_minute": int64(limits.requests_per_minute),
        "tokens_per_minute": int64(limits.tokens_per_minute),
        "max_concurrent": int64(limits.max_concurrent),
        "daily_budget_nano": int64(limits.daily_budget_nano),
        "monthly_budget_nano": int64(limits.monthly_budget_nano),
        "allowed_functions": json.dumps(list(tenant.allowed_functions)),
    }


def tenant_from_entity(entity: Any) -> Tenant:
    """Parse a stored tenant entity."""
    return Tenant(
        id=entity["RowKey"],
        display_name=entity.get("display_name", ""),
        status=entity.get("status", "active"),
        limits=Limits(
            requests_per_minute=read_int(entity["requests_per_minute"]),
            tokens_per_minute=read_int(entity["tokens_per_minute"]),
            max_concurrent=read_int(entity["max_concurrent"]),
            daily_budget_nano=read_int(entity["daily_budget_nano"]),
            monthly_budget_nano=read_int(entity["monthly_budget_nano"]),
        ),
        allowed_functions=tuple(json.loads(entity.get("allowed_functions") or '["*"]')),
    )


def _key_from_entity(entity: Any) -> ApiKey:
    return ApiKey(
        key_id=entity["RowKey"],
        tenant_id=entity["tenant_id"],
        key_hash=entity["key_hash"],
        scopes=tuple(json.loads(entity.get("scopes") or '["*"]')),
        status=entity.get("status", "active"),
        name=entity.get("name", ""),
        created_at=entity["created_at"],
        last_used_at=entity.get("last_used_at"),
    )


def validate_tenant_id(tenant_id: str) -> str:
    """The id if it is usable as a PartitionKey and in URLs; else ``TenantError``."""
    if not _TENANT_ID_RE.match(tenant_id):
        raise TenantError("tenant id: 2-63 chars of a-z, 0-9 and '-', starting with a letter or digit")
    return tenant_id


class TenantStore:
    """CRUD for tenants and keys; used by the admin CLI and by authentication."""

    def __init__(self, *, store: TableStore, secrets: SecretReader, pepper_name: str) -> None:
        self._store = store
        self._secrets = secrets
        self._pepper_name = pepper_name
        self._pepper: str | None = None

    async def pepper(self) -> str:
        """The hashing pepper, fetched once per process.

        Deliberately never refreshed: a new pepper changes every key's hash, so a
        hot swap would lock every tenant out at once. Rotating it is a planned
        re-issue of keys plus a restart.
        """
        if self._pepper is None:
            self._pepper = await self._secrets.get(self._pepper_name)
        return self._pepper

    async def create_tenant(self, tenant: Tenant) -> Tenant:
        """Insert a tenant; refuses an existing id."""
        validate_tenant_id(tenant.id)
        table = await self._store.table("tenants")
        with storage_errors():
            try:
                await table.create_entity(tenant_entity(tenant))
            except ResourceExistsError:
                raise TenantError(f"tenant {tenant.id!r} already exists") from None
        return tenant

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        """A tenant, or None."""
        entity = await get_or_none(await self._store.table("tenants"), TENANT_PARTITION, tenant_id)
        return tenant_from_entity(entity) if entity is not None else None

    async def require_tenant(self, tenant_id: str) -> Tenant:
        """A tenant, or ``TenantError`` naming the unknown id."""
        tenant = await self.get_tenant(tenant_id)
        if tenant is None:
            raise TenantError(f"unknown tenant {tenant_id!r}")
        return tenant

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant, by id."""
        table = await self._store.table("tenants")
        with storage_errors():
            entities = [
                e
                async for e in table.query_entities("PartitionKey eq @p", parameters={"p": TENANT_PARTITION})
            ]
        return sorted((tenant_from_entity(e) for e in entities), key=lambda t: t.id)

    async def save_tenant(self, tenant: Tenant) -> Tenant:
        """Replace an existing tenant's settings (status, limits, functions)."""
        await self.require_tenant(tenant.id)
        table = await self._store.table("tenants")
        with storage_errors():
            # Configuration, not a counter: last writer wins is the intended semantics.
            await table.update_entity(tenant_entity(tenant), mode=UpdateMode.REPLACE)
        return tenant

    async def issue_key(
        self, tenant_id: str, *, name: str = "", scopes: tuple[str, ...] = (ALL,)
    ) -> IssuedKey:
        """Create a key for a tenant; the returned secret is the only copy."""
        tenant = await self.require_tenant(tenant_id)
        unknown = [s for s in scopes if s != ALL and not tenant.allows(s)]
        if unknown:
            raise TenantError(f"scopes outside the tenant's allowed functions: {', '.join(unknown)}")
        return await self._create_key(KEY_PARTITION, KEY_PREFIX, tenant_id, name, scopes)

    async def issue_admin_key(self, *, name: str = "") -> IssuedKey:
        """Create an operator key (scope ``admin``); the returned secret is the only copy."""
        return await self._create_key(ADMIN_KEY_PARTITION, ADMIN_KEY_PREFIX, OPERATORS, name, (ADMIN_SCOPE,))

    async def _create_key(
        self, partition: str, prefix: str, owner: str, name: str, scopes: tuple[str, ...]
    ) -> IssuedKey:
        table = await self._store.table("apikeys")
        for _ in range(5):  # a 48-bit key id collision is unlikely; retry rather than fail
            key_id = secrets.token_hex(6)
            secret = f"{prefix}_{key_id}_{secrets.token_urlsafe(32)}"
            record = ApiKey(
                key_id=key_id,
                tenant_id=owner,
                key_hash=hash_key(secret, await self.pepper()),
                scopes=scopes,
                status="active",
                name=name,
                created_at=datetime.now(UTC),
            )
            with storage_errors():
                try:
                    await table.create_entity(
                        {
                            "PartitionKey": partition,
                            "RowKey": key_id,
                            "tenant_id": owner,
                            "key_hash": record.key_hash,
                            "scopes": json.dumps(list(scopes)),
                            "status": "active",
                            "name": name,
                            "created_at": record.created_at,
                        }
                    )
                except ResourceExistsError:
                    continue
            return IssuedKey(record=record, secret=secret)
        raise TenantError("could not allocate a key id")

    async def get_key(self, key_id: str, *, admin: bool = False) -> ApiKey | None:
        """A key record (an operator key's when ``admin``), or None."""
        partition = ADMIN_KEY_PARTITION if admin else KEY_PARTITION
        entity = await get_or_none(await self._store.table("apikeys"), partition, key_id)
        return _key_from_entity(entity) if entity is not None else None

    async def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        """Key records (no secrets), optionally of one tenant."""
        table = await self._store.table("apikeys")
        query, params = "PartitionKey eq @p", {"p": KEY_PARTITION}
        if tenant_id:
            query += " and tenant_id eq @t"
            params["t"] = tenant_id
        with storage_errors():
            entities = [e async for e in table.query_entities(query, parameters=params)]
        return sorted((_key_from_entity(e) for e in entities), key=lambda k: (k.tenant_id, k.created_at))

    async def list_admin_keys(self) -> list[ApiKey]:
        """Operator key records (no secrets), oldest first."""
        table = await self._store.table("apikeys")
        with storage_errors():
            entities = [
                e
                async for e in table.query_entities(
                    "PartitionKey eq @p", parameters={"p": ADMIN_KEY_PARTITION}
                )
            ]
        return sorted((_key_from_entity(e) for e in entities), key=lambda k: k.created_at)

    async def revoke_key(self, key_id: str, *, admin: bool = False) -> ApiKey:
        """Mark a key (an operator key when ``admin``) revoked; caches drop it within their TTL."""
        partition = ADMIN_KEY_PARTITION if admin else KEY_PARTITION
        table = await self._store.table("apikeys")
        with storage_errors():
            try:
                await table.update_entity(
                    {"PartitionKey": partition, "RowKey": key_id, "status": "revoked"},
                    mode=UpdateMode.MERGE,
                )
            except ResourceNotFoundError:
                raise TenantError(f"unknown key {key_id!r}") from None
        key = await self.get_key(key_id, admin=admin)
        if key is None:  # deleted between the two calls
            raise TenantError(f"unknown key {key_id!r}")
        return key

    async def touch_key(self, key_id: str, when: datetime, *, admin: bool = False) -> None:
        """Record last use (a timestamp, not a counter: a blind merge is idempotent)."""
        partition = ADMIN_KEY_PARTITION if admin else KEY_PARTITION
        table = await self._store.table("apikeys")
        with contextlib.suppress(AzureError):  # bookkeeping only; never fail a request over it
            await table.update_entity(
                {"PartitionKey": partition, "RowKey": key_id, "last_used_at": when}, mode=UpdateMode.MERGE
            )

    async def verify(self, presented: str, record: ApiKey | None) -> bool:
        """Constant-time check of a presented key against its stored hash."""
        pepper = await self.pepper()
        expected = record.key_hash if record is not None else hash_key("", pepper)
        ok = hmac.compare_digest(hash_key(presented, pepper), expected)
        return ok and record is not None
