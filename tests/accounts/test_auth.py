"""API keys: every way of failing authentication gets 401/403, and nothing is charged."""

from __future__ import annotations

import secrets
import tracemalloc
from typing import Any

import pytest
from starlette.datastructures import Headers

from sk_core.accounts import (
    Authenticator,
    Limits,
    Tenant,
    TooManyUnknownKeys,
    client_address,
    hash_key,
    parse_key,
    presented_key,
)
from sk_core.composition import Service
from sk_core.errors import ApiError, Unauthorized
from sk_core.limits import window_keys
from tests.support.hosts import FunctionsHost
from tests.support.stub_model import StubModel

SUMMARIZE = "/api/v1/summarize"
BODY = {"text": "Something worth summarizing, briefly."}


@pytest.fixture(scope="module")
async def tenant_keys(functions_service: Service) -> dict[str, Any]:
    """A tenant with a full key, a summarize-only key and a revoked key; and a disabled tenant's key."""
    tenants = functions_service.tenants
    name = "auth-" + secrets.token_hex(3)
    await tenants.create_tenant(Tenant(id=name, display_name="Auth", limits=Limits(daily_budget_nano=10**12)))
    full = await tenants.issue_key(name, name="full")
    chat_only = await tenants.issue_key(name, name="chat-only", scopes=("chat/chat",))
    revoked = await tenants.issue_key(name, name="revoked")
    await tenants.revoke_key(revoked.record.key_id)
    disabled = name + "-off"
    await tenants.create_tenant(Tenant(id=disabled, display_name="Off", status="disabled"))
    off_key = await tenants.issue_key(disabled)
    return {
        "tenant": name,
        "full": full.secret,
        "chat_only": chat_only.secret,
        "revoked": revoked.secret,
        "disabled": off_key.secret,
    }


@pytest.fixture
def bare_host(functions_app_functions: list[Any], functions_service: Service) -> FunctionsHost:
    return FunctionsHost(functions_app_functions)  # no default key


async def _usage(service: Service, tenant_id: str) -> dict[str, int]:
    from datetime import UTC, datetime

    return await service.ledger.usage(tenant_id, window_keys(datetime.now(UTC))[0])


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"authorization": "Basic dXNlcjpwYXNz"}, 401),
        ({"authorization": "Bearer "}, 401),
        ({"x-api-key": "not-a-key"}, 401),
        ({"x-api-key": "skf_0123456789ab_" + "A" * 43}, 401),  # well-formed, unknown
    ],
)
async def test_missing_malformed_and_unknown_keys_are_401(
    bare_host: FunctionsHost, stub: StubModel, headers: dict[str, str | None], status: int
) -> None:
    response = await bare_host.request("POST", SUMMARIZE, json_body=BODY, headers=headers)
    assert response.status == status
    assert response.json()["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert stub.stats()["count"] == 0


@pytest.mark.parametrize(
    ("which", "status", "code"),
    [("revoked", 401, "unauthorized"), ("chat_only", 403, "forbidden"), ("disabled", 403, "forbidden")],
)
async def test_revoked_wrong_scope_and_disabled_are_refused_without_charge(
    bare_host: FunctionsHost,
    stub: StubModel,
    functions_service: Service,
    tenant_keys: dict[str, Any],
    which: str,
    status: int,
    code: str,
) -> None:
    before = await _usage(functions_service, tenant_keys["tenant"])
    response = await bare_host.request(
        "POST", SUMMARIZE, json_body=BODY, headers={"authorization": f"Bearer {tenant_keys[which]}"}
    )
    assert response.status == status, response.body
    assert response.json()["code"] == code
    assert stub.stats()["count"] == 0
    assert await _usage(functions_service, tenant_keys["tenant"]) == before


async def test_a_valid_key_is_charged_and_gets_limit_headers(
    bare_host: FunctionsHost, stub: StubModel, functions_service: Service, tenant_keys: dict[str, Any]
) -> None:
    stub.script({"content": "ok", "prompt_tokens": 100, "completion_tokens": 10})
    response = await bare_host.request(
        "POST", SUMMARIZE, json_body=BODY, headers={"x-api-key": tenant_keys["full"]}
    )
    assert response.status == 200, response.body
    body = response.json()
    assert body["cost_usd"] == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6)
    assert float(response.headers["x-request-cost-usd"]) == pytest.approx(body["cost_usd"])
    assert response.headers["ratelimit-limit"] == "60"
    assert int(response.headers["ratelimit-remaining"]) < 60
    usage = await _usage(functions_service, tenant_keys["tenant"])
    assert usage["spent_nano"] >= 120_000
    assert usage["held_nano"] == 0


