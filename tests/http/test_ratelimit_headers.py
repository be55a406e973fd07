"""RateLimit headers under quota leases (issue 27, defect 5).

Under leases a process admits from its own slice of the tenant's minute; the headers
must still tell a client the *tenant's* remaining requests: an estimate that never
rises within a window and never claims more than is left. The real service (leases on,
Azurite) over the container host; the IETF draft's two fields next to the legacy three.
"""

from __future__ import annotations

import re
import secrets

import httpx

from sk_core.accounts import Limits, Tenant
from sk_core.composition import Service
from sk_core.errors import RateState
from sk_core.http.rendering import rate_limit_headers
from tests.support.clock import inside_one_minute
from tests.support.hosts import ContainerHost
from tests.support.stub_model import StubModel


def test_the_draft_fields_and_the_legacy_three_say_the_same() -> None:
    headers = rate_limit_headers(RateState(limit=60, remaining=-1, reset=17))
    assert headers["RateLimit-Limit"] == "60"
    assert headers["RateLimit-Remaining"] == "0"  # never negative
    assert headers["RateLimit-Reset"] == "17"
    assert headers["RateLimit-Policy"] == '"requests";q=60;w=60'
    assert headers["RateLimit"] == '"requests";r=0;t=17'


async def _tenant_key(service: Service, rpm: int) -> str:
    tenant = Tenant(
        id="rl-" + secrets.token_hex(4), display_name="RL", limits=Limits(requests_per_minute=rpm)
    )
    await service.tenants.create_tenant(tenant)
    return (await service.tenants.issue_key(tenant.id)).secret


_DRAFT = re.compile(r'^"requests";r=(\d+);t=(\d+)$')


async def _remaining_sequence(host: ContainerHost, key: str, calls: int) -> list[tuple[int, int, int]]:
    seen = []
    async with httpx.AsyncClient(base_url=host.base_url, timeout=30) as client:
        for _ in range(calls):
            response = await client.post(
                "/api/v1/summarize", json={"text": "Pace me."}, headers={"x-api-key": key}
            )
            assert response.status_code == 200, response.text
            draft = _DRAFT.match(response.headers["ratelimit"])
            assert draft is not None, response.headers["ratelimit"]
            assert (
                response.headers["ratelimit-policy"]
                == f'"requests";q={response.headers["ratelimit-limit"]};w=60'
            )
            legacy = int(response.headers["ratelimit-remaining"])
            assert int(draft.group(1)) == legacy
            seen.append(
                (legacy, int(response.headers["ratelimit-limit"]), int(response.headers["ratelimit-reset"]))
            )
    return seen


async def test_remaining_is_the_tenants_and_never_rises_within_the_minute(
    functions_service: Service, container_host: ContainerHost, stub: StubModel
) -> None:
    for rpm, calls in ((60, 12), (3, 2)):
        key = await _tenant_key(functions_service, rpm)
        await inside_one_minute(20)
        seen = await _remaining_sequence(container_host, key, calls)
        remaining = [r for r, _, _ in seen]
        assert all(limit == rpm for _, limit, _ in seen)
        # Never above the truth (rpm - calls made so far), never rising.
        for made, value in enumerate(remaining, start=1):
            assert value <= rpm - made, (rpm, remaining)
        assert remaining == sorted(remaining, reverse=True), remaining
        # One process: nothing is leased elsewhere, so the estimate is the truth.
        assert remaining == [rpm - made for made in range(1, calls + 1)], remaining
