"""Quota leases: slices in memory, the store's invariant, hand-back, crash expiry.

The arithmetic is property-tested against a plain model; the rest runs on real
Azurite with several independent ledgers (what several processes are).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sk_core.accounts import Limits, Tenant
from sk_core.errors import LimitExceeded
from sk_core.limits import INFLIGHT, USAGE_TABLE, Hold, Ledger, window_keys
from sk_core.limits.lease_state import LeaseSettings
from sk_core.limits.pools import store_pool_count
from sk_core.limits.rows import INFLIGHT_FIELDS, CounterRow
from sk_core.limits.slices import BudgetSlice, grant
from sk_core.storage import MemoryAccount, MemoryTableStore, Operation, TableStore, query_partition, read_int
from tests.support.clock import inside_one_minute
from tests.support.ledgers import PRICE, call
from tests.support.stores import STORE_BACKENDS, open_stores

# Shared pool rows (``SKF_LEASE_ALLOCATOR=false``); allocated leases: test_allocated.py.
FAST = LeaseSettings(
    report_seconds=0.5, idle_seconds=1.0, horizon_seconds=2.0, ttl_seconds=30, allocated=False
)


# ------------------------------------------------------------------ pure arithmetic

operations = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.integers(1, 500)),
        st.tuples(st.just("settle"), st.integers(0, 600)),
        st.tuples(st.just("sync"), st.integers(0, 3000)),
    ),
    max_size=60,
)


@given(operations)
def test_a_slice_always_accounts_for_everything_it_was_granted(steps: list[tuple[str, int]]) -> None:
    """Against a plain model of the store: what the lease row says is always exactly
    free + held + unreported spent, every settled cent reaches the store's spent once,
    and a final hand-back leaves only the calls still in flight leased."""
    budget = BudgetSlice(day="d", month="m")
    store_spent = 0  # the window's spent, as far as this slice reported it
    settled_total = 0  # the model: every cost ever settled
    in_flight: list[int] = []
    for kind, value in steps:
        if kind == "take" and budget.fits(value):
            budget.take(value)
            in_flight.append(value)
        elif kind == "settle" and in_flight:
            amount = in_flight.pop(0)
            cost = min(value, amount)
            budget.settle(amount, cost, 1, 1)
            settled_total += cost
        elif kind == "sync":
            store_spent += budget.spent
            budget.synced(value)
            assert budget.outstanding == budget.held + value
        assert budget.free + budget.held + budget.spent == budget.outstanding
        assert budget.held == sum(in_flight)
        assert budget.free >= 0
        assert store_spent + budget.spent == settled_total
    # If the process died now, expiry would charge everything outstanding on top of what
    # was reported: never less than what was really settled.
    assert store_spent + budget.outstanding >= settled_total
    store_spent += budget.spent
    budget.synced(0)
    assert budget.outstanding == sum(in_flight)
    assert store_spent == settled_total


@given(operations, st.lists(st.integers(0, 3000), max_size=8))
def test_a_sync_planned_while_calls_go_on_moves_the_slice_by_exactly_what_it_reported(
    steps: list[tuple[str, int]], grants: list[int]
) -> None:
    """As the lease keeper does it: a sync is planned on a report, calls are admitted and
    settled while it is in flight, then it commits. Nothing settled in between is lost
    or reported twice, and the slice still accounts for everything it holds."""
    budget = BudgetSlice(day="d", month="m")
    store_spent = settled_total = 0
    in_flight: list[int] = []
    planned = None
    pending_grants = list(grants)
    for kind, value in steps:
        if kind == "take" and budget.fits(value):
            budget.take(value)
            in_flight.append(value)
        elif kind == "settle" and in_flight:
            amount = in_flight.pop(0)
            budget.settle(amount, min(value, amount), 1, 1)
            settled_total += min(value, amount)
        elif kind == "sync":
            if planned is None:
                planned = budget.report()  # planned now, commits at the next "sync" step
            else:
                new_free = pending_grants.pop(0) if pending_grants else 0
                store_spent += planned.spent
                budget.synced(new_free, planned)
                planned = None
        assert budget.free + budget.held + budget.spent == budget.outstanding
        assert budget.held == sum(in_flight)
        assert store_spent + budget.spent == settled_total


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(1, 10**6), st.floats(0.05, 1.0))
def test_a_grant_never_exceeds_its_share_and_is_zero_near_the_limit(
    available: int, demand: int, unit: int, share: float
) -> None:
    granted = grant(available=available, demand=demand, unit=unit, share=share)
    assert 0 <= granted <= available * share
    if available < 2 * unit:
        assert granted == 0


# ------------------------------------------------------------------ on a store (memory, Azurite)


@pytest.fixture(params=STORE_BACKENDS)
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[list[TableStore]]:
    async with open_stores(request, "lea", count=4) as made:
        yield made


def tenant(**limits: int) -> Tenant:
    return Tenant(id="t-" + secrets.token_hex(3), display_name="T", limits=Limits(**limits))


async def rows(store: TableStore, who: Tenant) -> dict[str, dict[str, int]]:
    table = await store.table(USAGE_TABLE)
    day, month, _ = window_keys(datetime.now(UTC))
    found = await query_partition(table, who.id, [day, month, INFLIGHT])
    return {k: {f: read_int(v) for f, v in e.items() if isinstance(v, int) or hasattr(v, "value")}
            for k, e in found.items()}


async def lease_rows(store: TableStore, who: Tenant) -> list[str]:
    table = await store.table(USAGE_TABLE)
    return [
        e["RowKey"]
        async for e in table.query_entities(
            "PartitionKey eq @p and RowKey ge 'lease-' and RowKey lt 'lease.'", parameters={"p": who.id}
        )
    ]


async def test_leased_calls_touch_storage_rarely_and_hand_back_exactly(stores: list[TableStore]) -> None:
    ledger = Ledger(store=stores[0], lease_seconds=30, min_answer_tokens=16, leases=FAST)
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=10_000,
                 tokens_per_minute=10**8, max_concurrent=64)
    costs = []
    for _ in range(10):
        costs += await asyncio.gather(*(call(ledger, who) for _ in range(20)))
    assert all(c > 0 for c in costs)
    assert ledger.transactions < len(costs) / 4  # in memory, not a transaction per call
    await ledger.aclose()  # hand everything back, report the rest
    counters = await rows(stores[0], who)
    day = window_keys(datetime.now(UTC))[0]
    assert counters[day]["spent_nano"] == sum(costs)
    assert counters[day].get("leased_nano", 0) == 0
    assert counters[day]["requests"] == len(costs)
    assert counters[INFLIGHT]["count"] == 0
    assert await lease_rows(stores[0], who) == []


async def test_many_ledgers_never_overspend_and_use_nearly_all_of_the_budget(
    stores: list[TableStore],
) -> None:
    """Four ledgers (four processes) x 16 concurrent callers on a budget of ~200 calls."""
    budget = 200 * PRICE.cost_nano(100, 100)
    who = tenant(daily_budget_nano=budget, monthly_budget_nano=10**12, requests_per_minute=100_000,
                 tokens_per_minute=10**9, max_concurrent=64)
    ledgers = [Ledger(store=s, lease_seconds=30, min_answer_tokens=16, leases=FAST) for s in stores]

    async def caller(ledger: Ledger) -> int:
        # A client that keeps asking (as one honouring Retry-After would): capacity another
        # process leased and did not use comes back when that lease idles.
        total, refused_since = 0, None
        loop = asyncio.get_running_loop()
        while True:
            cost = await call(ledger, who)
            if cost:
                total, refused_since = total + cost, None
                continue
            refused_since = refused_since or loop.time()
            if loop.time() - refused_since > FAST.idle_seconds + 2 * FAST.report_seconds:
                return total
            await asyncio.sleep(0.1)

    spent = sum(await asyncio.gather(*(caller(ledger) for ledger in ledgers for _ in range(16))))
    for ledger in ledgers:
        await ledger.aclose()
    day = window_keys(datetime.now(UTC))[0]
    counters = await rows(stores[0], who)
    assert counters[day]["spent_nano"] == spent  # the ledger equals the sum of the answers' costs
    assert spent <= budget
    assert spent >= 0.98 * budget
    assert counters[day].get("leased_nano", 0) == 0
    assert counters[day].get("held_nano", 0) == 0


async def _inside_one_minute(seconds: float) -> str:
    """Wait, if need be, so that the next ``seconds`` fall inside one calendar minute;
    that minute's key."""
    await inside_one_minute(seconds)
    return window_keys(datetime.now(UTC))[2]


