"""Sub-pools: a tenant's pool split in rows of its own partition, so many holders sync apart.

With one pool, every lease sync rewrites the tenant's day, month, minute and in-flight
rows: two syncs in flight together conflict, so a pool commits about one sync per two
round trips (~60 a second at 8 ms), whatever the partition could serve. Beyond
``LeaseSettings.holders_per_report`` holders, keepers therefore sync with a **sub-pool**
instead: a row ``pool-<k>`` of the same partition (``k``: a stable hash of the process
id, over a power-of-two number of pools that grows with the holders), holding capacity
moved out of the window rows:

    free_nano (for ``day``/``month``), minute_requests / minute_tokens (for ``minute``),
    slots; and what its keepers reported since its last flush: spent_nano, requests,
    prompt/completion tokens, overrun_nano, busy (calls in flight on leases), leases
    (lease rows created minus deleted); holders (its keepers now).

The window rows count a pool's ``free_nano`` and ``spent_nano`` as ``leased_nano``, its
minute capacity as used and its slots as in flight (``count``, ``leased_slots``), just as
they count a lease's slices. So every move keeps the store's invariant, with exact
arithmetic in one ETag-conditional transaction of one partition:

- a **pool sync** (most syncs) moves between a lease row and its pool row only (2 rows
  written, 3 read): capacity from the pool to the lease and back, the lease's settled
  spend into the pool's ``spent_nano`` (still counted as leased: nothing changes in the
  window rows);
- a **rebalance** (a sync the pool cannot serve and no other pool can lend to,
  a new day or minute, its flush due, a recall, its last keeper leaving) is the
  one-pool sync on the window rows plus this pool's **flush** (its spent moves from
  leased to spent, its free and unused capacity go back) and **refill** (a new free part
  sized for its holders). Its flush falls due every fourth report interval, so the
  window rows see about pools / (4 x report_seconds) of those a second; but every
  keeper of a pool that is due (or dry, with no lender) rebalances, and under load most
  of them lose the race (bench/README.md): hence few pools (``max_pools``);
- a **loan** (``pool_sync._borrow``): a pool sync its pool cannot serve (dry, or the
  pool not created yet because the count grew) first takes half of another pool's
  unused capacity (the pool it split from, or the richer of that and one at random), in
  the same transaction: two pool rows and the lease row, no window row. Only when no
  pool can lend does the sync become a rebalance;
- a **dry mark**: a rebalance whose refill leaves its pool without one more call's
  budget (the window rows were at the tenant's budget) marks the pool dry for a report
  interval. Until then a keeper of that pool whose sync it cannot serve, with no
  lender, syncs with the pool alone (it gives what it has) and its request is decided
  on the exact path, instead of one more rebalance racing for the window rows to find
  them empty. A flush that falls due, a new minute or a recall still rebalance;
- a pool no keeper touched for ``ttl_seconds`` (its keepers gone, or the pool count
  shrank) is flushed by the sweep (``sweep.flush_pools``): a pool's free part belongs
  to no process, so returning it is exact, not a charge.

A recall (``lease_state.RECALL``) is honoured across pools: while it lasts every sync is
a rebalance, so each keeper's next sync returns its free budget and its pool's to the
window rows, where the exact path finds them.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sk_core.limits import policy
from sk_core.limits.rows import (
    INFLIGHT,
    INFLIGHT_FIELDS,
    MINUTE_FIELDS,
    WINDOW_FIELDS,
    CounterRow,
    PartitionRows,
)
from sk_core.storage import etag_of, int64, read_int, update_op

if TYPE_CHECKING:
    from sk_core.limits.lease_state import LeaseSettings, TenantLease

POOL_PREFIX = "pool-"
POOL_COUNTS = (
    "free_nano",
    "spent_nano",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "overrun_nano",
    "minute_requests",
    "minute_tokens",
    "slots",
    "busy",
    "leases",
    "holders",
)
# The window-row fields a pool's reports move into at its flush.
_REPORTED = (
    ("spent_nano", "spent_nano"),
    ("requests", "requests"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("overrun_nano", "overrun_nano"),
)


def pool_count(holders: int, *, threshold: int, per_pool: int, most: int) -> int:
    """How many sub-pools a tenant with ``holders`` lease holders uses: 0 (the one pool
    of window rows) up to ``threshold`` holders, then a power of two of about
    ``holders / per_pool``. Powers of two: when the count doubles each pool splits in
    two (``hash % 2n`` is ``hash % n`` or that plus n), no pool is left behind."""
    if holders <= threshold or most <= 0:
        return 0
    wanted = max(2, math.ceil(holders / max(1, per_pool)))
    return min(1 << (most.bit_length() - 1), 1 << math.ceil(math.log2(wanted)))


def store_pool_count(settings: LeaseSettings, lease: TenantLease, inflight: CounterRow) -> None:
    """The sub-pool count a window sync stores in the in-flight row (and the keeper then
    uses): grown for the holders, never shrunk while anyone holds a lease (a pool left
    behind would hold capacity no keeper syncs with until the sweep), none again with
    the last holder."""
    stored = max(lease.pools, inflight["pools"])
    holders = inflight["leases"]
    wanted = pool_count(
        holders, threshold=settings.pool_threshold, per_pool=settings.pool_holders, most=settings.max_pools
    )
    count = max(stored, wanted) if holders > 0 else 0
    if count != inflight["pools"]:
        inflight.add("pools", count - inflight["pools"])
    lease.pools = count


def pool_key(process_id: str, pools: int) -> str:
    """The sub-pool of a process (stable: a hash of its id)."""
    return f"{POOL_PREFIX}{zlib.crc32(process_id.encode()) % pools:03d}"


@dataclass
class PoolRow:
    """A sub-pool row as read (ETag kept), changed in memory, written back conditionally."""

    tenant_id: str
    key: str
    etag: str | None
    counts: dict[str, int]
    day: str = ""
    month: str = ""
    minute: str = ""
    flushed_at: datetime | None = None
    pools: int = 0  # the tenant's sub-pool count when it was last refilled
    # Set by a rebalance whose refill left the pool without one more call's budget (the
    # window rows were at the tenant's budget): until then its keepers do not rebalance
    # when it cannot serve them (``mark_dry``).
    dry_until: datetime | None = None

    @classmethod
    def read(cls, rows: PartitionRows, key: str) -> PoolRow:
        entity = rows.entities.get(key)
        if entity is None:
            return cls(rows.tenant_id, key, None, dict.fromkeys(POOL_COUNTS, 0))
        return cls(
            rows.tenant_id,
            key,
            etag_of(entity),
            {name: read_int(entity.get(name)) for name in POOL_COUNTS},
            str(entity.get("day") or ""),
            str(entity.get("month") or ""),
            str(entity.get("minute") or ""),
            entity.get("flushed_at"),
            read_int(entity.get("pools")),
            entity.get("dry_until"),
        )

    def __getitem__(self, name: str) -> int:
        return self.counts[name]

    def add(self, name: str, amount: int) -> None:
        self.counts[name] += amount

    def serves(self, day: str, minute: str) -> bool:
        """Holds capacity of this day and minute (a pool sync can use it)."""
        return self.etag is not None and self.day == day and self.minute == minute

    def dry(self, now: datetime) -> bool:
        """A rebalance found the window rows at the tenant's budget a moment ago."""
        return self.dry_until is not None and now < self.dry_until

    def mark_dry(self, *, budget_unit: int, now: datetime, seconds: float) -> None:
        """After a refill: dry for ``seconds`` when it left less than one call's budget
        (``budget_unit``; 0: budget not asked for, never dry).

        Budget only. Marking pools dry for the minute's requests too (at 256 instances)
        left fewer requests waiting, but stranded requests in pools nobody rebalanced:
        the RPM admitted fell to 1,890 of 2,160 in one run of twelve, and with tokens and
        slots marked as well to ~1,530 in two of four (bench/README.md).
        """
        dry = budget_unit > 0 and self.counts["free_nano"] < budget_unit
        self.dry_until = now + timedelta(seconds=seconds) if dry else None

    def flush_due(self, now: datetime, seconds: float) -> bool:
        return self.flushed_at is None or (now - self.flushed_at).total_seconds() >= seconds

    def flush(self, rows: PartitionRows, minute_key: str) -> None:
        """Move everything the pool holds into the window rows (which ``rows`` must hold:
        the pool's day and month, the current minute, the in-flight row)."""
        counts = self.counts
        if self.day:
            for key in (self.day, self.month):
                window = rows.counter(key, WINDOW_FIELDS)
                window.add("leased_nano", -(counts["free_nano"] + counts["spent_nano"]))
                for field, target in _REPORTED:
                    window.add(target, counts[field])
        if self.minute == minute_key:
            # Unused capacity of the current minute goes back; an older minute's is spent
            # (its row counts it as used, and that minute is over).
            minute = rows.counter(minute_key, MINUTE_FIELDS)
            minute.add("requests", -counts["minute_requests"])
            minute.add("tokens", -counts["minute_tokens"])
        inflight = rows.counter(INFLIGHT, INFLIGHT_FIELDS)
        inflight.add("count", -counts["slots"])
        inflight.add("leased_slots", -counts["slots"])
        inflight.add("leased_in_flight", counts["busy"])
        inflight.add("leases", counts["leases"])
        for name in POOL_COUNTS:
            if name != "holders":
                counts[name] = 0

    def refill(
        self,
        rows: PartitionRows,
        keys: tuple[str, str, str],
        *,
        budget_nano: int,
        requests: int,
        tokens: int,
        slots: int,
    ) -> None:
        """Move capacity from the window rows into the (flushed) pool."""
        day, month, minute_key = keys
        self.day, self.month, self.minute = day, month, minute_key
        for key in (day, month):
            rows.counter(key, WINDOW_FIELDS).add("leased_nano", budget_nano)
        minute = rows.counter(minute_key, MINUTE_FIELDS)
        minute.add("requests", requests)
        minute.add("tokens", tokens)
        inflight = rows.counter(INFLIGHT, INFLIGHT_FIELDS)
        inflight.add("count", slots)
        inflight.add("leased_slots", slots)
        self.counts.update(free_nano=budget_nano, minute_requests=requests, minute_tokens=tokens, slots=slots)

    def operation(
        self, now: datetime, ttl_seconds: float, *, flushed: bool
    ) -> tuple[str, dict[str, Any], dict[str, Any]]:
        if flushed:
            self.flushed_at = now
        entity: dict[str, Any] = {
            "PartitionKey": self.tenant_id,
            "RowKey": self.key,
            "day": self.day,
            "month": self.month,
            "minute": self.minute,
            "pools": self.pools,
            "dry_until": self.dry_until or now,
            **{name: int64(value) for name, value in self.counts.items()},
            "flushed_at": self.flushed_at or now,
            # The sweep flushes a pool nobody touched this long (see sweep.flush_pools).
            "expires_at": now + timedelta(seconds=ttl_seconds),
        }
        return ("create", entity, {}) if self.etag is None else update_op(entity, self.etag)


def room(rows: PartitionRows, tenant_limits: Any, keys: tuple[str, str, str]) -> tuple[int, int, int, int]:
    """What is left in the window rows as planned so far: budget, requests, tokens, slots."""
    day, month, minute_key = keys
    day_row = rows.counter(day, WINDOW_FIELDS)
    month_row = rows.counter(month, WINDOW_FIELDS)
    budget = min(
        policy.remaining_budget(limit, row["spent_nano"], row["held_nano"] + row["leased_nano"])
        for limit, row in (
            (tenant_limits.daily_budget_nano, day_row),
            (tenant_limits.monthly_budget_nano, month_row),
        )
    )
    minute = rows.counter(minute_key, MINUTE_FIELDS)
    inflight = rows.counter(INFLIGHT, INFLIGHT_FIELDS)
    return (
        budget,
        tenant_limits.requests_per_minute - minute["requests"],
        tenant_limits.tokens_per_minute - minute["tokens"],
        tenant_limits.max_concurrent - inflight["count"],
    )
