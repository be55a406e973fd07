"""The ledger on the in-memory store and on real Azurite: clamp, refuse, settle, expire, roll over."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from sk_core.accounts import Limits, Tenant
from sk_core.errors import LimitExceeded
from sk_core.http.rendering import error_headers
from sk_core.limits import INFLIGHT, USAGE_TABLE, Hold, Ledger, window_keys
from sk_core.pricing import Price
from sk_core.storage import TableStore
from tests.support.stores import STORE_BACKENDS, open_stores

PRICE = Price(Decimal("1.00"), Decimal("2.00"))  # USD per million: 1000 / 2000 nano per token


class Clock:
    """A settable UTC clock."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=STORE_BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TableStore]:
    async with open_stores(request, "led") as (table_store,):
        yield table_store


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 31, 23, 59, 10, tzinfo=UTC))


def make_ledger(store: TableStore, clock: Clock, lease: float = 60) -> Ledger:
    return Ledger(store=store, lease_seconds=lease, min_answer_tokens=16, clock=clock)


def tenant(**limits: int) -> Tenant:
    return Tenant(id="t-" + secrets.token_hex(3), display_name="T", limits=Limits(**limits))


async def admit(ledger: Ledger, who: Tenant, prompt: int = 1000, max_tokens: int = 1000) -> Hold:
    return await ledger.admit(
        who,
        price=PRICE,
        prompt_tokens_bound=prompt,
        requested_max_tokens=max_tokens,
        function="f",
        key_id="k",
    )


async def test_reserve_holds_the_worst_case_and_settle_charges_actual(
    store: TableStore, clock: Clock
) -> None:
    ledger = make_ledger(store, clock)
    who = tenant(daily_budget_nano=10**9)
    hold = await ledger.admit(
        who, price=PRICE, prompt_tokens_bound=1000, requested_max_tokens=500, function="f", key_id="k"
    )
    assert hold.max_tokens == 500
    assert hold.amount_nano == 1000 * 1000 + 500 * 2000
    day = window_keys(clock())[0]
    assert (await ledger.usage(who.id, day))["held_nano"] == hold.amount_nano
    settled = await ledger.settle(
        hold, cost_nano=PRICE.cost_nano(300, 40), prompt_tokens=300, completion_tokens=40
    )
    usage = await ledger.usage(who.id, day)
    assert usage["spent_nano"] == settled.cost_nano == 300 * 1000 + 40 * 2000
    assert (usage["held_nano"], usage["inflight"], usage["requests"]) == (0, 0, 1)
    # Settling again (a retry whose first answer was lost) charges nothing more.
    again = await ledger.settle(hold, cost_nano=settled.cost_nano, prompt_tokens=300, completion_tokens=40)
    assert again.late
    assert (await ledger.usage(who.id, day))["spent_nano"] == settled.cost_nano


async def test_max_tokens_is_clamped_to_the_remaining_budget(store: TableStore, clock: Clock) -> None:
    ledger = make_ledger(store, clock)
    who = tenant(daily_budget_nano=1000 * 1000 + 100 * 2000)  # the prompt plus exactly 100 output tokens
    hold = await ledger.admit(
        who, price=PRICE, prompt_tokens_bound=1000, requested_max_tokens=4000, function="f", key_id="k"
    )
    assert hold.max_tokens == 100
    assert hold.amount_nano == who.limits.daily_budget_nano


async def test_refused_when_not_even_the_minimum_answer_fits(store: TableStore, clock: Clock) -> None:
    ledger = make_ledger(store, clock)
    who = tenant(daily_budget_nano=1000 * 1000 + 15 * 2000)  # 15 output tokens < the 16 minimum
    with pytest.raises(LimitExceeded) as refused:
        await admit(ledger, who)
    error = refused.value
    assert error.status == 429
    assert error.code == "budget_exceeded"
    assert error.extensions["budget_remaining_usd"] < error.extensions["minimum_cost_usd"]
    # Resets at the next UTC midnight (50 s after the clock's 23:59:10).
    assert error.retry_after == 51
    usage = await ledger.usage(who.id, window_keys(clock())[0])
    assert (usage["held_nano"], usage["inflight"]) == (0, 0)


