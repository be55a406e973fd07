"""Sub-pools (issue 23 at serverless scale): many lease holders sync with rows of their
own instead of the tenant's window rows, and every total stays exact.

The thresholds are lowered so that four ledgers (four processes) use sub-pools; the
arithmetic of a pool's flush and refill is property-tested against the window rows.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sk_core.accounts import Limits, Tenant
from sk_core.errors import LimitExceeded
from sk_core.limits import INFLIGHT, USAGE_TABLE, Ledger, window_keys
from sk_core.limits.lease_state import RECALL, LeaseSettings
from sk_core.limits.pools import POOL_PREFIX, PoolRow, pool_count, pool_key
from sk_core.limits.rows import INFLIGHT_FIELDS, MINUTE_FIELDS, WINDOW_FIELDS, PartitionRows
from sk_core.storage import TableStore, etag_of, int64, query_partition, read_int, update_op
from tests.support.ledgers import PRICE, call
from tests.support.stores import STORE_BACKENDS, open_stores

UNIT = PRICE.cost_nano(100, 100)
# Sub-pools from the second holder on, one keeper per pool, four pools at most.
POOLED = LeaseSettings(
    report_seconds=0.5, idle_seconds=1.0, horizon_seconds=2.0, ttl_seconds=30,
    holders_per_report=1, pool_threshold=1, pool_holders=1, max_pools=4, allocated=False,
)  # fmt: skip


# ------------------------------------------------------------------ pure arithmetic


def test_the_pool_count_grows_in_powers_of_two_and_each_pool_splits_in_two() -> None:
    holders = (1, 32, 33, 64, 65, 256, 1024, 10**6)
    counts = [pool_count(h, threshold=32, per_pool=16, most=64) for h in holders]
    assert counts == [0, 0, 4, 4, 8, 16, 64, 64]
    for process in ("a1", "b2", "c3", "0f0f"):
        small, large = (int(pool_key(process, n).removeprefix(POOL_PREFIX)) for n in (8, 16))
        assert large in (small, small + 8)  # doubling the pools splits each in two


@given(
    st.integers(0, 10**9), st.integers(0, 1000), st.integers(0, 10**6), st.integers(0, 50),
    st.integers(-(10**6), 10**9), st.integers(0, 10**9), st.integers(-5, 5),
)
def test_a_refill_then_a_flush_leaves_the_window_rows_as_they_were_plus_what_was_reported(
    budget: int, requests: int, tokens: int, slots: int, moved_free: int, spent: int, leases: int
) -> None:
    """Whatever a pool's keepers did with it in between (free moved to or from leases,
    spend reported), its flush moves exactly the reported spend from leased to spent and
    gives everything else back: the window rows end as if the keepers had synced there."""
    keys = ("day-20300101", "month-203001", "minute-203001011200")
    rows = PartitionRows("t", {})
    pool = PoolRow.read(rows, "pool-000")
    pool.refill(rows, keys, budget_nano=budget, requests=requests, tokens=tokens, slots=slots)
    day = rows.counter(keys[0], WINDOW_FIELDS)
    assert day["leased_nano"] == budget
    assert rows.counter(keys[2], MINUTE_FIELDS)["requests"] == requests
    assert rows.counter(INFLIGHT, INFLIGHT_FIELDS)["count"] == slots
    # Keepers: a lease took moved_free out of the pool (its row counts it: still leased)
    # and reported `spent` settled from its slice into the pool.
    pool.add("free_nano", -moved_free)
    pool.add("spent_nano", spent)
    pool.add("leases", leases)
    pool.flush(rows, keys[2])
    assert day["spent_nano"] == spent
    # Leased now: what the lease holds (moved_free) less what it reported as spent.
    assert day["leased_nano"] == moved_free - spent
    assert rows.counter(keys[1], WINDOW_FIELDS)["leased_nano"] == moved_free - spent
    assert rows.counter(keys[2], MINUTE_FIELDS)["requests"] == 0
    assert rows.counter(INFLIGHT, INFLIGHT_FIELDS)["count"] == 0
    assert rows.counter(INFLIGHT, INFLIGHT_FIELDS)["leases"] == leases
    assert all(pool[name] == 0 for name in ("free_nano", "spent_nano", "slots", "minute_requests"))


# ------------------------------------------------------------------ on a store (memory, Azurite)


@pytest.fixture(params=STORE_BACKENDS)
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[list[TableStore]]:
    async with open_stores(request, "pool", count=4) as made:
        yield made


class Clock:
    """The ledgers' UTC clock, moved forward by tests (expiry); ``frozen``: moved by tests
    only, for a test whose marks must not lapse however slow the machine runs it."""

    def __init__(self, frozen: bool = False) -> None:
        self.skip = timedelta()
        self.frozen = datetime.now(UTC) if frozen else None

    def __call__(self) -> datetime:
        return (self.frozen or datetime.now(UTC)) + self.skip


def pooled(
    store: TableStore, clock: Clock, pool: int | None = None, settings: LeaseSettings = POOLED
) -> Ledger:
    """A ledger with pooled leases; ``pool``: its process id is one that hashes to that
    sub-pool of ``settings.max_pools`` (else random, as in a real process), so a test that
    needs keepers on different pools does not depend on where random ids fall."""
    ledger = Ledger(store=store, lease_seconds=30, min_answer_tokens=16, leases=settings, clock=clock)
    if pool is not None:
        assert ledger.leases is not None
        prefix = secrets.token_hex(4)  # two ledgers on one pool: two processes, two lease rows
        ledger.leases.process_id = next(
            candidate for n in range(1000)
            if pool_key(candidate := f"keeper-{prefix}-{n}", settings.max_pools) == pool_key_of(pool)
        )
    return ledger


def pool_key_of(index: int) -> str:
    return f"{POOL_PREFIX}{index:03d}"


def tenant(**limits: int) -> Tenant:
    return Tenant(id="t-" + secrets.token_hex(3), display_name="T", limits=Limits(**limits))


async def partition(store: TableStore, who: Tenant) -> dict[str, Any]:
    table = await store.table(USAGE_TABLE)
    entities = table.query_entities("PartitionKey eq @p", parameters={"p": who.id})
    return {e["RowKey"]: e async for e in entities}


def ints(entity: Any) -> dict[str, int]:
    return {k: read_int(v) for k, v in entity.items() if isinstance(v, int) or hasattr(v, "value")}


async def test_keepers_across_pools_never_overspend_and_every_nano_is_accounted_for(
    stores: list[TableStore],
) -> None:
    """Four ledgers x 8 callers on four sub-pools until the budget is gone: the spend never
    exceeds it, and once they shut down (and the sweep empties pools nobody touches any
    more) the day row's spent is exactly the sum of the answers' costs, nothing leased,
    nothing held, no slot in use."""
    budget = 150 * UNIT
    who = tenant(daily_budget_nano=budget, monthly_budget_nano=10**12, requests_per_minute=100_000,
                 tokens_per_minute=10**9, max_concurrent=200)  # fmt: skip
    clock = Clock()
    # On pools 0-3 of 4 (0, 1, 0, 1 of 2 while only two have synced): never one pool.
    ledgers = [pooled(s, clock, pool=i % POOLED.max_pools) for i, s in enumerate(stores)]
    pools_seen: set[str] = set()

    async def caller(ledger: Ledger) -> int:
        total, refusals = 0, 0
        while refusals < 20:
            cost = await call(ledger, who)
            total += cost
            refusals = 0 if cost else refusals + 1
            if not cost:
                await asyncio.sleep(0.1)
            elif total % 7 == 0:
                pools_seen.update(k for k in await partition(stores[0], who) if k.startswith(POOL_PREFIX))
        return total

    spent = sum(await asyncio.gather(*(caller(ledger) for ledger in ledgers for _ in range(8))))
    pools_seen.update(k for k in await partition(stores[0], who) if k.startswith(POOL_PREFIX))
    assert len(pools_seen) >= 2, "the keepers should have synced through sub-pools"
    for ledger in ledgers:
        await ledger.aclose()
    clock.skip = timedelta(seconds=10 * POOLED.ttl_seconds)  # pools nobody touches expire
    await ledgers[0].expire_holds()
    rows = await partition(stores[0], who)
    day = ints(rows[window_keys(clock())[0]])
    assert spent <= budget
    assert day["spent_nano"] == spent
    assert day.get("leased_nano", 0) == 0
    assert day.get("held_nano", 0) == 0
    assert day.get("expired_leases", 0) == 0  # everyone shut down properly: nothing charged
    assert ints(rows[INFLIGHT]).get("count", 0) == 0
    assert not [k for k in rows if k.startswith((POOL_PREFIX, "lease-"))]
    assert spent >= 0.9 * budget


async def test_a_recall_empties_every_pool_and_the_exact_path_finds_the_money(
    stores: list[TableStore],
) -> None:
    """Two ledgers hold slices through two sub-pools; a third decides exactly and needs
    more than the window rows have left. Its refusal is ``budget_held`` and marks the pool
    recalled; the next sync of each keeper (through whichever pool) returns its free slice
    and its pool's to the window rows, and the exact request is then admitted."""
    who = tenant(daily_budget_nano=60 * UNIT, monthly_budget_nano=10**12, requests_per_minute=100_000,
                 tokens_per_minute=10**9, max_concurrent=200)  # fmt: skip
    keeping = replace(POOLED, idle_seconds=30)
    a, b = (Ledger(store=s, lease_seconds=30, min_answer_tokens=16, leases=keeping) for s in stores[:2])
    for _ in range(3):
        await asyncio.gather(*(call(ledger, who, 0) for ledger in (a, b) for _ in range(4)))
        await a.flush(who.id)
        await b.flush(who.id)
    assert a.leases is not None
    assert b.leases is not None
    lease_a, lease_b = a.leases._leases[who.id], b.leases._leases[who.id]
    assert a.leases.pools(lease_a) >= 2
    rows = await partition(stores[0], who)
    assert any(k.startswith(POOL_PREFIX) for k in rows)
    day_key = window_keys(datetime.now(UTC))[0]
    day = ints(rows[day_key])
    left = 60 * UNIT - day["spent_nano"] - day.get("held_nano", 0) - day["leased_nano"]
    leased_free = day["leased_nano"]
    # An answer just too big for what the window rows have left, well within what is leased.
    tokens = (left - PRICE.cost_nano(100, 0)) // 2000 + 1
    assert PRICE.cost_nano(100, tokens) <= left + leased_free // 2
    exact = Ledger(store=stores[2], lease_seconds=30, min_answer_tokens=tokens)

    async def ask() -> Any:
        return await exact.admit(who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=tokens,
                                 function="f", key_id="k")

    refusal = ""
    try:
        hold = await ask()  # the keepers may have synced during its one wait already
    except LimitExceeded as refused:
        refusal = refused.code
    if refusal:
        assert refusal == "budget_held"
        assert RECALL in await partition(stores[0], who)
        await a.flush(who.id)
        await b.flush(who.id)
        rows = await partition(stores[0], who)
        pools = [ints(v) for k, v in rows.items() if k.startswith(POOL_PREFIX)]
        assert all(p.get("free_nano", 0) == 0 for p in pools)  # every pool emptied
        for lease in (lease_a, lease_b):
            assert lease.current is not None
            assert lease.current.free == 0
        hold = await ask()
    assert hold.max_tokens == tokens
    await exact.settle(hold, cost_nano=0, prompt_tokens=0, completion_tokens=0)
    await a.aclose()
    await b.aclose()


