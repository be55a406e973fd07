"""Tenants and their API keys, in Table Storage: the store and the entity encoding.

The values themselves (``Tenant``, ``Limits``, ``ApiKey``, the key format) are
``sk_core.accounts._values``; they are re-exported here for callers that use both.

**A key row carries a copy of its tenant** (property ``tenant``: the settings as JSON),
so authentication reads one entity, not the key and then the tenant (issue 23, defect
3). The tenant row stays the authority: ``save_tenant`` writes it, then brings every
key's copy to what the row says (each write conditional on the key's ETag, repeated
until the row did not change meanwhile); ``issue_key`` copies the row it read. A key
written before copies existed is still read the old way (its tenant row too), and the
authenticator writes the copy back with the key's last use, off the request path.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
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
from sk_core.storage import TableStore, etag_of, get_or_none, int64, read_int, storage_errors

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
TENANTS_TABLE = "tenants"
KEYS_TABLE = "apikeys"
#: The tables accounts use (a host prepares them at start-up).
TABLES = (TENANTS_TABLE, KEYS_TABLE)
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


def tenant_copy(tenant: Tenant) -> str:
    """The copy of a tenant's settings a key row carries (see the module docstring)."""
    limits = tenant.limits
    return json.dumps(
        {
            "display_name": tenant.display_name,
            "status": tenant.status,
            "requests_per_minute": limits.requests_per_minute,
            "tokens_per_minute": limits.tokens_per_minute,
            "max_concurrent": limits.max_concurrent,
            "daily_budget_nano": limits.daily_budget_nano,
            "monthly_budget_nano": limits.monthly_budget_nano,
            "allowed_functions": list(tenant.allowed_functions),
        },
        sort_keys=True,
    )


def tenant_from_copy(tenant_id: str, copy: Any) -> Tenant | None:
    """The tenant a key row's copy describes; None when the row has none (an older key)."""
    if not isinstance(copy, str) or not copy:
        return None
    try:
        fields = json.loads(copy)
        return _tenant_from_fields(tenant_id, fields)
    except (ValueError, KeyError, TypeError, TenantError):
        # Unreadable (written by hand?): read the tenant row, which also rewrites it.
        return None


