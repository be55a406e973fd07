"""Allocated leases (sk_core/limits/allocation.py, allocated.py): one allocator per tenant
grants every process its slices; no row has two writers on the request path.

Exactness across processes (budget, requests per minute), what a vanished process is
charged, what a stale claim gives back, a new day, and the allocator's hand-over; and
the allocation arithmetic as a property.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.core import MatchConditions
from hypothesis import given
from hypothesis import strategies as st

from sk_core.accounts import Limits, Tenant
from sk_core.errors import LimitExceeded
from sk_core.limits import INFLIGHT, USAGE_TABLE, Hold, Ledger, window_keys
from sk_core.limits import allocated as allocated_module
from sk_core.limits import allocation as allocation_module
from sk_core.limits.allocated import AllocatedKeeper
from sk_core.limits.allocation import Allocator
from sk_core.limits.lease_state import LeaseSettings
from sk_core.limits.offers import ALLOC_SECONDS, CLAIM_PREFIX, DIMENSIONS, OFFER_PREFIX, Want, allocate
from sk_core.limits.offers import allocating as allocating_now
from sk_core.limits.sweep import credit_all
from sk_core.storage import Conflict, TableStore, int64, query_partition, read_int, submit
from tests.support.clock import inside_one_minute
from tests.support.ledgers import PRICE, allocating, call, stop_allocating
from tests.support.settings import make_settings
from tests.support.stores import STORE_BACKENDS, open_stores

FAST = LeaseSettings(report_seconds=0.5, idle_seconds=1.0, ttl_seconds=30, allocated=True)


# ------------------------------------------------------------------ the arithmetic

wanted = st.lists(
    st.tuples(
        st.integers(-5, 50),  # hold (negative: a slice overrun by a provider)
        st.integers(0, 60),  # target
        st.integers(1, 7),  # unit
        st.integers(0, 12),  # waiting calls
    ),
    min_size=1,
    max_size=12,
)


@given(st.lists(st.integers(-20, 200), min_size=4, max_size=4), st.lists(wanted, min_size=4, max_size=4))
def test_allocation_never_grants_more_than_is_left_and_serves_waiting_calls_whole(
    rooms: list[int], dimensions: list[list[tuple[int, int, int, int]]]
) -> None:
    count = min(len(d) for d in dimensions)
    waiting = [dimensions[0][i][3] for i in range(count)]  # one queue per process, every dimension
    wants = {
        d: {
            f"p{i}": Want(f"p{i}", hold, target, unit, waiting[i])
            for i, (hold, target, unit, _) in enumerate(dimensions[n][:count])
        }
        for n, d in enumerate(DIMENSIONS)
    }
    room = dict(zip(DIMENSIONS, rooms, strict=True))
    grants, left, unserved = allocate(room, wants)
    for d in DIMENSIONS:
        assert all(g >= 0 for g in grants[d].values())
        assert sum(grants[d].values()) <= max(0, room[d])
        assert left[d] == max(0, room[d]) - sum(grants[d].values())
    for i in range(count):
        process = f"p{i}"
        if not waiting[i] or process in unserved:
            continue
        # Served: at least one whole call in every dimension at once.
        assert all(
            max(0, wants[d][process].hold) + grants[d][process] >= wants[d][process].unit for d in DIMENSIONS
        )
    if all(r >= 10_000 for r in rooms):
        # Room for everything: every waiting call is covered, in every dimension.
        assert not unserved
        for d in DIMENSIONS:
            for process, w in wants[d].items():
                assert max(0, w.hold) + grants[d][process] >= w.waiting * w.unit


# ------------------------------------------------------------------ on a store


@pytest.fixture(params=STORE_BACKENDS)
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[list[TableStore]]:
    async with open_stores(request, "alc", count=4) as made:
        yield made


ROOMY = {
    "daily_budget_nano": 10**12,
    "monthly_budget_nano": 10**12,
    "requests_per_minute": 10_000,
    "tokens_per_minute": 10**8,
    "max_concurrent": 64,
}


def tenant(**limits: int) -> Tenant:
    """A fresh tenant: far from every limit but the ones given."""
    return Tenant(id="t-" + secrets.token_hex(3), display_name="T", limits=Limits(**{**ROOMY, **limits}))


class Clock:
    """A UTC clock a test moves forward (``offset``), from ``start`` if given."""

    def __init__(self, start: datetime | None = None) -> None:
        self.offset = timedelta()
        self.shift = start - datetime.now(UTC) if start is not None else timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.shift + self.offset


def ledger(store: TableStore, clock: Any = None, settings: LeaseSettings = FAST) -> Ledger:
    options = {"clock": clock} if clock is not None else {}
    return Ledger(store=store, lease_seconds=30, min_answer_tokens=16, leases=settings, **options)


async def partition(store: TableStore, who: Tenant, keys: list[str] | None = None) -> dict[str, Any]:
    table = await store.table(USAGE_TABLE)
    if keys is not None:
        return await query_partition(table, who.id, keys)
    return {
        e["RowKey"]: e async for e in table.query_entities("PartitionKey eq @p", parameters={"p": who.id})
    }


def counts(entity: Any) -> dict[str, int]:
    return {
        k: read_int(v)
        for k, v in (entity or {}).items()
        if k not in ("PartitionKey", "RowKey") and (isinstance(v, int) or hasattr(v, "value"))
    }


async def close_all(ledgers: list[Ledger], who: Tenant, clock: Any = None) -> None:
    """Every process shuts down; then one cycle credits what they reported on the way."""
    for each in ledgers:
        await each.aclose()
    await credit_all(ledger(ledgers[0].store, clock, settings=FAST), who, "auditor")


async def test_many_processes_never_overspend_and_use_nearly_all_of_the_budget(
    stores: list[TableStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four processes x 16 callers that keep asking, on a budget of ~200 calls."""
    monkeypatch.setattr(allocated_module, "WAIT_SECONDS", 2.0)
    budget = 200 * PRICE.cost_nano(100, 100)
    who = tenant(daily_budget_nano=budget, requests_per_minute=100_000, tokens_per_minute=10**9)
    ledgers = [ledger(s) for s in stores]
    assert all(isinstance(each.leases, AllocatedKeeper) for each in ledgers)

    async def caller(each: Ledger) -> int:
        total, refused_since = 0, None
        loop = asyncio.get_running_loop()
        while True:
            cost = await call(each, who)
            if cost:
                total, refused_since = total + cost, None
                continue
            refused_since = refused_since or loop.time()
            if loop.time() - refused_since > 3.0:
                return total
            await asyncio.sleep(0.1)

    spent = sum(await asyncio.gather(*(caller(each) for each in ledgers for _ in range(16))))
    await close_all(ledgers, who)
    day = window_keys(datetime.now(UTC))[0]
    row = counts((await partition(stores[0], who, [day]))[day])
    assert row["spent_nano"] == spent  # the ledger equals the sum of the answers' costs
    assert spent <= budget
    assert spent >= 0.98 * budget
    assert row.get("leased_nano", 0) == 0
    assert row.get("held_nano", 0) == 0
    # One allocator at a time wrote the offers; every process wrote only its own claim.
    assert sum(each.leases.allocators for each in ledgers if isinstance(each.leases, AllocatedKeeper)) >= 1