async def test_an_instance_that_vanishes_has_its_slice_charged_and_its_pool_returned_by_expiry(
    stores: list[TableStore],
) -> None:
    """Scale-in without a shutdown hook: one of three pooled ledgers stops (its keeper
    tasks die with it). After the TTL the sweep charges its lease's outstanding slice
    (flagged) and empties the pools nobody touches: the day row ends with exactly what was
    reported, plus what the pools' keepers had reported, plus the charged slice."""
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=100_000,
                 tokens_per_minute=10**9, max_concurrent=200)  # fmt: skip
    clock = Clock()
    ledgers = [pooled(s, clock) for s in stores[:3]]
    for _ in range(3):
        await asyncio.gather(*(call(ledger, who) for ledger in ledgers for _ in range(4)))
        for ledger in ledgers:
            await ledger.flush(who.id)
    gone = ledgers[0]
    assert gone.leases is not None
    assert gone.leases.pools(gone.leases._leases[who.id]) >= 2
    for lease in gone.leases._leases.values():  # the process is gone, and its timers
        for task in (lease.keeper, lease.sync):
            if task is not None:
                task.cancel()
    gone.leases._closing = True
    for ledger in ledgers[1:]:
        await ledger.aclose()
    before = await partition(stores[0], who)
    day_key = window_keys(clock())[0]
    outstanding = read_int(before[f"lease-{gone.leases.process_id}"]["amount_nano"])
    assert outstanding > 0
    in_pools = sum(read_int(v.get("spent_nano")) for k, v in before.items() if k.startswith(POOL_PREFIX))
    spent_before = read_int(before[day_key]["spent_nano"])
    clock.skip = timedelta(seconds=10 * POOLED.ttl_seconds)
    assert await ledgers[1].expire_holds() == 1  # one lease charged (pools are not charges)
    after = await partition(stores[0], who)
    day = ints(after[day_key])
    assert day["spent_nano"] == spent_before + in_pools + outstanding
    assert day["expired_leases"] == 1
    assert day.get("leased_nano", 0) == 0
    inflight = ints(after[INFLIGHT])
    assert inflight.get("count", 0) == 0
    assert inflight.get("leased_slots", 0) == 0
    assert not [k for k in after if k.startswith((POOL_PREFIX, "lease-"))]
    assert [e["flagged"] for e in await ledgers[1].expired(who.id)] == [True]


