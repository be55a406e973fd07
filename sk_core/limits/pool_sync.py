"""A lease sync through a sub-pool (``pools.py``): the pool sync, and the rebalance hook.

``plan_pool_sync`` plans a sync that touches only the keeper's lease row and its pool
row (and, for a loan, the lending pool's row: ``_borrow``), or answers None when no pool
can serve it; the keeper then plans the one-pool
sync on the window rows (``LeaseKeeper._plan``) with a ``PoolHook``, which flushes the
pool into the window rows before the grant is sized and refills it after.
"""

from __future__ import annotations

import math
import random
import time
from typing import TYPE_CHECKING, Any

from sk_core.limits import policy
from sk_core.limits.lease_state import RECALL, Snapshot, lease_entity
from sk_core.limits.pools import POOL_PREFIX, PoolRow, pool_key, room
from sk_core.limits.rows import INFLIGHT, PartitionRows
from sk_core.limits.slices import BudgetSlice, MinuteSlice, grant
from sk_core.storage import delete_op, etag_of, query_partition, read_int, update_op

if TYPE_CHECKING:
    from sk_core.limits.lease_state import TenantLease
    from sk_core.limits.leases import LeaseKeeper


class PoolHook:
    """What a rebalance adds to the one-pool sync: the pool's flush and refill."""

    def __init__(self, keeper: LeaseKeeper, key: str, pools: int) -> None:
        self.keeper = keeper
        self.key = key
        self.pools = pools
        self.pool: PoolRow | None = None

    async def prepare(self, table: Any, rows: PartitionRows, minute_key: str) -> None:
        """Flush the pool (read with ``rows``) into the window rows."""
        pool = self.pool = PoolRow.read(rows, self.key)
        missing = [k for k in (pool.day, pool.month) if k and k not in rows.entities]
        if missing:  # a pool of an earlier day (rare): its window rows too
            rows.entities.update(await query_partition(table, rows.tenant_id, missing))
        pool.flush(rows, minute_key)

    def finish(
        self,
        rows: PartitionRows,
        lease: TenantLease,
        keys: tuple[str, str, str],
        joined: int,
        *,
        budget_ok: bool,
        unit: tuple[int, int, int],
        wanted: tuple[int, int, int],
    ) -> Any:
        """Refill the pool for its holders from what the window rows have left; the write."""
        pool = self.pool
        assert pool is not None  # prepare() ran
        pool.pools = self.keeper.pools(lease)  # as this sync stores it (keepers learn it here)
        pool.add("holders", joined)
        # Its holders: the tenant's spread evenly by the hash (the pool's own count misses
        # keepers that joined before the tenant had pools, or under another pool count).
        holders = max(pool["holders"], math.ceil(lease.holders / self.pools))
        budget, requests, tokens, slots = room(rows, lease.tenant.limits, keys)
        settings = self.keeper.settings
        # Each pool may take a share of what is left that shrinks with the pool count, so
        # the pools of one tenant spread it and the last of it stays with the window rows.
        share = min(1.0, 2 * settings.share / self.pools)
        # Enough for four syncs of each holder, this keeper's included (a lone keeper then
        # renews from its pool, not from the window rows; every rebalance races for them).
        others = 4 * holders
        pool.refill(
            rows,
            keys,
            budget_nano=grant(available=budget, demand=others * wanted[0], unit=unit[0], share=share)
            if budget_ok
            else 0,
            requests=grant(available=requests, demand=others * wanted[1], unit=1, share=share),
            tokens=grant(available=tokens, demand=others * wanted[2], unit=unit[2], share=share),
            slots=grant(available=slots, demand=2 * others, unit=1, share=share),
        )
        now = self.keeper.ledger_now()
        pool.mark_dry(
            budget_unit=unit[0] if budget_ok else 0, now=now, seconds=self.keeper.report_interval(lease)
        )
        return pool.operation(now, self.keeper.pool_ttl(lease), flushed=True)


