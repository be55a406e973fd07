"""The dashboard in a real browser: headless Debian Chromium driven by Playwright.

The page is loaded from the container host (uvicorn in its own process) over Azurite,
after two tenants made known traffic. What the page shows is compared with the ledger
(read from storage here) and with what ``admin usage`` prints; every request the page
makes is recorded, and must go to the service itself.

Playwright's own browser download cannot run here, so it drives the system Chromium
(``apt-get install chromium``; ``make test`` does it when missing, ``make run`` never).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sk_core.accounts import Limits, Tenant
from sk_core.composition import Service
from tests.support.clock import inside_one_minute
from tests.support.hosts import ContainerHost
from tests.support.stub_model import StubModel
from tests.support.usage_traffic import (
    BODY,
    ROOT,
    SUMMARIZE,
    admin_cli,
    cli_rows,
    new_tenant,
    settled_usage,
    usage_headers,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = ROOT / "docs" / "dashboard.png"

if not CHROMIUM.exists():
    # CI installs it (Makefile); elsewhere, say what is missing instead of failing obscurely.
    if os.environ.get("CI"):
        raise RuntimeError("/usr/bin/chromium is missing: run 'make test' (apt-get install chromium)")
    pytest.skip("Debian chromium is not installed (make browser)", allow_module_level=True)

from playwright.async_api import Browser, Page, async_playwright, expect  # noqa: E402


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


async def _traffic(host: ContainerHost, key: str, calls: int) -> list[int]:
    statuses = []
    for _ in range(calls):
        response = await host.request("POST", SUMMARIZE, json_body=BODY, headers=usage_headers(key))
        statuses.append(response.status)
    return statuses


async def _connect(page: Page, base_url: str, key: str) -> None:
    await page.goto(f"{base_url}/api/dashboard")
    await page.fill("#key", key)
    await page.click("#connect")


async def test_the_dashboard_shows_the_ledgers_numbers(
    browser: Browser,
    container_host: ContainerHost,
    functions_service: Service,
    service_env: dict[str, str],
    stub: StubModel,
) -> None:
    service = functions_service
    busy_id, busy_key = await new_tenant(service, "busy", Limits(daily_budget_nano=10**10))
    # Two requests a minute: the third call in a row is refused (a refusal to chart).
    calm_id, calm_key = await new_tenant(service, "calm", Limits(requests_per_minute=2))
    await inside_one_minute(10)  # the calm tenant's three calls in one minute
    assert await _traffic(container_host, busy_key, 4) == [200] * 4
    assert await _traffic(container_host, calm_key, 3) == [200, 200, 429]
    busy = await settled_usage(service.ledger, busy_id)
    calm = await settled_usage(service.ledger, calm_id)
    # A daily budget the busy tenant has used 90 % of: its row must be highlighted.
    tenant = await service.tenants.require_tenant(busy_id)
    budget = busy["day"]["spent_nano"] * 10 // 9
    await service.tenants.save_tenant(
        Tenant(id=tenant.id, display_name=tenant.display_name, limits=Limits(daily_budget_nano=budget))
    )
    await asyncio.sleep(1.5)  # the container's audit rows and rollups are flushed every second
    operator = (await service.tenants.issue_admin_key(name="browser")).secret

    context = await browser.new_context(viewport={"width": 1500, "height": 1900})
    page = await context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))

    await _connect(page, container_host.base_url, operator)
    busy_row = page.locator(f'#tenants tr[data-tenant="{busy_id}"]')
    calm_row = page.locator(f'#tenants tr[data-tenant="{calm_id}"]')
    await expect(busy_row).to_be_visible()
    await expect(calm_row).to_be_visible()

    # The table: the same figures `admin usage` prints, from the same ledger rows.
    for tenant_id, row, stored in ((busy_id, busy_row, busy), (calm_id, calm_row, calm)):
        printed = cli_rows(admin_cli(service_env, "usage", tenant_id))
        day_spent, month_spent = printed["spent USD"]
        day_budget, _ = printed["budget USD"]
        day_remaining, month_remaining = printed["remaining USD"]
        await expect(row.locator('[data-field="day"] .money')).to_have_text(f"{day_spent} / {day_budget}")
        await expect(row.locator('[data-field="day-remaining"]')).to_have_text(day_remaining)
        await expect(row.locator('[data-field="month-remaining"]')).to_have_text(month_remaining)
        assert month_spent in await row.locator('[data-field="month"] .money').inner_text()
        assert stored["day"]["spent_nano"] > 0
    # Bars: the spent share of the daily budget, drawn to scale (90 % for busy).
    await expect(busy_row.locator('[data-field="day"] .bar')).to_have_attribute("data-used", "90.00")
    width = await busy_row.locator('[data-field="day"] .fill').evaluate(
        "e => e.getBoundingClientRect().width"
    )
    track = await busy_row.locator('[data-field="day"] .bar').evaluate("e => e.clientWidth")
    assert width == pytest.approx(track * 0.9, abs=1.5)
    await expect(busy_row).to_have_class(re.compile(r"\bhot\b"))
    await expect(calm_row).not_to_have_class(re.compile(r"\b(hot|over)\b"))
    await expect(calm_row.locator('[data-field="rpm"]')).to_contain_text("/ 2")

    # Sorted by today's spend (the default), then by % of the daily budget; the table
    # lists every tenant of the service (other tests' too), so check the whole order.
    spends = await page.locator('#tenants [data-field="day"] .money').all_inner_texts()
    amounts = [float(text.split(" / ")[0].replace("<", "")) for text in spends]
    assert amounts == sorted(amounts, reverse=True)
    await page.select_option("#sort", "pct")
    order = await page.locator("#tenants tbody tr").evaluate_all("rows => rows.map(r => r.dataset.tenant)")
    bars = page.locator('#tenants [data-field="day"] .bar')
    used = [float(u) for u in await bars.evaluate_all("bars => bars.map(b => b.dataset.used)")]
    assert used == sorted(used, reverse=True)
    assert order.index(busy_id) < order.index(calm_id)

    # One tenant: the window table is `admin usage`, row for row.
    await calm_row.click()
    await expect(page.locator("#detail-title")).to_contain_text(calm_id)
    printed = cli_rows(admin_cli(service_env, "usage", calm_id))
    for label in ("spent USD", "held USD", "leased USD", "budget USD", "remaining USD", "requests"):
        cells = page.locator(f'#windows tr[data-row="{label}"] td.num')
        await expect(cells).to_have_text(printed[label])
    # Recent calls from the audit log (two answered, one refused), and three charts.
    await expect(page.locator("#recent tbody tr")).to_have_count(3)
    await expect(page.locator("#recent tbody")).to_contain_text("rate_limited")
    await expect(page.locator("#functions tbody tr").first).to_contain_text("text/summarize")
    await expect(page.locator(".charts canvas")).to_have_count(3)
    await expect(page.locator("#chart-codes")).to_contain_text("rate_limited")  # the legend

    # The CSV link downloads what the CLI exports.
    async with page.expect_download() as downloading:
        await page.click("#csv")
    download = await downloading.value
    saved = await asyncio.to_thread(Path(await download.path()).read_text)
    assert saved == admin_cli(service_env, "usage", calm_id, "--days", "30", "--csv")

    SCREENSHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)

    await busy_row.click()
    await expect(page.locator("#detail-title")).to_contain_text(busy_id)
    await expect(page.locator("#recent tbody tr")).to_have_count(4)

    # It refreshes by itself: new traffic shows up without a reload.
    before = await busy_row.locator('[data-field="day-remaining"]').inner_text()
    await service.tenants.save_tenant(
        Tenant(id=tenant.id, display_name=tenant.display_name, limits=Limits(daily_budget_nano=10**10))
    )
    await expect(busy_row.locator('[data-field="day-remaining"]')).not_to_have_text(before, timeout=15_000)

    # Nothing fetched from anywhere but the service; no script error, no CSP violation.
    assert requested
    outside = [url for url in requested if not url.startswith(container_host.base_url + "/")]
    assert outside == []
    assert problems == []
    await context.close()


async def test_a_tenant_key_is_refused_by_the_dashboard(
    browser: Browser, container_host: ContainerHost, functions_service: Service
) -> None:
    _, tenant_key = await new_tenant(functions_service, "peek")
    context = await browser.new_context()
    page = await context.new_page()
    await _connect(page, container_host.base_url, tenant_key)
    await expect(page.locator("#status")).to_contain_text("403")
    await expect(page.locator("#status")).to_have_class("error")
    await expect(page.locator("#overview")).to_be_hidden()
    await expect(page.locator("#tenants tbody tr")).to_have_count(0)
    await context.close()