async def test_a_pool_sync_touches_only_the_lease_and_its_pool(stores: list[TableStore]) -> None:
    """Past the holder threshold most syncs leave the tenant's window rows alone: that is
    what lets many holders sync at once without racing for them."""
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=100_000,
                 tokens_per_minute=10**9, max_concurrent=200)  # fmt: skip
    # Reports and idling far apart: no rebalance falls due during the test.
    slow = replace(POOLED, report_seconds=5.0, idle_seconds=60.0, ttl_seconds=60)
    ledgers = [Ledger(store=s, lease_seconds=30, min_answer_tokens=16, leases=slow) for s in stores[:2]]
    for _ in range(2):  # the first syncs learn the holders, the next create the pools
        await asyncio.gather(*(call(ledger, who) for ledger in ledgers for _ in range(4)))
        for ledger in ledgers:
            await ledger.flush(who.id)
    day_key = window_keys(datetime.now(UTC))[0]
    table = await stores[0].table(USAGE_TABLE)
    # Its pool holds enough for the calls below (two keepers may share one pool, which
    # a refill for the demand then may not cover: that sync would be a rebalance).
    keeper = ledgers[0].leases
    assert keeper is not None
    pools = keeper.pools(keeper._leases[who.id])
    await refill(table, who, pool_key(keeper.process_id, pools), datetime.now(UTC))
    window_etag = (await query_partition(table, who.id, [day_key]))[day_key].metadata["etag"]
    # Calls and a sync right after a rebalance: served by the pool.
    await asyncio.gather(*(call(ledgers[0], who) for _ in range(2)))
    await ledgers[0].flush(who.id)
    found = await query_partition(table, who.id, [day_key])
    assert found[day_key].metadata["etag"] == window_etag
    for ledger in ledgers:
        await ledger.aclose()


