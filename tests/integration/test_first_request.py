"""Issue 23, defect 3: what the first request of a new process waits for in storage.

A fresh composition (what a new process builds) against Azurite: the host's start-up
runs first (``Service.start``: the container host's lifespan, the Functions host's
warmup trigger), then one summarize request through the route table, bound to that
service exactly as both hosts bind it. Counted: every storage exchange of the service's
own client from the request's arrival to its admission (background bookkeeping
included, so it must not run before admission). Target: at most 3 (the key with its
tenant, the lease's read and its transaction).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sk_core.accounts import Limits, Tenant
from sk_core.composition import Service
from sk_core.http.routes import ROUTES
from tests.support.hosts import make_request
from tests.support.settings import make_settings
from tests.support.stub_model import StubModel

LIMITS = Limits(
    requests_per_minute=10_000,
    tokens_per_minute=10**8,
    max_concurrent=100,
    daily_budget_nano=10**13,
    monthly_budget_nano=10**14,
)
BODY = json.dumps({"text": "Azure Functions runs code on demand. It scales out.", "style": "tldr"}).encode()


@pytest.fixture
def env(service_env: dict[str, str]) -> dict[str, str]:
    """The suite's environment with tables of this test's own (as a new account would)."""
    return {**service_env, "SKF_STORAGE_TABLE_PREFIX": "first" + secrets.token_hex(4)}


async def _provision(env: dict[str, str], *, traffic: bool) -> str:
    """A tenant and a key, made by another process (an admin service); with ``traffic``
    the tenant has served a request already (its usage rows exist)."""
    admin = Service.create(make_settings(env))
    try:
        tenant_id = "t-" + secrets.token_hex(4)
        await admin.tenants.create_tenant(Tenant(id=tenant_id, display_name="First", limits=LIMITS))
        key = (await admin.tenants.issue_key(tenant_id)).secret
        if traffic:
            response = await _summarize(admin, key)
            assert response.status_code == 200, response.body
    finally:
        await admin.aclose()
    return key


async def _summarize(service: Service, key: str) -> Any:
    route = next(r for r in ROUTES if r.name == "summarize")
    headers = {"x-api-key": key, "content-type": "application/json", "content-length": str(len(BODY))}
    return await route.bind(lambda: service)(make_request("POST", route.full_path, headers, BODY))


@pytest.fixture
async def fresh() -> AsyncIterator[list[Service]]:
    made: list[Service] = []
    yield made
    for service in made:
        await service.aclose()


async def _first_request(
    env: dict[str, str], key: str, fresh: list[Service], *, start: bool = True
) -> tuple[int, list[str]]:
    """Exchanges from the first request's arrival to its admission in a new process."""
    service = Service.create(make_settings(env))
    fresh.append(service)
    if start:
        await service.start()  # what each host runs before it takes traffic
    await service.runtimes.get()  # the kernel is warm (/api/ready waits for it), not counted
    store = service.store
    store.trace = []
    admitted: list[int] = []
    admit = service.ledger.admit

    async def admit_and_mark(*args: Any, **kwargs: Any) -> Any:
        hold = await admit(*args, **kwargs)
        admitted.append(store.round_trips)
        return hold

    service.ledger.admit = admit_and_mark  # type: ignore[method-assign]
    before = store.round_trips
    response = await _summarize(service, key)
    assert response.status_code == 200, response.body
    [at] = admitted
    return at - before, store.trace[: at - before]


@pytest.mark.parametrize("leases", ["allocated", "pools", "false"])
async def test_the_first_request_of_a_new_process_waits_for_at_most_three_exchanges(
    env: dict[str, str], stub: StubModel, fresh: list[Service], leases: str
) -> None:
    on = {"SKF_LEASES": leases != "false", "SKF_LEASE_ALLOCATOR": leases == "allocated"}
    env = {**env, **{name: str(value).lower() for name, value in on.items()}}
    key = await _provision(env, traffic=True)
    exchanges, trace = await _first_request(env, key, fresh)
    assert exchanges <= 3, trace


async def test_a_new_tenants_first_request_waits_for_at_most_three_exchanges(
    env: dict[str, str], stub: StubModel, fresh: list[Service]
) -> None:
    key = await _provision(env, traffic=False)  # no usage row exists yet
    exchanges, trace = await _first_request(env, key, fresh)
    assert exchanges <= 3, trace


async def test_without_start_up_each_table_costs_one_exchange_on_first_use(
    env: dict[str, str], stub: StubModel, fresh: list[Service]
) -> None:
    """A Functions instance started otherwise than by scale-out (no warmup trigger):
    the key's and the usage table are created on first use (409: they exist)."""
    key = await _provision(env, traffic=True)
    exchanges, trace = await _first_request(env, key, fresh, start=False)
    assert exchanges <= 5, trace
    assert sum(line.startswith("POST Tables") for line in trace) == 2, trace


async def test_readiness_re_creates_a_table_lost_after_start_up(
    env: dict[str, str], stub: StubModel, fresh: list[Service]
) -> None:
    """A table deleted after start-up: the next readiness probe (one listing) creates it
    again, so no request finds it gone."""
    key = await _provision(env, traffic=True)
    service = Service.create(make_settings(env))
    fresh.append(service)
    await service.start()
    await service.store._service.delete_table(f"{env['SKF_STORAGE_TABLE_PREFIX']}usage")
    ready = next(r for r in ROUTES if r.name == "ready").bind(lambda: service)
    response = await ready(make_request("GET", "/api/ready", {}, b""))
    assert response.status_code == 200, response.body
    service.store.trace = []
    assert (await _summarize(service, key)).status_code == 200
    assert not [line for line in service.store.trace if " 404" in line], service.store.trace
