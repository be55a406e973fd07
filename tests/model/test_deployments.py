"""Routing as values: the table from settings, the breaker and the retry budget on a fake clock."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from sk_core.errors import BadRequest
from sk_core.model import (
    BreakerState,
    CircuitBreaker,
    Deployment,
    DeploymentHealth,
    RetryBudget,
    RoutingTable,
)
from sk_core.pricing import Price
from tests.support.settings import SERVICE_ENV, make_settings


def state(breaker: CircuitBreaker) -> BreakerState:
    # A call, not the property: mypy would narrow the property after the first assert.
    return breaker.state


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


DEPLOYMENTS = {
    "east": {"provider": "openai_compatible", "base_url": "http://a/v1", "model": "stub-model"},
    "west": {
        "provider": "openai_compatible",
        "base_url": "http://b/v1",
        "model": "big",
        "price": {"input": 5, "output": 1},
        "max_concurrency": 1,
    },
}


def test_without_deployments_the_single_model_is_the_default_chain() -> None:
    settings = make_settings(SERVICE_ENV, model_base_url="http://127.0.0.1:1/v1")
    table = RoutingTable.from_settings(settings)
    chain = table.chain(None)
    assert [d.name for d in chain.deployments] == ["default"]
    assert chain.deployments[0].model == "stub-model"
    assert chain.reservation_price == settings.price


def test_the_reservation_covers_the_dearest_deployment_per_token_kind() -> None:
    settings = make_settings(
        SERVICE_ENV,
        model_base_url="http://x/v1",
        model_deployments=json.dumps(DEPLOYMENTS),
        model_chains=json.dumps({"default": ["east", "west"], "cheap": ["east"]}),
    )
    table = RoutingTable.from_settings(settings)
    chain = table.chain(None)
    # east: 1 in / 2 out (SKF_MODEL_PRICES); west: 5 in / 1 out.
    assert chain.reservation_price == Price(Decimal(5), Decimal(2))
    assert table.chain("cheap").reservation_price == Price(Decimal(1), Decimal(2))
    with pytest.raises(BadRequest):
        table.chain("nope")


@pytest.mark.parametrize(
    ("deployments", "chains", "message"),
    [
        ({"a": {"base_url": "http://a", "model": "unpriced"}}, {}, "no price"),
        ({"a": {"model": "stub-model"}}, {}, "base_url"),
        (DEPLOYMENTS, {"default": ["east", "ghost"]}, "unknown deployments"),
        (DEPLOYMENTS, {"other": ["east"]}, "SKF_MODEL_CHAIN"),
    ],
)
def test_a_bad_routing_configuration_fails_at_startup(
    deployments: dict[str, object], chains: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_settings(
            SERVICE_ENV,
            model_base_url="http://x/v1",
            model_deployments=json.dumps(deployments),
            model_chains=json.dumps(chains),
        )


def test_the_breaker_opens_on_consecutive_failures_and_probes_once_after_cooldown() -> None:
    clock = Clock()
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        failures=3, cooldown=5, clock=clock, on_change=lambda old, new: changes.append((old, new))
    )
    for _ in range(2):
        assert breaker.allow()
        breaker.record(False)
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record(False)
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    clock.now += 5
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # one at a time
    breaker.record(True)
    assert state(breaker) is BreakerState.CLOSED
    assert changes == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]


def test_a_failed_probe_reopens_and_an_abandoned_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=1, cooldown=1, clock=clock)
    breaker.allow()
    breaker.record(False)
    clock.now += 1
    assert breaker.allow()
    breaker.record(None)  # the caller went away: no verdict
    assert breaker.allow()  # the next caller probes
    breaker.record(False)
    assert state(breaker) is BreakerState.OPEN


def rate_only_breaker() -> tuple[Clock, CircuitBreaker]:
    """A breaker whose failure streak never trips: only its error-rate rule can."""
    clock = Clock()
    return clock, CircuitBreaker(failures=100, cooldown=1, clock=clock)


def test_the_breaker_opens_on_an_error_rate_without_a_failure_streak() -> None:
    _, breaker = rate_only_breaker()
    for i in range(10):
        breaker.allow()
        breaker.record(i % 2 == 0)  # alternating: never two failures in a row
    assert state(breaker) is BreakerState.OPEN


def test_old_calls_leave_the_error_rate_window() -> None:
    clock, breaker = rate_only_breaker()
    for i in range(9):
        breaker.record(i % 2 == 1)  # F S F S F S F S F: 5 of 9, too few calls to judge
    assert state(breaker) is BreakerState.CLOSED
    clock.now += 11  # they leave the 10 s window
    breaker.record(True)  # counted with them, 5 of 10 would open it
    assert state(breaker) is BreakerState.CLOSED


def test_the_retry_budget_is_a_share_of_recent_requests_with_a_floor() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, minimum=3, clock=clock)
    for _ in range(50):
        budget.note_request()
    taken = sum(budget.try_retry() for _ in range(100))
    assert taken == 10  # 20 % of 50
    clock.now += 11  # the window moved on
    assert sum(budget.try_retry() for _ in range(100)) == 3  # the floor


def two_deployments() -> tuple[DeploymentHealth, dict[str, Deployment]]:
    """Health (a breaker that opens on one failure) over the two DEPLOYMENTS."""
    settings = make_settings(
        SERVICE_ENV, model_base_url="http://x/v1", model_deployments=json.dumps(DEPLOYMENTS)
    )
    table = RoutingTable.from_settings(settings)
    return DeploymentHealth(table, failures=1, cooldown=60, retry_ratio=0.2), table.deployments


def test_a_deployment_at_its_cap_is_skipped_without_touching_its_breaker() -> None:
    health, deployments = two_deployments()
    west = deployments["west"]
    assert health.acquire(west)
    assert not health.acquire(west)  # max_concurrency 1
    health.release(west, ok=True)
    assert health.acquire(west)
    assert health.state("west") is BreakerState.CLOSED


def test_an_open_breaker_never_refuses_a_chains_last_resort() -> None:
    health, deployments = two_deployments()
    east = deployments["east"]
    assert health.acquire(east)
    health.release(east, ok=False)
    assert health.state("east") is BreakerState.OPEN
    assert not health.acquire(east)  # a fallback would be tried instead
    assert health.acquire(east, last_resort=True)  # nothing else to try: called anyway
    health.release(east, ok=True)
