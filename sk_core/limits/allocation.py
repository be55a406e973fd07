"""Allocated leases: one allocator per tenant grants every process its slices.

With shared pool rows, every holder's sync is an optimistic update of rows all holders
write: at 256 instances most syncs lose a race, requests wait on syncs that keep losing,
and the end of a limit is decided by whoever wins (bench/README.md, sessions 9-11).
Here no row has two writers on the request path (the rows: ``offers.py``). A process's
sync reads its offer and writes its claim row: no race. The allocator (whichever
process holds the ``alloc`` row; it lapses and another takes over) reads every claim
every cycle, credits reports and returns into the window rows, and grants from what is
left, by the demand every process reported, in transactions of up to ``BATCH`` rows:
the window rows, the ``alloc`` row (so that a deposed allocator's write fails) and the
offers that batch funds. Exactness is the window rows' invariant (``spent + held +
leased <= budget``): an offer is leased the moment it is granted, and a process's
holding is ``claimed - back - spent`` of its cumulative claim, which only it writes,
which only grows, and which the allocator credits as read.

The default (``SKF_LEASE_ALLOCATOR``; shared pool rows with ``false``). The usage read
model reads the claims too (``offers.claimed``): what they report shows before the
allocator credits it. A process's first requests of a tenant are decided exactly while
its first claim is written (``AllocatedKeeper.admitted_exactly``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sk_core.accounts import Tenant
from sk_core.errors import StorageUnavailable
from sk_core.limits import policy
from sk_core.limits.offers import (
    ALLOC,
    ALLOC_SECONDS,
    CLAIM_COUNTS,
    CLAIM_PREFIX,
    CLAIM_RANGE,
    CLAIMS_PER_SECOND,
    DIMENSIONS,
    OFFER_COUNTS,
    OFFER_PREFIX,
    OFFER_RANGE,
    REPORTED,
    SPENT,
    Plan,
    Row,
    Taken,
    Want,
    add,
    alloc_entity,
    allocate,
    batches_of,
    expired_claim,
    offer_key,
    overshoots,
    stale,
    whole,
)
from sk_core.limits.rows import (
    INFLIGHT,
    INFLIGHT_FIELDS,
    MINUTE_FIELDS,
    USAGE_TABLE,
    WINDOW_FIELDS,
    PartitionRows,
)
from sk_core.storage import Conflict, delete_op, etag_of, int64, query_partition, submit, update_op

if TYPE_CHECKING:
    from sk_core.limits.ledger import Ledger

logger = logging.getLogger(__name__)

IDLE_CYCLES = 20  # cycles without demand, holdings or writes before an allocator stands down


class Allocator:
    """The allocator of one tenant, run by the process holding its ``alloc`` row."""

    def __init__(
        self, ledger: Ledger, tenant: Tenant, process_id: str, *, horizon: float, cycle: float,
        expiring_only: bool = False, tally: Counter[str] | None = None,
    ) -> None:  # fmt: skip
        self._ledger = ledger
        self.expiring_only = expiring_only  # a sweep's cycle: expired claims only (no credit, no grant)
        self.tenant, self.process_id, self.horizon = tenant, process_id, horizon
        self.cycle = self.base_cycle = cycle
        self.alloc_etag: str | None = None
        self.renew_at: datetime | None = None  # the alloc row's next write, with changes or not
        self.started = self.took = 0.0  # (monotonic) this cycle's start; the last cycle's length
        self.offers: dict[str, Row] | None = None  # ours alone once read (fenced by alloc)
        # What its cycles did, added to its process's (bench/scale.py): ``cycles``; ``expirations``,
        # claims they planned to charge at expiry (the sweep's count); ``outruns``, cycles whose
        # commit order let a grant outrun the return funding it (``overshoots``); ``reclaims_failed``,
        # cycles ended by a failed transaction holding a reclaim (its process claimed at that
        # moment, or another write raced a row of it): no grant of theirs landed.
        self.tally = tally if tally is not None else Counter[str]()
        self.stopped = False
        self.active = True  # the last cycle saw demand or holdings, or wrote something

    async def run(self) -> None:
        """Cycle until deposed, or until the process closes (``stop``)."""
        idle = 0
        try:
            while not self.stopped:
                started = asyncio.get_running_loop().time()
                try:
                    if not await self.cycle_once():
                        return
                    # Nobody active a while: stop querying claims (whoever has demand takes over).
                    idle = 0 if self.active else idle + 1
                    if idle >= IDLE_CYCLES:
                        await self.release()
                        return
                except Conflict:
                    self._ledger.conflicts += 1
                    self.offers = None  # (re-read everything next cycle)
                except StorageUnavailable as exc:
                    logger.warning("allocator of %s: %s", self.tenant.id, exc.reason)
                    self.offers = None
                elapsed = asyncio.get_running_loop().time() - started
                await asyncio.sleep(max(0.05, self.cycle - elapsed))
        finally:
            self.stopped = True

    async def release(self) -> None:
        """Give the ``alloc`` row up: the next process with demand allocates at once."""
        table = await self._ledger.store.table(USAGE_TABLE)
        alloc = alloc_entity(self.tenant.id, "", self._ledger.now())
        if self.alloc_etag is not None:
            with contextlib.suppress(Conflict, StorageUnavailable):
                await submit(table, [update_op(alloc, self.alloc_etag)])

    def stop(self) -> None:
        self.stopped = True

    async def cycle_once(self) -> bool:
        """Read every claim, credit and grant; False: another process allocates now."""
        ledger, tenant_id = self._ledger, self.tenant.id
        now, self.started = ledger.now(), asyncio.get_running_loop().time()
        day, month, minute = policy.window_keys(now)
        table = await ledger.store.table(USAGE_TABLE)
        ranges = CLAIM_RANGE if self.offers is not None else f"{CLAIM_RANGE} or {OFFER_RANGE}"
        entities = await query_partition(table, tenant_id, [day, month, minute, INFLIGHT, ALLOC], also=ranges)
        alloc = entities.get(ALLOC)
        if alloc is None or alloc.get("owner") != self.process_id:
            return False
        self.alloc_etag = etag_of(alloc)
        if self.offers is None:
            self.offers = {
                key.removeprefix(OFFER_PREFIX): Row.read(key, e, OFFER_COUNTS)
                for key, e in entities.items() if key.startswith(OFFER_PREFIX)
            }  # fmt: skip
        claims = {
            key.removeprefix(CLAIM_PREFIX): Row.read(key, e, CLAIM_COUNTS)
            for key, e in entities.items() if key.startswith(CLAIM_PREFIX)
        }  # fmt: skip
        # One read of every claim a cycle: with more claims, longer cycles, so that the
        # partition's reads stay about CLAIMS_PER_SECOND.
        self.cycle = max(self.base_cycle, len(claims) / CLAIMS_PER_SECOND)
        # Offers still on an earlier day (their processes close it at their first sync
        # after midnight): that day's rows and its month's, read too.
        older = {key for o in self.offers.values() if o.day and o.day != day for key in (o.day, o.month)}
        older -= set(entities)
        if older:
            entities.update(await query_partition(table, tenant_id, sorted(older)))
        rows = PartitionRows(tenant_id, entities)
        plans, room_read = self._plan(rows, claims, now, (day, month, minute))
        self.active = any(p.operations for p in plans) or any(
            c["waiting"] or c["busy"] or c["unused_nano"] or c["unused_requests"] or c.extra.get("rate")
            for c in claims.values() if not stale(c, now)
        )  # fmt: skip
        # Nothing to write, nobody waiting (waiters poll after the cycle alloc announces): renew at half-lease
        due = self.renew_at is None or now >= self.renew_at or any(c["waiting"] for c in claims.values())
        if due or any(p.operations or p.changes for p in plans):
            await self._commit(table, rows, plans, room_read, now, (day, month, minute))
            self.renew_at = now + timedelta(seconds=ALLOC_SECONDS / 2)
        self.tally["cycles"] += 1
        self.took = asyncio.get_running_loop().time() - self.started
        return True

    # ------------------------------------------------------------------ planning

    def _plan(
        self, rows: PartitionRows, claims: dict[str, Row], now: datetime, keys: tuple[str, str, str]
    ) -> tuple[list[Plan], dict[str, int]]:  # (and the room each limit's row had as read)
        day, month, minute = keys
        limits = self.tenant.limits
        assert self.offers is not None
        plans: dict[str, Plan] = {}
        live: dict[str, Row] = {}
        stored: dict[str, tuple[Any, ...]] = {}
        for process, claim in claims.items():
            expires = claim.extra.get("expires_at")
            expired = expires is not None and expires < now
            if self.expiring_only and not expired:
                continue
            offer = self.offers.get(process) or Row.read(offer_key(process), None, OFFER_COUNTS)
            self.offers[process] = offer
            # As stored: a cycle that changes any of it (a credit too) writes the offer.
            stored[process] = (dict(offer.counts), offer.day, offer.minute, offer.extra.get("dry", ""))
            plan = plans[process] = Plan(process)
            self._credit(plan, claim, offer, day, minute)
            plan.early = expired or stale(claim, now)
            if expired:
                self._expire(plan, claim, offer, minute)
            elif plan.early:
                self._reclaim(plan, claim, offer, day, minute)
                if plan.changes or plan.operations:
                    # Credits, or a reclaim: the offer as it now stands.
                    plan.operations.insert(
                        0,
                        offer.write(
                            self.tenant.id,
                            dry=offer.extra.get("dry", ""),
                            at=now,
                            cycle=float(self.cycle),
                            allocator=self.process_id,
                        ),
                    )
            else:
                live[process] = claim
        # Offers whose claim row is gone (expired and deleted; an aborted cycle): nothing
        # is left on them but their row.
        for process in [p for p in self.offers if p not in claims]:
            offer = self.offers.pop(process)
            if offer.etag is not None:
                plans[process] = Plan(
                    process,
                    operations=[delete_op({"PartitionKey": self.tenant.id, "RowKey": offer.key}, offer.etag)],
                )

        # Room: what the rows leave once this cycle's returns land. The plans commit BATCH
        # offers a transaction, and a grant funded by a later one's return took a row over
        # its limit, for good if that failed (scale.py, 1,024: 2,706 of 2,700; a reclaim,
        # committed last, that lost its race left two processes holding the same
        # requests): returns and reclaims go first (``batches_of``); what that leaves
        # open, ``overshoots`` counts.
        day_row, month_row = rows.counter(day, WINDOW_FIELDS), rows.counter(month, WINDOW_FIELDS)
        minute_row = rows.counter(minute, MINUTE_FIELDS)
        inflight_row = rows.counter(INFLIGHT, INFLIGHT_FIELDS)

        def taken(row: Any, names: tuple[str, ...], changes: Callable[[Plan], list[dict[str, int]]]) -> Taken:
            planned = sum(c.get(n, 0) for p in plans.values() for c in changes(p) for n in names)
            return Taken(sum(int(row[name]) for name in names), planned)

        counted = {
            "requests": (limits.requests_per_minute, taken(minute_row, ("requests",), lambda p: [p.minute])),
            "tokens": (limits.tokens_per_minute, taken(minute_row, ("tokens",), lambda p: [p.minute])),
            "slots": (limits.max_concurrent, taken(inflight_row, ("count",), lambda p: [p.inflight])),
        }
        windows = (
            (limits.daily_budget_nano, taken(day_row, SPENT, lambda p: p.of_window(day))),
            (limits.monthly_budget_nano, taken(month_row, SPENT, lambda p: p.of_window(month))),
        )
        rooms = {"budget": min(lim - t.ahead for lim, t in windows)}
        rooms |= {d: lim - t.ahead for d, (lim, t) in counted.items()}
        (daily, day_t), (monthly, month_t) = windows
        room_read = {"day": daily - day_t.current, "month": monthly - month_t.current}
        room_read |= {d: lim - t.current for d, (lim, t) in counted.items()}

        wants: dict[str, dict[str, Want]] = {d: {} for d in DIMENSIONS}
        spare: dict[str, dict[str, int]] = {d: {} for d in DIMENSIONS}
        for process, claim in live.items():
            offer = self.offers[process]
            # A claim not written for two of its report intervals: its keeper stopped (idle)
            # or is gone; its last rate is stale, and nobody would claim a top-up.
            written = claim.extra.get("at")
            fresh = written is not None and (now - written).total_seconds() < 2 * float(
                claim.extra.get("report_s") or 2.0
            )
            rate = float(claim.extra.get("rate") or 0.0) if fresh else 0.0
            count_rate = float(claim.extra.get("count_rate") or 0.0) if fresh else 0.0
            waiting, busy = claim["waiting"], claim["busy"]
            calls = rate * self.horizon
            active = calls > 0 or busy > 0 or waiting > 0
            same_day, same_minute = offer.day == claim.day, offer.minute == minute
            claimed = int(claim.minute == minute)
            held_slots = offer["slots"] - offer["seen_slots_back"]
            units = {"budget": max(1, claim["unit_nano"]), "tokens": max(1, claim["unit_tokens"])}
            units |= {"requests": 1, "slots": 1}
            # What it has unused now: as it last reported, less what its rate used since
            # (a process writes its claim when something changes, not at every call: a
            # top-up must be ready before it runs dry, not a cycle after), plus offered
            # and not yet claimed.
            age = (now - written).total_seconds() if written is not None else 0.0
            used = (rate + count_rate) * max(0.0, age)
            reported = {
                "budget": claim["unused_nano"],
                "requests": claim["unused_requests"],
                "tokens": claim["unused_tokens"],
            }
            unclaimed = {
                "budget": (offer["budget_nano"] - claim["claimed_nano"]) * same_day,
                "requests": (offer["minute_requests"] - claim["minute_claimed"] * claimed) * same_minute,
                "tokens": (offer["minute_tokens"] - claim["minute_claimed_tokens"] * claimed) * same_minute,
            }
            holds = {d: max(0, n - int(used * units[d])) + unclaimed[d] for d, n in reported.items()}
            holds["slots"] = reported["slots"] = held_slots - busy
            # What it could give back, in whole calls: as reported (its rate's guess may not
            # have happened) plus offered and not claimed. Without the offers, a first request
            # elsewhere was marked dry while the minute sat offered to the allocator's own
            # process: ``429 rate_limited`` to the minute's end with 58 of 60 requests unused.
            for d in DIMENSIONS:
                spare[d][process] = whole(max(0, reported[d] + unclaimed.get(d, 0)), units[d])
            targets = {
                "budget": math.ceil(calls * units["budget"]) + (units["budget"] if active else 0),
                "requests": math.ceil(calls + count_rate * self.horizon) + (1 if active else 0),
                "tokens": math.ceil(calls * units["tokens"]) + (units["tokens"] if active else 0),
                "slots": max(claim["peak"] * 2, 1) - busy if active else 0,
            }
            for d in DIMENSIONS:
                wants[d][process] = Want(process, holds[d], targets[d], units[d], waiting)
        unused = {d: sum(spare[d].values()) for d in DIMENSIONS}
        grants, left, unserved = allocate(rooms, wants)
        tight = {
            d: sum(w.target for w in wants[d].values()) * 2
            > rooms[d] + sum(w.hold for w in wants[d].values())
            for d in DIMENSIONS
        }
        # More waiting than room: whatever sits unused where nobody waits comes back.
        starving = {
            d: sum(max(0, w.waiting * w.unit - w.hold) for w in wants[d].values()) > rooms[d]
            for d in DIMENSIONS
        }
        for process, claim in live.items():
            self._grant(
                plans[process],
                claim,
                self.offers[process],
                stored[process],
                wants,
                grants,
                left,
                {d: unused[d] - spare[d][process] for d in DIMENSIONS},
                (tight, starving, unserved),
                keys,
                now,
            )
        return list(plans.values()), room_read

    def _credit(self, plan: Plan, claim: Row, offer: Row, day: str, minute: str) -> None:
        """Move what the claim reports since the offer last saw it into the window rows."""
        # The offer's day as the claim reports it: its current day, or the day it closed
        # at its first sync after midnight (``prev_*``: everything free given back, calls
        # in flight charged their reservations).
        prefix = (
            "" if claim.day == offer.day else "prev_" if claim.extra.get("prev_day") == offer.day else None
        )
        if offer.day and prefix is not None:
            window = plan.at(offer.day, offer.month)
            back = claim[prefix + "back_nano"] - offer["seen_back_nano"]
            spent = claim[prefix + "spent_nano"] - offer["seen_spent_nano"]
            add(window, "leased_nano", -(back + spent))
            for name, target in REPORTED:
                add(window, target, claim[prefix + name] - offer[f"seen_{name}"])
                offer.counts[f"seen_{name}"] = claim[prefix + name]
            offer.counts["seen_back_nano"] = claim[prefix + "back_nano"]
        if claim.minute and claim.minute == offer.minute == minute:
            add(plan.minute, "requests", -(claim["minute_back"] - offer["seen_minute_back"]))
            add(plan.minute, "tokens", -(claim["minute_back_tokens"] - offer["seen_minute_back_tokens"]))
            offer.counts["seen_minute_back"] = claim["minute_back"]
            offer.counts["seen_minute_back_tokens"] = claim["minute_back_tokens"]
        back_slots = claim["slots_back"] - offer["seen_slots_back"]
        add(plan.inflight, "count", -back_slots)
        add(plan.inflight, "leased_slots", -back_slots)
        offer.counts["seen_slots_back"] = claim["slots_back"]

    def _reclaim(self, plan: Plan, claim: Row, offer: Row, day: str, minute: str) -> None:
        """A claim not written for a while (its process gone, most likely, or slow): take
        back what it was offered and never claimed, conditional on its claim row as read.

        The claim row is rewritten unchanged in the same transaction, so if the process
        claimed meanwhile, the transaction fails (and its own next write fails on the new
        ETag, so it re-reads the smaller offer): an offer never shrinks under a claim.
        """
        same, claimed = offer.minute == minute, int(claim.minute == minute)
        unclaimed = {  # (each 0 when its window is not the offer's)
            "budget_nano": (offer["budget_nano"] - claim["claimed_nano"]) * (offer.day == claim.day == day),
            "minute_requests": (offer["minute_requests"] - claim["minute_claimed"] * claimed) * same,
            "minute_tokens": (offer["minute_tokens"] - claim["minute_claimed_tokens"] * claimed) * same,
            "slots": offer["slots"] - claim["slots_claimed"],
        }
        if not any(amount > 0 for amount in unclaimed.values()) or claim.etag is None:
            return
        for name, amount in unclaimed.items():
            offer.counts[name] -= max(0, amount)
        add(plan.at(day, claim.month), "leased_nano", -max(0, unclaimed["budget_nano"]))
        add(plan.minute, "requests", -max(0, unclaimed["minute_requests"]))
        add(plan.minute, "tokens", -max(0, unclaimed["minute_tokens"]))
        add(plan.inflight, "count", -max(0, unclaimed["slots"]))
        add(plan.inflight, "leased_slots", -max(0, unclaimed["slots"]))
        fields = ("rate", "count_rate", "expires_at", "at", "report_s", "prev_day", "prev_month")
        plan.operations.append(
            update_op(
                claim.entity(self.tenant.id, **{k: claim.extra[k] for k in fields if k in claim.extra}),
                claim.etag,
            )
        )
        plan.reclaim = True

    def _expire(self, plan: Plan, claim: Row, offer: Row, minute: str) -> None:
        """A process that stopped renewing its claim: what it never took goes back, what
        it took is charged (its calls may have happened), its slots come back. A claim
        that held nothing (its tenant went quiet: all given back, no call in flight) is
        only retired: no charge, no count, no flagged audit row."""
        tenant_id = self.tenant.id
        claimed = (
            claim["claimed_nano"]
            if claim.day == offer.day
            else claim["prev_claimed_nano"]
            if claim.extra.get("prev_day") == offer.day
            else 0
        )
        unclaimed = offer["budget_nano"] - claimed
        held = max(0, offer["budget_nano"] - offer["seen_back_nano"] - offer["seen_spent_nano"] - unclaimed)
        charged = held > 0 or claim["busy"] > 0
        self.tally["expirations"] += charged
        if offer.day:
            window = plan.at(offer.day, offer.month)
            add(window, "leased_nano", -(unclaimed + held))
            add(window, "spent_nano", held)
            if charged:
                add(window, "expired_nano", held)
                add(window, "expired_leases", 1)
        if offer.minute == minute:
            claimed = claim["minute_claimed"] if claim.minute == minute else 0
            add(plan.minute, "requests", -(offer["minute_requests"] - claimed))
        slots = offer["slots"] - offer["seen_slots_back"]
        add(plan.inflight, "count", -slots)
        add(plan.inflight, "leased_slots", -slots)
        assert claim.etag is not None
        plan.operations.append(delete_op({"PartitionKey": tenant_id, "RowKey": claim.key}, claim.etag))
        if charged:
            plan.operations.append(expired_claim(tenant_id, claim, held, self._ledger.now()))
        if offer.etag is not None:
            plan.operations.append(delete_op({"PartitionKey": tenant_id, "RowKey": offer.key}, offer.etag))
        assert self.offers is not None
        self.offers.pop(plan.process, None)

    def _grant(
        self,
        plan: Plan,
        claim: Row,
        offer: Row,
        before: tuple[Any, ...],
        wants: dict[str, dict[str, Want]],
        grants: dict[str, dict[str, int]],
        left: dict[str, int],
        elsewhere: dict[str, int],  # whole calls other processes hold unused or unclaimed
        pressure: tuple[dict[str, bool], dict[str, bool], set[str]],
        keys: tuple[str, str, str],
        now: datetime,
    ) -> None:
        day, month, minute = keys
        process = plan.process
        if offer.day != day and claim.day == day:
            # The process closed its old day (or this is a first offer): what is still
            # out on that day was never claimed; it goes back; the counts restart.
            if offer.day:
                out = offer["budget_nano"] - offer["seen_back_nano"] - offer["seen_spent_nano"]
                add(plan.at(offer.day, offer.month), "leased_nano", -out)
            offer.restart(
                ("budget_nano", "seen_back_nano", *(f"seen_{n}" for n, _ in REPORTED)), day=day, month=month
            )
        if offer.minute != minute:
            offer.restart(
                ("minute_requests", "minute_tokens", "seen_minute_back", "seen_minute_back_tokens"),
                minute=minute,
            )
        # No budget for a process still on yesterday (it closes it at its next sync).
        budget = grants["budget"][process] if offer.day == day else 0
        requests = grants["requests"][process]
        tokens, slots = grants["tokens"][process], grants["slots"][process]
        offer.counts["budget_nano"] += budget
        offer.counts["minute_requests"] += requests
        offer.counts["minute_tokens"] += tokens
        offer.counts["slots"] += slots
        add(plan.at(day, month), "leased_nano", budget)
        add(plan.minute, "requests", requests)
        add(plan.minute, "tokens", tokens)
        add(plan.inflight, "count", slots)
        add(plan.inflight, "leased_slots", slots)
        # Unused capacity a process may keep: twice its target while there is room, its
        # target when tight, none when others wait for more than is left.
        tight, starving, unserved = pressure
        for dimension, name in zip(
            DIMENSIONS, ("keep_nano", "keep_requests", "keep_tokens", "keep_slots"), strict=True
        ):
            want = wants[dimension][process]
            # Its waiting calls' share, and twice its target while there is room (its
            # target when tight). Starving (more waiting than room): what sits unused
            # where nobody waits comes back, and so do a waiting process's fragments
            # this cycle could not complete (pooled, they make whole calls next cycle).
            keep = want.waiting * want.unit + want.target * (1 if tight[dimension] else 2)
            fragment = want.hold < want.unit and grants[dimension][process] == 0
            give_up = starving[dimension] and (not want.waiting or fragment)
            offer.counts[name] = 0 if give_up else keep
        # Dry: its waiting requests got nothing, and in some dimension nothing is left
        # and nothing sits unused elsewhere: decide them on the rows (the precise refusal).
        dry = []
        if process in unserved:
            for dimension in DIMENSIONS:
                want = wants[dimension][process]
                if want.hold < want.unit and left[dimension] < want.unit and elsewhere[dimension] < want.unit:
                    dry.append(dimension)
        dry_text = ",".join(dry)
        after = dict(offer.counts), offer.day, offer.minute, dry_text
        if after != before or offer.etag is None:
            offer.extra["dry"] = dry_text
            # The minute row's count once this cycle lands: the RateLimit headers' estimate
            # of what the tenant has left (``TenantLease.rpm_remaining``).
            minute_row = self.tenant.limits.requests_per_minute - left["requests"]
            plan.operations.append(
                offer.write(
                    self.tenant.id,
                    dry=dry_text,
                    at=now,
                    cycle=float(self.cycle),
                    allocator=self.process_id,
                    minute_row=int64(minute_row),
                )
            )

    # ------------------------------------------------------------------ committing

    async def _commit(self, table: Any, rows: PartitionRows, plans: list[Plan], room_read: dict[str, int],
                      now: datetime, keys: tuple[str, str, str]) -> None:  # fmt: skip
        """Batches of plans, each with the window-row changes it makes and the alloc row."""
        day, month, minute = keys
        assert self.offers is not None
        batches = batches_of(plans)
        # Counted, not refused: refusing such cycles (and granting only what the rows leave
        # next) cost churn at 256 instances a tenth of the budget (bench/README, session 14).
        self.tally["outruns"] += overshoots(batches, room_read, day, month)
        for batch in batches:
            counters = {
                day: rows.counter(day, WINDOW_FIELDS),
                month: rows.counter(month, WINDOW_FIELDS),
                minute: rows.counter(minute, MINUTE_FIELDS),
                INFLIGHT: rows.counter(INFLIGHT, INFLIGHT_FIELDS),
            }
            for plan in batch:
                for (plan_day, plan_month), changes in plan.windows.items():
                    for key in (plan_day, plan_month):
                        row = counters.setdefault(key, rows.counter(key, WINDOW_FIELDS))
                        for name, amount in changes.items():
                            row.add(name, amount)
                for name, amount in plan.minute.items():
                    counters[minute].add(name, amount)
                for name, amount in plan.inflight.items():
                    counters[INFLIGHT].add(name, amount)
            changed = [row for row in counters.values() if row.changed]
            # Held from the write, for two cycles more: held from the cycle's start, cycles of 1-2 s
            # (256 instances) let it lapse, waiters took it over, and each takeover failed the
            # last one's commit: no grant for 15 s of a churn run (bench/README, session 16).
            took = max(self.took, asyncio.get_running_loop().time() - self.started)
            until = self._ledger.now() + timedelta(seconds=ALLOC_SECONDS + 2 * took)
            alloc = alloc_entity(self.tenant.id, self.process_id, until, at=now)
            assert self.alloc_etag is not None
            operations = [row.operation() for row in changed] + [update_op(alloc, self.alloc_etag)]
            operations += [op for plan in batch for op in plan.operations]
            try:
                results = await submit(table, operations)
            except Conflict:
                self.tally["reclaims_failed"] += any(plan.reclaim for plan in batch)
                raise
            self.alloc_etag = str(results[len(changed)].get("etag"))
            for row, result in zip(changed, results, strict=False):
                row.etag, row.changed = str(result.get("etag")), False
            for operation, result in zip(
                operations[len(changed) + 1 :], results[len(changed) + 1 :], strict=True
            ):
                kind, entity, _ = operation
                process = str(entity["RowKey"]).removeprefix(OFFER_PREFIX)
                if (
                    kind != "delete"
                    and str(entity["RowKey"]).startswith(OFFER_PREFIX)
                    and process in self.offers
                ):
                    self.offers[process].etag = str(result.get("etag"))