def _tenant_from_fields(tenant_id: str, fields: dict[str, Any]) -> Tenant:
    return Tenant(
        id=tenant_id,
        display_name=fields["display_name"],
        status=fields["status"],
        limits=Limits(
            requests_per_minute=fields["requests_per_minute"],
            tokens_per_minute=fields["tokens_per_minute"],
            max_concurrent=fields["max_concurrent"],
            daily_budget_nano=fields["daily_budget_nano"],
            monthly_budget_nano=fields["monthly_budget_nano"],
        ),
        allowed_functions=tuple(fields["allowed_functions"]),
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
        table = await self._store.table(TENANTS_TABLE)
        with storage_errors():
            try:
                await table.create_entity(tenant_entity(tenant))
            except ResourceExistsError:
                raise TenantError(f"tenant {tenant.id!r} already exists") from None
        return tenant

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        """A tenant, or None."""
        entity = await get_or_none(await self._store.table(TENANTS_TABLE), TENANT_PARTITION, tenant_id)
        return tenant_from_entity(entity) if entity is not None else None

    async def require_tenant(self, tenant_id: str) -> Tenant:
        """A tenant, or ``TenantError`` naming the unknown id."""
        tenant = await self.get_tenant(tenant_id)
        if tenant is None:
            raise TenantError(f"unknown tenant {tenant_id!r}")
        return tenant

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant, by id."""
        table = await self._store.table(TENANTS_TABLE)
        with storage_errors():
            entities = [
                e
                async for e in table.query_entities("PartitionKey eq @p", parameters={"p": TENANT_PARTITION})
            ]
        return sorted((tenant_from_entity(e) for e in entities), key=lambda t: t.id)

    async def save_tenant(self, tenant: Tenant) -> Tenant:
        """Replace an existing tenant's settings (status, limits, functions)."""
        await self.require_tenant(tenant.id)
        table = await self._store.table(TENANTS_TABLE)
        with storage_errors():
            # Configuration, not a counter: last writer wins is the intended semantics.
            await table.update_entity(tenant_entity(tenant), mode=UpdateMode.REPLACE)
        await self._copy_to_keys(tenant.id)
        return tenant

    async def _copy_to_keys(self, tenant_id: str) -> None:
        """Bring every key's copy of the tenant to what the tenant row says now.

        A copy is written only over the key row as read (its ETag): a newer copy written
        meanwhile (another save, an authenticator's write-back) is read again, never
        overwritten blindly. Done again while the row changes under it, so with two
        saves at once the row that stays is the one every key carries.
        """
        table = await self._store.table(KEYS_TABLE)
        for _ in range(8):
            tenant = await self.require_tenant(tenant_id)
            copy = tenant_copy(tenant)
            for entity in await self._key_rows(tenant_id):
                await self._write_copy(table, entity, copy)
            if await self.require_tenant(tenant_id) == tenant:
                return
        raise TenantError(f"tenant {tenant_id!r} kept changing while its keys were updated; run it again")

    async def _write_copy(self, table: Any, entity: Any, copy: str) -> None:
        for _ in range(8):
            if entity is None or entity.get("tenant") == copy:
                return
            change = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"], "tenant": copy}
            with storage_errors():
                try:
                    await table.update_entity(
                        change, mode=UpdateMode.MERGE, etag=etag_of(entity),
                        match_condition=MatchConditions.IfNotModified,
                    )
                    return
                except ResourceModifiedError:  # touched or copied meanwhile: look again
                    pass
                except ResourceNotFoundError:
                    return
            entity = await get_or_none(table, entity["PartitionKey"], entity["RowKey"])
        raise TenantError(f"key {entity['RowKey']!r} kept changing; run it again")

    async def issue_key(
        self, tenant_id: str, *, name: str = "", scopes: tuple[str, ...] = (ALL,)
    ) -> IssuedKey:
        """Create a key for a tenant; the returned secret is the only copy."""
        tenant = await self.require_tenant(tenant_id)
        unknown = [s for s in scopes if s != ALL and not tenant.allows(s)]
        if unknown:
            raise TenantError(f"scopes outside the tenant's allowed functions: {', '.join(unknown)}")
        issued = await self._create_key(
            KEY_PARTITION, KEY_PREFIX, tenant_id, name, scopes, {"tenant": tenant_copy(tenant)}
        )
        if await self.require_tenant(tenant_id) != tenant:
            # Saved meanwhile: that save may have listed the keys before this one existed.
            await self._copy_to_keys(tenant_id)
        return issued

    async def issue_admin_key(self, *, name: str = "") -> IssuedKey:
        """Create an operator key (scope ``admin``); the returned secret is the only copy."""
        return await self._create_key(ADMIN_KEY_PARTITION, ADMIN_KEY_PREFIX, OPERATORS, name, (ADMIN_SCOPE,))

    async def _create_key(
        self,
        partition: str,
        prefix: str,
        owner: str,
        name: str,
        scopes: tuple[str, ...],
        extra: dict[str, Any] | None = None,
    ) -> IssuedKey:
        table = await self._store.table(KEYS_TABLE)
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
                            **(extra or {}),
                        }
                    )
                except ResourceExistsError:
                    continue
            return IssuedKey(record=record, secret=secret)
        raise TenantError("could not allocate a key id")

    async def get_key(self, key_id: str, *, admin: bool = False) -> ApiKey | None:
        """A key record (an operator key's when ``admin``), or None."""
        partition = ADMIN_KEY_PARTITION if admin else KEY_PARTITION
        entity = await get_or_none(await self._store.table(KEYS_TABLE), partition, key_id)
        return _key_from_entity(entity) if entity is not None else None

    async def lookup(
        self, key_id: str, *, admin: bool = False
    ) -> tuple[ApiKey | None, Tenant | None, str | None]:
        """A key (an operator key's when ``admin``: no tenant) and its tenant, in one read
        when the key row carries its tenant's copy. A key without one (issued before
        copies) reads the tenant row too; the third value is then that key row's ETag,
        for ``touch_key`` to write the copy back conditionally; else None."""
        partition = ADMIN_KEY_PARTITION if admin else KEY_PARTITION
        entity = await get_or_none(await self._store.table(KEYS_TABLE), partition, key_id)
        if entity is None:
            return None, None, None
        key = _key_from_entity(entity)
        if admin:
            return key, None, None
        tenant = tenant_from_copy(key.tenant_id, entity.get("tenant"))
        if tenant is not None:
            return key, tenant, None
        return key, await self.get_tenant(key.tenant_id), etag_of(entity)

    async def list_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        """Key records (no secrets), optionally of one tenant."""
        entities = await self._key_rows(tenant_id)
        return sorted((_key_from_entity(e) for e in entities), key=lambda k: (k.tenant_id, k.created_at))

    async def _key_rows(self, tenant_id: str | None) -> list[Any]:
        table = await self._store.table(KEYS_TABLE)
        query, params = "PartitionKey eq @p", {"p": KEY_PARTITION}
        if tenant_id:
            query += " and tenant_id eq @t"
            params["t"] = tenant_id
        with storage_errors():
            return [e async for e in table.query_entities(query, parameters=params)]

    async def list_admin_keys(self) -> list[ApiKey]:
        """Operator key records (no secrets), oldest first."""
        table = await self._store.table(KEYS_TABLE)
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
        table = await self._store.table(KEYS_TABLE)
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

    async def touch_key(
        self,
        key_id: str,
        when: datetime,
        *,
        admin: bool = False,
        tenant: Tenant | None = None,
        etag: str | None = None,
    ) -> None:
        """Record last use (a timestamp, not a counter: a blind merge is idempotent).

        With ``tenant`` and ``etag`` (from ``lookup`` of a key without a copy), the same
        write adds the tenant's copy, only if the key row still has that ETag (a save
        may have written a newer copy since); if not, just the timestamp."""
        partition = ADMIN_KEY_PARTITION if admin else KEY_PARTITION
        table = await self._store.table(KEYS_TABLE)
        change: dict[str, Any] = {"PartitionKey": partition, "RowKey": key_id, "last_used_at": when}
        with contextlib.suppress(AzureError):  # bookkeeping only; never fail a request over it
            if tenant is not None and etag is not None:
                with contextlib.suppress(ResourceModifiedError):
                    await table.update_entity(
                        {**change, "tenant": tenant_copy(tenant)}, mode=UpdateMode.MERGE,
                        etag=etag, match_condition=MatchConditions.IfNotModified,
                    )
                    return
            await table.update_entity(change, mode=UpdateMode.MERGE)

    async def verify(self, presented: str, record: ApiKey | None) -> bool:
        """Constant-time check of a presented key against its stored hash."""
        pepper = await self.pepper()
        expected = record.key_hash if record is not None else hash_key("", pepper)
        ok = hmac.compare_digest(hash_key(presented, pepper), expected)
        return ok and record is not None