async def test_requests_per_minute_are_admitted_exactly_across_processes(stores: list[TableStore]) -> None:
    """Four processes x 8 callers that keep asking for two seconds: exactly rpm admitted."""
    rpm = 200
    who = tenant(requests_per_minute=rpm, tokens_per_minute=10**9)
    ledgers = [ledger(s) for s in stores]
    await inside_one_minute(8)
    minute = window_keys(datetime.now(UTC))[2]
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.0
    refusals: list[str] = []

    async def caller(each: Ledger) -> int:
        admitted = 0
        while loop.time() < until:
            try:
                hold = await each.admit(
                    who,
                    price=PRICE,
                    prompt_tokens_bound=10,
                    requested_max_tokens=10,
                    function="f",
                    key_id="k",
                )
            except LimitExceeded as refused:
                refusals.append(refused.code)
                await asyncio.sleep(0.05)
                continue
            admitted += 1
            await each.settle(hold, cost_nano=1, prompt_tokens=10, completion_tokens=1)
        return admitted

    admitted = sum(await asyncio.gather(*(caller(each) for each in ledgers for _ in range(8))))
    await close_all(ledgers, who)
    assert window_keys(datetime.now(UTC))[2] == minute
    assert admitted == rpm  # not a request over, none left unused in a slice
    assert set(refusals) <= {"rate_limited"}


async def test_a_vanished_process_is_charged_what_it_held_and_its_unclaimed_offer_comes_back(
    stores: list[TableStore],
) -> None:
    who = tenant()
    clock = Clock()
    crashed, survivor = ledger(stores[0], clock), ledger(stores[1], clock)
    assert await call(crashed, who) > 0  # (a process's first request is decided exactly)
    hold: Hold = await crashed.admit(
        who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100, function="f", key_id="k"
    )
    assert hold.lease is not None
    assert await call(survivor, who) > 0
    await asyncio.sleep(1.2)  # a cycle or two: top-ups offered to both
    # The process dies: no settlement, no hand-back; its keeper, poller and allocator too.
    keeper = crashed.leases
    assert isinstance(keeper, AllocatedKeeper)
    keeper._closing = True
    for lease in keeper._leases.values():
        for task in (lease.keeper, lease.sync):
            if task is not None:
                task.cancel()
    for state in keeper._claims.values():
        for task in (state.poller, state.allocating):
            if task is not None:
                task.cancel()
    stored = await partition(stores[0], who)
    claim = counts(stored[CLAIM_PREFIX + keeper.process_id])
    held = claim["claimed_nano"] - claim["back_nano"] - claim["spent_nano"]
    assert held >= hold.amount_nano
    # Past its TTL (and the crashed allocator's), the survivor's allocator expires it.
    clock.offset = timedelta(seconds=FAST.ttl_seconds + 5)
    for _ in range(40):
        await asyncio.sleep(0.25)
        await call(survivor, who)
        if CLAIM_PREFIX + keeper.process_id not in await partition(stores[1], who):
            break
    after = await partition(stores[1], who)
    assert CLAIM_PREFIX + keeper.process_id not in after
    assert OFFER_PREFIX + keeper.process_id not in after
    await close_all([survivor], who, clock)
    day = window_keys(clock())[0]
    row = counts((await partition(stores[1], who, [day]))[day])
    assert row["expired_leases"] == 1
    assert row["expired_nano"] == held  # what it claimed and did not report: charged
    assert row.get("leased_nano", 0) == 0  # everything else came back or was settled
    inflight = counts((await partition(stores[1], who, [INFLIGHT]))[INFLIGHT])
    assert inflight.get("count", 0) == 0
    assert inflight.get("leased_slots", 0) == 0