async def test_the_pool_count_is_stored_grows_with_the_holders_and_no_pool_is_left_behind(
    stores: list[TableStore],
) -> None:
    """Every keeper uses the count stored in the in-flight row. It grows with the holders
    and does not shrink when one leaves: a count each keeper derived from the holders it
    last saw flapped with them at scale (0, 16, 32 in one bench/scale.py run), keepers
    disagreed, and a pool whose keepers had moved on held its capacity until the sweep.
    The last holder leaving sets it back to none."""
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=100_000,
                 tokens_per_minute=10**9, max_concurrent=200)  # fmt: skip
    clock = Clock()
    ledgers = [pooled(s, clock, pool=i) for i, s in enumerate(stores[:3])]
    for _ in range(2):  # the first syncs learn the holders, the next use the pools
        await asyncio.gather(*(call(ledger, who) for ledger in ledgers for _ in range(2)))
        for ledger in ledgers:
            await ledger.flush(who.id)
    rows = await partition(stores[0], who)
    assert ints(rows[INFLIGHT])["leases"] == 3
    assert ints(rows[INFLIGHT])["pools"] == 4  # 3 holders, one per pool: the next power of two
    await ledgers[2].aclose()  # one instance goes: 2 holders, for which 2 pools would do
    live = set()
    for ledger in ledgers[:2]:
        await call(ledger, who)
        await ledger.flush(who.id)
        keeper = ledger.leases
        assert keeper is not None
        # The count this keeper uses: the stored one, or (learned from a pool refilled
        # before it grew) a smaller power of two whose pools split into its pools.
        used = keeper.pools(keeper._leases[who.id])
        assert used in (2, 4)
        live.add(pool_key(keeper.process_id, used))
    rows = await partition(stores[0], who)
    assert ints(rows[INFLIGHT])["pools"] == 4
    holding = {k for k, row in rows.items() if k.startswith(POOL_PREFIX) and ints(row)["free_nano"] > 0}
    # Only the live keepers' pools hold budget (the pool of the one that left was emptied
    # with its last keeper), none under a count nobody uses any more.
    assert holding <= live
    for ledger in ledgers[:2]:
        await ledger.aclose()
    clock.skip = timedelta(seconds=10 * POOLED.ttl_seconds)  # pools nobody touches expire
    await ledgers[0].expire_holds()
    rows = await partition(stores[0], who)
    assert ints(rows[INFLIGHT])["leases"] == 0
    assert ints(rows[INFLIGHT])["pools"] == 0  # nobody holds a lease: back to none



