"""bench/scale.py's demand: what the profile asks for, however slow the loop."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from bench import scale
from bench._scale_storage import Backend
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
