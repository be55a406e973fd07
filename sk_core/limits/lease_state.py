"""What a quota lease is made of: its settings, what one process holds of a tenant's
limits (``TenantLease``) with its demand estimate, and the lease and recall rows as
stored in the tenant's usage partition. ``leases.LeaseKeeper`` moves them.

**Crashes:** a lease row whose process stopped renewing it expires after
``SKF_LEASE_TTL_SECONDS`` (30 s; a live process renews well before); the sweep then
charges its whole outstanding budget slice as spent (flagged, ``expired-lease-``
audit row) and releases its slots. A process that cannot reach storage stops admitting
from its lease after half that time, so it never serves on a lease already charged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sk_core.accounts import Tenant
from sk_core.errors import LimitExceeded
from sk_core.limits import policy
from sk_core.limits.rows import (
    INFLIGHT,
    INFLIGHT_FIELDS,
    WINDOW_FIELDS,
    PartitionRows,
)
from sk_core.limits.slices import BudgetSlice, MinuteSlice, Report
from sk_core.storage import etag_of, int64, read_int, update_op

if TYPE_CHECKING:
    pass


LEASE_PREFIX = "lease-"
# The tenant's recall mark (one row in its usage partition, field ``until``): set by an
# exact decision refused while budget sits leased in slices; until then every keeper
# hands its free budget back at its next sync and admits budget only on the exact path.
RECALL = "recall"

@dataclass(frozen=True)
class LeaseSettings:
    """How leases are sized and renewed."""

    report_seconds: float = 2.0  # settled usage reaches the store at least this often
    idle_seconds: float = 3.0  # a lease unused this long gives everything back
    horizon_seconds: float = 4.0  # a grant aims to last this long at the recent rate
    share: float = 0.5  # at most this share of what is left goes to one grant
    ttl_seconds: float = 30.0  # a lease row not renewed this long is expired by the sweep
    # A sync is an optimistic update of rows every holder shares (read ~6 entities, write
    # ~5): two in flight together conflict, so one pool commits at most ~1 / (2 round
    # trips) syncs a second, far below the partition's ~2,000 entities a second. With
    # more holders than this, every holder reports, renews, idles and expires
    # proportionally less often, so the pool sees about holders_per_report /
    # report_seconds syncs a second whatever the number of instances (bench/scale.py).
    holders_per_report: int = 32
    max_stretch: float = 16.0  # ... up to this factor
    # Beyond pool_threshold holders, keepers sync with sub-pools (pools.py): about
    # pool_holders keepers per pool, at most max_pools pools (0: never). Their intervals
    # then stretch only to keep every sync (about entities_per_sync entities read and
    # written) within half of a partition's throughput target, partition_ops_per_s
    # (Azure Table Storage: about 2,000 entities a second for one partition).
    # Sub-pools with more lease holders than this. The holders at a moment are fewer
    # than the instances (idle ones hand back); in bench/scale.py 48 served 64 instances
    # best and 256 worst, 8 the other way round, 24 both near the better (bench/README).
    pool_threshold: int = 24
    pool_holders: int = 4
    # At most 8: pools lend each other capacity (pool_sync._borrow), so a pool is mostly
    # one more rebalancer racing for the window rows; at 256 instances 8 used a median
    # 0.987 of the budget (4 of 19 runs collapsed), 64 0.85-0.97 (bench/README.md).
    max_pools: int = 8
    partition_ops_per_s: float = 2000.0
    entities_per_sync: int = 5
    # Slices granted by one allocator per tenant (allocation.py) rather than taken from
    # shared pool rows (pool_sync.py): bench/README.md, sessions 12 and 13.
    allocated: bool = True


@dataclass
class Demand:
    """Recent demand of one tenant in this process (what the next grant should cover)."""

    admitted: int = 0  # admissions since the last sync
    amount: int = 0  # their reservations
    tokens: int = 0
    peak_inflight: int = 0
    waiting: int = 0  # requests waiting for a sync right now
    rate: float = 0.0  # admissions per second, smoothed
    counted: int = 0  # requests counted without an admission (cache hits) since the last sync
    count_rate: float = 0.0  # those per second, smoothed: the minute slice covers them too
    unit_amount: int = 0  # a typical reservation
    unit_tokens: int = 0
    since: float = field(default_factory=time.monotonic)

    def note(self, amount: int, tokens: int) -> None:
        self.admitted += 1
        self.amount += amount
        self.tokens += tokens
        # Typical sizes, smoothed (1/8 weight to the newest) so one odd call does not
        # resize the next grant.
        self.unit_amount = amount if self.unit_amount == 0 else (self.unit_amount * 7 + amount) // 8
        self.unit_tokens = tokens if self.unit_tokens == 0 else (self.unit_tokens * 7 + tokens) // 8

    def synced_peak(self, inflight: int) -> None:
        """After a sync: the concurrency to size the next one's slots for. Up at once
        (``lease_admit.take``), down by a quarter a sync: sized for the calls in flight
        at one moment, a lull left 14 slots for 64 clients, and the next burst waited
        in ``admit`` for a sync (issue 23, defect 6; bench/README.md, load.py)."""
        self.peak_inflight = max(inflight, self.peak_inflight * 3 // 4)

    def roll(self, now: float) -> None:
        elapsed = max(1e-3, now - self.since)
        self.rate = smoothed(self.rate, self.admitted / elapsed)
        self.count_rate = smoothed(self.count_rate, self.counted / elapsed)
        self.admitted = self.amount = self.tokens = self.counted = 0
        self.since = now


def smoothed(previous: float, observed: float) -> float:
    # Down at once, up smoothed: in a scale-out the first instances take all of the
    # traffic, then a share that falls as others start; a rate that decayed by half a
    # sync kept their grants oversized for many seconds while new instances found
    # nothing left (bench/scale.py). Requests waiting meanwhile are counted apart.
    return observed if previous == 0 or observed < previous else 0.5 * previous + 0.5 * observed


@dataclass
class TenantLease:
    """This process's lease of one tenant's limits (what its lease row says, and more)."""

    tenant: Tenant
    generation: int = 0
    current: BudgetSlice | None = None  # the slice of the current UTC day
    previous: BudgetSlice | None = None  # yesterday's, draining its calls in flight
    minute: MinuteSlice | None = None
    slots: int = 0
    inflight: int = 0
    reported_busy: int = 0  # calls in flight as the in-flight row counts them (leased_in_flight)
    holders: int = 0  # lease rows in the tenant's partition at the last sync (this one included)
    pools: int = 0  # the tenant's sub-pool count as last read (the in-flight row's, or a pool's)
    near_limit: bool = False  # at the last window sync: under two calls of budget a holder
    valid_until: float = 0.0  # monotonic; past it nothing is admitted locally
    exact_until: float = 0.0  # monotonic; a zero grant sends admissions to the exact path
    recalled_until: float = 0.0  # monotonic; the pool recalled leased budget (see RECALL)
    seq: int = 0  # syncs of this lease known to have committed (the row's "seq")
    pending: Snapshot | None = None  # a sync sent whose outcome we have not heard
    granted: tuple[int, int, int] = (0, 0, 0)  # the last grant: free nano-USD, requests, tokens
    renew_after: float = 0.0  # monotonic; no background renewal before
    last_used: float = field(default_factory=time.monotonic)
    demand: Demand = field(default_factory=Demand)
    sync: asyncio.Task[None] | None = None
    contended: asyncio.Event = field(default_factory=asyncio.Event)  # that sync lost an ETag race
    keeper: asyncio.Task[None] | None = None
    stored: bool = False  # the lease row exists (as far as we know)
    # The minute row's stored request count after the last sync (every process's grants
    # counted as used) and the lowest estimate reported this minute: rpm_remaining().
    minute_stored: int = 0
    rpm_floor: tuple[str, int] = ("", 0)

    @property
    def holdback(self) -> tuple[int, int, int, int]:
        """What the sync in flight takes back (budget, requests, tokens, slots), or the
        last one whose outcome is unknown (its answer lost after a commit): until it is
        acknowledged, local admissions use only what it leaves (``lease_admit.take``)."""
        snap = self.pending
        if snap is None:
            return (0, 0, 0, 0)
        free = next((r.free - snap.new_free[id(b)] for b, r in snap.budget if b is self.current), 0)
        minute = snap.new_minute or MinuteSlice("")
        return (
            max(0, free),
            max(0, snap.minute_requests - minute.requests),
            max(0, snap.minute_tokens - minute.tokens),
            max(0, snap.slots - snap.new_slots),
        )

    def rpm_remaining(self, limit: int) -> int:
        """An estimate of the tenant's remaining requests this minute, for the RateLimit
        headers: what the store had not leased out at the last sync plus what is left of
        this process's slice (limit - stored count at the last sync - admissions since).
        Other processes' unused slices count as used, so it errs low, by their size at
        most; it never rises within the minute (a later sync may find slices given back).
        """
        minute = self.minute
        if minute is None:
            return 0
        estimate = max(0, limit - self.minute_stored + minute.requests)
        key, floor = self.rpm_floor
        if key == minute.minute:
            estimate = min(estimate, floor)
        self.rpm_floor = (minute.minute, estimate)
        return estimate

    def slice_for(self, day: str) -> BudgetSlice | None:
        for budget in (self.current, self.previous):
            if budget is not None and budget.day == day:
                return budget
        return None

    @property
    def empty(self) -> bool:
        """Nothing leased, nothing in flight, nothing to report."""
        slices = [s for s in (self.current, self.previous) if s is not None]
        return (
            self.slots == 0
            and self.inflight == 0
            and all(s.outstanding == 0 and s.held == 0 and not s.unreported for s in slices)
        )


@dataclass
class Snapshot:
    """The local numbers a sync was planned on (local activity goes on meanwhile)."""

    budget: list[tuple[BudgetSlice, Report]]  # each slice and what the sync reports of it
    new_free: dict[int, int]
    minute: MinuteSlice | None
    minute_requests: int
    minute_tokens: int
    new_minute: MinuteSlice | None
    minute_stored: int  # the minute row's request count once this sync commits
    slots: int
    new_slots: int
    busy: int
    lost: bool


def lease_entity(
    tenant_id: str,
    row_key: str,
    lease: TenantLease,
    amounts: dict[int, int],
    slots: int,
    busy: int,
    minute: str,
    minute_requests: int,
    now: datetime,
    ttl_seconds: float,
) -> dict[str, Any]:
    """A process's lease row as a sync writes it (``amounts``: each slice's outstanding
    nano-USD after the sync, by ``id`` of the slice)."""
    current, previous = lease.current, lease.previous
    assert current is not None  # a kept lease has today's slice
    return {
        "PartitionKey": tenant_id,
        "RowKey": row_key,
        "day": current.day,
        "month": current.month,
        "amount_nano": int64(amounts[id(current)]),
        "prev_day": previous.day if previous else "",
        "prev_month": previous.month if previous else "",
        "prev_amount_nano": int64(amounts[id(previous)] if previous else 0),
        "slots": int64(slots),
        "inflight": int64(busy),
        # The minute's requests this process holds unused after the sync: counted in the
        # minute row as used, told apart by the usage read model.
        "minute": minute,
        "minute_requests": int64(minute_requests),
        # Which of this process's syncs wrote the row (see LeaseKeeper._acknowledge).
        "seq": int64(lease.seq + 1),
        "expires_at": now + timedelta(seconds=ttl_seconds),
    }


def lease_in_flight(entity: Any) -> dict[str, int]:
    """What a lease row adds to its tenant's in-flight row besides ``count`` (its slots)."""
    return {
        "leased_slots": read_int(entity.get("slots")),
        "leased_in_flight": read_int(entity.get("inflight")),
        "leases": 1,
    }


