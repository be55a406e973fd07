"""bench/scale.py's demand: what the profile asks for, however slow the loop."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from bench import scale
from bench._scale_storage import Backend
from sk_core.errors import LimitExceeded
from sk_core.limits.lease_state import LeaseSettings


class SlowLoop:
    """A clock that moves only when the demand loop sleeps, and by more than it asked:
    each 20 ms step takes 100 ms, as on a loop kept busy by hundreds of instances."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += 5 * seconds


async def test_the_demand_follows_the_clock_when_each_step_takes_longer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = SlowLoop()
    # The module's clock and sleep only (the test's own event loop keeps the real ones).
    monkeypatch.setattr(scale, "time", SimpleNamespace(monotonic=loop.monotonic))
    monkeypatch.setattr(scale, "asyncio", SimpleNamespace(sleep=loop.sleep))
    profile = scale.Profile("steady", rate=300)
    simulation = scale.Simulation(
        1, profile, 10.0, backend=Backend("memory", latency_ms=0), seed=7, settings=LeaseSettings()
    )
    simulation.instances.append(None)  # type: ignore[arg-type]  # (spawn is counted, not run)
    spawned: Counter[str] = Counter()

    def spawn(_: Any, tenant: str) -> None:
        spawned[tenant] += 1

    monkeypatch.setattr(simulation, "spawn", spawn)
    await simulation.demand(until=10.0)
    # 300 a second for 10 s, per tenant: Poisson, seeded. Per step asked for (20 ms)
    # while each took 100 ms, it was about a fifth of that.
    for tenant in ("budget", "rate"):
        assert 2_800 <= spawned[tenant] <= 3_200


class Refusing:
    """A ledger that refuses every admission with ``code`` and ``retry_after``."""

    def __init__(self, code: str, retry_after: int) -> None:
        self.code, self.retry_after, self.asked = code, retry_after, 0

    async def admit(self, *_: Any, **__: Any) -> Any:
        self.asked += 1
        raise LimitExceeded(self.code, "refused", retry_after=self.retry_after, limit=1, remaining=0, reset=1)


@pytest.mark.parametrize(("code", "retry_after", "asks"), [("budget_held", 2, 3), ("rate_limited", 40, 1)])
async def test_a_client_that_retries_does_so_after_a_short_retry_after_only(
    monkeypatch: pytest.MonkeyPatch, code: str, retry_after: int, asks: int
) -> None:
    """--client-retries 2: a refusal with a Retry-After of a few seconds is asked again (twice
    at most, as the OpenAI SDK's clients), one to the next minute is final; only the
    final refusal counts as the request's outcome."""
    loop = SlowLoop()
    monkeypatch.setattr(scale, "time", SimpleNamespace(monotonic=loop.monotonic))
    monkeypatch.setattr(scale, "asyncio", SimpleNamespace(sleep=loop.sleep))
    simulation = scale.Simulation(
        1, scale.Profile("steady", rate=1), 600.0, backend=Backend("memory", latency_ms=0), seed=7,
        settings=LeaseSettings(),
    )
    ledger = Refusing(code, retry_after)
    simulation.instances.append(scale.Instance(ledger=ledger, started=0.0))  # type: ignore[arg-type]
    simulation.client_retries, simulation.demand_ends = 2, 600.0
    await simulation.request(simulation.instances[0], "budget")
    stats = simulation.stats["budget"]
    assert ledger.asked == asks
    assert stats.retried[code] == asks - 1
    assert stats.refusals == Counter({code: 1})
