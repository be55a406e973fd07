"""Tenants and keys in memory and in real Azurite: entity round trip, hashed keys, pepper
from a secret source."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from azure.data.tables import UpdateMode
from starlette.datastructures import Headers

from sk_core.accounts import (
    Authenticator,
    Limits,
    Tenant,
    TenantError,
    TenantStore,
    hash_key,
    parse_key,
    tenant_entity,
    tenant_from_entity,
)
from sk_core.errors import Forbidden
from sk_core.secrets import CachedSecrets, EnvSecretSource
from tests.support.stores import STORE_BACKENDS, open_stores


@pytest.fixture(params=STORE_BACKENDS)
async def tenants(request: pytest.FixtureRequest) -> AsyncIterator[TenantStore]:
    source = CachedSecrets(
        EnvSecretSource({"pepper": "p" * 20}),
        ttl_seconds=60,
        refresh_ahead_seconds=10,
        max_staleness_seconds=120,
        failure_retry_seconds=1,
    )
    async with open_stores(request, "ten") as (store,):
        yield TenantStore(store=store, secrets=source, pepper_name="pepper")
    await source.aclose()


def test_a_tenant_survives_its_entity_encoding() -> None:
    tenant = Tenant(
        id="acme", display_name="Acme", status="disabled",
        limits=Limits(requests_per_minute=7, daily_budget_nano=10**12), allowed_functions=("text/summarize",),
    )
    assert tenant_from_entity(tenant_entity(tenant)) == tenant


async def test_keys_are_stored_as_peppered_hashes_and_verify(tenants: TenantStore) -> None:
    await tenants.create_tenant(Tenant(id="t-" + secrets.token_hex(3), display_name="T"))
    tenant_id = (await tenants.list_tenants())[0].id
    issued = await tenants.issue_key(tenant_id, name="ci")
    record = await tenants.get_key(issued.record.key_id)
    assert record is not None
    assert parse_key(issued.secret) == record.key_id
    assert record.key_hash == hash_key(issued.secret, "p" * 20)  # the pepper came from the source
    assert issued.secret not in str(record)
    assert await tenants.verify(issued.secret, record)
    assert not await tenants.verify(issued.secret[:-1] + "x", record)


async def test_a_duplicate_tenant_is_refused(tenants: TenantStore) -> None:
    tenant = Tenant(id="dup-" + secrets.token_hex(3), display_name="D")
    await tenants.create_tenant(tenant)
    with pytest.raises(TenantError, match="already exists"):
        await tenants.create_tenant(tenant)


# --- a key carries its tenant (issue 23, defect 3) -------------------------------------


async def _authenticate(tenants: TenantStore, secret: str) -> tuple[Tenant, int]:
    """A new process's first authentication of ``secret``: its tenant and the reads it took."""
    store = tenants._store
    auth = Authenticator(tenants=tenants, ttl_seconds=30)
    before = store.round_trips
    try:
        principal = await auth.authenticate(Headers({"x-api-key": secret}), "text/summarize")
        return principal.tenant, store.round_trips - before
    finally:
        await auth.aclose()  # writes its pending last-use (and a copy write-back)


async def _tenant_with_key(tenants: TenantStore) -> tuple[Tenant, str]:
    tenant = Tenant(id="c-" + secrets.token_hex(3), display_name="C", limits=Limits(requests_per_minute=7))
    await tenants.create_tenant(tenant)
    return tenant, (await tenants.issue_key(tenant.id)).secret


async def test_authentication_reads_the_key_and_its_tenant_in_one_exchange(tenants: TenantStore) -> None:
    tenant, secret = await _tenant_with_key(tenants)
    assert await _authenticate(tenants, secret) == (tenant, 1)


async def test_a_saved_tenant_reaches_the_copy_every_key_carries(tenants: TenantStore) -> None:
    tenant, secret = await _tenant_with_key(tenants)
    other = (await tenants.issue_key(tenant.id)).secret
    changed = dataclasses.replace(tenant, limits=Limits(requests_per_minute=99), display_name="Changed")
    await tenants.save_tenant(changed)
    for key in (secret, other):
        assert await _authenticate(tenants, key) == (changed, 1)
    await tenants.save_tenant(dataclasses.replace(changed, status="disabled"))
    with pytest.raises(Forbidden):
        await _authenticate(tenants, secret)


async def test_a_key_from_before_copies_is_read_the_old_way_then_carries_its_tenant(
    tenants: TenantStore,
) -> None:
    tenant, secret = await _tenant_with_key(tenants)
    table = await tenants._store.table("apikeys")
    key_id = parse_key(secret)
    assert key_id is not None
    old = dict(await table.get_entity("key", key_id))
    del old["tenant"]  # the row as keys were written before they carried their tenant
    await table.update_entity(old, mode=UpdateMode.REPLACE)
    assert await _authenticate(tenants, secret) == (tenant, 2)  # the key, then the tenant row
    assert await _authenticate(tenants, secret) == (tenant, 1)  # written back with its last use


async def test_a_copy_written_back_never_overwrites_a_newer_save(tenants: TenantStore) -> None:
    """The authenticator's write-back is conditional on the key row it read: a save in
    between (which wrote the newer copy) wins."""
    tenant, secret = await _tenant_with_key(tenants)
    table = await tenants._store.table("apikeys")
    key_id = parse_key(secret)
    assert key_id is not None
    old = dict(await table.get_entity("key", key_id))
    del old["tenant"]
    await table.update_entity(old, mode=UpdateMode.REPLACE)
    _, read, etag = await tenants.lookup(key_id)  # an authenticator's read of the old row
    assert read == tenant
    assert etag is not None
    saved = dataclasses.replace(tenant, status="disabled")
    await tenants.save_tenant(saved)
    await tenants.touch_key(key_id, datetime.now(UTC), tenant=read, etag=etag)
    assert (await tenants.lookup(key_id))[1] == saved
    assert (await tenants.get_key(key_id)).last_used_at is not None  # type: ignore[union-attr]


async def test_two_saves_at_once_leave_every_key_with_the_row_that_stays(tenants: TenantStore) -> None:
    tenant, secret = await _tenant_with_key(tenants)
    others = [(await tenants.issue_key(tenant.id)).secret for _ in range(3)]
    one = dataclasses.replace(tenant, limits=Limits(requests_per_minute=11))
    two = dataclasses.replace(tenant, limits=Limits(requests_per_minute=22), status="disabled")
    await asyncio.gather(tenants.save_tenant(one), tenants.save_tenant(two))
    stays = await tenants.require_tenant(tenant.id)
    assert stays in (one, two)
    for key in (secret, *others):
        key_id = parse_key(key)
        assert key_id is not None
        assert (await tenants.lookup(key_id))[1] == stays