async def first_read(
    keeper: LeaseKeeper, table: Any, tenant_id: str, lease: TenantLease
) -> dict[str, Any] | None:
    """The first sync of a lease: the window rows, the recall mark and every sub-pool
    this process may belong to (one per power of two), in one query; the holders (the
    in-flight row's ``leases``) then choose the pool. None: not a first sync."""
    settings = keeper.settings
    if lease.stored or lease.seq or lease.pending is not None or settings.max_pools <= 0:
        return None
    day, month, minute_key = policy.window_keys(keeper.ledger_now())
    candidates = [pool_key(keeper.process_id, 1 << i) for i in range(1, settings.max_pools.bit_length())]
    keys = list(dict.fromkeys([day, month, minute_key, INFLIGHT, RECALL, keeper.row_key, *candidates]))
    found = await query_partition(table, tenant_id, keys)
    stored = found.get(INFLIGHT, {})
    lease.holders = read_int(stored.get("leases"))
    lease.pools = read_int(stored.get("pools"))
    return found


async def plan_pool_sync(
    keeper: LeaseKeeper,
    table: Any,
    tenant_id: str,
    lease: TenantLease,
    key: str,
    prefetched: dict[str, Any] | None = None,
) -> tuple[list[Any], Snapshot] | None:
    """A sync between the lease row and its pool row; None: the pool cannot serve it."""
    now = keeper.ledger_now()
    day, month, minute_key = policy.window_keys(now)
    found = (
        await query_partition(table, tenant_id, [key, keeper.row_key, RECALL])
        if prefetched is None
        else prefetched
    )
    rows = PartitionRows(tenant_id, found)
    stored = rows.entities.get(keeper.row_key)
    keeper.caught_up(lease, stored)
    recall = rows.entities.get(RECALL)
    recall_left = (recall["until"] - now).total_seconds() if recall is not None else 0.0
    if recall_left > 0:
        lease.recalled_until = time.monotonic() + recall_left
    pool = PoolRow.read(rows, key)
    # The count may have grown since this keeper last read the in-flight row: the pool
    # was refilled under it, and the keeper's next sync goes to its pool of that count.
    lease.pools = max(lease.pools, pool.pools)
    current = lease.current
    # A pool not created yet (the pool count grew) is made by a loan from the pool it
    # split from (``_borrow``), not by a rebalance.
    missing = pool.etag is None
    if (
        (stored is None and lease.stored)  # expired at the store: the full sync starts anew
        or lease.previous is not None
        or (current is not None and current.day != day)
        or (not missing and not pool.serves(day, minute_key))
        # Flushed every fourth report interval: the window rows see pools / (4 x interval)
        # rebalances a second, and usage reaches them that much later (a bound).
        or (not missing and pool.flush_due(now, 4 * keeper.report_interval(lease)))
        # A recall: every sync hands its free budget and its pool's back to the window
        # rows, where the exact path finds them.
        or recall_left > 0
    ):
        return None
    settings = keeper.settings
    idle = keeper.closing or keeper.idle(lease)
    if current is None:
        current = lease.current = BudgetSlice(day=day, month=month)
    demand = lease.demand
    demand.roll(time.monotonic())
    horizon = settings.horizon_seconds * keeper.stretch(lease)
    expected = max(demand.rate * horizon, float(demand.waiting), float(demand.peak_inflight))
    unit, token_unit = max(1, demand.unit_amount), max(1, demand.unit_tokens)
    same_minute = lease.minute is not None and lease.minute.minute == minute_key
    unused_requests = lease.minute.requests if same_minute and lease.minute else 0
    unused_tokens = lease.minute.tokens if same_minute and lease.minute else 0
    wanted_free = 0 if idle else max(int(expected * unit), 2 * unit)
    wanted_requests = 0 if idle else int(expected + demand.count_rate * horizon) + 1
    wanted_tokens = 0 if idle else int((expected + 1) * token_unit)
    wanted_slots = (
        lease.inflight if idle else max(demand.peak_inflight * 2, lease.inflight + demand.waiting + 1, 2)
    )
    # The pool gives what it has up to what is wanted (a buffer, refilled at its next
    # rebalance for the demand then). What it lacks of one more call's worth, by field,
    # another pool lends (``_borrow``), or it rebalances.
    def held(current: BudgetSlice) -> dict[str, int]:
        """What the pool and this lease hold together, of each field a pool lends."""
        return {
            "free_nano": pool["free_nano"] + current.free,
            "minute_requests": pool["minute_requests"] + unused_requests,
            "minute_tokens": pool["minute_tokens"] + unused_tokens,
            "slots": pool["slots"] + lease.slots,
        }

    one_more = 0 if idle else demand.waiting + 1
    needed = {
        "free_nano": 2 * unit if wanted_free else 0,
        "minute_requests": one_more,
        "minute_tokens": one_more * token_unit,
        "slots": lease.inflight + one_more,
    }
    have = held(current)
    lender = None
    if missing or any(needed[name] > have[name] for name in needed):
        short = {name: needed[name] - have[name] for name in needed}
        lender = await _borrow(keeper, table, tenant_id, lease, pool, (day, month, minute_key), short)
        if lender is None and pool.dry(now):
            # A rebalance found the window rows without budget for this pool a moment ago
            # (``PoolHook.finish``): the tenant is at its budget's end, where a call needs
            # budget they do not have. The pool gives what it has, and a request it does
            # not cover is decided on the exact path. Every keeper of a dry pool
            # rebalancing instead raced for the window rows to find them empty: at 256
            # instances requests waited seconds on those syncs. (Whatever this sync lacks:
            # honoured only for syncs short of budget, those short of slots rebalanced as
            # before, and one run of three fell to 0.89 of the budget; bench/README.md.)
            lender = pool
        if lender is None:
            return None  # a rebalance refills the pool (or finds the tenant near its limit)
        have = held(current)
    # Never below zero: a slice overrun by a provider (free < 0) with a dry pool would
    # otherwise leave a negative amount on the lease row, which a row deleted with the
    # lease would drop from the sums; the debt goes to the pool, flushed as any other.
    wanted_free = max(0, min(wanted_free, have["free_nano"]))
    wanted_requests = min(wanted_requests, have["minute_requests"])
    wanted_tokens = min(wanted_tokens, have["minute_tokens"])
    wanted_slots = min(wanted_slots, have["slots"])

    report = current.report()
    pool.add("free_nano", current.free - wanted_free)
    for field in ("spent", "requests", "prompt_tokens", "completion_tokens", "overrun"):
        pool.add(field if field not in ("spent", "overrun") else f"{field}_nano", getattr(report, field))
    pool.add("minute_requests", unused_requests - wanted_requests)
    pool.add("minute_tokens", unused_tokens - wanted_tokens)
    new_slots = max(lease.inflight, wanted_slots)
    pool.add("slots", lease.slots - new_slots)
    busy = lease.inflight
    pool.add("busy", busy - lease.reported_busy)
    demand.synced_peak(lease.inflight)
    amount = current.held + wanted_free
    keep = new_slots > 0 or amount > 0 or lease.inflight > 0
    joined = int(keep and stored is None) - int(not keep and stored is not None)
    pool.add("leases", joined)
    pool.add("holders", joined)
    if not keep and pool["holders"] <= 0 and lease.holders <= keeper.pools(lease):
        return None  # the pool's last keeper leaves: a rebalance empties the pool
    # (A pool created by a loan counts as flushed now: it holds nothing reported yet.)
    operations = [pool.operation(now, keeper.pool_ttl(lease), flushed=missing)]
    if lender is not None and lender is not pool:
        operations.append(lender.operation(now, keeper.pool_ttl(lease), flushed=False))
    if keep:
        entity = lease_entity(
            tenant_id,
            keeper.row_key,
            lease,
            {id(current): amount},
            new_slots,
            busy,
            minute_key,
            wanted_requests,
            now,
            keeper.ttl(lease),
        )
        operations.append(("create", entity, {}) if stored is None else update_op(entity, etag_of(stored)))
    elif stored is not None:
        operations.append(delete_op({"PartitionKey": tenant_id, "RowKey": keeper.row_key}, etag_of(stored)))
    return operations, Snapshot(
        budget=[(current, report)],
        new_free={id(current): wanted_free},
        minute=lease.minute,
        minute_requests=unused_requests,
        minute_tokens=unused_tokens,
        new_minute=MinuteSlice(minute_key, wanted_requests, wanted_tokens),
        # The minute row is not read here: the last count known (this minute), or none
        # (RateLimit-Remaining is then this slice alone: low, never above the truth).
        minute_stored=lease.minute_stored if same_minute else lease.tenant.limits.requests_per_minute,
        slots=lease.slots,
        new_slots=new_slots,
        busy=busy,
        lost=False,
    )


