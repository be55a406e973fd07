"""The admission rules on their own: no storage, no clock, every invariant checked."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sk_core.accounts import Limits
from sk_core.errors import LimitExceeded
from sk_core.limits.policy import Counters, decide, remaining_budget, window_keys
from sk_core.pricing import Price

NOW = datetime(2026, 3, 31, 23, 59, 10, tzinfo=UTC)
MIN_TOKENS = 16

prices = st.builds(
    lambda i, o: Price(Decimal(i), Decimal(o)),
    st.sampled_from(["0", "0.15", "1", "2.5"]),
    st.sampled_from(["0", "0.6", "2", "10"]),
)
limits = st.builds(
    Limits,
    requests_per_minute=st.integers(1, 50),
    tokens_per_minute=st.integers(1, 20_000),
    max_concurrent=st.integers(1, 8),
    daily_budget_nano=st.integers(0, 10**8),
    monthly_budget_nano=st.integers(0, 10**9),
)
counters = st.builds(
    Counters,
    inflight=st.integers(0, 10),
    minute_requests=st.integers(0, 60),
    minute_tokens=st.integers(0, 25_000),
    day_spent_nano=st.integers(0, 10**8),
    day_held_nano=st.integers(0, 10**7),
    month_spent_nano=st.integers(0, 10**9),
    month_held_nano=st.integers(0, 10**7),
)


@given(limits, counters, prices, st.integers(1, 5000), st.integers(1, 4096))
def test_a_grant_never_breaks_a_limit_and_a_refusal_names_the_one_that_would(
    tenant_limits: Limits, state: Counters, price: Price, prompt: int, requested: int
) -> None:
    code: str | None = None
    try:
        grant = decide(
            tenant_limits, state, price=price, prompt_tokens_bound=prompt,
            requested_max_tokens=requested, min_answer_tokens=MIN_TOKENS, now=NOW,
        )
    except LimitExceeded as refused:
        code = refused.code
    if code is not None:
        assert code in {
            "concurrency_limited", "rate_limited", "tokens_rate_limited", "budget_exceeded", "budget_held"
        }
        if code == "concurrency_limited":
            assert state.inflight >= tenant_limits.max_concurrent
        elif code == "rate_limited":
            assert state.minute_requests >= tenant_limits.requests_per_minute
        elif code in ("budget_exceeded", "budget_held"):
            # "exceeded" only when money really spent leaves no room for the smallest
            # answer; "held" when money in flight or leased (it comes back) is the cause.
            unheld = min(
                tenant_limits.daily_budget_nano - state.day_spent_nano,
                tenant_limits.monthly_budget_nano - state.month_spent_nano,
            )
            smallest = min(MIN_TOKENS, requested)
            fits_unheld = price.max_output_tokens(unheld, prompt) >= smallest
            assert fits_unheld == (code == "budget_held")
        return
    assert 1 <= grant.max_tokens <= requested
    assert state.inflight + 1 <= tenant_limits.max_concurrent
    assert state.minute_requests + 1 <= tenant_limits.requests_per_minute
    assert state.minute_tokens + grant.reserved_tokens <= tenant_limits.tokens_per_minute
    assert state.day_spent_nano + state.day_held_nano + grant.amount_nano <= tenant_limits.daily_budget_nano
    month_total = state.month_spent_nano + state.month_held_nano + grant.amount_nano
    assert month_total <= tenant_limits.monthly_budget_nano
    assert grant.amount_nano == price.cost_nano(prompt, grant.max_tokens)
    assert grant.rpm_remaining == tenant_limits.requests_per_minute - state.minute_requests - 1


def test_the_answer_is_clamped_to_what_the_budget_can_pay() -> None:
    price = Price(Decimal(1), Decimal(2))  # 1000 / 2000 nano-USD per token
    grant = decide(
        Limits(daily_budget_nano=1_000_000 + 100 * 2000),
        Counters(),
        price=price,
        prompt_tokens_bound=1000,
        requested_max_tokens=1000,
        min_answer_tokens=MIN_TOKENS,
        now=NOW,
    )
    assert grant.max_tokens == 100


def test_a_budget_that_cannot_pay_the_minimum_refuses_with_its_numbers() -> None:
    with pytest.raises(LimitExceeded) as refused:
        decide(
            Limits(daily_budget_nano=1000),
            Counters(),
            price=Price(Decimal(1), Decimal(2)),
            prompt_tokens_bound=10,
            requested_max_tokens=100,
            min_answer_tokens=MIN_TOKENS,
            now=NOW,
        )
    assert refused.value.code == "budget_exceeded"
    assert refused.value.extensions["budget_remaining_usd"] == 1e-6
    assert refused.value.retry_after == 51  # to the next UTC day


def test_remaining_budget_counts_held_money_as_spent() -> None:
    assert remaining_budget(100, 30, 20) == 50
    assert window_keys(NOW) == ("day-20260331", "month-202603", "minute-202603312359")


def test_money_only_held_or_leased_refuses_as_held_with_a_short_retry() -> None:
    """Issue 23, defect 1: a budget blocked by reservations in flight or slices leased to
    processes is not spent; the refusal says so and asks to retry in seconds, not at
    midnight."""

    def refusal(spent: int, held: int) -> LimitExceeded:
        with pytest.raises(LimitExceeded) as refused:
            decide(
                Limits(daily_budget_nano=1_000_000),
                Counters(day_spent_nano=spent, day_held_nano=held),
                price=Price(Decimal(1), Decimal(2)), prompt_tokens_bound=10, requested_max_tokens=100,
                min_answer_tokens=MIN_TOKENS, now=NOW,
            )
        return refused.value

    held = refusal(spent=100_000, held=890_000)
    assert held.code == "budget_held"
    assert 1 <= held.extensions["retry_after_seconds"] <= 5
    assert held.extensions["budget_held_usd"] == pytest.approx(890_000 / 1e9)
    spent = refusal(spent=990_000, held=5_000)
    assert spent.code == "budget_exceeded"
    assert spent.retry_after == 51
    assert spent.extensions["budget_held_usd"] == pytest.approx(5_000 / 1e9)


def test_one_rule_set_decides_on_a_tenants_counters_and_on_a_leased_slice() -> None:
    """Issue 23, item 4: the exact path (``decide``) and the lease path decide with one
    function, ``admit_within``, on the room each has."""
    from sk_core.limits.policy import Room, admit_within

    price = Price(Decimal(1), Decimal(2))
    room = Room(slots=1, requests=1, tokens=10_000, budget_nano=10 * 1000 + 50 * 2000, unheld_nano=10**9)
    clamped = admit_within(
        room, price=price, prompt_tokens_bound=10, requested_max_tokens=100, min_answer_tokens=16,
        rpm_limit=60, now=NOW,
    )
    assert (clamped.max_tokens, clamped.amount_nano, clamped.reserved_tokens) == (50, 110_000, 60)
    # The lease path asks for the whole answer (a sync may bring more), never a clamp.
    with pytest.raises(LimitExceeded) as short:
        admit_within(
            room, price=price, prompt_tokens_bound=10, requested_max_tokens=100, min_answer_tokens=100,
            rpm_limit=60, now=NOW,
        )
    assert short.value.code == "budget_held"
    exact = decide(
        Limits(daily_budget_nano=room.budget_nano, max_concurrent=1, requests_per_minute=60),
        Counters(), price=price, prompt_tokens_bound=10, requested_max_tokens=100,
        min_answer_tokens=16, now=NOW,
    )
    assert exact.max_tokens == clamped.max_tokens
    assert exact.amount_nano == clamped.amount_nano
