"""Tenants and keys in memory and in real Azurite: entity round trip, hashed keys, pepper
from a secret source."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from sk_core.accounts import (
    Limits,
    Tenant,
    TenantError,
    TenantStore,
    hash_key,
    parse_key,
    tenant_entity,
    tenant_from_entity,
)
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
