"""The process side of allocated leases (``allocation.py``): claim what the allocator
offered, give back what it asks, report; and allocate, when this process holds the
tenant's ``alloc`` row.

Local admission and settlement are the lease's (``lease_admit``, ``LeaseKeeper.settle``):
only where the slices come from changes. A sync reads its offer row (and the claim
row after a write it did not hear back from, the ``alloc`` row when requests wait or
the allocator seems gone) in one query, and writes its claim row only when something
changed; no other process writes that row, so it never loses a race. A request the
slices cannot admit waits for the allocator's next cycles (one poll a cycle per tenant,
shared by every waiting request) until it is covered. If the offer says the tenant is
dry (nothing left, nothing usable elsewhere), or after ``WAIT_SECONDS``, the window
rows are read: their refusal is raised; a dry tenant's last part of a call goes to the
exact path (which shortens the answer to fit); otherwise the request waits on, and goes
to the exact path after twice ``WAIT_SECONDS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from sk_core.accounts import Tenant
from sk_core.errors import RateState, StorageUnavailable
from sk_core.limits import lease_admit, policy
from sk_core.limits.allocation import Allocator
from sk_core.limits.holds import Hold
from sk_core.limits.lease_state import Demand, LeaseSettings, TenantLease
from sk_core.limits.leases import LeaseKeeper
from sk_core.limits.offers import (
    ALLOC,
    ALLOC_SECONDS,
    CLAIM_COUNTS,
    OFFER_COUNTS,
    REPORTED,
    Row,
    allocating,
    claim_key,
    in_transit,
    offer_key,
    take_alloc,
)
from sk_core.limits.rows import INFLIGHT, USAGE_TABLE, PartitionRows
from sk_core.limits.slices import BudgetSlice, MinuteSlice
from sk_core.pricing import Price
from sk_core.storage import Conflict, query_partition, read_int, submit, update_op

if TYPE_CHECKING:
    from sk_core.limits.ledger import Ledger

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
WAIT_SECONDS = 8.0  # then the window rows' refusal, read (twice this: the exact path)
CYCLE_SECONDS = 0.1  # the allocator's shortest cycle; longer with more claims (CLAIMS_PER_SECOND)
HORIZON_SECONDS = 1.5  # what an offer covers at the recent rate (until the next claim)
FIRST_SECONDS = 0.5  # a process's first requests of a tenant go to the exact path this long
EPOCH = datetime.min.replace(tzinfo=UTC)


class _ClaimChanged(StorageUnavailable): ...


@dataclass
class Claim:
    """This process's claim row of one tenant as last written, and a write in flight."""

    row: Row | None = None
    dry: frozenset[str] = frozenset()
    cycle: float = CYCLE_SECONDS
    # (seq, apply, undo) of a write whose outcome we did not hear
    pending: tuple[int, Callable[[], None], Callable[[], None]] | None = None
    allocator: Allocator | None = None
    allocating: asyncio.Task[None] | None = None
    poller: asyncio.Task[None] | None = None
    polled: asyncio.Event = field(default_factory=asyncio.Event)  # set after each poll's sync
    next_cycle: datetime = EPOCH  # the allocator's, as last read
    heard: datetime = EPOCH  # the allocator's last write we saw
    written: datetime = EPOCH  # our last claim write
    verified: bool = False  # ``row`` is the stored claim row (no write of unknown outcome)
    offered: bool = False  # the last sync found something offered to claim
    flushing: int = 0  # flushes waiting: settled calls and calls in flight are written now
    started: bool = False  # the first claim was sent (``admitted_exactly``)
    first: float = 0.0  # monotonic: this process's first request of the tenant
    in_transit: tuple[int, int, int, int] = (0, 0, 0, 0)  # ours, not in our slices (``_decide``)