# Two pools; reports, idling and flushes far apart (no rebalance falls due in a test).
LENDING = replace(POOLED, report_seconds=5.0, idle_seconds=60.0, ttl_seconds=60, max_pools=2)
CAPACITY = ("free_nano", "minute_requests", "minute_tokens", "slots")


def assert_held_as_leased(rows: dict[str, Any], day_key: str) -> None:
    """Exact: the day row's leased budget is what the pools and the lease rows hold, the
    in-flight row's count the slots they hold."""
    pools = [ints(row) for key, row in rows.items() if key.startswith(POOL_PREFIX)]
    leases = [ints(row) for key, row in rows.items() if key.startswith("lease-")]
    budget = sum(p["free_nano"] + p["spent_nano"] for p in pools) + sum(x["amount_nano"] for x in leases)
    assert ints(rows[day_key])["leased_nano"] == budget
    slots = sum(p["slots"] for p in pools) + sum(x["slots"] for x in leases)
    assert ints(rows[INFLIGHT])["count"] == slots


async def refill(table: Any, who: Tenant, key: str, now: datetime) -> None:
    """Move capacity from the window rows into a pool, as a rebalance's refill does."""
    day, month, minute = window_keys(now)
    rows = PartitionRows(who.id, await query_partition(table, who.id, [day, month, minute, INFLIGHT, key]))
    pool = PoolRow.read(rows, key)
    amounts = {"free_nano": 100 * UNIT, "minute_requests": 100, "minute_tokens": 10**5, "slots": 20}
    for window in (day, month):
        rows.counter(window, WINDOW_FIELDS).add("leased_nano", amounts["free_nano"])
    rows.counter(minute, MINUTE_FIELDS).add("requests", amounts["minute_requests"])
    rows.counter(minute, MINUTE_FIELDS).add("tokens", amounts["minute_tokens"])
    for field in ("count", "leased_slots"):
        rows.counter(INFLIGHT, INFLIGHT_FIELDS).add(field, amounts["slots"])
    for name, amount in amounts.items():
        pool.add(name, amount)
    await table.submit_transaction([*rows.operations(), pool.operation(now, 60, flushed=False)])


