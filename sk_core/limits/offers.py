"""The rows of allocated leases (``allocation.py``) and the allocator's arithmetic.

alloc          the allocator: owner process, until (renewed by each of its writes)
offer-<pid>    written by the allocator only: what it granted that process
               (cumulative: budget of the day, requests and tokens of the minute,
               slots), what of the process's reports it has credited (``seen_*``),
               how much unused capacity the process may keep, and what is dry
claim-<pid>    written by that process only: what it took of its offer, gave back
               and settled (cumulative), its demand, what its waiting requests
               lack, and its expiry; ``prev_*``: the day it closed at midnight
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sk_core.limits.holds import EXPIRED_PREFIX
from sk_core.storage import etag_of, int64, read_int, submit, update_op

ALLOC = "alloc"
OFFER_PREFIX = "offer-"
CLAIM_PREFIX = "claim-"
CLAIM_RANGE = f"( RowKey ge '{CLAIM_PREFIX}' and RowKey lt '{CLAIM_PREFIX[:-1]}.' )"
OFFER_RANGE = f"( RowKey ge '{OFFER_PREFIX}' and RowKey lt '{OFFER_PREFIX[:-1]}.' )"
BATCH = 90  # offers a transaction (Azure: 100 operations; window rows and alloc besides)
ALLOC_SECONDS = 2.0  # an allocator not heard of this long is replaced
CLAIMS_PER_SECOND = 512  # claim rows an allocator reads a second, at most

# A process's reports, and the window-row field each moves into when credited.
REPORTED = (
    ("spent_nano", "spent_nano"),
    ("requests", "requests"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("overrun_nano", "overrun_nano"),
)
CLAIM_COUNTS = (
    "claimed_nano",
    "back_nano",
    *(name for name, _ in REPORTED),
    "minute_claimed",
    "minute_claimed_tokens",
    "minute_back",
    "minute_back_tokens",
    "slots_claimed",
    "slots_back",
    "busy",
    "unused_nano",
    "unused_requests",
    "unused_tokens",
    "waiting",
    "unit_nano",
    "unit_tokens",
    "peak",
    "seq",
    "lack_budget",
    "lack_requests",
    "lack_tokens",
    "lack_slots",
    # The day the process closed at its first sync of a new one (``prev_day``): its totals.
    "prev_claimed_nano",
    "prev_back_nano",
    *(f"prev_{name}" for name, _ in REPORTED),
)
OFFER_COUNTS = (
    "budget_nano",
    "seen_back_nano",
    *(f"seen_{name}" for name, _ in REPORTED),
    "minute_requests",
    "minute_tokens",
    "seen_minute_back",
    "seen_minute_back_tokens",
    "slots",
    "seen_slots_back",
    "keep_nano",
    "keep_requests",
    "keep_tokens",
    "keep_slots",
)
DIMENSIONS = ("budget", "requests", "tokens", "slots")


def alloc_entity(tenant_id: str, owner: str, until: datetime, at: datetime | None = None) -> dict[str, Any]:
    """The tenant's ``alloc`` row: held by ``owner`` until ``until`` ("" and now: released);
    ``at``, the time of the cycle that wrote it (waiting keepers poll after the next)."""
    entity = {"PartitionKey": tenant_id, "RowKey": ALLOC, "owner": owner, "until": until}
    return {**entity, "at": at} if at is not None else entity


async def take_alloc(table: Any, tenant_id: str, owner: str, alloc: Any, now: datetime) -> str:
    """Write the ``alloc`` row as ``owner``'s for ALLOC_SECONDS, conditional on the row as
    read (``alloc``; None: not there yet); its new ETag. ``Conflict``: another took it."""
    entity = alloc_entity(tenant_id, owner, now + timedelta(seconds=ALLOC_SECONDS))
    write = ("create", entity, {}) if alloc is None else update_op(entity, etag_of(alloc))
    return str((await submit(table, [write]))[0].get("etag"))


class Allocating(Exception):
    """A process's first request of a tenant, sent to the exact path, finds an allocator
    at work: it waits for a grant instead (hundreds of new instances deciding exactly at
    once would race the allocator's writes of the same rows; ``bench/scale.py``)."""


def allocating(alloc: Any, now: datetime) -> bool:
    """The ``alloc`` row as read says an allocator holds it now."""
    return alloc is not None and bool(alloc.get("owner")) and alloc["until"] > now


def offer_key(process_id: str) -> str:
    return f"{OFFER_PREFIX}{process_id}"


def claim_key(process_id: str) -> str:
    return f"{CLAIM_PREFIX}{process_id}"


@dataclass
class Row:
    """An offer or claim row as read: its counts, window names, ETag (None: absent)."""

    key: str
    counts: dict[str, int]
    day: str = ""
    month: str = ""
    minute: str = ""
    etag: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, key: str, entity: Any, names: tuple[str, ...]) -> Row:
        if entity is None:
            return cls(key, dict.fromkeys(names, 0))
        return cls(
            key,
            {name: read_int(entity.get(name)) for name in names},
            str(entity.get("day") or ""),
            str(entity.get("month") or ""),
            str(entity.get("minute") or ""),
            etag_of(entity),
            dict(entity),
        )

    def __getitem__(self, name: str) -> int:
        return self.counts[name]

    def restart(self, names: tuple[str, ...], **window: str) -> None:
        """A new day (``day``, ``month``) or minute (``minute``): these totals start at 0."""
        self.counts.update(dict.fromkeys(names, 0))
        for name, key in window.items():
            setattr(self, name, key)

    def entity(self, tenant_id: str, **more: Any) -> dict[str, Any]:
        return {
            "PartitionKey": tenant_id,
            "RowKey": self.key,
            "day": self.day,
            "month": self.month,
            "minute": self.minute,
            **{name: int64(value) for name, value in self.counts.items()},
            **more,
        }

    def write(self, tenant_id: str, **more: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
        entity = self.entity(tenant_id, **more)
        return ("create", entity, {}) if self.etag is None else update_op(entity, self.etag)


@dataclass
class Want:
    """One process's demand on one dimension, as the allocator sizes it."""

    process: str
    hold: int  # unused in its slice (as it last reported) plus offered and not yet claimed
    target: int  # what it should hold for the horizon at its recent rate
    unit: int  # what one call takes
    waiting: int  # its requests waiting for a sync right now (calls)


def allocate(
    rooms: dict[str, int], wants: dict[str, dict[str, Want]]
) -> tuple[dict[str, dict[str, int]], dict[str, int], set[str]]:
    """Grants by dimension and process, what is left, and the processes whose waiting
    requests got nothing this cycle.

    Waiting requests first, longest queues first, in whole calls on every dimension at
    once: budget for a call that has no slot (or requests for one that has no budget)
    would sit where it admits nothing while the calls that could use it wait. Then
    top-ups toward each target from what is left, at least half a target at a time
    (fewer, larger offers: each is a write of the offer and one of the claim that takes
    it), in proportion to what is missing when the room is short.
    """
    left = {d: max(0, room) for d, room in rooms.items()}
    grants = {d: dict.fromkeys(ws, 0) for d, ws in wants.items()}
    first = next(iter(wants.values()))
    unserved = set()
    for process in sorted(first, key=lambda p: -first[p].waiting):
        calls = first[process].waiting
        if not calls:
            break
        for d, ws in wants.items():
            w = ws[process]  # (a hold below zero: a slice overrun, made good first)
            calls = min(calls, max(0, w.hold + left[d]) // max(1, w.unit))
        if calls <= 0:
            unserved.add(process)
            continue
        for d, ws in wants.items():
            w = ws[process]
            granted = max(0, calls * w.unit - w.hold)
            grants[d][process] += granted
            left[d] -= granted
    for d, ws in wants.items():
        missing = {}
        for process, w in ws.items():
            short = w.target - w.hold - grants[d][process]
            missing[process] = short if short > 0 and short * 2 >= w.target else 0
        total = sum(missing.values())
        if not total or not left[d]:
            continue
        given = 0
        for process, short in missing.items():
            granted = short if total <= left[d] else short * left[d] // total
            grants[d][process] += granted
            given += granted
        left[d] -= given
    return grants, left, unserved


def add(counts: dict[str, int], name: str, amount: int) -> None:
    if amount:
        counts[name] = counts.get(name, 0) + amount


def whole(amount: int, unit: int) -> int:
    """``amount`` rounded down to whole ``unit``s."""
    return amount // max(1, unit) * max(1, unit)


def stale(claim: Row, now: datetime) -> bool:
    """A claim its process has not written for 2 of its report intervals: a live keeper
    writes every interval (jittered by half, so up to 1.5) while it holds anything, and
    half an interval is left for its event loop's lag. (At 1.6, 1,024 instances on 2
    cores, loops lagging up to 0.9 s, live instances went stale and claimed just as they
    were reclaimed: each such cycle ended before its grants; 1,024 bursty used 0.31-0.55
    of the budget at 1.6, 0.68-0.83 at 2, bench/README session 15.)"""
    written = claim.extra.get("at")
    report = float(claim.extra.get("report_s") or 2.0)
    return written is not None and (now - written).total_seconds() > 2.0 * report


class Taken(NamedTuple):
    """What a window row counts of a limit as read, and what a cycle's changes add."""

    current: int
    planned: int

    @property
    def ahead(self) -> int:
        """Once every change of the cycle has landed."""
        return self.current + self.planned


@dataclass
class Plan:
    """One process's part of a cycle: window-row changes and its row operations."""

    process: str
    # Budget-field changes by window: (day, month) -> field -> amount (both rows change).
    windows: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    minute: dict[str, int] = field(default_factory=dict)
    inflight: dict[str, int] = field(default_factory=dict)
    operations: list[Any] = field(default_factory=list)
    # A reclaim (``Allocator._reclaim``): conditional on its process's claim row, so it fails
    # if that process claims at the same moment.
    reclaim: bool = False
    # An expired or stale claim's (returns only): committed before the grants it funds
    # (``batches_of``).
    early: bool = False

    @property
    def changes(self) -> bool:
        """Any window, minute or in-flight row changes."""
        return any(self.windows.values()) or bool(self.minute) or bool(self.inflight)

    def at(self, day: str, month: str) -> dict[str, int]:
        return self.windows.setdefault((day, month), {})

    def of_window(self, key: str) -> list[dict[str, int]]:
        """The changes of the day or month row ``key`` (each pair changes both)."""
        return [changes for pair, changes in self.windows.items() if key in pair]


SPENT = ("spent_nano", "held_nano", "leased_nano")  # what counts against a budget


def batches_of(plans: list[Plan]) -> list[list[Plan]]:
    """A cycle's plans in commit order, BATCH operations a transaction: the early plans
    (expired and stale claims: their credits, expiries and reclaims), then plans that take
    nothing (returns only), then the rest. Every return the cycle's grants count on but a
    mixed plan's lands before them, or the cycle ends first: a reclaim that loses its race
    (its process claimed at that moment) fails its transaction, ahead of every grant."""
    def takes(plan: Plan) -> bool:
        # (Any field up: a credit, spent up and leased down, counts as taking. Summing each
        # window, as meant, measured worse once (256 churn: 3,062 left waiting); open.)
        changes = [*(v for c in plan.windows.values() for k, v in c.items() if k in SPENT)]
        return any(v > 0 for v in [*changes, *plan.minute.values(), *plan.inflight.values()])

    pending = [p for p in plans if p.operations or p.changes]
    pending.sort(key=lambda p: (not p.early, takes(p)))
    batches: list[list[Plan]] = []
    while pending or not batches:
        batch: list[Plan] = []
        size = 0
        while pending and size + len(pending[0].operations) <= BATCH:
            batch.append(plan := pending.pop(0))
            size += len(plan.operations)
        batches.append(batch)
    return batches


def overshoots(batches: list[list[Plan]], room: dict[str, int], day: str, month: str) -> bool:
    """Whether, committed in this order, some transaction would take a row past the room it
    had as read (``room``: day, month, requests, tokens, slots): what one gives back lands
    with it, not before (a cycle that failed midway keeps the transactions before). Known
    open: a process that both gives back and is granted commits with the takers; if a
    later transaction fails, a row stays over its limit by what that one would have
    credited, until the next cycle credits it (what was given back is not used twice)."""
    used = dict.fromkeys(room, 0)
    for batch in batches:
        for plan in batch:
            for key in ("day", "month"):
                window = day if key == "day" else month
                used[key] += sum(v for c in plan.of_window(window) for k, v in c.items() if k in SPENT)
            used["requests"] += plan.minute.get("requests", 0)
            used["tokens"] += plan.minute.get("tokens", 0)
            used["slots"] += plan.inflight.get("count", 0)
        if any(used[d] > max(0, room[d]) for d in room):
            return True
    return False


def in_transit(offer: Row, claim: Row | None, day: str, minute: str) -> tuple[int, int, int, int]:
    """A process's budget, requests, tokens and slots the window rows count as leased to it
    and its slices do not hold: offered and not claimed, or given back and not credited."""
    mine = claim or Row.read("", None, CLAIM_COUNTS)
    same = mine.minute == offer.minute == minute

    def apart(offered: str, took: str, back: str, seen: str, current: bool = True) -> int:
        return max(0, offer[offered] - mine[took] + mine[back] - offer[seen]) if current else 0

    return (
        apart("budget_nano", "claimed_nano", "back_nano", "seen_back_nano", mine.day == offer.day == day),
        apart("minute_requests", "minute_claimed", "minute_back", "seen_minute_back", same),
        apart("minute_tokens", "minute_claimed_tokens", "minute_back_tokens", "seen_minute_back_tokens", same),  # noqa: E501
        apart("slots", "slots_claimed", "slots_back", "seen_slots_back"),
    )


def expired_claim(tenant_id: str, claim: Row, charged: int, now: datetime) -> Any:
    """The audit row of a claim the allocator expired (flagged, as an expired lease's):
    the claim as last written, and what it was charged."""
    kept = {k: v for k, v in claim.extra.items() if k not in ("PartitionKey", "RowKey", "etag")}
    key = f"{EXPIRED_PREFIX}{claim.key}-{int(now.timestamp())}"
    entity = {"PartitionKey": tenant_id, "RowKey": key, **kept, "charged_nano": int64(charged)}
    return ("create", {**entity, "flagged": True, "charged_at": now}, {})


# Every claim and offer row of a partition (the usage read model reads them with the
# window rows: ``claimed``).
CLAIM_ROWS = f"{CLAIM_RANGE} or {OFFER_RANGE}"


@dataclass
class Claimed:
    """What a tenant's claim and offer rows tell that its window rows do not (yet)."""

    # Field changes of the current day and month rows: the reports the allocator has not
    # credited (spent and given back out of leased), at its next cycle.
    window: dict[str, int] = field(default_factory=dict)
    requests: int = 0  # of the current minute, counted in its row and unused (leased)
    busy: int = 0  # calls in flight on claims, as each process last wrote its claim

    def credit(self, values: dict[str, int]) -> dict[str, int]:
        """The current day's or month's counters with those reports moved in."""
        return {name: value + self.window.get(name, 0) for name, value in values.items()}


def claimed(rows: Mapping[str, Any], day: str, minute: str, now: datetime) -> Claimed:
    """``Claimed`` of one tenant's rows as read, keyed by RowKey."""
    seen = Claimed()
    for key, entity in rows.items():
        if not key.startswith(CLAIM_PREFIX):
            continue
        process = key.removeprefix(CLAIM_PREFIX)
        claim = Row.read(key, entity, CLAIM_COUNTS)
        offer = Row.read(offer_key(process), rows.get(offer_key(process)), OFFER_COUNTS)
        expires = entity.get("expires_at")
        if expires is None or expires > now:
            seen.busy += max(0, claim["busy"])
        if claim.day == offer.day == day:
            back = claim["back_nano"] - offer["seen_back_nano"]
            spent = claim["spent_nano"] - offer["seen_spent_nano"]
            add(seen.window, "leased_nano", -max(0, back + spent))
            for name, target in REPORTED:
                add(seen.window, target, max(0, claim[name] - offer[f"seen_{name}"]))
        this_minute = claim.minute == minute
        unused = claim["unused_requests"] if this_minute else 0
        if offer.minute == minute:
            # Offered and not claimed yet; given back and not credited yet.
            unused += offer["minute_requests"] - (claim["minute_claimed"] if this_minute else 0)
            if this_minute:
                unused += claim["minute_back"] - offer["seen_minute_back"]
        seen.requests += max(0, unused)
    return seen