def lease_amounts(entity: Any) -> list[tuple[str, str, int]]:
    """The budget slices a lease row holds: (day, month, outstanding nano-USD)."""
    slices = [(str(entity["day"]), str(entity["month"]), read_int(entity.get("amount_nano")))]
    if entity.get("prev_day"):
        previous = read_int(entity.get("prev_amount_nano"))
        slices.append((str(entity["prev_day"]), str(entity["prev_month"]), previous))
    return [s for s in slices if s[2] > 0]


def recall_operation(rows: PartitionRows, now: datetime, seconds: float) -> Any | None:
    """The write that marks the tenant's pool recalled for ``seconds`` (see ``RECALL``);
    None when a mark set recently still covers most of that time."""
    stored = rows.entities.get(RECALL)
    until = now + timedelta(seconds=seconds)
    if stored is not None and stored["until"] - now > timedelta(seconds=seconds / 2):
        return None
    entity = {"PartitionKey": rows.tenant_id, "RowKey": RECALL, "until": until}
    return ("create", entity, {}) if stored is None else update_op(entity, etag_of(stored))


def leased_out(rows: PartitionRows, refused: LimitExceeded, now: datetime) -> bool:
    """A ``budget_held`` refusal while some of the budget sits leased in slices: worth
    a recall (``recall_operation``)."""
    if refused.code != "budget_held":
        return False
    day, month, _ = policy.window_keys(now)
    if rows.counter(INFLIGHT, INFLIGHT_FIELDS)["leases"] > LeaseSettings().holders_per_report:
        # Many holders: their grants are thin already, and a recall would send all of
        # them to per-request decisions on the shared rows at once (bench/scale.py).
        return False
    return any(rows.counter(key, WINDOW_FIELDS)["leased_nano"] > 0 for key in (day, month))


def leased_requests(entities: Iterable[Any], minute: str) -> int:
    """Requests of ``minute`` leased to processes and unused at their last sync, summed
    over a tenant's lease rows (the minute row counts them as used)."""
    return sum(
        read_int(e.get("minute_requests"))
        for e in entities
        if str(e.get("RowKey", "")).startswith(LEASE_PREFIX) and e.get("minute") == minute
    )