class AllocatedKeeper(LeaseKeeper):
    """``LeaseKeeper`` whose slices come from the tenant's allocator."""

    def __init__(self, ledger: Ledger, settings: LeaseSettings) -> None:
        super().__init__(ledger, settings)
        self._claims: dict[str, Claim] = {}
        self.allocators, self.why, self.allocation = 0, Counter[str](), Counter[str]()  # (bench: below)

    def _claim(self, tenant_id: str) -> Claim:
        return self._claims.setdefault(tenant_id, Claim())

    # ---------------------------------------------------------------- request path

    async def admit(self, tenant: Tenant, price: Price, prompt: int, requested: int) -> Hold | None:
        amount, tokens = price.cost_nano(prompt, requested), prompt + requested

        def size(demand: Demand) -> None:
            demand.unit_amount = max(demand.unit_amount, amount)
            demand.unit_tokens = max(demand.unit_tokens, tokens)

        def decide(rows: PartitionRows, now: datetime) -> None:
            policy.decide(
                tenant.limits,
                self._as_refused(tenant, rows, now),
                price=price,
                prompt_tokens_bound=prompt,
                requested_max_tokens=requested,
                min_answer_tokens=self._ledger.min_answer_tokens,
                now=now,
            )

        least = self._ledger.min_answer_tokens
        return await self._from_lease(
            tenant,
            lambda lease: lease_admit.take(self._ledger.now(), lease, price, prompt, requested),
            size,
            decide,
            lambda lease: lease_admit.take(self._ledger.now(), lease, price, prompt, requested, least),
        )

    async def count_request(self, tenant: Tenant) -> RateState | None:
        def decide(rows: PartitionRows, now: datetime) -> None:
            policy.count_request(tenant.limits, self._as_refused(tenant, rows, now).minute_requests, now)

        return await self._from_lease(
            tenant, lambda lease: lease_admit.count(self._ledger.now(), lease), lambda _: None, decide
        )

    def _as_refused(self, tenant: Tenant, rows: PartitionRows, now: datetime) -> policy.Counters:
        claim, lease = self._claim(tenant.id), self._leases.get(tenant.id)
        counters = rows.counters(*policy.window_keys(now))
        return lease_admit.as_refused(counters, lease, "slots" in claim.dry, claim.in_transit)

    async def _from_lease(
        self,
        tenant: Tenant,
        take: Callable[[TenantLease], _T | None],
        size: Callable[[Demand], None],
        decide: Callable[[PartitionRows, datetime], None] | None = None,
        clamped: Callable[[TenantLease], _T | None] | None = None,
    ) -> _T | None:
        lease = self._lease_of(tenant)
        if lease is None:
            return None
        taken = take(lease)
        if taken is not None:
            self._renew_ahead(lease)
            return taken
        if time.monotonic() < lease.exact_until:
            return None
        claim = self._claim(tenant.id)
        if not claim.started and claim.row is None:
            # This process's first requests of the tenant: exact while no allocator is at
            # work (the ledger checks: ``Allocating``), 2 storage exchanges, not a claim, a
            # cycle and a sync (5-7; defect 3). The claim follows the first admission.
            claim.first = claim.first or time.monotonic()
            if self.first_request(tenant):
                lease.demand.admitted += 1
                size(lease.demand)
                return None
        lease.demand.waiting += 1
        size(lease.demand)
        started = time.monotonic()
        check = started + WAIT_SECONDS
        try:
            while True:
                if self.closing:  # (the process is going: its requests are decided exactly)
                    return None
                await self._polled(tenant.id, lease, claim)
                taken = take(lease)
                if taken is not None:
                    return taken
                now = time.monotonic()
                if claim.dry and clamped is not None:
                    # No more is coming: what this process holds pays for a shorter answer
                    # (as the exact path clamps; held here, it is not in the rows' room).
                    taken = clamped(lease)
                    if taken is not None:
                        return taken
                if decide is not None and (claim.dry or now >= check):
                    # The window rows' refusal, read and not written (a write would race the
                    # allocator): spent, or held and leased elsewhere (retry in seconds).
                    await self._decide(tenant.id, decide)
                    if claim.dry:
                        # Less than a whole call is left, and the rows still admit one with
                        # a shorter answer: the exact path does (clamped), as without leases.
                        return None
                    # Room there: the allocator grants it to the waiting next cycles. (Sent
                    # to the exact path instead, hundreds of such requests raced for the
                    # window rows and the allocator's writes: 230-531 were still deciding
                    # 10 s later at 256 instances with churn, bench/README.md.)
                    check = now + WAIT_SECONDS / 2
                if now - started >= 2 * WAIT_SECONDS:
                    lease.exact_until = now + claim.cycle
                    return None
        finally:
            lease.demand.waiting -= 1

    async def _decide(self, tenant_id: str, decide: Callable[[PartitionRows, datetime], None]) -> None:
        """Raise the refusal the window rows give now (one read, with our offer: the rows
        may have moved past the offer our last poll read; a tenant no longer dry waits on)."""
        await self._ledger.settled(tenant_id)  # (as the exact path orders them: ours first)
        now = self._ledger.now()
        day, month, minute = policy.window_keys(now)
        table = await self._ledger.store.table(USAGE_TABLE)
        theirs = offer_key(self.process_id)
        entities = await query_partition(table, tenant_id, [day, month, minute, INFLIGHT, theirs])
        claim = self._claim(tenant_id)
        offer = Row.read(theirs, entities.pop(theirs, None), OFFER_COUNTS)
        dry = str(offer.extra.get("dry") or "")
        claim.dry = frozenset(d for d in dry.split(",") if d) if offer.etag is not None else claim.dry
        claim.in_transit = in_transit(offer, claim.row, day, minute)
        decide(PartitionRows(tenant_id, entities), now)

    async def _polled(self, tenant_id: str, lease: TenantLease, claim: Claim) -> None:
        """Until the lease's next poll: one sync now (the allocator learns that requests
        wait), then one after each allocator cycle while they do; all waiters share it."""
        if claim.poller is None or claim.poller.done():
            claim.poller = asyncio.get_running_loop().create_task(self._poll(tenant_id, lease, claim))
        await claim.polled.wait()

    async def _poll(self, tenant_id: str, lease: TenantLease, claim: Claim) -> None:
        try:
            while not self._closing:
                with contextlib.suppress(StorageUnavailable):
                    await self._sync_now(tenant_id, lease)
                polled, claim.polled = claim.polled, asyncio.Event()
                polled.set()
                if lease.demand.waiting <= 0:
                    return
                # Just after the allocator's next cycle (its alloc row says when it wrote).
                delay = (claim.next_cycle - self._ledger.now()).total_seconds() + 0.02
                await asyncio.sleep(min(claim.cycle, max(0.05, delay)) if delay > 0 else claim.cycle / 2)
        finally:
            polled, claim.polled = claim.polled, asyncio.Event()  # (closing: wake the waiters)
            polled.set()

    # ---------------------------------------------------------------- background

    async def _keep(self, tenant_id: str, lease: TenantLease) -> None:
        """Report, claim and give back every report interval, until the lease is empty."""
        while not self._closing:
            await asyncio.sleep(self.report_interval(lease) * random.uniform(0.5, 1.5))
            if self._leases.get(tenant_id) is not lease:
                return
            try:
                await self._sync_now(tenant_id, lease)
            except StorageUnavailable as exc:
                logger.warning("claim sync for %s failed (%s); retrying", tenant_id, exc.reason)
            # Idle and empty, and the last sync found nothing more offered (an offer made
            # before the allocator read our idle claim is claimed and given back first).
            if self._idle(lease) and lease.empty and not self._claim(tenant_id).offered:
                return

    def first_request(self, tenant: Tenant) -> bool:
        claim = self._claims.get(tenant.id)
        if claim is None or claim.started or claim.row is not None or claim.first <= 0:
            return False
        return time.monotonic() - claim.first < FIRST_SECONDS

    def not_first(self, tenant: Tenant) -> None:
        self._claim(tenant.id).first = -FIRST_SECONDS  # (the window over: requests wait)

    def admitted_exactly(self, tenant: Tenant) -> None:
        claim, lease = self._claims.get(tenant.id), self._leases.get(tenant.id)
        if claim is not None and lease is not None and not claim.started:
            claim.started = True
            self._start_sync(tenant.id, lease)  # the first claim (its demand: a grant next cycle)
            self._ensure_keeper(tenant.id, lease)

    async def flush(self, tenant_id: str | None = None) -> None:
        states = [state for t, state in self._claims.items() if tenant_id in (None, t)]
        for state in states:
            state.flushing += 1
        try:
            await super().flush(tenant_id)
        finally:
            for state in states:
                state.flushing -= 1

    async def aclose(self) -> None:
        for claim in self._claims.values():
            if claim.allocator is not None:
                claim.allocator.stop()
        await super().aclose()
        for claim in self._claims.values():
            if claim.allocating is not None:
                claim.allocating.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await claim.allocating
            if claim.allocator is not None:
                # (Not left to lapse: a process starting meanwhile would wait ALLOC_SECONDS.)
                await claim.allocator.release()

    # ---------------------------------------------------------------- the sync

    async def _sync(self, tenant_id: str, lease: TenantLease) -> None:
        # Our claim row changed (an unheard write, a reclaim, an expiry): again on it as read.
        with contextlib.suppress(_ClaimChanged):
            return await self._sync_once(tenant_id, lease)
        await self._sync_once(tenant_id, lease)

    async def _sync_once(self, tenant_id: str, lease: TenantLease) -> None:
        ledger = self._ledger
        table = await ledger.store.table(USAGE_TABLE)
        mine, theirs = claim_key(self.process_id), offer_key(self.process_id)
        state = self._claim(tenant_id)
        now = ledger.now()
        # Our claim row as we last wrote it, unless a write's outcome is unknown; the alloc
        # row when requests wait (when its next cycle is) or the allocator looks gone.
        verified = state.row is not None and state.verified
        lapsed = now - state.heard > timedelta(seconds=2 * ALLOC_SECONDS)
        keys = [theirs, *([] if verified else [mine]), *([ALLOC] if lapsed or lease.demand.waiting else [])]
        entities = await query_partition(table, tenant_id, keys)
        if ALLOC in keys:
            alloc = entities.get(ALLOC)
            self._elect(table, lease.tenant, state, alloc, now)
            if alloc is not None and alloc.get("owner") and alloc.get("until") is not None:
                # Each cycle's first write gives its time (an election's: until - ALLOC_SECONDS).
                state.heard = alloc.get("at") or alloc["until"] - timedelta(seconds=ALLOC_SECONDS)
                state.next_cycle = state.heard + timedelta(seconds=state.cycle)
        if theirs in entities and entities[theirs].get("at") is not None:
            state.heard = max(state.heard, entities[theirs]["at"])
        stored = entities.get(mine) if not verified else None
        if state.pending is not None:
            seq, committed, failed = state.pending
            state.pending = None
            # It committed although we never heard; or it did not: what it gave back is ours.
            (committed if stored is not None and read_int(stored.get("seq")) == seq else failed)()
        if not verified and stored is None and state.row is not None and state.row.etag is not None:
            # The allocator expired this claim (we could not renew it in time) and charged
            # what we held: calls in flight settle late, nothing more is reported.
            logger.warning("claim of %s expired at the store; starting a new one", tenant_id)
            lease.generation += 1
            lease.current = lease.previous = lease.minute = None
            lease.slots = lease.inflight = lease.reported_busy = 0
            state.row = None
        if verified:
            assert state.row is not None
            claim = Row(
                mine,
                dict(state.row.counts),
                state.row.day,
                state.row.month,
                state.row.minute,
                state.row.etag,
                dict(state.row.extra),
            )
        else:
            claim = Row.read(mine, stored, CLAIM_COUNTS)
        offer = Row.read(offer_key(self.process_id), entities.get(offer_key(self.process_id)), OFFER_COUNTS)
        day, month, minute = policy.window_keys(now)
        old = lease.current if lease.current is not None and lease.current.day != day else None
        budget = (
            lease.current if lease.current is not None and old is None else BudgetSlice(day=day, month=month)
        )
        old_free = max(0, old.free) if old is not None else 0
        if old is not None and claim.day == old.day:
            # The first sync of a new day closes the old one in the claim (``prev_*``):
            # its free part goes back and calls still in flight are charged their
            # reservations (they settle into the old slice, reported no more).
            closing = old.report()
            claim.counts.update(
                {
                    "prev_claimed_nano": claim["claimed_nano"],
                    "prev_back_nano": claim["back_nano"] + old_free,
                    "prev_spent_nano": claim["spent_nano"] + closing.spent + old.held,
                    "prev_requests": claim["requests"] + closing.requests + old.inflight,
                    "prev_prompt_tokens": claim["prompt_tokens"] + closing.prompt_tokens,
                    "prev_completion_tokens": claim["completion_tokens"] + closing.completion_tokens,
                    "prev_overrun_nano": claim["overrun_nano"] + closing.overrun,
                }
            )
            claim.extra.update(prev_day=old.day, prev_month=old.month)
        if old is not None:
            old.free -= old_free  # (given back: not admissible meanwhile; take() refuses it anyway)
        if claim.day != day:
            claim.restart(("claimed_nano", "back_nano", *(n for n, _ in REPORTED)), day=day, month=month)
        if claim.minute != minute:
            claim.restart(
                ("minute_claimed", "minute_claimed_tokens", "minute_back", "minute_back_tokens"),
                minute=minute,
            )
        same_day, same_minute = offer.day == day, offer.minute == minute
        idle = self._closing or self._idle(lease)
        if lease.minute is None or lease.minute.minute != minute:
            lease.minute = MinuteSlice(minute)
        minute_slice = lease.minute

        # 1. What the allocator offered since our last claim.
        new_budget = max(0, offer["budget_nano"] - claim["claimed_nano"]) if same_day else 0
        new_requests = max(0, offer["minute_requests"] - claim["minute_claimed"]) if same_minute else 0
        new_tokens = max(0, offer["minute_tokens"] - claim["minute_claimed_tokens"]) if same_minute else 0
        new_slots = max(0, offer["slots"] - claim["slots_claimed"])

        # 2. What it asks back: unused beyond what we may keep (all of it when idle).
        # Nothing while requests wait on a dry tenant: it pays a shorter answer (``clamped``).
        last = bool(offer.extra.get("dry")) and lease.demand.waiting > 0

        def keep(name: str) -> int:
            return 0 if idle or offer.etag is None else 2**62 if last else offer[name]

        back_budget = max(0, budget.free + new_budget - keep("keep_nano"))
        back_requests = max(0, minute_slice.requests + new_requests - keep("keep_requests"))
        back_tokens = max(0, minute_slice.tokens + new_tokens - keep("keep_tokens"))
        back_slots = max(0, lease.slots + new_slots - lease.inflight - keep("keep_slots"))
        # Given back now: not admissible while the write is in flight (or unheard of).
        budget.free -= back_budget
        minute_slice.requests -= back_requests
        minute_slice.tokens -= back_tokens
        lease.slots -= back_slots
        report = budget.report()

        demand = lease.demand
        demand.roll(time.monotonic())
        counts = claim.counts
        counts["claimed_nano"] += new_budget
        counts["back_nano"] += back_budget
        counts["spent_nano"] += report.spent
        counts["requests"] += report.requests
        counts["prompt_tokens"] += report.prompt_tokens
        counts["completion_tokens"] += report.completion_tokens
        counts["overrun_nano"] += report.overrun
        counts["minute_claimed"] += new_requests
        counts["minute_claimed_tokens"] += new_tokens
        counts["minute_back"] += back_requests
        counts["minute_back_tokens"] += back_tokens
        counts["slots_claimed"] += new_slots
        counts["slots_back"] += back_slots
        counts["busy"] = lease.inflight
        # RateLimit headers (``rpm_remaining``): everyone else's count at our offer, plus ours
        # as the slice has it (new claims count as they land, ``apply``: a low estimate sticks).
        limit = lease.tenant.limits.requests_per_minute
        if same_minute and claim.minute == minute:
            others = read_int(offer.extra.get("minute_row", limit)) - (
                offer["minute_requests"] - offer["seen_minute_back"]
            )
            lease.minute_stored = others + counts["minute_claimed"] - new_requests - counts["minute_back"]
        else:
            lease.minute_stored = limit
        counts["unused_nano"] = max(0, budget.free + new_budget)
        counts["unused_requests"] = max(0, minute_slice.requests + new_requests)
        counts["unused_tokens"] = max(0, minute_slice.tokens + new_tokens)
        counts["waiting"] = waiting = demand.waiting
        # What the waiting requests lack once this sync lands, by dimension: a change in it
        # is news worth a write (the allocator derives it from waiting and unused).
        counts["lack_budget"] = max(0, waiting * demand.unit_amount - counts["unused_nano"])
        counts["lack_requests"] = max(0, waiting - counts["unused_requests"])
        counts["lack_tokens"] = max(0, waiting * demand.unit_tokens - counts["unused_tokens"])
        counts["lack_slots"] = max(0, waiting - max(0, lease.slots + new_slots - lease.inflight))
        counts["unit_nano"] = demand.unit_amount
        counts["unit_tokens"] = demand.unit_tokens
        counts["peak"] = demand.peak_inflight
        ttl = self._ttl(lease)
        rate = 0.0 if idle else demand.rate
        written = state.row.extra if state.row is not None else {}
        reasons = {
            "claim": bool(new_budget or new_requests or new_tokens or new_slots),
            "give back": bool(back_budget or back_requests or back_tokens or back_slots),
            "create": claim.etag is None,
            # Requests waiting: news to the allocator when they start, end, or double/halve.
            "waiting": any(
                changed(counts[name], read_int(written.get(name)))
                for name in ("waiting", "lack_budget", "lack_requests", "lack_tokens", "lack_slots")
            ),
            "unit": counts["unit_nano"] != read_int(written.get("unit_nano")),
            # Settled calls reported, and the expiry renewed, every report interval.
            "interval": now - state.written >= timedelta(seconds=self.report_interval(lease)),
            "rate": abs(rate - float(written.get("rate") or 0.0)) > max(0.5, 0.25 * rate),
            # A usage view wants it current (``flush``): settled calls, calls in flight.
            "flush": bool(state.flushing)
            and (budget.unreported or counts["busy"] != read_int(written.get("busy"))),
        }
        due = any(reasons.values())
        self.why.update(reason for reason, now_due in reasons.items() if now_due)
        state.offered = bool(new_budget or new_requests or new_tokens or new_slots)
        if not due:
            self._heard_offer(state, entities.get(theirs))
            return
        counts["seq"] += 1
        seq = counts["seq"]
        entity = claim.entity(
            tenant_id,
            rate=float(rate),
            count_rate=float(0.0 if idle else demand.count_rate),
            expires_at=now + timedelta(seconds=ttl),
            at=now,
            report_s=float(self.report_interval(lease)),
            prev_day=str(claim.extra.get("prev_day") or ""),
            prev_month=str(claim.extra.get("prev_month") or ""),
        )
        write = ("create", entity, {}) if claim.etag is None else update_op(entity, claim.etag)

        def apply() -> None:
            if budget is not lease.current:
                lease.previous, lease.current = lease.current, budget  # (the old day drains)
            budget.free += new_budget
            budget.spent -= report.spent
            budget.requests -= report.requests
            budget.prompt_tokens -= report.prompt_tokens
            budget.completion_tokens -= report.completion_tokens
            budget.overrun -= report.overrun
            budget.outstanding = budget.free + budget.held + budget.spent
            if lease.minute is minute_slice:
                minute_slice.requests += new_requests
                minute_slice.tokens += new_tokens
                lease.minute_stored += new_requests
            lease.slots += new_slots
            lease.reported_busy = counts["busy"]

        def undo() -> None:
            if old is not None:
                old.free += old_free
            budget.free += back_budget
            minute_slice.requests += back_requests
            minute_slice.tokens += back_tokens
            lease.slots += back_slots

        try:
            results = await submit(table, [write])
        except Conflict:
            undo()  # (our own row: a write of ours we never heard of; re-read next time)
            state.verified = False
            raise _ClaimChanged("claim row changed") from None
        except StorageUnavailable:
            # Committed or not (the row deleted by the allocator's expiry, too): the next
            # sync reads the row and tells.
            state.pending = (seq, apply, undo)
            state.verified = False
            raise
        claim.etag = str(results[0].get("etag"))
        claim.extra = {**entity, "etag": claim.etag}
        state.row, state.verified, state.written = claim, True, now
        apply()
        self.syncs += 1
        self._heard_offer(state, entities.get(theirs))
        demand.synced_peak(lease.inflight)
        if lease.previous is not None and lease.previous.inflight == 0:
            lease.previous = None  # (closed in the claim when the day changed)
        lease.stored = True
        lease.valid_until = time.monotonic() + ttl / 2
        lease.granted = (budget.free, minute_slice.requests, minute_slice.tokens)
        if budget.free > 0:
            lease.exact_until = 0.0
        if not self._closing:
            self._ensure_keeper(tenant_id, lease)

    @staticmethod
    def _heard_offer(state: Claim, offer: Any) -> None:
        dry = str((offer or {}).get("dry") or "")
        state.dry = frozenset(d for d in dry.split(",") if d)
        state.cycle = float((offer or {}).get("cycle") or CYCLE_SECONDS)

    # ---------------------------------------------------------------- the allocator

    def _elect(self, table: Any, tenant: Tenant, state: Claim, alloc: Any, now: Any) -> None:
        """Take the tenant's allocator over when nobody holds it (in the background)."""
        running = state.allocating is not None and not state.allocating.done()
        if running or self._closing:
            return
        if allocating(alloc, now):  # (a released row is free whatever its time: a skewed clock's)
            return

        async def elect() -> None:
            try:
                await take_alloc(table, tenant.id, self.process_id, alloc, self._ledger.now())
            except (Conflict, StorageUnavailable):
                return  # someone else took it
            state.allocator = allocator = Allocator(
                self._ledger, tenant, self.process_id, horizon=HORIZON_SECONDS, cycle=CYCLE_SECONDS,
                tally=self.allocation,
            )
            self.allocators += 1  # (and why: claim writes by reason; allocation: the cycles' tally)
            await allocator.run()

        state.allocating = asyncio.get_running_loop().create_task(elect())


def changed(now: int, before: int) -> bool:
    """A count worth telling the allocator about: to or from zero, or by a factor of two."""
    if now == before:
        return False
    return (now == 0) != (before == 0) or now >= 2 * before or 2 * now <= before