@pytest.mark.parametrize("case", ["dry", "not created yet"])
async def test_a_pool_that_cannot_serve_a_sync_borrows_from_another_and_the_window_rows_stay_untouched(
    stores: list[TableStore], case: str
) -> None:
    """A keeper whose pool is dry, or not created yet (the pool count grew), borrows half
    of another pool's unused capacity in its sync, instead of a rebalance through the
    window rows (at 256 instances nearly every sync had become one, all racing for the
    same rows, while other pools held the budget: bench/scale.py). The window rows count
    every pool's holdings alike, so they stay exact without being written."""
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=100_000,
                 tokens_per_minute=10**9, max_concurrent=200)  # fmt: skip
    # Frozen: the dry mark lasts a report interval (5 s) of this clock, which a loaded
    # machine's full suite took in real time (then the pool borrowed, or rebalanced again).
    clock = Clock(frozen=True)
    start = clock()  # at second 5 of a minute: the test's syncs all fall in that minute
    clock.skip = timedelta(seconds=(65 - start.second) % 60 - start.microsecond / 1e6)
    # Two holders make two pools. Dry: on pools 0 and 1, and pool 1's capacity is then
    # moved to pool 0. Not created yet: both on pool 0.
    homes = (0, 1) if case == "dry" else (0, 0)
    holders = [pooled(s, clock, pool=p, settings=LENDING) for s, p in zip(stores[:2], homes, strict=True)]
    spent = 0
    for _ in range(2):  # the first syncs learn the holders, the next use the pools
        spent += sum(await asyncio.gather(*(call(ledger, who) for ledger in holders for _ in range(2))))
        for ledger in holders:
            await ledger.flush(who.id)
    table = await stores[0].table(USAGE_TABLE)
    rows = await partition(stores[0], who)
    assert ints(rows[INFLIGHT])["pools"] == 2
    assert (pool_key_of(1) in rows) == (case == "dry")
    await refill(table, who, pool_key_of(0), clock())  # (whatever its keepers took meanwhile)
    rows = await partition(stores[0], who)
    if case == "dry":
        dry, rich = rows[pool_key_of(1)], rows[pool_key_of(0)]
        moved = {name: read_int(dry.get(name)) for name in CAPACITY}
        richer = {n: int64(read_int(rich.get(n)) + moved[n]) for n in CAPACITY}
        await table.submit_transaction([
            update_op({**dry, **dict.fromkeys(CAPACITY, int64(0))}, etag_of(dry)),
            update_op({**rich, **richer}, etag_of(rich)),
        ])  # fmt: skip
    before = await partition(stores[0], who)
    day_key = window_keys(clock())[0]
    lender = ints(before[pool_key_of(0)])

    borrower = pooled(stores[2], clock, pool=1, settings=LENDING)
    spent += await call(borrower, who)
    after = await partition(stores[0], who)
    assert after[day_key].metadata["etag"] == before[day_key].metadata["etag"]  # no rebalance
    assert after[INFLIGHT].metadata["etag"] == before[INFLIGHT].metadata["etag"]
    assert ints(after[pool_key_of(0)])["free_nano"] == lender["free_nano"] - lender["free_nano"] // 2
    assert ints(after[pool_key_of(1)])["free_nano"] > 0
    assert_held_as_leased(after, day_key)
    for ledger in [*holders, borrower]:
        await ledger.aclose()
    clock.skip += timedelta(seconds=10 * LENDING.ttl_seconds)  # pools nobody touches expire
    await holders[0].expire_holds()
    day = ints((await partition(stores[0], who))[day_key])
    assert day["spent_nano"] == spent
    assert day.get("leased_nano", 0) == 0