async def test_monthly_budget_binds_too(store: TableStore, clock: Clock) -> None:
    ledger = make_ledger(store, clock)
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=1000 * 1000 + 50 * 2000)
    hold = await admit(ledger, who)
    assert hold.max_tokens == 50


async def test_requests_per_minute_is_exact_in_a_calendar_minute(store: TableStore, clock: Clock) -> None:
    ledger = make_ledger(store, clock)
    who = tenant(requests_per_minute=5, daily_budget_nano=10**12)
    for _ in range(5):
        await admit(ledger, who, prompt=10, max_tokens=16)
    with pytest.raises(LimitExceeded) as refused:
        await admit(ledger, who, prompt=10, max_tokens=16)
    assert refused.value.code == "rate_limited"
    assert error_headers(refused.value)["RateLimit-Remaining"] == "0"
    assert error_headers(refused.value)["Retry-After"] == "50"  # to the next minute
    clock.now += timedelta(seconds=50)  # the next calendar minute
    await admit(ledger, who, prompt=10, max_tokens=16)


async def test_tokens_per_minute(store: TableStore, clock: Clock) -> None:
    ledger = make_ledger(store, clock)
    who = tenant(tokens_per_minute=1000, daily_budget_nano=10**12)
    first = await ledger.admit(
        who, price=PRICE, prompt_tokens_bound=400, requested_max_tokens=4000, function="f", key_id="k"
    )
    assert first.max_tokens == 600  # clamped to what is left of the minute's tokens
    with pytest.raises(LimitExceeded) as refused:
        await admit(ledger, who, prompt=10, max_tokens=16)
    assert refused.value.code == "tokens_rate_limited"
    # Settling at the real (smaller) size gives the unused tokens back to the minute.
    await ledger.settle(first, cost_nano=1, prompt_tokens=300, completion_tokens=100)
    await admit(ledger, who, prompt=10, max_tokens=16)


async def test_concurrency_limit_counts_unsettled_requests(store: TableStore, clock: Clock) -> None:
    ledger = make_ledger(store, clock)
    who = tenant(max_concurrent=2, daily_budget_nano=10**12)
    first = await admit(ledger, who, prompt=10, max_tokens=16)
    await admit(ledger, who, prompt=10, max_tokens=16)
    with pytest.raises(LimitExceeded) as refused:
        await admit(ledger, who, prompt=10, max_tokens=16)
    assert refused.value.code == "concurrency_limited"
    await ledger.settle(first, cost_nano=0, prompt_tokens=0, completion_tokens=0)
    await admit(ledger, who, prompt=10, max_tokens=16)


async def test_day_rollover_starts_a_new_window_and_keeps_the_old_spend(
    store: TableStore, clock: Clock
) -> None:
    ledger = make_ledger(store, clock)
    who = tenant(daily_budget_nano=1000 * 1000 + 100 * 2000, monthly_budget_nano=10**12)
    yesterday = window_keys(clock())[0]
    hold = await admit(ledger, who, prompt=1000, max_tokens=100)
    with pytest.raises(LimitExceeded):
        await admit(ledger, who, prompt=1000, max_tokens=100)
    clock.now += timedelta(minutes=2)  # 00:01:10 on April 1st: new day and new month
    today, month, _ = window_keys(clock())
    assert (today, month) == ("day-20260401", "month-202604")
    await admit(ledger, who, prompt=1000, max_tokens=100)
    # The hold taken yesterday settles against yesterday's windows, not today's.
    await ledger.settle(hold, cost_nano=5000, prompt_tokens=1, completion_tokens=1)
    assert (await ledger.usage(who.id, yesterday))["spent_nano"] == 5000
    assert (await ledger.usage(who.id, today))["spent_nano"] == 0
    assert (await ledger.usage(who.id, today))["held_nano"] == who.limits.daily_budget_nano


async def test_an_unsettled_hold_expires_charged_and_flagged(store: TableStore, clock: Clock) -> None:
    ledger = make_ledger(store, clock, lease=30)
    who = tenant(daily_budget_nano=10**12)
    hold = await admit(ledger, who, prompt=100, max_tokens=100)
    assert await ledger.expire_holds() == 0  # lease not over yet
    clock.now += timedelta(seconds=31)
    assert await ledger.expire_holds() == 1
    day = window_keys(clock() - timedelta(seconds=31))[0]
    usage = await ledger.usage(who.id, day)
    amount = hold.amount_nano
    assert (usage["spent_nano"], usage["held_nano"], usage["inflight"]) == (amount, 0, 0)
    assert (usage["expired_holds"], usage["expired_nano"]) == (1, amount)
    [audit] = await ledger.expired(who.id)
    assert audit["flagged"] is True
    # The process that held it comes back late: no second charge.
    late = await ledger.settle(hold, cost_nano=1, prompt_tokens=1, completion_tokens=1)
    assert late.late
    assert (await ledger.usage(who.id, day))["spent_nano"] == amount


