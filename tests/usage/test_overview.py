"""The operators' overview: totals, the stacked spend chart, refusals by code, the order
(pure); and the rollup history behind it and the tenant view (Azurite): final hours read
once, live hours read again, the overview's snapshot refreshed in the background."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from sk_core.accounts import Limits, Tenant
from sk_core.storage import TableStore, int64
from sk_core.usage import (
    AUDIT_TABLE,
    AuditEntry,
    AuditLog,
    Bucket,
    RollupHistory,
    Rollups,
    UsageResponse,
    current_windows,
    stamp,
    summarize,
)
from sk_core.usage._history import last_final
from sk_core.usage._read_model import usage_document
from sk_core.usage._rollups import KEEP
from tests.support.clock import inside_one_minute
from tests.support.ledgers import allocating, stop_allocating
from tests.support.stores import STORE_BACKENDS, open_stores

NOW = datetime(2026, 3, 4, 15, 20, tzinfo=UTC)
NAMES = [stamp(NOW - timedelta(hours=n)) for n in range(23, -1, -1)]


class _Row(dict[str, Any]):
    """A ledger row as the SDK returns it (with its ETag)."""

    metadata: ClassVar[dict[str, str]] = {"etag": "W/1"}


def _usage(
    tenant: Tenant, day_spent: int, month_spent: int, held: int = 0, requests: int = 0
) -> UsageResponse:
    day, month = current_windows(NOW)
    rows = {
        day.row: _Row(spent_nano=int64(day_spent), held_nano=int64(held), requests=int64(requests)),
        month.row: _Row(spent_nano=int64(month_spent)),
    }
    return usage_document(tenant, rows, NOW)


def _bucket(cost: int = 0, codes: dict[str, int] | None = None) -> Bucket:
    codes = codes or {}
    return Bucket(calls=1 + sum(codes.values()), errors=sum(codes.values()), cost_nano=cost, codes=codes)


def test_the_overview_orders_by_nearest_budget_and_adds_up_every_tenant() -> None:
    usd = 10**9
    tenants = [
        Tenant(
            id=f"t{n}",
            display_name=f"T{n}",
            limits=Limits(daily_budget_nano=100 * usd, monthly_budget_nano=1000 * usd),
        )
        for n in range(8)
    ]
    listed = [
        # t0: 50 % of its day; t1: 95 % of its month (the nearer window is the month);
        # t2: 90 % of its day once its holds count; the rest spend nothing today.
        (tenants[0], _usage(tenants[0], 50 * usd, 60 * usd, requests=7)),
        (tenants[1], _usage(tenants[1], 10 * usd, 950 * usd, requests=3)),
        (tenants[2], _usage(tenants[2], 80 * usd, 80 * usd, held=10 * usd, requests=5)),
        *((t, _usage(t, 0, 0)) for t in tenants[3:]),
    ]
    # Hourly spend: t3..t7 spent a little yesterday (in the last 24 h), so 8 spenders, top 5 + other.
    buckets: dict[str, dict[str, Bucket]] = {
        "t0": {NAMES[-1]: _bucket(40 * usd), NAMES[-2]: _bucket(10 * usd, {"rate_limited": 2})},
        "t1": {NAMES[0]: _bucket(30 * usd, {"budget_exceeded": 1})},
        "t2": {NAMES[-1]: _bucket(90 * usd, {"rate_limited": 1})},
        **{f"t{n}": {NAMES[3]: _bucket(n * usd)} for n in range(3, 8)},
    }
    doc = summarize(listed, buckets, NAMES, NOW)

    order = [(t["tenant_id"], t["budget_used_pct"], t["nearest_window"]) for t in doc["tenants"]]
    assert order[:3] == [("t1", 95.0, "month"), ("t2", 90.0, "day"), ("t0", 50.0, "day")]
    assert [t for t, *_ in order[3:]] == ["t3", "t4", "t5", "t6", "t7"]  # 0 %: by id

    totals = doc["totals"]
    assert totals["day"]["spent_nano"] == 140 * usd
    assert totals["day"]["held_nano"] == 10 * usd
    assert totals["day"]["budget_nano"] == 800 * usd
    assert totals["month"]["spent_nano"] == 1090 * usd
    assert totals["requests_today"] == 15
    # Today (UTC) began 15 hours ago: t1's refusal 23 hours ago is yesterday's.
    assert totals["refusals_today"] == 3
    assert (totals["tenants"], totals["near_budget"]) == (8, 2)

    chart = doc["spend_by_hour"]
    assert len(chart["t"]) == 24
    assert chart["t"][-1] == int(NOW.replace(minute=0).timestamp())
    labels = [s["label"] for s in chart["series"]]
    assert labels == ["t2", "t0", "t1", "t7", "t6", "other (3)"]
    other = chart["series"][-1]
    assert other["tenant_id"] is None
    assert other["cost_nano"][3] == (3 + 4 + 5) * usd
    # Stacked, the series add up to every tenant's spend, hour by hour.
    every = [sum(t["cost_by_hour"][i] for t in doc["tenants"]) for i in range(24)]
    assert [sum(s["cost_nano"][i] for s in chart["series"]) for i in range(24)] == every

    refusals = doc["refusals_by_code"]
    assert refusals["totals"] == {"rate_limited": 3, "budget_exceeded": 1}
    assert list(refusals["codes"]) == ["rate_limited", "budget_exceeded"]  # most first
    assert refusals["codes"]["rate_limited"][-2:] == [2, 1]


def test_fewer_spenders_than_the_top_need_no_other_series() -> None:
    tenant = Tenant(id="solo", display_name="Solo")
    doc = summarize([(tenant, _usage(tenant, 0, 0))], {"solo": {NAMES[5]: _bucket(7)}}, NAMES, NOW)
    assert [s["label"] for s in doc["spend_by_hour"]["series"]] == ["solo"]
    assert summarize([(tenant, _usage(tenant, 0, 0))], {}, NAMES, NOW)["spend_by_hour"]["series"] == []


# --- the rollup history (Azurite) ---------------------------------------------------------


def test_an_hour_is_final_once_writers_dropped_it_plus_a_margin() -> None:
    # Writers keep an hour's bucket for 2 hours after it ended (KEEP); 15 minutes of margin.
    assert timedelta(hours=2) == KEEP
    at = datetime(2026, 3, 4, 15, 20, tzinfo=UTC)
    assert last_final(at) == "2026030412"  # 12:00-13:00 ended 2 h 20 min ago
    assert last_final(at - timedelta(minutes=5, microseconds=1)) == "2026030411"  # 12-13 ended 2 h 14:59 ago


@pytest.fixture
async def store(azurite: str) -> AsyncIterator[TableStore]:
    store = TableStore(connection_string=azurite, table_prefix="ovw" + secrets.token_hex(4))
    yield store
    await store.aclose()


async def _write(store: TableStore, tenant: str, name: str, cost: int, writer: str = "w1") -> None:
    table = await store.table(AUDIT_TABLE)
    await table.upsert_entity(_bucket(cost).entity(tenant, name, writer))


async def test_final_hours_are_read_once_and_live_hours_every_time(store: TableStore) -> None:
    now = datetime.now(UTC)
    names = [stamp(now - timedelta(hours=n)) for n in range(24, -1, -1)]
    old, live = names[2], names[-1]  # 22 hours ago (final), this hour (live)
    await _write(store, "acme", old, 100)
    await _write(store, "acme", live, 5)
    history = RollupHistory(store)
    first = await history.hours("acme", names, now)
    assert (first[old].cost_nano, first[live].cost_nano) == (100, 5)

    # Rewriting a final hour cannot happen (no writer keeps it); if it did, it is not re-read.
    # The live hour, and a new writer's row of it, are.
    await _write(store, "acme", old, 999)
    await _write(store, "acme", live, 6)
    await _write(store, "acme", live, 7, writer="w2")
    again = await history.hours("acme", names, now)
    assert (again[old].cost_nano, again[live].cost_nano) == (100, 13)

    # A new process (no memory) reads everything once.
    fresh = await RollupHistory(store).hours("acme", names, now)
    assert fresh[old].cost_nano == 999
    # The second read started after the known final hours: at most the last 4 of the 25.
    assert history._tenants["acme"].start_for(names[0]) >= names[-4]
    assert history.reads == 2


def _refresh_task(history: RollupHistory) -> asyncio.Task[None] | None:
    return history._refresh


async def test_the_overview_snapshot_waits_once_then_refreshes_in_the_background(store: TableStore) -> None:
    now = datetime.now(UTC)
    names = [stamp(now - timedelta(hours=n)) for n in range(23, -1, -1)]
    await _write(store, "acme", names[-1], 10)
    ticks = [0.0]
    history = RollupHistory(store, clock=lambda: ticks[0])

    buckets, as_of = await history.snapshot(["acme", "beta"], names, lambda: now)
    assert buckets["acme"][names[-1]].cost_nano == 10  # the first request waited for it
    assert as_of == now

    await _write(store, "acme", names[-1], 20)
    await _write(store, "beta", names[-1], 30)
    ticks[0] = 14.0  # within SNAPSHOT_SECONDS: the snapshot as it was, no read started
    buckets, _ = await history.snapshot(["acme", "beta"], names, lambda: now)
    assert buckets["acme"][names[-1]].cost_nano == 10
    assert _refresh_task(history) is None

    ticks[0] = 15.5  # stale: answered from memory at once, refreshed behind it
    buckets, _ = await history.snapshot(["acme", "beta"], names, lambda: now + timedelta(seconds=10))
    assert buckets["acme"][names[-1]].cost_nano == 10
    task = _refresh_task(history)
    assert task is not None
    await asyncio.wait_for(task, 10)
    buckets, as_of = await history.snapshot(["acme", "beta"], names, lambda: now)
    assert (buckets["acme"][names[-1]].cost_nano, buckets["beta"][names[-1]].cost_nano) == (20, 30)
    assert as_of == now + timedelta(seconds=10)


async def _calls(store: TableStore, tenant: str, times: list[datetime]) -> AuditLog:
    """Audit rows of calls at ``times`` and their rollups, as the audit flusher writes them."""
    log = AuditLog(store=store, retention_days=1)
    rows = [
        log.row(AuditEntry(route="/api/v1/summarize", status=200, tenant_id=tenant, cost_nano=n), at=at)
        for n, at in enumerate(times)
    ]
    rollups = Rollups(writer="w1")
    table = await store.table(AUDIT_TABLE)
    for row in rows + rollups.entities(rollups.plan(rows)):
        await table.upsert_entity(row)
    return log


async def test_the_newest_calls_come_with_the_live_rollups(store: TableStore) -> None:
    now = datetime.now(UTC)
    names = [stamp(now - timedelta(hours=n)) for n in range(24, -1, -1)]
    busy = await _calls(store, "busy", [now - timedelta(seconds=10 * n) for n in range(1, 31)])
    history = RollupHistory(store)
    hours, recent = await history.hours_and_recent("busy", names, now, 20)
    # The same 20 rows, newest first, that the audit log's own reader returns.
    assert [r["RowKey"] for r in recent] == [r["RowKey"] for r in await busy.recent("busy", 20)]
    assert [r["cost_nano"] for r in recent] == list(range(20))
    assert sum(b.calls for b in hours.values()) == 30
    assert history.reads == 1  # the rollups: one query of the tenant's partition

    # A quiet tenant (3 calls, 5 hours ago): older hours' partitions are read until found;
    # calls older than a day (``RECENT_HOURS``) are not shown.
    quiet = await _calls(store, "quiet", [now - timedelta(hours=5, minutes=n) for n in range(3)])
    await _calls(store, "quiet", [now - timedelta(days=3)])
    hours, recent = await history.hours_and_recent("quiet", names, now, 20)
    assert [r["RowKey"] for r in recent] == [r["RowKey"] for r in await quiet.recent("quiet", 20)]
    assert len(recent) == 3
    assert sum(b.calls for b in hours.values()) == 3


def test_the_tenant_view_takes_the_tenant_the_overview_listed_moments_ago() -> None:
    ticks = [0.0]
    history = RollupHistory(
        TableStore(connection_string="UseDevelopmentStorage=true"), clock=lambda: ticks[0]
    )
    acme = Tenant(id="acme", display_name="Acme", limits=Limits(daily_budget_nano=5))
    history.remember_tenants([acme])
    ticks[0] = 5.0
    assert history.listed("acme") is acme
    assert history.listed("other") is None
    ticks[0] = 5.1  # older than LISTED_SECONDS: the tenant view reads it again
    assert history.listed("acme") is None


# --- leased is not used (issue 23, defect 2) ----------------------------------------------


@pytest.mark.parametrize("stores", STORE_BACKENDS, indirect=True)
async def test_the_overview_counts_what_was_used_and_shows_leased_apart(stores: list[TableStore]) -> None:
    """A process holds a lease (requests, tokens, slots and budget granted ahead of use):
    the operators' overview counts only the calls admitted, in flight and held by them as
    used, and shows what sits leased apart, as the tenant's own usage does."""
    from decimal import Decimal

    from sk_core.limits import Ledger
    from sk_core.limits.lease_state import LeaseSettings
    from sk_core.pricing import Price
    from sk_core.usage import overview_document, usage_of

    await inside_one_minute(5)
    price = Price(Decimal("1.00"), Decimal("2.00"))
    who = Tenant(
        id="ov-" + secrets.token_hex(3), display_name="O",
        limits=Limits(requests_per_minute=600, tokens_per_minute=10**8, max_concurrent=64,
                      daily_budget_nano=10**9, monthly_budget_nano=10**10),
    )  # fmt: skip
    tenants = _tenants(stores[0])
    await tenants.create_tenant(who)
    serving = Ledger(store=stores[0], lease_seconds=30, min_answer_tokens=16,
                     leases=LeaseSettings(report_seconds=60, idle_seconds=60))  # fmt: skip
    holds = [await serving.admit(who, price=price, prompt_tokens_bound=100, requested_max_tokens=100,
                                 function="f", key_id="k")]  # fmt: skip
    # The first admission is exact; the next two are leased, once the process allocates.
    # Then its allocator stops, so that the slots it offers (leased, claimed or not) hold
    # still between the two reads below.
    await allocating(serving.leases)
    for _ in range(2):
        holds.append(await serving.admit(who, price=price, prompt_tokens_bound=100,
                                         requested_max_tokens=100, function="f", key_id="k"))  # fmt: skip
    stop_allocating(serving.leases)
    await serving.settle(holds[0], cost_nano=1000, prompt_tokens=1, completion_tokens=1)
    await serving.flush(who.id)  # reported: 3 admitted, 2 in flight, the rest of its slices leased
    reader = Ledger(store=stores[1], lease_seconds=30, min_answer_tokens=16)  # another instance
    own = await usage_of(reader, who, report_own_leases=False)
    document = await overview_document(reader, tenants, history=RollupHistory(stores[1]))
    [row] = [t for t in document["tenants"] if t["tenant_id"] == who.id]
    assert row["minute"]["requests"] == own.minute.requests == 3
    assert row["minute"]["leased_requests"] == own.minute.leased_requests > 0
    assert row["concurrency"]["in_flight"] == own.concurrency.in_flight == 2
    assert row["concurrency"]["leased_slots"] == own.concurrency.leased_slots > 0
    day = row["day"]
    assert day["leased_nano"] > 0
    # Used: spent and what requests hold; the lease's free budget is shown apart.
    used = day["spent_nano"] + day["held_nano"] - day["leased_nano"]
    assert row["budget_used_pct"] == round(100 * used / day["budget_nano"], 2)
    assert row["budget_used_pct"] < round(100 * (used + day["leased_nano"]) / day["budget_nano"], 2)
    totals = document["totals"]
    assert (totals["in_flight"], totals["leased_slots"]) == (2, row["concurrency"]["leased_slots"])
    leased = row["minute"]["leased_requests"]
    assert (totals["requests_this_minute"], totals["leased_requests"]) == (3, leased)
    for hold in holds[1:]:
        await serving.settle(hold, cost_nano=1000, prompt_tokens=1, completion_tokens=1)
    await serving.aclose()


class _NoSecrets:
    async def get(self, name: str) -> str:
        raise AssertionError("the overview hashes no key")


def _tenants(store: TableStore) -> Any:
    from sk_core.accounts import TenantStore

    return TenantStore(store=store, secrets=_NoSecrets(), pepper_name="p")


@pytest.fixture
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[list[TableStore]]:
    async with open_stores(request, "ovl", count=2) as made:
        yield made
