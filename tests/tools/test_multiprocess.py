"""Two processes (container hosts, each with its own kernel and quota leases) running
tool loops for one tenant on one Azurite never overspend its budget, and every step of
every run is charged exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from sk_core.composition import Service
from sk_core.limits import window_keys
from tests.integration.test_limits_multiprocess import budget_tenant, handed_back, wait_ready
from tests.support.hosts import container_fleet
from tests.support.stub_model import StubModel

ASK = "/api/v1/functions/assist/ask"


@pytest.fixture(scope="module")
def pair(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    with container_fleet(2, service_env, tmp_path_factory.mktemp("tool-fleet")) as urls:
        yield urls


async def test_two_processes_running_tool_loops_never_overspend(
    pair: list[str], functions_service: Service, stub: StubModel
) -> None:
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(wait_ready(client, base) for base in pair))
    budget = 60_000_000  # $0.06: room for some runs of up to 4 steps, not for all of them
    tenant_id, key = await budget_tenant(functions_service, budget)
    # A model that always wants another tool: every run goes to its step cap or its budget.
    stub.set_default(tool_calls=[{"name": "calc-evaluate", "arguments": {"expression": "6 * 7"}}], delay=0.02)

    async def one(client: httpx.AsyncClient, base: str, index: int) -> httpx.Response:
        body: dict[str, Any] = {"question": f"Run {index}: " + "words " * (index % 7 * 40), "max_tokens": 200}
        return await client.post(f"{base}{ASK}", json=body, headers={"x-api-key": key})

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as client:
        responses = await asyncio.gather(*(one(client, pair[i % 2], i) for i in range(48)))

    answered = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert answered, "the budget should admit some runs"
    # Refused for money spent, or only held by the other runs' steps (issue 23: its own code).
    budget_codes = {(429, "budget_exceeded"), (429, "budget_held")}
    assert all((r.status_code, r.json()["code"]) in budget_codes for r in refused), [
        r.text for r in refused
    ]
    runs = [r.json()["run"] for r in answered]
    stopped_by_budget = [run for run in runs if run["code"] in {"budget_exceeded", "budget_held"}]
    assert refused or stopped_by_budget, "the demand should exceed the budget"
    assert all(run["code"] in {"max_steps", "budget_exceeded", "budget_held"} for run in runs)
    usage = await handed_back(functions_service, tenant_id, window_keys(datetime.now(UTC))[0])
    assert usage["spent_nano"] <= budget
    assert (usage["held_nano"], usage["leased_nano"], usage["inflight"]) == (0, 0, 0)
    steps = sum(run["steps"] for run in runs)
    assert usage["requests"] == steps == stub.stats()["count"]
    charged = sum(r.json()["cost_usd"] for r in answered)
    assert charged == pytest.approx(usage["spent_nano"] / 1e9, abs=1e-9 * steps)