async def test_requests_per_minute_hold_across_ledgers_under_saturating_demand(
    stores: list[TableStore],
) -> None:
    """Four ledgers x 8 callers that keep asking for a second: exactly the minute's rpm
    is admitted, give or take 5 % of what stays leased but unused at the end."""
    rpm = 200
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=rpm,
                 tokens_per_minute=10**9, max_concurrent=64)
    ledgers = [Ledger(store=s, lease_seconds=30, min_answer_tokens=16, leases=FAST) for s in stores]
    minute = await _inside_one_minute(3)
    loop = asyncio.get_running_loop()
    until = loop.time() + 1.5

    async def caller(ledger: Ledger) -> int:
        admitted = 0
        while loop.time() < until:
            if await call(ledger, who):
                admitted += 1
            else:
                await asyncio.sleep(0.01)
        return admitted

    admitted = sum(await asyncio.gather(*(caller(ledger) for ledger in ledgers for _ in range(8))))
    for ledger in ledgers:
        await ledger.aclose()
    assert window_keys(datetime.now(UTC))[2] == minute
    assert 0.95 * rpm <= admitted <= rpm


async def test_a_killed_lease_holder_is_charged_its_whole_slice_and_flagged(
    stores: list[TableStore],
) -> None:
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=10_000,
                 tokens_per_minute=10**8, max_concurrent=64)
    crashed = Ledger(store=stores[0], lease_seconds=30, min_answer_tokens=16, leases=FAST)
    hold: Hold = await crashed.admit(
        who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100, function="f", key_id="k"
    )
    assert hold.lease is not None
    # The process dies here: no settlement, no hand-back. Its keeper task dies with it.
    assert crashed.leases is not None
    for lease in crashed.leases._leases.values():
        if lease.keeper is not None:
            lease.keeper.cancel()
    table = await stores[0].table(USAGE_TABLE)
    [row] = [e async for e in table.query_entities(
        "PartitionKey eq @p and RowKey ge 'lease-' and RowKey lt 'lease.'", parameters={"p": who.id})]
    outstanding = read_int(row["amount_nano"])
    assert outstanding >= hold.amount_nano
    later = datetime.now(UTC) + timedelta(seconds=31)
    sweeper = Ledger(store=stores[1], lease_seconds=30, min_answer_tokens=16, clock=lambda: later)
    assert await sweeper.expire_holds() == 1
    counters = await rows(stores[1], who)
    day = window_keys(datetime.now(UTC))[0]
    assert counters[day]["spent_nano"] == outstanding  # the whole unreported slice
    assert counters[day]["expired_leases"] == 1
    assert counters[day].get("leased_nano", 0) == 0
    assert counters[INFLIGHT]["count"] == 0
    # Its slots, its calls in flight and the holder itself are gone from the pool too.
    assert counters[INFLIGHT].get("leased_slots", 0) == 0
    assert counters[INFLIGHT].get("leased_in_flight", 0) == 0
    assert counters[INFLIGHT].get("leases", 0) == 0
    flagged = await sweeper.expired(who.id)
    assert [e["flagged"] for e in flagged] == [True]
    # The call finishes after all: it was already charged, never twice. The process
    # learns at its next sync that its lease is gone and drops what it had not reported.
    await crashed.settle(hold, cost_nano=1, prompt_tokens=1, completion_tokens=1)
    await crashed.aclose()
    assert (await rows(stores[1], who))[day]["spent_nano"] == outstanding


