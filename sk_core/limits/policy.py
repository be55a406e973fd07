"""The admission rules: budget, requests and tokens per minute, concurrency.

Pure arithmetic on counters: no I/O, no clock of its own, nothing from Azure. The
ledger reads a tenant's counters, asks ``decide`` and writes the grant back; the
admin CLI and the usage API use ``remaining_budget``, so "how much is left" is
computed in one place.

**Guarantees** (each checked against the counters the caller commits on):

- Budget: ``spent + held + worst_case <= budget`` for the day and the month, where the
  worst case is the prompt's upper bound (UTF-8 bytes + per-message overhead) at the
  input price plus the clamped ``max_tokens`` at the output price.
- Requests per minute: at most ``rpm`` admissions inside one UTC calendar minute.
- Tokens per minute: admitted worst-case tokens never exceed ``tpm`` in one minute.
- Concurrency: at most ``max_concurrent`` admitted-but-unsettled requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sk_core.accounts import Limits
from sk_core.errors import LimitExceeded, RateState
from sk_core.limits.windows import window_keys as window_keys  # re-exported: leases call it here
from sk_core.pricing import Price, usd


def seconds_to_next_minute(now: datetime) -> int:
    """Seconds until the current UTC minute ends (at least 1)."""
    return max(1, 60 - now.second)


def seconds_to_next_day(now: datetime) -> int:
    """Seconds until the current UTC day ends (at least 1)."""
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()) + 1)


def seconds_to_next_month(now: datetime) -> int:
    """Seconds until the current UTC month ends (at least 1)."""
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return max(1, int((following - now).total_seconds()) + 1)


def remaining_budget(budget_nano: int, spent_nano: int, held_nano: int) -> int:
    """What a window can still pay for: the budget less what is spent and reserved."""
    return budget_nano - spent_nano - held_nano


def count_request(limits: Limits, minute_requests: int, now: datetime) -> RateState:
    """One more request in the current minute, or ``LimitExceeded`` (``rate_limited``).

    The requests-per-minute rule on its own: ``decide`` applies it to every admission,
    and a cached answer (no tokens, no cost, no slot) is checked against it alone.
    """
    rpm, reset = limits.requests_per_minute, seconds_to_next_minute(now)
    if minute_requests >= rpm:
        raise LimitExceeded(
            "rate_limited",
            "Requests-per-minute limit reached.",
            retry_after=reset,
            limit=rpm,
            remaining=rpm - minute_requests,
            reset=reset,
        )
    return RateState(limit=rpm, remaining=rpm - minute_requests - 1, reset=reset)


@dataclass(frozen=True)
class Counters:
    """A tenant's counters as an admission sees them."""

    inflight: int = 0
    minute_requests: int = 0
    minute_tokens: int = 0
    day_spent_nano: int = 0
    day_held_nano: int = 0
    month_spent_nano: int = 0
    month_held_nano: int = 0


@dataclass(frozen=True)
class Grant:
    """An admission: the clamped answer cap and what it reserves."""

    max_tokens: int
    amount_nano: int
    reserved_tokens: int
    rpm_limit: int
    rpm_remaining: int
    rpm_reset: int


# Retry-After of a refusal caused by money only held or leased: reservations settle and
# leased slices are recalled within a few report intervals, not at midnight.
HELD_RETRY_SECONDS = 2


@dataclass(frozen=True)
class Room:
    """What one admission may still take, whoever keeps the counters.

    The exact path computes it from a tenant's stored counters (``Counters.room``); a
    quota lease from the slices it holds in memory. One rule set (``admit_within``)
    decides on both, so the two paths cannot drift apart.
    """

    slots: int  # admissions that may still be in flight at once
    requests: int  # admissions left in the current minute
    tokens: int  # tokens left in the current minute
    budget_nano: int  # what may still be reserved (day and month, the smaller)
    # What could be reserved if every reservation in flight and every leased slice came
    # back: when that would pay for the smallest answer, a refusal says "held", not "spent".
    unheld_nano: int
    held_nano: int = 0  # held + leased, reported in a refusal
    daily: bool = True  # the smaller window is the day (else the month)
    requests_used: int = 0  # the minute's admissions so far (RateLimit headers)