# What a pool may lend another: capacity it holds unused for its keepers.
_LENT = ("free_nano", "minute_requests", "minute_tokens", "slots")


async def _borrow(
    keeper: LeaseKeeper,
    table: Any,
    tenant_id: str,
    lease: TenantLease,
    pool: PoolRow,
    keys: tuple[str, str, str],
    short: dict[str, int],
) -> PoolRow | None:
    """Move capacity into ``pool`` from another pool of the tenant, for a pool sync it
    cannot serve (short of one more call in the fields ``short`` says, or not created
    yet): half of what the other pool holds unused of each field it lacks, when that
    covers the lack. Returns the lender (written in the same transaction: both rows are
    ETag-conditional), ``pool`` itself when nothing had to move (a pool created empty),
    or None: a rebalance decides.

    Why: a rebalance writes the window rows every pool shares, and those commit about one
    write per two round trips between all of them. When the pool count doubles, half the
    keepers move to pools not created yet; near the end of a budget, pools run dry while
    others hold capacity and the window rows have none left. Either way most syncs became
    rebalances, racing for the window rows and finding nothing there (bench/scale.py at
    256 instances: 0.6-0.9 of the budget used, most requests waiting on syncs). A loan
    touches two pool rows and no window row; it is exact because the window rows count
    every pool's holdings alike (leased budget, used requests and tokens, slots).
    """
    day, _, minute_key = keys
    pools = keeper.pools(lease)
    if pool.etag is None:
        pool.day, pool.month, pool.minute = keys
        pool.pools = pools
    lacking = [name for name in _LENT if short.get(name, 0) > 0]
    if not lacking:
        return pool  # a pool not created yet, and nothing needed from it (a hand-back)
    if pools < 2:
        return None
    index = int(pool.key.removeprefix(POOL_PREFIX))
    # The pool this one split from or into (where a new pool's capacity sits), and one
    # other at random: the richer of the two lends (two random choices spread the loans).
    half = pools >> 1
    sibling = index - half if index >= half else index + half
    other = random.randrange(pools - 1)
    other += other >= index
    names = list(dict.fromkeys(f"{POOL_PREFIX}{i:03d}" for i in (sibling, other)))
    rows = PartitionRows(tenant_id, await query_partition(table, tenant_id, names))
    lenders = [
        candidate
        for candidate in (PoolRow.read(rows, name) for name in names)
        if candidate.serves(day, minute_key) and all(candidate[n] // 2 >= short[n] for n in lacking)
    ]
    if not lenders:
        return None
    lender = max(lenders, key=lambda candidate: [candidate[n] for n in lacking])
    for name in lacking:
        moved = lender[name] // 2
        lender.add(name, -moved)
        pool.add(name, moved)
    return lender