async def test_catalog_lists_only_what_the_key_may_call(
    bare_host: FunctionsHost, tenant_keys: dict[str, Any]
) -> None:
    response = await bare_host.request(
        "GET", "/api/v1/functions", headers={"x-api-key": tenant_keys["chat_only"]}
    )
    assert response.status == 200
    assert [f"{f['plugin']}/{f['name']}" for f in response.json()["functions"]] == ["chat/chat"]


async def test_health_and_ready_need_no_key(bare_host: FunctionsHost) -> None:
    assert (await bare_host.request("GET", "/api/health")).status == 200
    assert (await bare_host.request("GET", "/api/ready")).status in (200, 503)


async def test_revocation_takes_effect_within_the_cache_ttl(functions_service: Service) -> None:
    tenants = functions_service.tenants
    name = "revoke-" + secrets.token_hex(3)
    await tenants.create_tenant(Tenant(id=name, display_name="R"))
    issued = await tenants.issue_key(name)
    now = [1000.0]
    auth = Authenticator(tenants=tenants, ttl_seconds=30, clock=lambda: now[0])
    headers = Headers({"authorization": f"Bearer {issued.secret}"})
    assert (await auth.authenticate(headers, "text/summarize")).tenant.id == name
    await tenants.revoke_key(issued.record.key_id)
    now[0] += 29  # still inside the TTL: the cached record answers
    await auth.authenticate(headers, "text/summarize")
    now[0] += 2  # past the TTL: the revocation is seen
    with pytest.raises(Unauthorized):
        await auth.authenticate(headers, "text/summarize")


def test_keys_are_random_prefixed_and_stored_only_as_a_hash() -> None:
    key = "skf_0123456789ab_" + secrets.token_urlsafe(32)
    assert parse_key(key) == "0123456789ab"
    assert parse_key(key + "x") is None
    digest = hash_key(key, "pepper")
    assert key not in digest
    assert len(digest) == 64
    assert hash_key(key, "other pepper") != digest


def test_presented_key_sources() -> None:
    assert presented_key(Headers({"authorization": "Bearer abc"})) == "abc"
    assert presented_key(Headers({"x-api-key": "abc"})) == "abc"
    assert presented_key(Headers({})) is None
    assert presented_key(Headers({"authorization": "Token abc"})) == ""


async def test_issued_keys_are_never_stored(functions_service: Service, azurite: str) -> None:
    tenants = functions_service.tenants
    name = "store-" + secrets.token_hex(3)
    await tenants.create_tenant(Tenant(id=name, display_name="S"))
    issued = await tenants.issue_key(name)
    table = await functions_service.store.table("apikeys")
    entity = await table.get_entity("key", issued.record.key_id)
    assert issued.secret not in str(dict(entity))
    assert len(issued.secret.split("_", 2)[2]) == 43  # 32 random bytes, base64url


# --- unknown keys: bounded memory, bounded storage reads (issue 27, defect 6) ----------


def _random_key() -> str:
    return f"skf_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"


@pytest.fixture
async def counted_tenants(functions_service: Service) -> Any:
    """The real tenant store on Azurite, over a storage client of its own (its round trips
    are this test's only)."""
    from sk_core.composition import make_store

    store = make_store(functions_service.settings)
    tenants = type(functions_service.tenants)(
        store=store,
        secrets=functions_service.tenants._secrets,
        pepper_name=functions_service.tenants._pepper_name,
    )
    yield store, tenants
    await store.aclose()