def admit_within(
    room: Room,
    *,
    price: Price,
    prompt_tokens_bound: int,
    requested_max_tokens: int,
    min_answer_tokens: int,
    rpm_limit: int,
    now: datetime,
) -> Grant:
    """Admit one request within ``room`` or raise ``LimitExceeded`` saying which limit.

    The answer cap is clamped to what the tokens per minute and the budget can pay,
    down to ``min_answer_tokens`` (the lease path passes the requested cap: all or
    nothing, a sync may bring more; the exact path the configured minimum).
    """
    minute_reset = seconds_to_next_minute(now)

    def refuse(code: str, detail: str, retry_after: int, extensions: dict[str, float] | None = None) -> None:
        raise LimitExceeded(
            code,
            detail,
            retry_after=retry_after,
            limit=rpm_limit,
            remaining=rpm_limit - room.requests_used,
            reset=minute_reset,
            extensions=extensions,
        )

    if room.slots <= 0:
        refuse("concurrency_limited", "Too many requests in flight for this tenant.", 1)
    if room.requests <= 0:
        refuse("rate_limited", "Requests-per-minute limit reached.", minute_reset)
    smallest = min(min_answer_tokens, requested_max_tokens)
    tpm_room = room.tokens - prompt_tokens_bound
    if tpm_room < smallest:
        refuse("tokens_rate_limited", "Tokens-per-minute limit reached.", minute_reset)
    budget_room = price.max_output_tokens(room.budget_nano, prompt_tokens_bound)
    if budget_room < smallest:
        # The tenant's own numbers, so a caller (and the overspend test) can see that
        # the refusal was made because even the minimum did not fit.
        numbers = {
            "budget_remaining_usd": usd(max(0, room.budget_nano)),
            "budget_held_usd": usd(max(0, room.held_nano)),
            "minimum_cost_usd": usd(price.cost_nano(prompt_tokens_bound, smallest)),
        }
        window = "daily" if room.daily else "monthly"
        if price.max_output_tokens(room.unheld_nano, prompt_tokens_bound) >= smallest:
            refuse(
                "budget_held",
                f"The tenant's {window} budget is reserved by calls in flight or leased to "
                f"service instances, not spent; retry in {HELD_RETRY_SECONDS} s.",
                HELD_RETRY_SECONDS,
                numbers,
            )
        resets = seconds_to_next_day(now) if room.daily else seconds_to_next_month(now)
        refuse(
            "budget_exceeded",
            f"The tenant's {window} budget cannot cover this request; it resets in {resets} s.",
            resets,
            numbers,
        )
    max_tokens = min(requested_max_tokens, tpm_room, budget_room)
    return Grant(
        max_tokens=max_tokens,
        amount_nano=price.cost_nano(prompt_tokens_bound, max_tokens),
        reserved_tokens=prompt_tokens_bound + max_tokens,
        rpm_limit=rpm_limit,
        rpm_remaining=room.requests - 1,
        rpm_reset=minute_reset,
    )


def room_of(limits: Limits, counters: Counters) -> Room:
    """A tenant's room on its stored counters (held and leased money counts as taken)."""
    day_left = remaining_budget(limits.daily_budget_nano, counters.day_spent_nano, counters.day_held_nano)
    month_left = remaining_budget(
        limits.monthly_budget_nano, counters.month_spent_nano, counters.month_held_nano
    )
    daily = day_left <= month_left
    return Room(
        slots=limits.max_concurrent - counters.inflight,
        requests=limits.requests_per_minute - counters.minute_requests,
        tokens=limits.tokens_per_minute - counters.minute_tokens,
        budget_nano=min(day_left, month_left),
        unheld_nano=min(
            limits.daily_budget_nano - counters.day_spent_nano,
            limits.monthly_budget_nano - counters.month_spent_nano,
        ),
        held_nano=counters.day_held_nano if daily else counters.month_held_nano,
        daily=daily,
        requests_used=counters.minute_requests,
    )


def decide(
    limits: Limits,
    counters: Counters,
    *,
    price: Price,
    prompt_tokens_bound: int,
    requested_max_tokens: int,
    min_answer_tokens: int,
    now: datetime,
) -> Grant:
    """Admit one request on a tenant's stored ``counters`` or raise ``LimitExceeded``."""
    return admit_within(
        room_of(limits, counters),
        price=price,
        prompt_tokens_bound=prompt_tokens_bound,
        requested_max_tokens=requested_max_tokens,
        min_answer_tokens=min_answer_tokens,
        rpm_limit=limits.requests_per_minute,
        now=now,
    )