async def test_counted_requests_come_from_the_minute_slice_even_in_a_process_that_only_counts(
    stores: list[TableStore],
) -> None:
    """Cache hits: a process that only serves hits leases a minute slice too, so most
    hits touch no storage, and the minute's requests still never exceed rpm."""
    rpm = 60
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=rpm,
                 tokens_per_minute=10**8, max_concurrent=64)
    ledger = Ledger(store=stores[0], lease_seconds=30, min_answer_tokens=16, leases=FAST)
    minute = await _inside_one_minute(3)
    counted = 0
    for _ in range(rpm + 10):
        try:
            await ledger.count_request(who)
            counted += 1
        except LimitExceeded:
            pass
    transactions = ledger.transactions
    await ledger.aclose()
    assert window_keys(datetime.now(UTC))[2] == minute
    assert counted == rpm
    assert transactions < rpm / 3  # slices, not a transaction per request
    table = await stores[0].table(USAGE_TABLE)
    stored = (await query_partition(table, who.id, [minute]))[minute]
    assert read_int(stored["requests"]) == rpm  # handed back: exactly what was counted
    counters = await rows(stores[0], who)
    day = window_keys(datetime.now(UTC))[0]
    assert counters[day].get("spent_nano", 0) == 0
    assert counters[INFLIGHT]["count"] == 0


