"""The dashboard in a real browser: headless Debian Chromium driven by Playwright.

The page is loaded from the container host (uvicorn in its own process) over Azurite,
after two tenants made known traffic, in a 1,280 px wide window (it must not scroll
sideways). What the page shows is compared with the ledger (read from storage here) and
with what ``admin usage`` prints: money to the cent for people ($1,234.56), the exact
figure in its title; every request the page makes is recorded, and must go to the
service itself.

Playwright's own browser download cannot run here, so it drives the system Chromium
(``apt-get install chromium``; ``make test`` does it when missing, ``make run`` never).
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import AsyncIterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from sk_core.accounts import Limits, Tenant
from sk_core.composition import Service
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
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

SCREENSHOT = ROOT / "docs" / "dashboard.png"
WIDTH = 1280

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


def people(nano: int) -> str:
    """USD as the page prints it: to the cent, grouped; under a cent, 2 significant digits."""
    sign, amount = ("-" if nano < 0 else ""), Decimal(abs(nano)) / 10**9
    if nano == 0 or amount >= Decimal("0.005"):
        return f"{sign}${amount.quantize(Decimal('0.01'), ROUND_HALF_UP):,}"
    digits = min(9, 1 - math.floor(math.log10(float(amount))))
    return f"{sign}${float(f'{float(amount):.2g}'):.{digits}f}"


def exact(nano: int) -> str:
    """USD as stored (the title on hover): nine decimals, zeros beyond the cents dropped."""
    whole, fraction = divmod(abs(nano), 10**9)
    digits = f"{fraction:09d}".rstrip("0").ljust(2, "0")
    return f"{'-' if nano < 0 else ''}${whole:,}.{digits}"


def cli_figure(title: str) -> str:
    """A title's exact figure as ``admin usage`` prints it (6 decimals, half up)."""
    amount = Decimal(title.replace("$", "").replace(",", ""))
    if 0 < abs(amount) < Decimal("0.0000005"):
        return ("-" if amount < 0 else "") + "<0.000001"
    return str(amount.quantize(Decimal("0.000001"), ROUND_HALF_UP))


async def _scroll_width(page: Page) -> int:
    return int(await page.evaluate("() => document.documentElement.scrollWidth"))


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
    month_budget = 1_234_560_000_000  # $1,234.56
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
        Tenant(
            id=tenant.id,
            display_name=tenant.display_name,
            limits=Limits(daily_budget_nano=budget, monthly_budget_nano=month_budget),
        )
    )
    await asyncio.sleep(1.5)  # the container's audit rows and rollups are flushed every second
    operator = (await service.tenants.issue_admin_key(name="browser")).secret

    context = await browser.new_context(viewport={"width": WIDTH, "height": 1400})
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

    # The table: money for people, the exact figure on hover, both the ledger's; the
    # exact one is what `admin usage` prints, to its six decimals.
    for tenant_id, row, stored in ((busy_id, busy_row, busy), (calm_id, calm_row, calm)):
        printed = cli_rows(admin_cli(service_env, "usage", tenant_id))
        limits = (await service.tenants.require_tenant(tenant_id)).limits
        day_spent, month_spent = stored["day"]["spent_nano"], stored["month"]["spent_nano"]
        assert day_spent > 0
        day = row.locator('[data-field="day"] .money')
        await expect(day).to_have_text(f"{people(day_spent)} / {people(limits.daily_budget_nano)}")
        await expect(day.locator(".usd").first).to_have_attribute("title", exact(day_spent))
        month = row.locator('[data-field="month"] .money')
        await expect(month).to_have_text(f"{people(month_spent)} / {people(limits.monthly_budget_nano)}")
        remaining = row.locator('[data-field="day-remaining"] .usd')
        await expect(remaining).to_have_text(people(limits.daily_budget_nano - day_spent))
        titles = [await day.locator(".usd").nth(i).get_attribute("title") or "" for i in range(2)] + [
            await remaining.get_attribute("title") or ""
        ]
        assert [cli_figure(t) for t in titles] == [
            printed["spent USD"][0],
            printed["budget USD"][0],
            printed["remaining USD"][0],
        ]
    # Money as people read it: grouped, two decimals (the busy tenant's monthly budget).
    await expect(busy_row.locator('[data-field="month"] .usd').nth(1)).to_have_text("$1,234.56")
    await expect(busy_row.locator('[data-field="month"] .usd').nth(1)).to_have_attribute("title", "$1,234.56")
    assert re.fullmatch(
        r"\$\d{1,3}(,\d{3})*\.\d{2}", await page.locator('#totals [data-total="day"] .sub .usd').inner_text()
    )

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

    # Nearest their budget first (the default): the larger share of day or month, falling.
    # The table lists every tenant of the service (other tests' too): check the whole order.
    order = await page.locator("#tenants tbody tr").evaluate_all("rows => rows.map(r => r.dataset.tenant)")
    shares = [
        float(t.removesuffix(" %"))
        for t in await page.locator('#tenants [data-field="used"]').all_inner_texts()
    ]
    assert shares == sorted(shares, reverse=True)
    assert shares[order.index(busy_id)] == 90.0
    assert order.index(busy_id) < order.index(calm_id)
    await page.select_option("#sort", "spend")
    spends = [
        int(n)
        for n in await page.locator('#tenants [data-field="day"] .money .usd:first-child').evaluate_all(
            "nodes => nodes.map(n => n.dataset.nano)"
        )
    ]
    assert spends == sorted(spends, reverse=True)

    # Totals add up the table; the charts: spend per hour (stacked), refusals by code.
    total_day = page.locator('#totals [data-total="day"] .big .usd')
    await expect(total_day).to_have_attribute("data-nano", str(sum(spends)))
    await expect(page.locator("#chart-spend canvas")).to_have_count(1)
    legend = page.locator("#chart-spend .u-legend")
    await expect(legend).not_to_contain_text("no spend")
    # The charts' snapshot may be up to one refresh behind (SNAPSHOT_SECONDS): give it two.
    refused = page.locator('#refusals li[data-code="rate_limited"] .count')
    await expect(refused).to_have_text(re.compile(r"^[1-9][\d,]*$"), timeout=45_000)
    assert (
        int((await page.locator('#totals [data-total="refusals"] .big').inner_text()).replace(",", "")) >= 1
    )

    # Nothing wider than the window: no sideways scrolling at 1,280 px.
    assert await _scroll_width(page) <= WIDTH

    # One tenant: the window table is `admin usage`, row for row.
    await calm_row.click()
    await expect(page.locator("#detail-title")).to_contain_text(calm_id)
    printed = cli_rows(admin_cli(service_env, "usage", calm_id))
    for label in ("spent USD", "held USD", "leased USD", "budget USD", "remaining USD"):
        cells = page.locator(f'#windows tr[data-row="{label}"] td.num .usd')
        await expect(cells).to_have_count(2)
        titles = await cells.evaluate_all("nodes => nodes.map(n => n.title)")
        assert [cli_figure(t) for t in titles] == printed[label]
    await expect(page.locator('#windows tr[data-row="requests"] td.num')).to_have_text(printed["requests"])
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

    assert await _scroll_width(page) <= WIDTH  # the tenant's tables and charts too
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