async def test_the_allocator_is_taken_over_when_its_process_vanishes(stores: list[TableStore]) -> None:
    who = tenant()
    clock = Clock()
    first, second = ledger(stores[0], clock), ledger(stores[1], clock)
    assert await call(first, who) > 0  # the first process on the tenant allocates
    keeper = first.leases
    assert isinstance(keeper, AllocatedKeeper)
    await allocating(keeper)
    assert keeper.allocators == 1
    keeper._closing = True
    stop_allocating(keeper)
    for lease in keeper._leases.values():
        if lease.keeper is not None:
            lease.keeper.cancel()
    clock.offset = timedelta(seconds=ALLOC_SECONDS + 1)
    costs = await asyncio.wait_for(asyncio.gather(*(call(second, who) for _ in range(5))), timeout=10)
    assert all(cost > 0 for cost in costs)
    assert isinstance(second.leases, AllocatedKeeper)
    await allocating(second.leases)  # (its first requests were exact: the allocator lapsed)
    assert second.leases.allocators == 1
    assert (await partition(stores[1], who, ["alloc"]))["alloc"]["owner"] == second.leases.process_id
    await close_all([second], who, clock)


async def test_a_new_day_closes_the_old_one_in_the_claim_and_credits_it_to_its_own_rows(
    stores: list[TableStore],
) -> None:
    who = tenant()
    clock = Clock(start=datetime(2030, 3, 14, 23, 59, 50, tzinfo=UTC))
    one = ledger(stores[0], clock)
    before = sum([await call(one, who) for _ in range(3)])
    await asyncio.sleep(0.7)  # reported, and topped up: unused budget on the old day
    # Settled and not reported yet at midnight, and one call still in flight then.
    before += sum([await call(one, who) for _ in range(2)])
    flying = await one.admit(
        who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100, function="f", key_id="k"
    )
    clock.offset = timedelta(seconds=15)  # 00:00:05 the next day
    after = sum([await call(one, who) for _ in range(5)])
    await one.settle(flying, cost_nano=PRICE.cost_nano(100, 10), prompt_tokens=100, completion_tokens=10)
    await close_all([one], who, clock)
    old, new = "day-20300314", "day-20300315"
    stored = await partition(stores[0], who, [old, new, "month-203003"])
    # The old day: its answers, and the call in flight at midnight charged its reservation.
    assert counts(stored[old])["spent_nano"] == before + flying.amount_nano
    assert counts(stored[new])["spent_nano"] == after
    assert counts(stored["month-203003"])["spent_nano"] == before + flying.amount_nano + after
    for key in (old, new, "month-203003"):
        assert counts(stored[key]).get("leased_nano", 0) == 0, key