def lose_the_next_answer(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    """The ledger's next transaction commits, and then its connection resets (the answer
    is lost); the ones after it go through. Returns how many answers were lost so far."""
    from sk_core.errors import StorageUnavailable
    from sk_core.limits import ledger as ledger_module
    from sk_core.storage import submit as real_submit

    resets = 0

    async def committed_then_reset(table: object, operations: list[tuple[str, Any, Any]]) -> None:
        nonlocal resets
        await real_submit(table, operations)  # type: ignore[arg-type]  # a TableClient
        if resets == 0:
            resets += 1
            raise StorageUnavailable("connection reset after the commit")

    monkeypatch.setattr(ledger_module, "submit", committed_then_reset)
    return lambda: resets


async def test_a_sync_that_committed_unheard_is_not_applied_twice(
    stores: list[TableStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection resets after the store committed a sync: the next sync must take it
    as done (the lease row's sequence number says so), not add its deltas again."""
    from sk_core.errors import StorageUnavailable

    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=10_000,
                 tokens_per_minute=10**8, max_concurrent=64)
    ledger = Ledger(store=stores[0], lease_seconds=30, min_answer_tokens=16, leases=FAST)
    costs = list(await asyncio.gather(*(call(ledger, who) for _ in range(10))))
    resets = lose_the_next_answer(monkeypatch)
    assert ledger.leases is not None
    with pytest.raises(StorageUnavailable):
        await ledger.leases.flush(who.id)  # reports the 10 calls; the answer is lost
    costs += await asyncio.gather(*(call(ledger, who) for _ in range(10)))
    await ledger.aclose()
    counters = await rows(stores[0], who)
    day = window_keys(datetime.now(UTC))[0]
    assert resets() == 1
    assert counters[day]["spent_nano"] == sum(costs)  # each call reported exactly once
    assert counters[day]["requests"] == 20
    assert counters[day].get("leased_nano", 0) == 0
    assert counters[INFLIGHT]["count"] == 0  # slots returned exactly once


async def test_a_process_short_of_budget_recalls_what_others_lease(stores: list[TableStore]) -> None:
    """Issue 23, defect 1, in one test process: ledger A leases a large slice and keeps
    trickling; ledger B (exact decisions) runs the pool dry. B's refusal is ``budget_held``
    (the money is leased, not spent), it marks the pool recalled, A hands its free slice
    back at its next report, and B's request, asked once more, is admitted from it."""
    unit = PRICE.cost_nano(100, 100)
    who = tenant(daily_budget_nano=40 * unit, monthly_budget_nano=10**12, requests_per_minute=100_000,
                 tokens_per_minute=10**9, max_concurrent=1000)
    keeping = replace(FAST, report_seconds=0.3, idle_seconds=30)
    a = Ledger(store=stores[0], lease_seconds=30, min_answer_tokens=16, leases=keeping)
    b = Ledger(store=stores[1], lease_seconds=30, min_answer_tokens=100)  # whole answers only
    await asyncio.gather(*(call(a, who, answer_tokens=0) for _ in range(16)))
    lease = a.leases._leases[who.id] if a.leases is not None else None
    assert lease is not None
    assert lease.current is not None
    leased_free = lease.current.free
    assert leased_free >= 4 * unit, "A should hold a large free slice"
    stop = asyncio.Event()

    async def trickle() -> None:
        while not stop.is_set():
            await call(a, who, answer_tokens=0)
            await asyncio.sleep(0.15)

    background = asyncio.create_task(trickle())
    holds: list[Hold] = []
    refusal = ""
    try:
        for _ in range(60):
            try:
                holds.append(
                    await b.admit(who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100,
                                  function="f", key_id="k")
                )
            except LimitExceeded as refused:
                refusal = refused.code
                break
    finally:
        stop.set()
        await background
    pool = 40 * unit - 16 * PRICE.cost_nano(100, 0) - 16 * unit  # what B found before the recall
    assert refusal == "budget_held"  # B's own holds and A's calls in flight: not spent
    assert lease.current.free == 0  # A honoured the recall
    assert len(holds) * unit >= pool + leased_free // 2, (len(holds), pool // unit, leased_free // unit)
    for hold in holds:
        await b.settle(hold, cost_nano=0, prompt_tokens=0, completion_tokens=0)
    await a.aclose()


async def test_usage_reports_calls_in_flight_apart_from_leased_slots(stores: list[TableStore]) -> None:
    """Issue 23, defect 2: slots leased to a process and unused are not calls in flight.
    The ledger's usage (admin usage) and the read model (/api/v1/usage, the dashboard)
    show real calls in flight and leased slots separately."""
    from sk_core.usage import usage_of

    keeping = replace(FAST, report_seconds=0.3, idle_seconds=30)
    ledger = Ledger(store=stores[0], lease_seconds=30, min_answer_tokens=16, leases=keeping)
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, max_concurrent=10)
    holds = [
        await ledger.admit(who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100,
                           function="f", key_id="k")
        for _ in range(3)
    ]
    for hold in holds[1:]:
        await ledger.settle(hold, cost_nano=1, prompt_tokens=1, completion_tokens=1)
    day = window_keys(datetime.now(UTC))[0]
    usage = await ledger.usage(who.id, day)  # reports this process's lease first
    assert usage["inflight"] == 1  # one call really in flight
    assert usage["leased_slots"] >= 3  # the slots this process still holds
    document = await usage_of(ledger, who)
    assert document.concurrency.in_flight == 1
    assert document.concurrency.leased_slots >= 1  # resized by the sync it reported first
    await ledger.settle(holds[0], cost_nano=1, prompt_tokens=1, completion_tokens=1)
    assert (await ledger.usage(who.id, day))["inflight"] == 0
    await ledger.aclose()
    after = await ledger.usage(who.id, day)
    assert (after["inflight"], after["leased_slots"]) == (0, 0)


async def test_near_the_limit_an_exact_decision_costs_one_storage_exchange(
    stores: list[TableStore],
) -> None:
    """Issue 23, defect 5: close to a budget's end every decision is exact (no lease can
    be granted). Each costs one storage exchange, not a read and a write: the ledger
    writes on the ETags of its own last commit, and reads again only after losing a race
    (or to confirm a refusal)."""
    unit = PRICE.cost_nano(100, 100)
    who = tenant(daily_budget_nano=6 * unit, monthly_budget_nano=10**12, max_concurrent=100)
    # Exact decisions only, as every process makes them once the pool is too small to lease.
    ledger = Ledger(store=stores[0], lease_seconds=30, min_answer_tokens=100)
    first = await ledger.admit(who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100,
                               function="f", key_id="k")  # the first one reads
    holds = [first]
    exchanges = []
    for _ in range(4):
        before = stores[0].round_trips
        holds.append(await ledger.admit(who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100,
                                        function="f", key_id="k"))
        exchanges.append(stores[0].round_trips - before)
    for hold in holds:
        before = stores[0].round_trips
        await ledger.settle(hold, cost_nano=unit, prompt_tokens=100, completion_tokens=100)
        exchanges.append(stores[0].round_trips - before)
    assert exchanges == [1] * len(exchanges), exchanges
    day = window_keys(datetime.now(UTC))[0]
    assert (await ledger.usage(who.id, day))["spent_nano"] == 5 * unit
    await ledger.aclose()


async def test_the_pool_counts_its_holders_and_many_holders_stretch_the_intervals(
    stores: list[TableStore],
) -> None:
    """Issue 23, at scale: the in-flight row counts lease rows (created +1, handed back -1),
    every keeper learns the count at its sync, and past ``holders_per_report`` holders its
    report interval (and with it renewal, idling and expiry) grows in proportion."""
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, max_concurrent=64)
    ledgers = [Ledger(store=s, lease_seconds=30, min_answer_tokens=16, leases=FAST) for s in stores[:3]]
    for ledger in ledgers:
        assert await call(ledger, who) > 0
    await ledgers[-1].flush(who.id)  # the last to sync has seen all three
    counters = await rows(stores[0], who)
    assert counters[INFLIGHT]["leases"] == 3
    keeper = ledgers[-1].leases
    assert keeper is not None
    lease = keeper._leases[who.id]
    assert lease.holders == 3
    assert keeper.report_interval(lease) == FAST.report_seconds  # few holders: as configured
    assert keeper.pools(lease) == 0
    # Many holders (past a threshold of 32 here): sub-pools (pools.py), and intervals that
    # keep every holder's syncs (5 entities each) within half the partition's 2,000
    # entities a second.
    keeper._settings = replace(FAST, pool_threshold=32, max_pools=64)
    lease.holders = FAST.holders_per_report * 4
    inflight = CounterRow(who.id, INFLIGHT, None, INFLIGHT_FIELDS)
    inflight.add("leases", lease.holders)
    store_pool_count(keeper.settings, lease, inflight)  # as a window sync stores it
    assert inflight["pools"] == lease.pools == keeper.pools(lease) == 32
    assert keeper.report_interval(lease) == pytest.approx(128 * 5 / 1000)
    lease.holders = FAST.holders_per_report * 1000
    assert keeper.report_interval(lease) == FAST.report_seconds * FAST.max_stretch
    # Without sub-pools (max_pools=0), one pool's conflicts set the pace: in proportion.
    keeper._settings = replace(FAST, max_pools=0)
    lease.holders = FAST.holders_per_report * 4
    assert keeper.pools(lease) == 0
    lease.pools = 0
    assert keeper.report_interval(lease) == FAST.report_seconds * 4
    keeper._settings = FAST
    lease.holders = 3
    for ledger in ledgers:
        await ledger.aclose()
    assert (await rows(stores[0], who))[INFLIGHT]["leases"] == 0


async def test_the_usage_document_tells_leased_requests_from_used_ones(stores: list[TableStore]) -> None:
    """The minute row counts requests leased to a process as used the moment they are
    granted; the tenant's usage document tells them apart (issue 27, defect 5): used =
    what was admitted (as of the last sync), leased = the rest, together the stored row."""
    from sk_core.usage import usage_of

    await inside_one_minute(5)
    ledger = Ledger(store=stores[0], lease_seconds=30, min_answer_tokens=16, leases=FAST)
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=600,
                 tokens_per_minute=10**8, max_concurrent=64)  # fmt: skip
    made = 0
    for _ in range(3):
        made += await call(ledger, who) > 0
    await ledger.flush(who.id)  # a sync: the lease row says what of its slice is unused
    document = await usage_of(ledger, who, report_own_leases=False)
    minute = window_keys(datetime.now(UTC))[2]
    found = await query_partition(await stores[0].table(USAGE_TABLE), who.id, [minute])
    minute_stored = read_int(found[minute]["requests"])
    assert made == 3
    assert document.minute.requests == 3
    assert document.minute.leased_requests > 0  # the process keeps a slice for the next calls
    assert document.minute.requests + document.minute.leased_requests == minute_stored
    await ledger.aclose()
    handed_back = await usage_of(ledger, who, report_own_leases=False)
    assert handed_back.minute.leased_requests == 0  # closed: the slice went back
    assert handed_back.minute.requests == 3


