"""Prices in integer nano-USD: costs round up, budgets clamp answers exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sk_core.pricing import Price, nano, parse_prices, usd

PRICE = Price(Decimal("0.15"), Decimal("0.60"))


def test_costs_round_up_to_the_next_nano_usd() -> None:
    assert PRICE.cost_nano(1, 0) == 150
    assert Price(Decimal("0.0001"), Decimal(0)).cost_nano(1, 0) == 1  # 0.1 nano → 1


@given(budget=st.integers(0, 10**12), prompt=st.integers(0, 10**6))
def test_the_largest_answer_that_fits_a_budget_fits_and_one_more_does_not(budget: int, prompt: int) -> None:
    tokens = PRICE.max_output_tokens(budget, prompt)
    if tokens >= 0:
        assert PRICE.cost_nano(prompt, tokens) <= budget
    assert PRICE.cost_nano(prompt, tokens + 1) > budget


def test_overrides_overlay_the_defaults_and_bad_ones_are_refused() -> None:
    table = parse_prices('{"mine": {"input": 1, "output": 2}}')
    assert table["mine"] == Price(Decimal(1), Decimal(2))
    assert "gpt-4o-mini" in table
    with pytest.raises(ValueError, match="mine"):
        parse_prices('{"mine": {"input": -1, "output": 2}}')


def test_usd_conversions() -> None:
    assert nano("0.000000001") == 1
    assert usd(nano("12.5")) == 12.5
