"""The request path of a quota lease: admit or count from the slices in memory, no I/O;
and how long a request waits for a renewal (``renewed``).

``LeaseKeeper`` (``leases.py``) calls these on a tenant's lease; None sends it to a
sync, or to the exact per-request path.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from sk_core.errors import LimitExceeded, RateState
from sk_core.limits import policy
from sk_core.limits.holds import Hold
from sk_core.limits.lease_state import TenantLease
from sk_core.pricing import Price


def take(
    now: datetime, lease: TenantLease, price: Price, prompt: int, requested: int, least: int | None = None
) -> Hold | None:
    """Admit one call from the lease's slices, or None (they cannot: sync or decide exactly).
    The whole answer, or with ``least`` an answer clamped to what the slices pay for, down
    to ``least`` tokens (allocated leases, when the allocator says no more is coming)."""
    monotonic = time.monotonic()
    if monotonic >= lease.valid_until or monotonic < lease.recalled_until:
        return None
    day, month, minute_key = policy.window_keys(now)
    budget, minute = lease.current, lease.minute
    if budget is None or budget.day != day or minute is None or minute.minute != minute_key:
        return None
    limits = lease.tenant.limits
    # A sync in flight that shrinks the slices: only what it leaves (``holdback``).
    back_free, back_requests, back_tokens, back_slots = lease.holdback
    free, requests = budget.free - back_free, minute.requests - back_requests
    tokens, slots = minute.tokens - back_tokens, lease.slots - lease.inflight - back_slots
    room = policy.Room(
        slots=slots,
        requests=requests,
        tokens=tokens,
        budget_nano=free,
        unheld_nano=free,
        requests_used=limits.requests_per_minute - requests,
    )
    try:
        # The exact path's rules on this slice. The whole answer or nothing: a sync
        # may bring more, and near the limit the exact path clamps.
        granted = policy.admit_within(
            room,
            price=price,
            prompt_tokens_bound=prompt,
            requested_max_tokens=requested,
            min_answer_tokens=requested if least is None else min(requested, least),
            rpm_limit=limits.requests_per_minute,
            now=now,
        )
    except LimitExceeded:
        return None
    budget.take(granted.amount_nano)
    minute.take(granted.reserved_tokens)
    lease.inflight += 1
    lease.demand.note(granted.amount_nano, granted.reserved_tokens)
    lease.demand.peak_inflight = max(lease.demand.peak_inflight, lease.inflight)
    return Hold(
        tenant_id=lease.tenant.id,
        request_id=uuid.uuid4().hex,
        amount_nano=granted.amount_nano,
        max_tokens=granted.max_tokens,
        reserved_tokens=granted.reserved_tokens,
        day=day,
        month=month,
        minute=minute_key,
        rpm_limit=granted.rpm_limit,
        # The tenant's remaining estimate, never above the truth by more than the
        # lease lag (the stored count at the last sync minus what this process took).
        rpm_remaining=lease.rpm_remaining(granted.rpm_limit),
        rpm_reset=granted.rpm_reset,
        lease=lease.generation,
    )


def as_refused(
    counters: policy.Counters, lease: TenantLease | None, dry_slots: bool, mine: tuple[int, int, int, int]
) -> policy.Counters:
    """The rows a waiting request is refused on (allocated leases): what this process holds
    unused, or has in transit (``mine``: budget, requests, tokens, slots offered and not
    claimed, or given back and not credited), is not used; slots (leased ones count as in
    flight) only when the allocator says none are left (``dry_slots``)."""
    budget, minute = (lease.current, lease.minute) if lease is not None else (None, None)
    free = max(0, budget.free) if budget is not None else 0
    return replace(
        counters,
        inflight=counters.inflight - max(0, lease.slots - lease.inflight) - mine[3]
        if dry_slots and lease is not None
        else 0,
        minute_requests=counters.minute_requests - (max(0, minute.requests) if minute else 0) - mine[1],
        minute_tokens=counters.minute_tokens - (max(0, minute.tokens) if minute else 0) - mine[2],
        day_held_nano=max(0, counters.day_held_nano - free - mine[0]),
        month_held_nano=max(0, counters.month_held_nano - free - mine[0]),
    )


def count(now: datetime, lease: TenantLease) -> RateState | None:
    """Count one request (no tokens, budget or slot) from the minute slice, or None."""
    if time.monotonic() >= lease.valid_until:
        return None
    minute = lease.minute
    if minute is None or minute.minute != policy.window_keys(now)[2]:
        return None
    if minute.requests - lease.holdback[1] < 1:  # (what a sync in flight leaves)
        return None
    minute.take(0)
    lease.demand.counted += 1
    return RateState(
        limit=lease.tenant.limits.requests_per_minute,
        remaining=lease.rpm_remaining(lease.tenant.limits.requests_per_minute),
        reset=policy.seconds_to_next_minute(now),
    )


async def renewed(sync: asyncio.Task[None], contended: asyncio.Event, near: Callable[[], bool]) -> bool:
    """Wait for a lease sync until it commits (True) or, when it loses an ETag race
    (``contended``) with the tenant ``near`` its limit, until then (False: the caller
    decides on the exact path).

    Near a budget's end a request that needs a renewal does not wait through the back-off
    of a sync that lost: with holders racing there that runs to seconds, while the exact
    path decides in one exchange (issue 23, defect 5). Far from it, it waits: with
    hundreds of holders most syncs lose a race, and requests going exact on each sent
    them all to race for the window rows (bench/scale.py, 256 instances: 0.06 of the
    budget used instead of 0.8). A failed sync raises its error.
    """
    lost = asyncio.ensure_future(contended.wait())
    try:
        await asyncio.wait({sync, lost}, return_when=asyncio.FIRST_COMPLETED)
        if not sync.done() and not near():
            await asyncio.wait({sync})
    finally:
        lost.cancel()
    if sync.done():
        sync.result()
        return True
    return False