async def test_a_pool_a_rebalance_left_dry_does_not_send_its_keepers_back_to_the_window_rows(
    stores: list[TableStore],
) -> None:
    """A rebalance that finds the window rows without budget for its pool marks the pool
    dry for a report interval; until then a keeper of that pool whose sync it cannot
    serve (and that no other pool can lend to) syncs with the pool alone and the request
    is decided on the exact path. Without the mark each such sync became another
    rebalance, racing for the window rows all pools share to find them empty, near the
    end of every budget (bench/scale.py at 256 instances: runs collapsed to 0.19-0.92 of
    the budget while every instance was in a sync)."""
    who = tenant(daily_budget_nano=10**12, monthly_budget_nano=10**12, requests_per_minute=100_000,
                 tokens_per_minute=10**9, max_concurrent=200)  # fmt: skip
    # Frozen: the dry mark lasts a report interval (5 s) of this clock, which a loaded
    # machine's full suite took in real time (then the pool borrowed, or rebalanced again).
    clock = Clock(frozen=True)
    start = clock()  # at second 5 of a minute: the test's syncs all fall in that minute
    clock.skip = timedelta(seconds=(65 - start.second) % 60 - start.microsecond / 1e6)
    # The first holders report seldom: their own syncs (a rebalance of pool 0, which
    # nobody marks here) must not fall inside the test.
    quiet = replace(LENDING, report_seconds=60.0)
    holders = [pooled(s, clock, pool=p, settings=quiet) for s, p in zip(stores[:2], (0, 1), strict=True)]
    for _ in range(2):  # the first syncs learn the holders, the next use the pools
        await asyncio.gather(*(call(ledger, who) for ledger in holders for _ in range(2)))
        for ledger in holders:
            await ledger.flush(who.id)
    table = await stores[0].table(USAGE_TABLE)
    day_key = window_keys(clock())[0]
    # The rest of the day's budget is spent elsewhere, and so is every pool's free part
    # (each moved from leased to spent: the rows stay consistent).
    rows = await partition(stores[0], who)
    assert ints(rows[INFLIGHT])["pools"] == 2
    day = ints(rows[day_key])
    left = 10**12 - day["spent_nano"] - day.get("held_nano", 0) - day["leased_nano"]
    emptied = [pool_key_of(0), pool_key_of(1)]
    freed = sum(read_int(rows[key].get("free_nano")) for key in emptied)
    spent = {
        "spent_nano": int64(day["spent_nano"] + left + freed),
        "leased_nano": int64(day["leased_nano"] - freed),
    }
    await table.submit_transaction([
        update_op({**rows[day_key], **spent}, etag_of(rows[day_key])),
        *(update_op({**rows[key], "free_nano": int64(0)}, etag_of(rows[key])) for key in emptied),
    ])  # fmt: skip

    def window_etag(found: dict[str, Any]) -> str:
        return str(found[day_key].metadata["etag"])

    # A new keeper on pool 1: dry, and pool 0 has nothing to lend: it rebalances, finds
    # nothing, and marks the pool.
    first = pooled(stores[2], clock, pool=1, settings=LENDING)
    before = await partition(stores[0], who)
    assert await call(first, who) == 0  # refused
    marked = await partition(stores[0], who)
    assert window_etag(marked) != window_etag(before)  # the rebalance
    # Its refusal (the budget sits leased) recalled the leases, which sends every sync
    # to the window rows for a while, by design. With more holders than
    # holders_per_report, as at scale, a refusal recalls nothing (``leased_out``).
    await table.delete_entity(who.id, RECALL)
    marked = await partition(stores[0], who)
    # Another keeper of pool 1 within the mark: no rebalance, still refused.
    second = pooled(stores[3], clock, pool=1, settings=LENDING)
    assert await call(second, who) == 0  # refused
    after = await partition(stores[0], who)
    assert window_etag(after) == window_etag(marked)
    assert after[INFLIGHT].metadata["etag"] == marked[INFLIGHT].metadata["etag"]
    assert second.leases is not None
    assert f"lease-{second.leases.process_id}" in after  # it synced (with its pool)
    assert_held_as_leased(after, day_key)
    # A holder of the dry pool whose call the provider overran (its slice's free below
    # zero) syncs within the mark: a pool sync. Its lease row must not take a negative
    # amount (a row deleted when its holder idles would take the debt out of the sums);
    # the debt goes to the pool, which the window rows count as leased.
    overrun = holders[1]
    await table.delete_entity(who.id, RECALL)  # (the second refusal recalled again)
    hold = await overrun.admit(
        who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100, function="f", key_id="k"
    )
    assert hold.lease is not None  # from its slice
    assert overrun.leases is not None
    held = overrun.leases._leases[who.id].current
    assert held is not None
    # More than its slice has free, whatever the earlier syncs granted it: they size grants
    # by rates measured in real time (CI once left 4.9 M nano-USD free after a fixed overrun
    # of 50 calls, and the pool owed nothing).
    cost = hold.amount_nano + held.free + 50 * UNIT
    await overrun.settle(hold, cost_nano=cost, prompt_tokens=100, completion_tokens=5000)
    await overrun.flush(who.id)
    owed = await partition(stores[0], who)
    assert window_etag(owed) == window_etag(marked)  # still no rebalance
    assert overrun.leases is not None
    assert ints(owed[f"lease-{overrun.leases.process_id}"])["amount_nano"] >= 0
    assert ints(owed[pool_key_of(1)])["free_nano"] < 0  # the overrun, owed by the pool
    assert_held_as_leased(owed, day_key)
    # Past the mark (a report interval, before the pool's flush falls due) the window
    # rows are asked again.
    clock.skip += timedelta(seconds=LENDING.report_seconds + 1)
    third = pooled(stores[0], clock, pool=1, settings=LENDING)
    assert await call(third, who) == 0  # refused
    assert window_etag(await partition(stores[0], who)) != window_etag(owed)
    for ledger in [*holders, first, second, third]:
        await ledger.aclose()