async def _flood(auth: Authenticator, keys: list[str], addresses: list[str]) -> dict[int, int]:
    statuses: dict[int, int] = {}
    for key, address in zip(keys, addresses, strict=True):
        token = client_address.set(address)
        try:
            await auth.authenticate(Headers({"x-api-key": key}), "text/summarize")
        except ApiError as error:
            statuses[error.status] = statuses.get(error.status, 0) + 1
        finally:
            client_address.reset(token)
    return statuses


async def test_4000_unknown_key_ids_cost_bounded_memory_and_bounded_reads(
    functions_service: Service, counted_tenants: Any, tenant_keys: dict[str, Any]
) -> None:
    store, tenants = counted_tenants
    # A clock that stands still: on a busy machine the flood may outlast a TTL, and
    # the bounds, not the expiry, are under test.
    auth = Authenticator(
        tenants=tenants,
        ttl_seconds=30,
        max_unknown=300,
        max_clients=600,
        unknown_per_minute=60,
        clock=lambda: 1000.0,
    )
    real = Headers({"x-api-key": tenant_keys["full"]})
    await auth.authenticate(real, "text/summarize")
    keys = [_random_key() for _ in range(4000)]

    # One address: 60 lookups find nothing, then its uncached lookups are refused, unread.
    before = store.round_trips
    statuses = await _flood(auth, keys, ["203.0.113.7"] * 4000)
    assert statuses == {401: 60, 429: 3940}
    assert store.round_trips - before <= 60 * 2  # a lookup is a read (plus a retry at most)
    assert auth.cached[1] <= 60

    # Many addresses: each may look its ids up, but what the authenticator keeps is
    # bounded (ids and client windows alike), whatever the number of ids and clients.
    many = 1200
    tracemalloc.start()
    try:
        before_snapshot = tracemalloc.take_snapshot()
        statuses = await _flood(auth, keys[:many], [f"198.51.{i // 256}.{i % 256}" for i in range(many)])
        after_snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert statuses == {401: many}
    assert auth.cached == (1, 300)
    assert len(auth._clients) == 600
    mine = [tracemalloc.Filter(True, "*/sk_core/accounts/_auth.py")]
    grown = sum(
        stat.size_diff
        for stat in after_snapshot.filter_traces(mine).compare_to(
            before_snapshot.filter_traces(mine), "filename"
        )
    )
    assert grown < 300_000, grown  # 300 ids and 600 windows, not 1,200 of each
    # The real caller was never evicted: no storage read for it.
    before = store.round_trips
    assert (await auth.authenticate(real, "text/summarize")).tenant.id == tenant_keys["tenant"]
    assert store.round_trips == before


async def test_unknown_ids_are_remembered_briefly_and_the_limit_resets(
    counted_tenants: Any, functions_service: Service
) -> None:
    _, tenants = counted_tenants
    now = [1000.0]
    auth = Authenticator(tenants=tenants, ttl_seconds=30, unknown_per_minute=2, clock=lambda: now[0])
    name = "late-" + secrets.token_hex(3)
    await functions_service.tenants.create_tenant(Tenant(id=name, display_name="Late"))
    token = client_address.set("192.0.2.1")
    try:
        unknown = _random_key()
        for _ in range(3):  # a negative entry answers the repeats: one read, one count
            with pytest.raises(Unauthorized):
                await auth.authenticate(Headers({"x-api-key": unknown}), None)
        with pytest.raises(Unauthorized):
            await auth.authenticate(Headers({"x-api-key": _random_key()}), None)
        with pytest.raises(TooManyUnknownKeys) as refused:
            await auth.authenticate(Headers({"x-api-key": _random_key()}), None)
        assert refused.value.status == 429
        assert 1 <= (refused.value.retry_after or 0) <= 60
        now[0] += 61  # a new minute, and the negative entries have expired
        issued = await functions_service.tenants.issue_key(name)
        assert (await auth.authenticate(Headers({"x-api-key": issued.secret}), None)).tenant.id == name
    finally:
        client_address.reset(token)
