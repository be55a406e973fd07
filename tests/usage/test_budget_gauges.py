"""Budget gauges: each active tenant's budget and what is left of it, bounded in number.

Through the Functions triggers, the real ledger on Azurite and the real OTel SDK reader.
"""

from __future__ import annotations

import asyncio

import pytest

from sk_core.accounts import Limits, Tenant
from sk_core.composition import Service
from sk_core.pricing import NANO_PER_USD
from sk_core.usage import BudgetGauges
from tests.support.hosts import FunctionsHost
from tests.support.metrics import metric_points
from tests.support.stub_model import StubModel
from tests.support.telemetry import TelemetrySink
from tests.support.usage_traffic import BODY, SUMMARIZE, cost_nano, new_tenant, settled_usage


def gauge(sink: TelemetrySink, name: str, tenant_id: str) -> dict[str, float]:
    return {
        p.attributes["sk.window"]: p.value
        for p in metric_points(sink, name)
        if p.attributes.get("sk.tenant") == tenant_id
    }


async def test_a_tenants_budgets_and_remaining_are_exported_after_its_calls(
    functions_host: FunctionsHost, functions_service: Service, stub: StubModel, telemetry_sink: TelemetrySink
) -> None:
    limits = Limits(daily_budget_nano=2 * NANO_PER_USD, monthly_budget_nano=30 * NANO_PER_USD)
    tenant_id, key = await new_tenant(functions_service, "gauged", limits)
    stub.script({"content": "Fine.", "prompt_tokens": 400, "completion_tokens": 20})
    response = await functions_host.request(
        "POST", SUMMARIZE, json_body=BODY, headers={"authorization": f"Bearer {key}"}
    )
    assert response.status == 200, response.body
    charged = cost_nano(response.headers)
    assert charged > 0
    # Admission noted the tenant and read its budget in the background (before the spend).
    for _ in range(100):
        if gauge(telemetry_sink, "sk.budget.limit", tenant_id):
            break
        await asyncio.sleep(0.05)
    assert gauge(telemetry_sink, "sk.budget.limit", tenant_id) == {"day": 2.0, "month": 30.0}
    # The sweep refreshes every noted tenant once the spend is settled and stored.
    await settled_usage(functions_service.ledger, tenant_id)
    await functions_service.budget_gauges.refresh_all(functions_service.ledger)
    remaining = gauge(telemetry_sink, "sk.budget.remaining", tenant_id)
    assert remaining["day"] == pytest.approx(2.0 - charged / NANO_PER_USD, abs=1e-9)
    assert remaining["month"] == pytest.approx(30.0 - charged / NANO_PER_USD, abs=1e-9)


async def test_the_gauges_keep_only_the_most_recently_active_tenants(functions_service: Service) -> None:
    """Cardinality is bounded: a fourth tenant pushes out the least recently active."""
    gauges = BudgetGauges(max_tenants=3, refresh_seconds=3600)
    tenants = [
        Tenant(id=(await new_tenant(functions_service, f"bounded{n}"))[0], display_name="b", limits=Limits())
        for n in range(4)
    ]
    ledger = functions_service.ledger
    for tenant in tenants[:3]:
        gauges.note(tenant, ledger)
    gauges.note(tenants[0], ledger)  # the first is active again: the second is now the oldest
    gauges.note(tenants[3], ledger)
    await gauges.refresh_all(ledger)
    kept = {tenant for tenant, *_ in gauges.observations()}
    assert kept == {tenants[0].id, tenants[2].id, tenants[3].id}
    assert len(list(gauges.observations())) == 2 * 3  # a day and a month each
