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
        assert code in {"concurrency_limited", "rate_limited", "tokens_rate_limited", "budget_exceeded"}
        if code == "concurrency_limited":
            assert state.inflight >= tenant_limits.max_concurrent
        elif code == "rate_limited":
            assert state.minute_requests >= tenant_limits.requests_per_minute
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