async def test_a_request_waiting_on_a_spent_budget_gets_the_precise_refusal_and_nothing_waits_on(
    stores: list[TableStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(allocated_module, "WAIT_SECONDS", 1.0)
    budget = 10 * PRICE.cost_nano(100, 100)
    who = tenant(daily_budget_nano=budget)
    ledgers = [ledger(s) for s in stores[:2]]
    costs = await asyncio.wait_for(
        asyncio.gather(*(call(each, who) for each in ledgers for _ in range(10))), timeout=20
    )
    assert sum(costs) <= budget
    assert sum(1 for c in costs if c) >= 9
    codes = []
    for each in ledgers:
        try:
            await asyncio.wait_for(
                each.admit(
                    who,
                    price=PRICE,
                    prompt_tokens_bound=100,
                    requested_max_tokens=100,
                    function="f",
                    key_id="k",
                ),
                timeout=10,
            )
        except LimitExceeded as refused:
            codes.append(refused.code)
    assert len(codes) == 2
    assert set(codes) <= {"budget_exceeded", "budget_held"}
    await close_all(ledgers, who)


async def test_usage_shows_settled_calls_at_once_and_calls_in_flight_apart_from_leased_slots(
    stores: list[TableStore],
) -> None:
    """Issue 23, defect 2, with allocated leases. The window rows learn of settled calls
    only at the allocator's next cycle, and slots granted to a process count in the
    in-flight row whether used or not: the usage views (admin usage, /api/v1/usage, the
    dashboard) read the claim rows too, so after a flush they show what was spent, real
    calls in flight and leased slots apart."""
    from sk_core.usage import usage_of

    await inside_one_minute(15)  # (the minute's counts are compared)
    who = tenant(max_concurrent=10)
    one = ledger(stores[0])
    first = await call(one, who)  # (exact: a process's first request)
    await allocating(one.leases)
    holds = [
        await one.admit(who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100, function="f",
                        key_id="k")
        for _ in range(3)
    ]  # fmt: skip
    keeper = one.leases
    assert isinstance(keeper, AllocatedKeeper)
    stop_allocating(keeper)  # no cycle credits the claim from here on
    await asyncio.sleep(0.2)
    for hold in holds[1:]:
        await one.settle(hold, cost_nano=7, prompt_tokens=3, completion_tokens=2)
    day, month, _ = window_keys(datetime.now(UTC))
    usage = await one.usage(who.id, day)  # reports this process's claim first
    stored = counts((await partition(stores[0], who, [day])).get(day))
    assert stored.get("spent_nano", 0) == first  # (credited before the allocator stopped)
    assert usage["spent_nano"] == first + 14
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (3, 106, 104)
    assert usage["inflight"] == 1  # one call really in flight
    assert usage["leased_slots"] >= 3  # granted to this process, used or not
    document = await usage_of(one, who)
    assert document.day.spent_nano == document.month.spent_nano == first + 14
    assert document.concurrency.in_flight == 1
    assert document.concurrency.leased_slots >= 3
    assert document.minute.requests == 4  # admitted; the rest of the minute row is leased
    await one.settle(holds[0], cost_nano=7, prompt_tokens=3, completion_tokens=2)
    await close_all([one], who)
    after = await one.usage(who.id, day)
    assert [after[k] for k in ("inflight", "leased_slots", "leased_nano")] == [0, 0, 0]
    assert after["spent_nano"] == first + 21
    assert (await one.usage(who.id, month))["spent_nano"] == first + 21


def test_allocated_leases_are_the_default() -> None:
    assert LeaseSettings().allocated is True
    assert make_settings({}).lease_allocator is True
    assert replace(FAST, allocated=False).allocated is False


async def test_a_stale_claim_gives_back_what_it_never_claimed_and_the_claim_row_is_touched(
    stores: list[TableStore],
) -> None:
    """A process that stops writing its claim (gone, or stalled) for 1.6 report intervals:
    what it was offered and never claimed goes back at once, not at its expiry, in a
    transaction that also rewrites its claim row (so a claim racing it fails instead)."""
    who = tenant()
    clock = Clock()
    auditor = Ledger(store=stores[0], lease_seconds=30, min_answer_tokens=16, clock=clock)
    table = await stores[0].table(USAGE_TABLE)
    now = clock()
    day, month, minute = window_keys(now)
    await table.create_entity(
        {
            "PartitionKey": who.id,
            "RowKey": CLAIM_PREFIX + "p1",
            "day": day,
            "month": month,
            "minute": minute,
            "unit_nano": 1000,
            "unit_tokens": 10,
            "busy": 0,
            "waiting": 0,
            "rate": 4.0,
            "count_rate": 0.0,
            "at": now,
            "report_s": 0.5,
            "expires_at": now + timedelta(seconds=30),
        }
    )
    await credit_all(auditor, who, "allocator-1")  # (the alloc row: this allocator's)
    allocator = Allocator(auditor, who, "allocator-1", horizon=1.5, cycle=0.5)
    assert await allocator.cycle_once()  # a fresh claim with a rate: a top-up offered
    stored = await partition(stores[0], who)
    offer = counts(stored[OFFER_PREFIX + "p1"])
    assert offer["budget_nano"] > 0
    assert offer["minute_requests"] > 0
    assert offer["slots"] > 0
    assert counts(stored[day])["leased_nano"] == offer["budget_nano"]
    touched = stored[CLAIM_PREFIX + "p1"].metadata["etag"]
    clock.offset = timedelta(seconds=1.5)  # 3 report intervals without a write: stale
    assert await allocator.cycle_once()
    stored = await partition(stores[0], who)
    offer = counts(stored[OFFER_PREFIX + "p1"])
    assert offer["budget_nano"] == offer["minute_requests"] == offer["slots"] == 0  # (it claimed none)
    assert counts(stored[day]).get("leased_nano", 0) == 0
    assert counts(stored[minute]).get("requests", 0) == 0
    assert counts(stored[INFLIGHT]).get("count", 0) == counts(stored[INFLIGHT]).get("leased_slots", 0) == 0
    assert stored[CLAIM_PREFIX + "p1"].metadata["etag"] != touched  # a claim planned on it fails


async def test_an_idle_tenants_allocator_stands_down_and_the_next_demand_elects_one(
    stores: list[TableStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cycle is a query of the tenant's claims: an allocator with nobody to serve
    stops (not reading the partition every cycle forever), and demand starts one."""
    monkeypatch.setattr(allocation_module, "IDLE_CYCLES", 3)
    who = tenant()
    one = ledger(stores[0])
    assert await call(one, who) > 0
    keeper = one.leases
    assert isinstance(keeper, AllocatedKeeper)
    state = keeper._claims[who.id]
    assert state.allocating is not None
    await asyncio.wait_for(state.allocating, timeout=15)  # idle: its slices handed back, then down
    assert (await partition(stores[0], who, ["alloc"]))["alloc"]["owner"] == ""
    assert await call(one, who) > 0
    assert keeper.allocators == 2
    await close_all([one], who)


async def test_a_live_process_whose_claim_a_fast_clock_expired_is_charged_once(
    stores: list[TableStore],
) -> None:
    """A sweeper whose clock runs more than the TTL ahead of a live process sees its claim
    as expired and charges what it held (an over-charge, never an overspend). The process,
    alive, must not report that slice again: its next claim write finds the row gone and
    drops the slice; its call in flight settles late, not reported again; what it serves
    after is charged as usual. Nothing counts twice."""
    from sk_core.limits.sweep import expire_claims

    who = tenant()
    live = ledger(stores[0])
    await call(live, who)  # (exact: a process's first request)
    await allocating(live.leases)
    hold = await live.admit(who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100,
                            function="f", key_id="k")  # fmt: skip
    assert hold.lease is not None
    assert await call(live, who) > 0  # settled from the slice and reported below
    await live.flush(who.id)
    keeper = live.leases
    assert isinstance(keeper, AllocatedKeeper)
    stop_allocating(keeper)  # (the day row holds still while it is read)
    await asyncio.sleep(0.2)
    day = window_keys(datetime.now(UTC))[0]
    before = counts((await partition(stores[0], who, [day]))[day])
    ahead = Clock()
    ahead.offset = timedelta(seconds=FAST.ttl_seconds + 5)
    sweeper = Ledger(store=stores[1], lease_seconds=30, min_answer_tokens=16, clock=ahead)
    assert await expire_claims(sweeper) >= 1
    rows = await partition(stores[1], who)
    assert CLAIM_PREFIX + keeper.process_id not in rows
    swept = counts(rows[day])
    charged = swept["expired_nano"] - before.get("expired_nano", 0)
    assert charged >= hold.amount_nano  # the call in flight, at least
    # (The sweep's cycle also credits what the claim reported: the call settled above.)
    assert swept["spent_nano"] - before["spent_nano"] >= charged
    await live.flush(who.id)  # its next claim write: the row is gone, the slice dropped
    settled = await live.settle(hold, cost_nano=hold.amount_nano // 2, prompt_tokens=100, completion_tokens=1)
    assert settled.late
    assert settled.cost_nano == hold.amount_nano  # (charged with the claim)
    # The sweep gave the alloc row up at its own time, ahead: free all the same (owner
    # ""), so the process allocates again at once and serves from slices, not once its
    # own clock gets there (its requests waited WAIT_SECONDS, then went exact).
    later = 0
    for _ in range(4):
        next_hold = await live.admit(who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100,
                                     function="f", key_id="k")  # fmt: skip
        assert next_hold.lease is not None
        settled = await live.settle(next_hold, cost_nano=1000, prompt_tokens=1, completion_tokens=0)
        later += settled.cost_nano
    assert keeper.allocators == 2
    await close_all([live], who)
    after = counts((await partition(stores[0], who, [day]))[day])
    assert after["spent_nano"] == swept["spent_nano"] + later
    assert after.get("leased_nano", 0) == after.get("held_nano", 0) == 0


async def test_an_idle_claim_that_lapses_is_retired_without_a_charge_or_a_flag(
    stores: list[TableStore],
) -> None:
    """A process whose tenant went quiet gives its slice back and stops writing its
    claim; the row lapses at its TTL with nothing held. Retiring it is housekeeping:
    not an expiry to charge, count (``expired_leases``) or flag for audit, and not the
    sweep's warning. (Every idle tenant of every instance did all three.)"""
    from sk_core.limits.sweep import expire_claims

    who = tenant()
    one = ledger(stores[0])
    await call(one, who)  # (exact: a process's first request)
    await allocating(one.leases)
    assert await call(one, who) > 0
    keeper = one.leases
    assert isinstance(keeper, AllocatedKeeper)
    for _ in range(100):  # idle (FAST: after 1 s): everything given back, the keeper stops
        lease = keeper._leases.get(who.id)
        if lease is not None and lease.empty and (lease.keeper is None or lease.keeper.done()):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the lease never went idle")
    stop_allocating(keeper)
    claim_row = (await partition(stores[0], who))[CLAIM_PREFIX + keeper.process_id]
    assert read_int(claim_row["busy"]) == 0
    day = window_keys(datetime.now(UTC))[0]
    before = counts((await partition(stores[0], who, [day]))[day])
    ahead = Clock()
    ahead.offset = timedelta(seconds=FAST.ttl_seconds + 5)
    sweeper = Ledger(store=stores[1], lease_seconds=30, min_answer_tokens=16, clock=ahead)
    assert await expire_claims(sweeper) == 0  # nothing charged
    rows = await partition(stores[1], who)
    assert CLAIM_PREFIX + keeper.process_id not in rows  # retired all the same
    assert OFFER_PREFIX + keeper.process_id not in rows
    assert not [key for key in rows if key.startswith("expired-")]
    after = counts(rows[day])
    assert after.get("expired_leases", 0) == after.get("expired_nano", 0) == 0
    assert after["spent_nano"] == before["spent_nano"]
    assert after.get("leased_nano", 0) == 0
    await one.aclose()


async def with_claims(
    store: TableStore, who: Tenant, processes: list[str], **fields: Any
) -> tuple[Ledger, Any, datetime]:
    """A fresh claim row for each process (``fields`` over the defaults), and the ``alloc``
    row held by "allocator-1"; the ledger that took it, the usage table, the time."""
    auditor = Ledger(store=store, lease_seconds=30, min_answer_tokens=16, clock=Clock())
    table = await store.table(USAGE_TABLE)
    now = auditor.now()
    day, month, minute = window_keys(now)
    for process in processes:
        await table.create_entity({
            "PartitionKey": who.id, "RowKey": CLAIM_PREFIX + process, "day": day, "month": month,
            "minute": minute, "unit_nano": 1000, "unit_tokens": 10, "busy": 0, "waiting": 0,
            # (Reports every 30 s: fresh for the whole test, however slow the store.)
            "rate": 1.0, "count_rate": 0.0, "at": now, "report_s": 30.0,
            "expires_at": now + timedelta(seconds=60), **fields,
        })  # fmt: skip
    await credit_all(auditor, who, "allocator-1")
    return auditor, table, now


async def allocating_a_minute(
    store: TableStore, limit: int, processes: list[str], rate: float
) -> tuple[Tenant, Any, Allocator, datetime]:
    """A tenant limited to ``limit`` requests a minute, a fresh claim row for each process
    (calls at ``rate`` a second), and its allocator after one cycle (offers written)."""
    who = tenant(requests_per_minute=limit)
    await inside_one_minute(10)
    auditor, table, now = await with_claims(store, who, processes, rate=rate)
    allocator = Allocator(auditor, who, "allocator-1", horizon=1.5, cycle=0.5)
    assert await allocator.cycle_once()
    return who, table, allocator, now


async def test_a_cycle_in_several_transactions_never_takes_a_row_over_its_limit(
    stores: list[TableStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An allocator cycle commits its plans BATCH offers a transaction. It counted this
    cycle's credits (requests, budget and slots given back) as room for its grants, but a
    grant may commit in an earlier transaction than the credit funding it: the row is
    over its limit until the later one lands, and for good if it fails (bench/scale.py at
    1,024 instances: the minute row at 2,702 of 2,700, once 2,706 admitted). Here 120
    processes fill the minute; the last 30 give all theirs back while the first 90 wait
    for more, and the cycle's second transaction fails."""
    limit = 150
    processes = [f"p{n:03d}" for n in range(120)]  # (RowKey order: the plans' order)
    who, table, allocator, now = await allocating_a_minute(stores[0], limit, processes, rate=4.0)
    minute = window_keys(now)[2]
    rows = await partition(stores[0], who)
    assert counts(rows[minute])["requests"] >= 100  # (most of the minute offered)
    for index, process in enumerate(processes):
        offered = counts(rows[OFFER_PREFIX + process])["minute_requests"]
        claim = rows[CLAIM_PREFIX + process]
        if index < 90:  # claimed, used, and two more calls waiting
            changes = {"minute_claimed": offered, "waiting": 2, "lack_requests": 2, "unused_requests": 0}
        else:  # claimed and given all back
            changes = {"minute_claimed": offered, "minute_back": offered, "unused_requests": 0}
        await table.update_entity(
            {**claim, **{k: int64(v) for k, v in changes.items()}, "at": now}, mode="merge",
            etag=claim.metadata["etag"], match_condition=MatchConditions.IfNotModified,
        )  # fmt: skip
    calls = 0

    async def second_fails(table_: Any, operations: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise Conflict("the cycle's second transaction lost a race")
        return await submit(table_, operations)

    monkeypatch.setattr(allocation_module, "submit", second_fails)
    with contextlib.suppress(Conflict):
        await allocator.cycle_once()
    assert counts((await partition(stores[0], who, [minute]))[minute])["requests"] <= limit


def test_a_cycle_commits_returns_before_the_grants_they_fund_or_not_at_all() -> None:
    """``batches_of`` puts plans that only give back before plans that take, so that no
    transaction's grants outrun the returns funding them; ``overshoots`` says when, in that
    order, one still would (a process giving back one thing and taking another, its return
    in a later transaction: the case left open, counted in ``Allocator.tally``)."""
    from sk_core.limits.offers import Plan, batches_of, overshoots

    def plan(name: str, requests: int) -> Plan:
        return Plan(name, minute={"requests": requests}, operations=[("update", {"RowKey": name}, {})])

    room = {"day": 0, "month": 0, "requests": 0, "tokens": 0, "slots": 0}
    takers = [plan(f"t{n:03d}", 1) for n in range(95)]
    givers = [plan(f"g{n:03d}", -1) for n in range(95)]
    batches = batches_of([*takers, *givers])
    assert [len(b) for b in batches] == [90, 90, 10]
    assert all(p.minute["requests"] < 0 for p in batches[0])  # returns first
    assert not overshoots(batches, room, "d", "m")  # each transaction within the room as read
    # One process both gives back and takes (so it goes with the takers), and its return
    # funds a taker ahead of it.
    mixed = Plan("mixed", minute={"requests": -5, "tokens": 1}, operations=[("update", {"RowKey": "x"}, {})])
    ahead_of_it = [plan(f"a{n:03d}", 1) for n in range(90)]
    assert overshoots(batches_of([*ahead_of_it, mixed]), {**room, "tokens": 1}, "d", "m")


async def test_a_reclaim_that_loses_its_race_funds_no_grant(
    stores: list[TableStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale claim's unclaimed offer comes back in a transaction conditional on its claim
    row (``_reclaim``), which fails if the process claimed at that moment. The cycle
    counted that return as room for its grants and committed the reclaim last, after
    them: a lost race left the minute row over its limit and both the stalled process and
    the one granted in its place holding the same requests, which each then admits (a
    real overspend: bench/scale.py, 1,024 instances, 2,706 admitted of 2,700). Here a
    process stalls with its offer unclaimed, another waits for more, and the stalled one
    claims its offer just as the reclaim commits."""
    limit = 20
    who, table, allocator, now = await allocating_a_minute(stores[0], limit, ["slow", "want"], rate=20.0)
    minute = window_keys(now)[2]
    rows = await partition(stores[0], who)
    assert counts(rows[minute])["requests"] == limit  # (the minute offered out, to both)
    slow_offer = counts(rows[OFFER_PREFIX + "slow"])["minute_requests"]
    assert slow_offer > 0
    # "want" claimed and used all of its offer and waits for more; "slow" stalls (its claim
    # is not written for longer than 1.6 of its report intervals) with its offer unclaimed.
    want = rows[CLAIM_PREFIX + "want"]
    wanted = counts(rows[OFFER_PREFIX + "want"])["minute_requests"]
    await table.update_entity(
        {**want, "minute_claimed": int64(wanted), "waiting": int64(slow_offer), "at": now},
        mode="merge", etag=want.metadata["etag"], match_condition=MatchConditions.IfNotModified,
    )  # fmt: skip
    slow = rows[CLAIM_PREFIX + "slow"]
    await table.update_entity(
        {**slow, "report_s": 0.5, "at": now - timedelta(seconds=5)},
        mode="merge", etag=slow.metadata["etag"], match_condition=MatchConditions.IfNotModified,
    )  # fmt: skip
    raced = False

    async def the_stalled_process_claims_first(table_: Any, operations: Any) -> Any:
        # Just before the transaction that reclaims from "slow", "slow" claims its offer.
        nonlocal raced
        if not raced and any(entity["RowKey"] == CLAIM_PREFIX + "slow" for _, entity, _ in operations):
            raced = True
            current = (await partition(stores[0], who, [CLAIM_PREFIX + "slow"]))[CLAIM_PREFIX + "slow"]
            await table.update_entity(
                {**current, "minute_claimed": int64(slow_offer), "at": datetime.now(UTC)},
                mode="merge", etag=current.metadata["etag"], match_condition=MatchConditions.IfNotModified,
            )  # fmt: skip
        return await submit(table_, operations)

    monkeypatch.setattr(allocation_module, "submit", the_stalled_process_claims_first)
    with contextlib.suppress(Conflict):
        await allocator.cycle_once()
    assert raced
    rows = await partition(stores[0], who)
    assert counts(rows[minute])["requests"] <= limit
    # What the two processes may admit: "slow" its claimed offer, "want" all it was offered.
    held = slow_offer + counts(rows[OFFER_PREFIX + "want"])["minute_requests"]
    assert held <= limit, (slow_offer, counts(rows[OFFER_PREFIX + "want"]))


def test_a_live_keeper_late_by_its_jitter_and_a_lagging_loop_is_not_stale() -> None:
    """A keeper writes its claim every report interval times 0.5-1.5 (jitter); a busy event
    loop adds to that (up to 0.9 s at 1,024 instances on 2 cores, with 2 s intervals).
    Taken for stale, a live keeper is reclaimed just as it claims, and the transaction
    failing ends the allocator's cycle before its grants. Stale is 2 intervals."""
    from sk_core.limits.offers import CLAIM_COUNTS, Row, stale

    now = datetime.now(UTC)

    def written(seconds_ago: float, report: float = 2.0) -> Row:
        extra = {"at": now - timedelta(seconds=seconds_ago), "report_s": report}
        return Row(CLAIM_PREFIX + "p", dict.fromkeys(CLAIM_COUNTS, 0), extra=extra)

    assert not stale(written(1.5 * 2.0 + 0.9), now)  # the longest jitter and the loop's lag
    assert stale(written(2.0 * 2.0 + 0.1), now)
    assert not stale(written(0.9, report=0.5), now)
    assert stale(written(1.1, report=0.5), now)


async def test_an_allocator_with_nothing_to_write_only_renews_its_row_and_keeps_it(
    stores: list[TableStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cycle whose plans change nothing (no credit, no grant, no expiry: a tenant served by
    one instance between its reports) wrote the ``alloc`` row anyway, 10 transactions a
    second per tenant: in a one-instance service, 8 % of its CPU samples under 16
    streams (py-spy, session 15), on the loop its requests share. With nobody waiting (a
    waiting keeper polls just after the cycle the row's time announces) it renews the row
    only when half of its lease is gone, and the row never lapses while it runs."""
    who = tenant()
    auditor, _, _ = await with_claims(stores[0], who, ["p1"])
    allocator = Allocator(auditor, who, "allocator-1", horizon=1.5, cycle=0.1)
    assert await allocator.cycle_once()  # (the first offer)
    assert await allocator.cycle_once()
    transactions = 0

    async def counted(table_: Any, operations: Any) -> Any:
        nonlocal transactions
        transactions += 1
        return await submit(table_, operations)

    lapsed = []
    monkeypatch.setattr(allocation_module, "submit", counted)
    started = auditor.now()
    for _ in range(30):  # 30 cycles, 3 s at least
        assert await allocator.cycle_once()
        alloc = (await partition(stores[0], who, ["alloc"]))["alloc"]
        lapsed += [alloc["until"]] if alloc["until"] <= auditor.now() else []
        await asyncio.sleep(0.1)
    elapsed = (auditor.now() - started).total_seconds()
    assert not lapsed
    # One renewal each ALLOC_SECONDS / 2 (1 s), however long the cycles took; before, 30.
    assert 2 <= transactions <= elapsed / (ALLOC_SECONDS / 2) + 1, (transactions, elapsed)
    assert transactions < 30  # (every cycle wrote before)


async def test_a_first_request_elsewhere_waits_for_what_is_offered_and_unclaimed_not_a_429(
    stores: list[TableStore],
) -> None:
    """Process two serves the tenant's first request, becomes its allocator and offers
    itself most of the minute (its rate after one call is high); it claims the offer only
    at its next sync. Process one's first request waits for a grant, finds no room, and
    was marked dry: "nothing usable elsewhere" counted what claims report unused, not what
    is offered and not yet claimed. Dry sends a request to the window rows, which count
    the offer as taken: ``429 rate_limited`` until the minute's end for a tenant with
    58 of its 60 requests unused (the fifth fresh-clone CI run of session 15)."""
    limit = 60
    who = tenant(requests_per_minute=limit)
    await inside_one_minute(20)
    minute = window_keys(datetime.now(UTC))[2]
    one, two = ledger(stores[0]), ledger(stores[1])
    assert await call(two, who)
    await allocating(two.leases)
    # Until the allocator has offered process two most of the minute.
    offered = 0
    for _ in range(100):
        rows = await partition(stores[0], who)
        offers = [counts(e)["minute_requests"] for k, e in rows.items() if k.startswith(OFFER_PREFIX)]
        offered = sum(offers)
        if offered >= limit // 2:
            break
        await asyncio.sleep(0.05)
    assert offered >= limit // 2, offered
    codes: list[str] = []
    try:
        await asyncio.wait_for(
            one.admit(who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100, function="f",
                      key_id="k"),
            timeout=15,
        )  # fmt: skip
    except LimitExceeded as refused:
        codes.append(f"{refused.code} retry-after {refused.retry_after}")
    assert not codes, codes
    assert window_keys(datetime.now(UTC))[2] == minute
    await close_all([one, two], who)


async def test_an_offer_not_yet_claimed_is_usable_elsewhere_so_a_waiter_is_not_dry(
    stores: list[TableStore],
) -> None:
    """The same at the allocator, one cycle: the minute offered out to two processes, one
    has used all of its offer and waits for one more request, the other has not claimed
    its offer yet. The waiter is not dry (its request would be refused on the rows, which
    count the other's offer as taken); the other is asked to give everything back."""
    who, table, allocator, now = await allocating_a_minute(stores[0], 20, ["idle", "want"], rate=20.0)
    minute = window_keys(now)[2]
    rows = await partition(stores[0], who)
    assert counts(rows[minute])["requests"] == 20  # (the minute offered out, to both)
    idle_offer = counts(rows[OFFER_PREFIX + "idle"])["minute_requests"]
    assert idle_offer > 0
    want = rows[CLAIM_PREFIX + "want"]
    took = counts(rows[OFFER_PREFIX + "want"])["minute_requests"]
    changes = {"minute_claimed": took, "waiting": 1, "lack_requests": 1, "unused_requests": 0}
    await table.update_entity(
        {**want, **{k: int64(v) for k, v in changes.items()}, "at": now}, mode="merge",
        etag=want.metadata["etag"], match_condition=MatchConditions.IfNotModified,
    )  # fmt: skip
    assert await allocator.cycle_once()
    rows = await partition(stores[0], who)
    assert not rows[OFFER_PREFIX + "want"].get("dry"), rows[OFFER_PREFIX + "want"]
    assert counts(rows[OFFER_PREFIX + "idle"])["keep_requests"] == 0  # (all of it comes back)


async def test_an_allocator_whose_cycles_take_longer_than_its_lease_keeps_its_row(
    stores: list[TableStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cycle's ``alloc`` write said "held until this cycle began plus ALLOC_SECONDS". At
    hundreds of instances a cycle (reading every claim and offer, planning, committing
    through a busy partition on a lagging loop) took 1-2 s, so the row lapsed between
    two commits; a waiting process took the allocator over, the old one's commit failed,
    the new one's first cycle (all offers read again) was longer still: for 15 s of a
    256-instance churn run every cycle failed and nothing was granted (bench/scale.py,
    session 16). The row now lasts ALLOC_SECONDS past the commit, plus twice the time
    the last cycle took. Here every read and transaction takes 0.6 s (1.8 s a cycle)."""
    who = tenant()
    auditor, _, _ = await with_claims(stores[0], who, ["p1"], waiting=int64(1), rate=50.0)

    async def slow_query(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.6)
        return await query_partition(*args, **kwargs)

    async def slow_submit(table_: Any, operations: Any) -> Any:
        await asyncio.sleep(0.6)
        return await submit(table_, operations)

    monkeypatch.setattr(allocation_module, "query_partition", slow_query)
    monkeypatch.setattr(allocation_module, "submit", slow_submit)
    allocator = Allocator(auditor, who, "allocator-1", horizon=1.5, cycle=0.1)
    running = asyncio.create_task(allocator.run())
    lapsed, loop = [], asyncio.get_running_loop()
    started = loop.time()
    try:
        while loop.time() - started < 8.0:
            await asyncio.sleep(0.1)
            alloc = (await partition(stores[0], who, ["alloc"]))["alloc"]
            if not allocating_now(alloc, auditor.now()):
                lapsed.append(round(loop.time() - started, 1))
        assert not running.done()
    finally:
        allocator.stop()
        await running
    assert not lapsed, lapsed


async def test_a_first_counted_request_elsewhere_is_not_refused_for_what_is_offered_there(
    stores: list[TableStore],
) -> None:
    """The same with a cached answer, which counts one request and nothing else
    (``count_request``): a process's first count went to the exact path, whose plan reads
    the minute row, where the other process's offer counts as taken, and refused it
    ``rate_limited`` (the cross-process cache test in session 16's full run, Retry-After
    7). As a first admission does, it waits for a grant while an allocator is at work."""
    limit = 60
    who, table, allocator, now = await allocating_a_minute(stores[0], limit, ["two"], rate=60.0)
    minute = window_keys(now)[2]
    rows = await partition(stores[0], who)
    assert counts(rows[minute])["requests"] == limit  # (the whole minute offered to "two")
    offered = counts(rows[OFFER_PREFIX + "two"])["minute_requests"]
    running = asyncio.create_task(allocator.run())
    one = ledger(stores[0])
    try:
        counting = asyncio.create_task(one.count_request(who))
        await asyncio.sleep(0.5)
        assert not counting.done() or counting.exception() is None
        # "two" claims its offer at its next report and, asked to, gives it all back.
        claim = (await partition(stores[0], who, [CLAIM_PREFIX + "two"]))[CLAIM_PREFIX + "two"]
        changes = {"minute_claimed": offered, "minute_back": offered, "unused_requests": 0}
        await table.update_entity(
            {**claim, **{k: int64(v) for k, v in changes.items()}, "at": datetime.now(UTC)}, mode="merge",
            etag=claim.metadata["etag"], match_condition=MatchConditions.IfNotModified,
        )  # fmt: skip
        counted = await asyncio.wait_for(counting, timeout=10)
        assert counted.limit == limit
    finally:
        allocator.stop()
        await running
        await one.aclose()