async def test_concurrent_admissions_in_one_process_never_overspend(store: TableStore, clock: Clock) -> None:
    ledger = make_ledger(store, clock)
    per_request = 100 * 1000 + 100 * 2000
    who = tenant(daily_budget_nano=per_request * 10 + per_request // 2, max_concurrent=100)

    async def one() -> str:
        try:
            await admit(ledger, who, prompt=100, max_tokens=100)
        except LimitExceeded as refused:
            return refused.code
        return "admitted"

    outcomes = await asyncio.gather(*(one() for _ in range(30)))
    # Ten full reservations, one clamped to the half left, then nothing fits: held by
    # calls in flight (not spent), so the refusals say "held" (issue 23).
    assert outcomes.count("admitted") == 11
    assert set(outcomes) == {"admitted", "budget_held"}
    usage = await ledger.usage(who.id, window_keys(clock())[0])
    assert usage["held_nano"] <= who.limits.daily_budget_nano


async def test_an_update_that_loses_every_race_gives_up_and_writes_nothing(
    store: TableStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Admit, settle and expire each retry a lost ETag race, then stop; nothing half-done."""
    from azure.data.tables import UpdateMode

    from sk_core.errors import StorageUnavailable
    from sk_core.limits import ledger as ledger_module
    from sk_core.storage import submit

    ledger = Ledger(store=store, lease_seconds=30, min_answer_tokens=16, clock=clock, max_attempts=3)
    who = tenant(daily_budget_nano=10**12)
    table = await store.table(USAGE_TABLE)
    attempts = 0

    async def racing_submit(table_client: object, operations: list[tuple[str, Any, Any]]) -> None:
        # Another instance writes the tenant's in-flight row between our read and our
        # write, every time: the real transaction then fails its ETag (or insert) check.
        nonlocal attempts
        attempts += 1
        row = {"PartitionKey": who.id, "RowKey": INFLIGHT, "touched": attempts}
        await table.upsert_entity(row, mode=UpdateMode.MERGE)
        await submit(table_client, operations)  # type: ignore[arg-type]

    day = window_keys(clock())[0]
    held = await admit(ledger, who, prompt=100, max_tokens=100)  # real submits: one hold to settle
    monkeypatch.setattr(ledger_module, "submit", racing_submit)
    with pytest.raises(StorageUnavailable) as refused:  # a 503, and nothing admitted
        await admit(ledger, who, prompt=100, max_tokens=100)
    assert (refused.value.reason, attempts) == ("ledger update did not converge under contention", 3)
    with pytest.raises(StorageUnavailable) as failed:
        await ledger.settle(held, cost_nano=1, prompt_tokens=1, completion_tokens=1)
    assert (failed.value.reason, attempts) == ("ledger update did not converge under contention", 6)
    clock.now += timedelta(seconds=31)
    assert await ledger.expire_holds() == 0  # gave up on this hold; the next sweep retries
    assert attempts == 9
    usage = await ledger.usage(who.id, day)
    # Only the first, real admission is in the ledger: still held, nothing spent.
    assert (usage["held_nano"], usage["spent_nano"], usage["inflight"]) == (held.amount_nano, 0, 1)
    monkeypatch.setattr(ledger_module, "submit", submit)
    assert await ledger.expire_holds() == 1


async def test_concurrent_requests_of_one_tenant_share_transactions_and_add_up(
    store: TableStore, clock: Clock
) -> None:
    """Group commit: many decisions per transaction, every one of them exact."""
    ledger = make_ledger(store, clock)
    who = tenant(daily_budget_nano=10**12, max_concurrent=100, requests_per_minute=1000)
    holds = await asyncio.gather(*(admit(ledger, who, prompt=100 + i, max_tokens=50) for i in range(40)))
    admitted_in = ledger.transactions
    assert admitted_in < 40 / 2  # one writer per tenant, many admissions per write
    day = window_keys(clock())[0]
    usage = await ledger.usage(who.id, day)
    assert (usage["held_nano"], usage["inflight"]) == (sum(h.amount_nano for h in holds), 40)
    assert len({h.request_id for h in holds}) == 40
    # The minute's request count went up by one per admission, in order.
    assert sorted(h.rpm_remaining for h in holds) == list(range(1000 - 40, 1000 - 0))

    costs = [h.amount_nano // (i + 2) for i, h in enumerate(holds)]
    pairs = zip(holds, costs, strict=True)
    settled = await asyncio.gather(
        *(ledger.settle(h, cost_nano=c, prompt_tokens=10, completion_tokens=5) for h, c in pairs)
    )
    assert [s.cost_nano for s in settled] == costs
    assert not any(s.late for s in settled)
    assert ledger.transactions - admitted_in < 40 / 2
    usage = await ledger.usage(who.id, day)
    assert (usage["spent_nano"], usage["held_nano"], usage["inflight"]) == (sum(costs), 0, 0)
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (40, 400, 200)


async def test_an_admission_cancelled_while_queued_writes_nothing(
    store: TableStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sk_core.limits import ledger as ledger_module
    from sk_core.storage import submit

    ledger = make_ledger(store, clock)
    who = tenant(daily_budget_nano=10**12)
    release = asyncio.Event()

    async def slow_submit(table_client: Any, operations: list[Any]) -> None:
        await release.wait()  # the first batch stays in flight until the test says so
        await submit(table_client, operations)

    monkeypatch.setattr(ledger_module, "submit", slow_submit)
    first = asyncio.create_task(admit(ledger, who))
    await asyncio.sleep(0.2)  # the first batch is taken and waiting on its write
    second = asyncio.create_task(admit(ledger, who))
    await asyncio.sleep(0.05)
    second.cancel()
    release.set()
    hold = await first
    with pytest.raises(asyncio.CancelledError):
        await second
    usage = await ledger.usage(who.id, window_keys(clock())[0])
    assert (usage["held_nano"], usage["inflight"], ledger.transactions) == (hold.amount_nano, 1, 1)


async def test_a_hold_deleted_between_read_and_write_makes_the_settlement_late_not_an_error(
    store: TableStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process expired the hold after we read it: re-read, and never charge twice."""
    from sk_core.limits import ledger as ledger_module
    from sk_core.storage import submit

    ledger = make_ledger(store, clock)
    who = tenant(daily_budget_nano=10**12)
    hold = await admit(ledger, who)
    table = await store.table(USAGE_TABLE)
    raced = False

    async def racing_submit(table_client: Any, operations: list[Any]) -> None:
        nonlocal raced
        if not raced:  # only the hold goes, as if swept elsewhere; the counters stay as read
            raced = True
            await table.delete_entity(who.id, hold.row)
        await submit(table_client, operations)

    monkeypatch.setattr(ledger_module, "submit", racing_submit)
    settlement = await ledger.settle(hold, cost_nano=5, prompt_tokens=1, completion_tokens=1)
    assert settlement.late
    assert ledger.conflicts == 1
    usage = await ledger.usage(who.id, window_keys(clock())[0])
    assert usage["spent_nano"] == 0  # the other process's charge is its own business


async def test_counting_a_request_uses_requests_per_minute_only(store: TableStore, clock: Clock) -> None:
    """What a cache hit costs: one request of the minute, no budget, tokens or slot."""
    ledger = make_ledger(store, clock)
    who = tenant(requests_per_minute=3, daily_budget_nano=1, max_concurrent=1)
    rates = [await ledger.count_request(who) for _ in range(3)]
    assert [r.remaining for r in rates] == [2, 1, 0]
    with pytest.raises(LimitExceeded) as refused:
        await ledger.count_request(who)
    assert (refused.value.code, refused.value.retry_after) == ("rate_limited", 50)
    usage = await ledger.usage(who.id, window_keys(clock())[0])
    assert (usage["spent_nano"], usage["held_nano"], usage["inflight"]) == (0, 0, 0)
    clock.now += timedelta(seconds=60)  # the next minute counts afresh
    assert (await ledger.count_request(who)).remaining == 2
