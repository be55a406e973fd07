"""One admitted call through a ``Ledger``, as the lease and pool tests make them."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from sk_core.accounts import Tenant
from sk_core.errors import LimitExceeded
from sk_core.limits import Ledger
from sk_core.limits.allocated import AllocatedKeeper
from sk_core.pricing import Price

PRICE = Price(Decimal("1.00"), Decimal("2.00"))  # 1000 / 2000 nano-USD per token


async def call(ledger: Ledger, who: Tenant, answer_tokens: int | None = None) -> int:
    """One admitted call that answers ``max_tokens`` (or fewer); returns its cost (0 if refused)."""
    try:
        hold = await ledger.admit(
            who, price=PRICE, prompt_tokens_bound=100, requested_max_tokens=100, function="f", key_id="k"
        )
    except LimitExceeded:
        return 0
    await asyncio.sleep(0.002)
    used = hold.max_tokens if answer_tokens is None else min(answer_tokens, hold.max_tokens)
    cost = PRICE.cost_nano(100, used)
    settlement = await ledger.settle(hold, cost_nano=cost, prompt_tokens=100, completion_tokens=used)
    return settlement.cost_nano


async def allocating(keeper: Any) -> None:
    """Until the process allocates: its first claim, and the election, follow its first
    admission (which is exact)."""
    assert isinstance(keeper, AllocatedKeeper)
    for _ in range(100):
        if keeper.allocators:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no allocator")


def stop_allocating(keeper: Any) -> None:
    """No allocator cycle runs in this process from here on: the rows it offers and credits
    stay as they are, so two reads a moment apart see the same state."""
    assert isinstance(keeper, AllocatedKeeper)
    for state in keeper._claims.values():
        if state.allocator is not None:
            state.allocator.stop()
        if state.allocating is not None:
            state.allocating.cancel()
