"""The usage API, the admin API and the dashboard's files, on both hosts.

Real Azurite, the real stub model, the real ledger with quota leases; the container
host is uvicorn in its own process, so its leases report through storage like a second
instance would.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sk_core.accounts import Limits
from sk_core.composition import Service
from sk_core.http.rendering import DASHBOARD_CSP
from sk_core.limits import USAGE_TABLE, window_keys
from sk_core.storage import query_partition, read_int
from tests.support.hosts import FunctionsHost, Host
from tests.support.stub_model import StubModel
from tests.support.usage_traffic import (
    BODY,
    ROOT,
    SUMMARIZE,
    admin_cli,
    cost_nano,
    new_tenant,
    settled_usage,
    usage_headers,
)

USAGE = "/api/v1/usage"
ADMIN = "/api/v1/admin/tenants"
ROOMY = Limits(
    requests_per_minute=1_000,
    tokens_per_minute=10**8,
    max_concurrent=50,
    daily_budget_nano=10**12,
    monthly_budget_nano=2 * 10**12,
)


@pytest.fixture(scope="module")
async def admin_key(functions_service: Service) -> str:
    """An operator key, issued as ``admin-key issue`` issues it."""
    return (await functions_service.tenants.issue_admin_key(name="usage-tests")).secret


def _check_consistent(document: dict[str, Any], limits: Limits) -> None:
    for period, budget in (("day", limits.daily_budget_nano), ("month", limits.monthly_budget_nano)):
        window = document[period]
        assert window["budget_nano"] == budget
        assert window["remaining_nano"] == budget - window["spent_nano"] - window["held_nano"]
        assert window["spent_nano"] + window["held_nano"] <= budget  # never over, even mid-flight
    assert 0 <= document["concurrency"]["in_flight"] <= limits.max_concurrent
    assert document["minute"]["requests"] <= limits.requests_per_minute


async def test_usage_api_equals_the_ledger_under_concurrent_traffic(
    host: Host, functions_service: Service, stub: StubModel
) -> None:
    tenant_id, key = await new_tenant(functions_service, f"use{host.name[:4]}", ROOMY)
    headers = usage_headers(key)
    stub.set_default(delay=0.05)
    done = asyncio.Event()
    snapshots: list[dict[str, Any]] = []

    async def watch() -> None:
        while not done.is_set():
            response = await host.request("GET", USAGE, headers=headers)
            assert response.status == 200, response.body
            snapshots.append(response.json())

    watcher = asyncio.create_task(watch())
    responses = await asyncio.gather(
        *(host.request("POST", SUMMARIZE, json_body=BODY, headers=headers) for _ in range(16))
    )
    done.set()
    await watcher
    assert [r.status for r in responses] == [200] * 16, [r.body for r in responses if r.status != 200]
    charged = sum(cost_nano(r.headers) for r in responses)
    assert charged > 0

    # Mid-traffic: every answer is internally consistent, and spend only grows.
    assert snapshots
    for snapshot in snapshots:
        _check_consistent(snapshot, ROOMY)
    spent = [s["day"]["spent_nano"] for s in snapshots]
    assert spent == sorted(spent)

    ledger = await settled_usage(functions_service.ledger, tenant_id)
    response = await host.request("GET", USAGE, headers=headers)
    assert response.status == 200
    document = response.json()
    _check_consistent(document, ROOMY)
    assert document["tenant_id"] == tenant_id
    for period in ("day", "month"):
        window, stored = document[period], ledger[period]
        assert window["spent_nano"] == stored["spent_nano"] == charged
        assert window["held_nano"] == stored["held_nano"] + stored["leased_nano"] == 0
        assert window["requests"] == stored["requests"] == 16
        assert window["prompt_tokens"] == stored["prompt_tokens"]
        assert window["completion_tokens"] == stored["completion_tokens"]
        assert window["spent_usd"] == pytest.approx(charged / 1e9)
        assert 0 < window["resets_in_seconds"] <= 31 * 86_400
    # This minute's counters are the stored minute row's (the window the answer names).
    minute_key = window_keys(datetime.fromisoformat(document["as_of"]))[2]
    table = await functions_service.store.table(USAGE_TABLE)
    minute_row = (await query_partition(table, tenant_id, [minute_key])).get(minute_key)
    stored_requests = read_int(minute_row.get("requests")) if minute_row is not None else 0
    assert document["minute"]["requests"] == stored_requests
    assert document["minute"]["requests_limit"] == ROOMY.requests_per_minute
    assert document["concurrency"] == {"in_flight": 0, "limit": ROOMY.max_concurrent, "leased_slots": 0}


async def test_usage_needs_a_valid_tenant_key(functions_host: FunctionsHost, admin_key: str) -> None:
    assert (await functions_host.request("GET", USAGE, headers={"authorization": None})).status == 401
    # An admin key is not a tenant: it has no usage of its own.
    assert (await functions_host.request("GET", USAGE, headers=usage_headers(admin_key))).status == 401
    assert (await functions_host.request("POST", USAGE, json_body={})).status == 404  # no POST trigger


@pytest.mark.parametrize("path", [ADMIN, f"{ADMIN}/contract", f"{ADMIN}/contract/usage.csv"])
async def test_admin_routes_refuse_tenant_keys_and_strangers(
    functions_host: FunctionsHost, functions_service: Service, admin_key: str, path: str
) -> None:
    _, tenant_key = await new_tenant(functions_service, "nosy")
    refused = await functions_host.request("GET", path, headers=usage_headers(tenant_key))
    assert refused.status == 403
    assert refused.json()["code"] == "forbidden"
    assert (await functions_host.request("GET", path, headers={"authorization": None})).status == 401
    bogus = "skfadm_0123456789ab_" + "A" * 43
    assert (await functions_host.request("GET", path, headers=usage_headers(bogus))).status == 401
    allowed = await functions_host.request("GET", path, headers=usage_headers(admin_key))
    assert allowed.status == 200, allowed.body


async def test_a_revoked_admin_key_is_refused(
    functions_host: FunctionsHost, functions_service: Service
) -> None:
    issued = await functions_service.tenants.issue_admin_key(name="short-lived")
    await functions_service.tenants.revoke_key(issued.record.key_id, admin=True)
    response = await functions_host.request("GET", ADMIN, headers=usage_headers(issued.secret))
    assert response.status == 401


@pytest.mark.parametrize(("tenant", "status"), [("Bad_ID", 400), ("x", 400), ("nobody-here-at-all", 404)])
async def test_a_bad_or_unknown_tenant_is_a_clear_4xx(
    functions_host: FunctionsHost, admin_key: str, tenant: str, status: int
) -> None:
    for suffix in ("", "/usage.csv"):
        response = await functions_host.request(
            "GET", f"{ADMIN}/{tenant}{suffix}", headers=usage_headers(admin_key)
        )
        assert response.status == status, response.body
        assert response.headers["content-type"] == "application/problem+json"


async def test_the_admin_api_and_the_csv_show_the_ledgers_numbers(
    container_host: Host,
    functions_service: Service,
    admin_key: str,
    service_env: dict[str, str],
    stub: StubModel,
) -> None:
    tenant_id, key = await new_tenant(functions_service, "csv", ROOMY)
    responses = [
        await container_host.request("POST", SUMMARIZE, json_body=BODY, headers=usage_headers(key))
        for _ in range(3)
    ]
    assert [r.status for r in responses] == [200] * 3
    ledger = await settled_usage(functions_service.ledger, tenant_id)
    await asyncio.sleep(1.5)  # the container's audit flusher (and its rollups): every second

    listing = await container_host.request("GET", ADMIN, headers=usage_headers(admin_key))
    row = next(t for t in listing.json()["tenants"] if t["tenant_id"] == tenant_id)
    assert (
        row["day"]["spent_nano"]
        == ledger["day"]["spent_nano"]
        == sum(cost_nano(r.headers) for r in responses)
    )
    assert row["month"]["remaining_nano"] == ROOMY.monthly_budget_nano - ledger["month"]["spent_nano"]

    detail = (
        await container_host.request("GET", f"{ADMIN}/{tenant_id}", headers=usage_headers(admin_key))
    ).json()
    assert [w["spent_nano"] for w in detail["windows"]] == [
        ledger["day"]["spent_nano"],
        ledger["month"]["spent_nano"],
    ]
    assert sum(detail["per_minute"]["calls"]) == 3
    assert sum(detail["per_hour"]["calls"]) == 3
    assert detail["spend_by_day"]["spent_usd"][-1] == pytest.approx(ledger["day"]["spent_nano"] / 1e9)
    assert [f["function"] for f in detail["by_function"]] == ["text/summarize"]
    assert detail["by_function"][0]["p95_ms"] >= detail["by_function"][0]["p50_ms"] > 0
    assert sorted(c["trace_id"] for c in detail["recent"]) == sorted(
        r.headers["x-trace-id"] for r in responses
    )

    # The download link and the CLI produce the same file.
    download = await container_host.request(
        "GET", f"{ADMIN}/{tenant_id}/usage.csv", headers=usage_headers(admin_key)
    )
    assert download.status == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert f'filename="usage-{tenant_id}-' in download.headers["content-disposition"]
    cli = admin_cli(service_env, "usage", tenant_id, "--days", "30", "--csv")
    assert download.body.decode() == cli
    lines = cli.splitlines()
    assert len(lines) == 1 + 30 + 1  # header, 30 days, this month
    today = dict(zip(lines[0].split(","), lines[-2].split(","), strict=True))
    assert int(today["spent_nano"]) == ledger["day"]["spent_nano"]
    assert int(today["requests"]) == 3


async def test_the_dashboard_page_has_its_own_csp_and_serves_only_its_files(
    functions_host: FunctionsHost,
) -> None:
    page = await functions_host.request("GET", "/api/dashboard", headers={"authorization": None})
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == DASHBOARD_CSP
    assert page.headers["x-frame-options"] == "DENY"
    assert b"dashboard/uPlot.iife.min.js" in page.body
    script = await functions_host.request(
        "GET", "/api/dashboard/dashboard.js", headers={"authorization": None}
    )
    assert script.status == 200
    assert script.headers["content-type"].startswith("text/javascript")
    # Every other answer keeps the strict policy.
    assert script.headers["content-security-policy"].startswith("default-src 'none'")
    for name in ("dashboard.html", "secrets.py", "..%2Fdashboard.py", "uPlot.LICENSE"):
        missing = await functions_host.request(
            "GET", f"/api/dashboard/{name}", headers={"authorization": None}
        )
        assert missing.status == 404, name


def test_the_served_uplot_is_the_npm_package_pinned_in_package_json() -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["dependencies"]["uplot"]
    installed = ROOT / "node_modules" / "uplot"
    assert json.loads((installed / "package.json").read_text())["version"] == pinned
    static = ROOT / "sk_core" / "http" / "static"
    for served, source in (
        ("uPlot.iife.min.js", "dist/uPlot.iife.min.js"),
        ("uPlot.min.css", "dist/uPlot.min.css"),
        ("uPlot.LICENSE", "LICENSE"),
    ):
        assert (static / served).read_bytes() == Path(installed / source).read_bytes(), (
            f"sk_core/http/static/{served} differs from node_modules/uplot/{source}: copy it again"
        )