def roomy(store: TableStore) -> tuple[Ledger, Tenant, Callable[[], Awaitable[Hold]]]:
    """A ledger with fast leases, a tenant whose limits are far away, and one admission."""
    ledger = Ledger(store=store, lease_seconds=30, min_answer_tokens=16, leases=FAST)
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=100_000,
                 tokens_per_minute=10**9, max_concurrent=1000)  # fmt: skip

    async def admit() -> Hold:
        return await ledger.admit(
            who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100, function="f", key_id="k"
        )

    return ledger, who, admit


async def test_a_lease_keeps_slots_for_the_concurrency_it_saw_and_renews_them_early(
    stores: list[TableStore],
) -> None:
    """Issue 23, defect 6: at 64 closed-loop clients the slowest requests waited in
    ``admit`` for a sync because the lease had no free slot. Each sync sized the slots
    for the calls in flight at its own moment (a lull: 14 slots for 64 clients), and a
    renewal started only once the last slot was taken. Now the slot estimate falls by a
    quarter a sync (it still rises at once), and a renewal starts with a quarter left."""
    ledger, who, admit = roomy(stores[0])
    holds = list(await asyncio.gather(*(admit() for _ in range(40))))
    for hold in holds[4:]:  # a lull: 4 calls in flight when the next syncs run
        await ledger.settle(hold, cost_nano=1000, prompt_tokens=100, completion_tokens=1)
    del holds[4:]
    await ledger.flush(who.id)
    await ledger.flush(who.id)
    assert ledger.leases is not None
    lease = ledger.leases._leases[who.id]
    free = lease.slots - lease.inflight
    assert free >= 20, f"{lease.slots} slots for a concurrency of 40 seen two syncs ago"
    # Take slots until a quarter is left: a renewal is under way before they run out.
    syncs = ledger.leases.syncs
    while lease.slots - lease.inflight >= lease.slots // 4 and lease.sync is None:
        holds.append(await admit())
    assert lease.slots - lease.inflight > 0
    await asyncio.sleep(0)
    assert lease.sync is not None or ledger.leases.syncs > syncs
    for hold in holds:
        await ledger.settle(hold, cost_nano=1000, prompt_tokens=100, completion_tokens=1)
    await ledger.aclose()


