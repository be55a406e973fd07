"""Model routing: deployments, named fallback chains, circuit breakers and a retry budget.

A *deployment* is one place a chat model can be called (provider, endpoint, model or
Azure deployment name, price, optional concurrency cap). A *chain* is an ordered list
of deployments: a call goes to the first one that is available and, on a failure that
another deployment may not share (429, 5xx, timeout, connection), to the next, inside
the same deadline. The reservation covers the dearest deployment of the chain
(``Chain.reservation_price``); the settlement uses the price of the one that answered.

Without ``SKF_MODEL_DEPLOYMENTS`` the table has one deployment, ``default``, built from
the ``SKF_MODEL_*`` settings, and one chain of it: the behaviour of a single model.

The breaker and the budget are per process (no storage round trip on the request
path); with N pods, an outage opens N breakers, each after its own few failures.
This module is pure: no SDK, no I/O.
"""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from sk_core.errors import BadRequest
from sk_core.pricing import Price
from sk_core.settings import DEFAULT_CHAIN

if TYPE_CHECKING:
    from sk_core.settings import Settings

DEFAULT_DEPLOYMENT = "default"


@dataclass(frozen=True)
class Deployment:
    """One place a chat model can be called."""

    name: str
    provider: str  # a settings.Provider value
    model: str  # model name, or the Azure OpenAI deployment name
    price: Price
    base_url: str | None = None  # OpenAI-compatible and local servers
    azure_endpoint: str = ""
    api_version: str = "2024-10-21"
    max_concurrency: int | None = None


@dataclass(frozen=True)
class Chain:
    """An ordered fallback list of deployments."""

    name: str
    deployments: tuple[Deployment, ...]

    @property
    def reservation_price(self) -> Price:
        """Per-token prices no deployment of the chain exceeds: what admission reserves at."""
        return Price(
            max(d.price.input_per_million for d in self.deployments),
            max(d.price.output_per_million for d in self.deployments),
        )


@dataclass(frozen=True)
class RoutingTable:
    """Every deployment and chain, parsed once from the settings."""

    deployments: dict[str, Deployment]
    chains: dict[str, Chain]
    default_chain: str = DEFAULT_CHAIN

    def chain(self, name: str | None) -> Chain:
        """The named chain (None: the default); an unknown name is the caller's error."""
        chain = self.chains.get(name or self.default_chain)
        if chain is None:
            raise BadRequest(f"Unknown model chain {name!r}; configured: {', '.join(sorted(self.chains))}.")
        return chain

    @classmethod
    def single(cls, deployment: Deployment) -> RoutingTable:
        """One deployment and one chain of it (today's ``SKF_MODEL_*`` configuration)."""
        return cls({deployment.name: deployment}, {DEFAULT_CHAIN: Chain(DEFAULT_CHAIN, (deployment,))})

    @classmethod
    def from_settings(cls, settings: Settings) -> RoutingTable:
        """``SKF_MODEL_DEPLOYMENTS``/``SKF_MODEL_CHAINS`` if set, else the single model.

        The settings are typed and were checked when read (every deployment priced,
        every chain member known, the default chain configured): this only maps them.
        The composition root builds the service's table; the runtime builder its own.
        """
        if not settings.model_deployments:
            return cls.single(
                Deployment(
                    name=DEFAULT_DEPLOYMENT,
                    provider=str(settings.model_provider),
                    model=settings.resolved_model_id,
                    price=settings.price,
                    base_url=settings.resolved_base_url,
                    azure_endpoint=settings.azure_openai_endpoint,
                    api_version=settings.azure_openai_api_version,
                )
            )
        deployments = {
            name: Deployment(
                name=name,
                provider=str(spec.provider),
                model=spec.model,
                price=settings.deployment_price(name),
                base_url=spec.base_url,
                azure_endpoint=spec.endpoint,
                api_version=spec.api_version,
                max_concurrency=spec.max_concurrency,
            )
            for name, spec in settings.model_deployments.items()
        }
        chains = {
            name: Chain(name, tuple(deployments[member] for member in members))
            for name, members in settings.chains.items()
        }
        return cls(deployments, chains, settings.model_chain or DEFAULT_CHAIN)


# ---------------------------------------------------------------------- health