async def test_admissions_go_on_during_a_sync_that_takes_capacity_back_up_to_what_it_leaves() -> None:
    """Issue 23, defect 6: a sync that shrinks a slice (handing back what a lull left
    unused) froze the lease, and every request waited for it in ``admit``. Now local
    admissions go on while it is in flight, but only within what it leaves: once it
    lands no slice is overdrawn. The store's transactions are held at a gate to keep
    the sync in flight."""
    gate, reached = asyncio.Event(), asyncio.Event()
    gate.set()

    async def held(operation: Operation) -> None:
        if operation.kind == "transaction" and not gate.is_set():
            reached.set()  # the sync was planned; its transaction waits here
            await gate.wait()

    store = MemoryTableStore(MemoryAccount(on_operation=held), table_prefix="hb" + secrets.token_hex(3))
    ledger, who, admit = roomy(store)
    holds = list(await asyncio.gather(*(admit() for _ in range(40))))
    for hold in holds[2:]:
        await ledger.settle(hold, cost_nano=1000, prompt_tokens=100, completion_tokens=1)
    del holds[2:]
    await ledger.flush(who.id)  # sized for the burst; the next one for less (a lull)
    assert ledger.leases is not None
    lease = ledger.leases._leases[who.id]
    gate.clear()
    flushing = asyncio.ensure_future(ledger.flush(who.id))
    await reached.wait()
    assert lease.holdback[3] > 0, "the sync should hand slots back"
    local = 0
    while True:
        admission = asyncio.ensure_future(admit())
        await asyncio.sleep(0.01)
        if not admission.done():
            break  # waits for the sync: what it leaves is taken
        holds.append(admission.result())
        local += 1
    assert local >= 1, "no admission from the lease while the sync was in flight"
    assert not flushing.done()
    gate.set()
    await flushing
    holds.append(await admission)
    budget, minute = lease.current, lease.minute
    assert budget is not None
    assert minute is not None
    assert budget.free >= 0
    assert minute.requests >= 0
    assert lease.slots >= lease.inflight
    for hold in holds:
        await ledger.settle(hold, cost_nano=1000, prompt_tokens=100, completion_tokens=1)
    await ledger.aclose()
    counters = await rows(store, who)
    assert counters[INFLIGHT]["count"] == 0
    assert counters[window_keys(datetime.now(UTC))[0]].get("leased_nano", 0) == 0


async def test_a_sync_that_hands_back_and_whose_answer_is_lost_keeps_holding_it_back(
    stores: list[TableStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync that hands slots back commits, and its answer is lost (a reset connection).
    The store's lease row now counts the smaller number: until the next sync finds out
    what happened, local admissions must keep to it, or the calls in flight would
    exceed what the store counts for this process (the concurrency limit, and a budget
    slice likewise, would then hold only on paper)."""
    from sk_core.errors import StorageUnavailable

    ledger, who, admit = roomy(stores[0])
    holds = list(await asyncio.gather(*(admit() for _ in range(40))))
    for hold in holds[2:]:
        await ledger.settle(hold, cost_nano=1000, prompt_tokens=100, completion_tokens=1)
    del holds[2:]
    await ledger.flush(who.id)  # sized for the burst; the next one for less (a lull)
    lost = lose_the_next_answer(monkeypatch)
    assert ledger.leases is not None
    lease = ledger.leases._leases[who.id]
    slots_before = lease.slots
    with pytest.raises(StorageUnavailable):
        await ledger.leases.flush(who.id)

    async def stored_slots() -> int:
        table = await stores[0].table(USAGE_TABLE)
        [row] = [
            e
            async for e in table.query_entities(
                "PartitionKey eq @p and RowKey ge 'lease-' and RowKey lt 'lease.'", parameters={"p": who.id}
            )
        ]
        return read_int(row["slots"])

    assert lost() == 1
    assert await stored_slots() < slots_before, "the sync should have handed slots back"
    for _ in range(slots_before):  # more calls than the lease held before the sync
        holds.append(await admit())
        # Never more calls in flight than the store counts for this process (a renewal
        # that commits meanwhile may raise that count, never the other way round).
        assert lease.inflight <= await stored_slots()
    for hold in holds:
        await ledger.settle(hold, cost_nano=1000, prompt_tokens=100, completion_tokens=1)
    await ledger.aclose()
    assert (await rows(stores[0], who))[INFLIGHT]["count"] == 0