class BreakerState(StrEnum):
    """Closed: calls flow. Open: calls skip the deployment. Half-open: one probe at a time."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# The error-rate rule looks at a sliding window and needs this many calls in it: with
# fewer, one unlucky call would open the circuit.
ERROR_RATE = 0.5
ERROR_RATE_MIN_CALLS = 10
WINDOW_SECONDS = 10.0


class CircuitBreaker:
    """Per deployment: open after ``failures`` consecutive failures, or when at least
    half of the last ``WINDOW_SECONDS``' calls (ten or more) failed; after ``cooldown``
    one probe goes through (half-open): success closes, failure re-opens."""

    def __init__(
        self,
        *,
        failures: int,
        cooldown: float,
        on_change: Callable[[BreakerState, BreakerState], None] = lambda old, new: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failures = failures
        self._cooldown = cooldown
        self._on_change = on_change
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self._calls: deque[tuple[float, bool]] = deque()

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose cooldown passed reads as half-open)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown:
            self._move(BreakerState.HALF_OPEN)
        return self._state

    def peek(self) -> BreakerState:
        """The state now, as ``state`` reads it, without moving the breaker (for metrics)."""
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown:
            return BreakerState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a call go to this deployment now? A half-open breaker lets one probe through;
        every allowed call must be followed by ``record``."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record(self, ok: bool | None) -> None:
        """The outcome of an allowed call (None: no verdict, e.g. the caller went away)."""
        if ok is None:
            self._probing = False  # the probe never finished: the next caller probes
            return
        now = self._clock()
        self._calls.append((now, ok))
        while self._calls and now - self._calls[0][0] > WINDOW_SECONDS:
            self._calls.popleft()
        if self._state is BreakerState.HALF_OPEN:
            self._probing = False
            if ok:
                self._consecutive = 0
                self._calls.clear()  # a fresh start: the failures before must not re-open it
                self._move(BreakerState.CLOSED)
            else:
                self._open(now)
            return
        self._consecutive = 0 if ok else self._consecutive + 1
        failed = sum(1 for _, good in self._calls if not good)
        if self._state is BreakerState.CLOSED and (
            self._consecutive >= self._failures
            or (len(self._calls) >= ERROR_RATE_MIN_CALLS and failed >= ERROR_RATE * len(self._calls))
        ):
            self._open(now)

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._move(BreakerState.OPEN)

    def _move(self, new: BreakerState) -> None:
        old, self._state = self._state, new
        if old is not new:
            self._on_change(old, new)


class RetryBudget:
    """Retries at most ``ratio`` of the requests of the last ``WINDOW_SECONDS`` (plus a
    floor of ``minimum``, so a quiet process can still retry): during an outage the
    fallback and retry attempts add at most that share of load (Envoy's retry budget)."""

    def __init__(
        self, *, ratio: float, minimum: int = 3, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ratio = ratio
        self._minimum = minimum
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def _prune(self, now: float) -> None:
        for times in (self._requests, self._retries):
            while times and now - times[0] > WINDOW_SECONDS:
                times.popleft()

    def note_request(self) -> None:
        """A first attempt."""
        now = self._clock()
        self._prune(now)
        self._requests.append(now)

    def try_retry(self) -> bool:
        """Take one retry from the budget, if any is left."""
        now = self._clock()
        self._prune(now)
        if len(self._retries) >= max(self._minimum, self._ratio * len(self._requests)):
            return False
        self._retries.append(now)
        return True


class DeploymentHealth:
    """The breakers, concurrency counts and the retry budget of one process."""

    def __init__(
        self,
        table: RoutingTable,
        *,
        failures: int,
        cooldown: float,
        retry_ratio: float,
        on_change: Callable[[str, BreakerState, BreakerState], None] = lambda name, old, new: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.breakers = {
            name: CircuitBreaker(
                failures=failures,
                cooldown=cooldown,
                on_change=functools.partial(on_change, name),
                clock=clock,
            )
            for name in table.deployments
        }
        self.inflight = dict.fromkeys(table.deployments, 0)
        self.retries = RetryBudget(ratio=retry_ratio, clock=clock)

    def acquire(self, deployment: Deployment, *, last_resort: bool = False) -> bool:
        """Take a slot on ``deployment`` if its cap and breaker allow; then ``release``.

        ``last_resort``: the chain's last deployment, which the breaker does not skip.
        A breaker diverts calls to a fallback; with none left, refusing the call would
        turn a blip (one reset pooled connection fails every call in flight at once)
        into seconds of failures. The retry budget still bounds the load on a dead one.
        """
        cap = deployment.max_concurrency
        if cap is not None and self.inflight[deployment.name] >= cap:
            return False
        if not self.breakers[deployment.name].allow() and not last_resort:
            return False
        self.inflight[deployment.name] += 1
        return True

    def release(self, deployment: Deployment, *, ok: bool | None, keep_slot: bool = False) -> None:
        """The verdict on an acquired call, and its slot back unless ``keep_slot`` (a
        stream still open: ``free`` when it closes). ``ok`` is whether the deployment
        worked (a 4xx it answered about the request's content counts as working; None:
        no verdict)."""
        if not keep_slot:
            self.inflight[deployment.name] -= 1
        self.breakers[deployment.name].record(ok)

    def free(self, deployment: Deployment) -> None:
        """Give back a slot kept by ``release(keep_slot=True)``."""
        self.inflight[deployment.name] -= 1

    def state(self, name: str) -> BreakerState:
        """A deployment's breaker state."""
        return self.breakers[name].state

    def states(self) -> list[tuple[str, str]]:
        """Every deployment's breaker state, read without moving any (for the gauge)."""
        return [(name, str(breaker.peek())) for name, breaker in self.breakers.items()]
