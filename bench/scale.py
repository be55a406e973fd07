"""Quota leases at serverless scale: N lease keepers on one tenant's pool, simulated.

    PYTHONPATH=. .venv/bin/python bench/scale.py --quick   # N=256, steady + bursty, memory, < 2 min
    PYTHONPATH=. .venv/bin/python bench/scale.py           # N=8..1024 x 3 profiles; Azurite at 8, 64

Azure Functions scales one app to hundreds of instances; this machine has 2 cores. So
each *instance* here is one ``Ledger`` with its own ``LeaseKeeper`` (the real lease,
sub-pool and ledger code, nothing stubbed above storage), many of them in one asyncio
loop. Storage (``_scale_storage.py``) is either sk_core's ``MemoryTableStore`` (the
table service's ETag, conflict and query rules) on an account that models Azure Table
Storage's documented scalability targets, or a real Azurite (``--azurite``, default on;
at ``--azurite-instances``, 8 and 64: one emulator process cannot serve more):

- a single table partition: about **2,000 entities per second**
  (https://learn.microsoft.com/azure/storage/tables/scalability-targets, "Target
  throughput for a single table partition (1 KiB-entities): Up to 2,000 entities per
  second"); over it Azure answers 503 ServerBusy, here a caller waits (queued per
  partition), so an overloaded partition shows as latency and as ops/s at the target;
- a storage account: about 20,000 transactions per second (same page), never the
  binding limit here (one tenant);
- a round trip: ``--latency-ms`` (default 8 ms, jittered +-50 %), in-region order;
- ``--model-split``: operations on sub-pool rows alone (pool syncs, loans) are counted
  and throttled in partitions of their own, an upper bound of that layout
  (``_scale_storage.split_pool_partition``).

The instances' slices come from one allocator per tenant (``sk_core/limits/allocation.py``,
the default since session 13); after the drain one last allocator cycle credits what the
closing instances reported (``credit_all``), and ``claim_writes`` says why the instances
wrote their claim rows. ``--pools``: shared pool rows instead (``SKF_LEASE_ALLOCATOR=false``;
``--max-pools`` and ``--pool-threshold`` apply to them).

Entities are counted on both backends as the target counts them: a transaction counts
its entities, a query the entities it returns (at least one).

**Tenants** (each its own partition, served by every instance): ``budget`` (a daily
budget the demand exhausts mid-run; RPM and TPM far away) and ``rate`` (an RPM limit
the demand saturates; budget far away). The clock is simulated so each run lies inside
one UTC calendar minute.

**Profiles**: ``steady`` (Poisson arrivals on every instance), ``bursty`` (every 4 s all
instances receive a burst at once, a trickle between), ``churn`` (steady; every 2 s a
tenth of the instances vanish without a shutdown hook, as on a Functions scale-in, and
as many new ones start). A refusal is final, unless ``--client-retries N``: then a
refused client retries (on a random instance) after its ``Retry-After`` when that is at
most 5 s and falls within the demand, up to N times, as the OpenAI SDK's clients do
(``max_retries=2``, honouring ``Retry-After``); ``retried`` counts those refusals.

Prints one JSON object: ``{"machine": ..., "runs": [...]}``; per run ``backend``, ``instances``,
``profile``, ``overspend_nano`` (and RPM / TPM / concurrency overspend), ``budget_usable``
(0-1: the budget tenant's spend at the end over its budget; ``budget_used_in_demand``:
what answers had cost when the demand ended, the rest being admitted in the drain),
``requests_unfinished_after_drain`` (still waiting for a decision 10 s after the demand:
behind the HTTP API, 503 ``limits_unavailable``), ``rpm_admitted`` and
``rpm_over_limit``, ``hottest_partition_ops_per_s`` (mean over the run) and its peak
second, ``partition_target_ops_per_s``, ``conflicts_per_sync``, ``first_grant_s`` (new
instances: first request to first admission from a lease), ``fairness`` (Jain's index
of admitted/asked over instances), the report interval the keepers ended at, and
``allocation`` (the allocators' ``cycles``; ``outruns``, cycles whose commit order let a
grant land before a return funding it; ``reclaims_failed``, cycles ended before any
grant by a failed transaction holding a reclaim of a stale claim); with ``--series``,
where the budget sat every 0.5 s (``_scale_series.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bench import _scale_series
from bench._common import percentile
from bench._scale_storage import PARTITION_TARGET, Backend, Meter, MeteredStore
from scripts.devservices import free_port, start_azurite
from sk_core.accounts import Limits, Tenant
from sk_core.errors import LimitExceeded, StorageUnavailable
from sk_core.limits import Hold, Ledger
from sk_core.limits import leases as leases_module
from sk_core.limits.allocated import AllocatedKeeper
from sk_core.limits.lease_state import LeaseSettings
from sk_core.limits.sweep import credit_all
from sk_core.pricing import Price
from sk_core.storage import development_connection_string

DRAIN_SECONDS = 10.0  # after the demand: calls finishing, then hand-backs, each at most this
RETRY_AFTER_MAX = 5  # --client-retries: longer Retry-Afters (a new minute, a new day) are final
ACCOUNT_TARGET = 20000  # transactions per second, one storage account

PRICE = Price(Decimal("1.0"), Decimal("2.0"))  # USD per million tokens: 1000 / 2000 nano each
PROMPT_BOUND = 200  # what admission reserves for the prompt
PROMPT_USED = 150
MAX_TOKENS = 300


# --------------------------------------------------------------------- the simulation


KINDS: Counter[str] = Counter()  # optimistic updates (attempts, conflicts) by kind, all instances


def _count_updates() -> None:
    """Count ``Ledger.update`` attempts and lost races by kind (lease sync, ledger update...)."""
    original = Ledger.update

    async def update(self: Ledger, table: Any, tenant_id: str, what: str, plan: Any, **options: Any) -> Any:
        async def counted() -> Any:
            KINDS[what + " attempts"] += 1
            return await plan()

        return await original(self, table, tenant_id, what, counted, **options)

    Ledger.update = update  # type: ignore[method-assign]
    pool_sync = leases_module.plan_pool_sync  # type: ignore[attr-defined]

    async def counted_pool_sync(*args: Any, **options: Any) -> Any:
        planned = await pool_sync(*args, **options)
        KINDS["pool syncs planned" if planned is not None else "rebalances planned"] += 1
        return planned

    leases_module.plan_pool_sync = counted_pool_sync  # type: ignore[attr-defined]


class SimClock:
    """UTC now, starting at second 1 of a calendar minute (a run stays inside it)."""

    def __init__(self) -> None:
        self.base = datetime(2030, 1, 1, 12, 0, 1, tzinfo=UTC)
        self.started = time.monotonic()
        self.skip = 0.0  # seconds jumped (to let abandoned leases expire)

    def __call__(self) -> datetime:
        return self.base + timedelta(seconds=time.monotonic() - self.started + self.skip)


@dataclass
class Instance:
    """One Functions instance: a ledger (with its lease keeper) and what it served."""

    ledger: Ledger
    started: float
    asked: int = 0
    admitted: int = 0
    first_request: float | None = None
    first_grant: float | None = None
    alive: bool = True
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


@dataclass
class Stats:
    """What the simulation saw, per tenant."""

    admitted: Counter[str] = field(default_factory=Counter)  # minute -> admissions (rate tenant)
    refusals: Counter[str] = field(default_factory=Counter)
    settled_nano: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    first_exceeded: float | None = None
    # Admissions whose answer cap was lowered below what was asked (a slice or the
    # budget's end): the answer is shorter though nothing was refused.
    clamped: int = 0
    retried: Counter[str] = field(default_factory=Counter)  # refusals a client retried, by code


@dataclass(frozen=True)
class Profile:
    """How demand arrives."""

    name: str
    rate: float  # requests per second, all instances together, per tenant
    burst_every: float = 0.0  # seconds; 0: no bursts
    burst_per_instance: int = 0
    churn_every: float = 0.0  # seconds; 0: instances stay
    churn_share: float = 0.0


def make_tenants(profile: Profile, seconds: float, instances: int) -> dict[str, Tenant]:
    average = PRICE.cost_nano(PROMPT_USED, int(MAX_TOKENS * 0.65))
    bursts = seconds / profile.burst_every if profile.burst_every else 0
    burst = profile.burst_per_instance * instances * bursts
    asked = profile.rate * seconds + burst
    budget = int(asked * 0.6 * average)  # demand runs out of it a bit after mid-run
    rpm = max(100, int(asked * 0.6))
    # Not the limit under test: room for every instance's slots and the bursts' calls.
    concurrency = 4 * instances + 2 * profile.burst_per_instance * instances + int(profile.rate)
    return {
        "budget": Tenant(id="budget", display_name="budget", limits=Limits(
            requests_per_minute=10**7, tokens_per_minute=10**10, max_concurrent=concurrency,
            daily_budget_nano=budget, monthly_budget_nano=10 * budget)),
        "rate": Tenant(id="rate", display_name="rate", limits=Limits(
            requests_per_minute=rpm, tokens_per_minute=10**10, max_concurrent=concurrency,
            daily_budget_nano=10**15, monthly_budget_nano=10**15)),
    }


class Simulation:
    """N instances, one account, a demand profile, for ``seconds``."""

    def __init__(
        self, n: int, profile: Profile, seconds: float, *, backend: Backend, seed: int,
        settings: LeaseSettings,
    ) -> None:
        self.n = n
        self.profile = profile
        self.seconds = seconds
        self.backend = backend
        self.meter = Meter()
        self.clock = SimClock()
        self.tenants = make_tenants(profile, seconds, n)
        self.stats = {name: Stats() for name in self.tenants}
        self.instances: list[Instance] = []
        self.gone: list[Instance] = []
        self.random = random.Random(seed)
        self.settings = settings
        self.stuck = self.unclosed = 0
        self.stuck_by_tenant: Counter[str] = Counter()
        self.settled_in_demand = 0  # the budget tenant's settled cost when the demand ended
        self.lags: list[float] = []
        self.record_series = False  # --series: where the budget sits, every 0.5 s
        self.client_retries = 0  # --client-retries: a refused client retries after Retry-After
        self.demand_ends = math.inf
        self.series: list[dict[str, Any]] = []

    def start_instance(self) -> Instance:
        metered = MeteredStore(self.backend.store(), self.meter, self.backend.split_pools)
        ledger = Ledger(
            store=metered,  # type: ignore[arg-type]  # a TableStore
            lease_seconds=60,
            min_answer_tokens=16,
            clock=self.clock,
            leases=self.settings,
        )
        instance = Instance(ledger=ledger, started=time.monotonic())
        self.instances.append(instance)
        return instance

    async def request(self, instance: Instance, tenant_name: str, attempt: int = 0) -> None:
        tenant = self.tenants[tenant_name]
        stats = self.stats[tenant_name]
        now = time.monotonic()
        instance.asked += 1
        if instance.first_request is None:
            instance.first_request = now
        try:
            hold = await instance.ledger.admit(
                tenant, price=PRICE, prompt_tokens_bound=PROMPT_BOUND, requested_max_tokens=MAX_TOKENS,
                function="f", key_id="k",
            )
        except LimitExceeded as refused:
            wait = refused.retry_after
            if (
                attempt < self.client_retries and wait is not None and wait <= RETRY_AFTER_MAX
                and time.monotonic() + wait < self.demand_ends
            ):
                # As the OpenAI SDK's clients do (max_retries=2, honouring Retry-After):
                # the same request again after Retry-After, through the load balancer.
                stats.retried[refused.code] += 1
                await asyncio.sleep(wait)
                await self.request(self.random.choice(self.instances), tenant_name, attempt + 1)
                return
            stats.refusals[refused.code] += 1
            if refused.code == "budget_exceeded" and stats.first_exceeded is None:
                stats.first_exceeded = time.monotonic()
            return
        except StorageUnavailable:
            stats.refusals["limits_unavailable"] += 1
            return
        instance.admitted += 1
        if hold.max_tokens < MAX_TOKENS:
            stats.clamped += 1
        if hold.lease is not None and instance.first_grant is None:
            instance.first_grant = time.monotonic()
        stats.admitted[hold.minute] += 1
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        await self.model_call(instance, hold, stats)

    async def model_call(self, instance: Instance, hold: Hold, stats: Stats) -> None:
        try:
            await asyncio.sleep(self.random.uniform(0.05, 0.4))
            if not instance.alive:
                return  # the instance vanished mid-call: nobody settles (the sweep charges)
            used = int(hold.max_tokens * self.random.uniform(0.3, 1.0))
            cost = PRICE.cost_nano(PROMPT_USED, used)
            settled = await instance.ledger.settle(
                hold, cost_nano=cost, prompt_tokens=PROMPT_USED, completion_tokens=used
            )
            stats.settled_nano += settled.cost_nano
        finally:
            stats.in_flight -= 1

    def spawn(self, instance: Instance, tenant_name: str) -> None:
        task = asyncio.create_task(self.request(instance, tenant_name), name=tenant_name)
        instance.tasks.add(task)
        task.add_done_callback(instance.tasks.discard)

    async def demand(self, until: float) -> None:
        profile = self.profile
        next_burst = time.monotonic() + 1.0 if profile.burst_every else math.inf
        next_churn = time.monotonic() + profile.churn_every if profile.churn_every else math.inf
        step, last = 0.02, time.monotonic()
        while (now := time.monotonic()) < until:
            # Arrivals for the time that passed, not for the step asked for: when hundreds
            # of instances keep the loop busy a step takes longer, and the demand fell with
            # it (to 0.6 of the profile's in one run at 256 instances).
            elapsed, last = now - last, now
            for name in self.tenants:
                arrivals = self._poisson(profile.rate * elapsed)
                for _ in range(arrivals):
                    self.spawn(self.random.choice(self.instances), name)
            if now >= next_burst:
                next_burst += profile.burst_every
                for instance in self.instances:
                    for name in self.tenants:
                        for _ in range(profile.burst_per_instance):
                            self.spawn(instance, name)
            if now >= next_churn:
                next_churn += profile.churn_every
                self.churn(max(1, int(len(self.instances) * profile.churn_share)))
            await asyncio.sleep(step)

    def _poisson(self, mean: float) -> int:
        # Knuth's method is fine for the small means of one step (a few tens at most).
        limit, k, p = math.exp(-mean), 0, 1.0
        while True:
            p *= self.random.random()
            if p <= limit:
                return k
            k += 1

    def churn(self, count: int) -> None:
        """``count`` instances vanish (no shutdown hook: leases left to expire), as many start."""
        for instance in self.random.sample(self.instances, count):
            instance.alive = False
            self.instances.remove(instance)
            self.gone.append(instance)
            keeper = instance.ledger.leases
            if keeper is not None:
                for lease in keeper._leases.values():  # the process is gone: its timers too
                    for task in (lease.keeper, lease.sync):
                        if task is not None:
                            task.cancel()
                keeper._closing = True
                if isinstance(keeper, AllocatedKeeper):
                    for claim in keeper._claims.values():  # its allocator dies with it
                        if claim.allocator is not None:
                            claim.allocator.stop()
                        if claim.allocating is not None:
                            claim.allocating.cancel()
        for _ in range(count):
            self.start_instance()

    async def ramp(self, count: int, seconds: float) -> None:
        """``count`` more instances start evenly over ``seconds`` (a scale-out is gradual)."""
        for _ in range(count):
            await asyncio.sleep(seconds / max(1, count))
            self.start_instance()

    async def run(self, ramp_seconds: float) -> dict[str, Any]:
        self.start_instance()
        started = time.monotonic()
        ramping = asyncio.create_task(self.ramp(self.n - 1, ramp_seconds))
        heartbeat = asyncio.create_task(self.heartbeat())
        series = asyncio.create_task(_scale_series.record(self, self.series)) if self.record_series else None
        self.demand_ends = started + self.seconds
        await self.demand(self.demand_ends)
        self.settled_in_demand = self.stats["budget"].settled_nano
        await ramping
        heartbeat.cancel()
        measured = time.monotonic() - started
        self.meter.measuring = False
        # Let the calls in flight finish (a bounded wait: requests still retrying a
        # contended pool are given up, counted), then every live instance shuts down.
        pending = {t for i in [*self.instances, *self.gone] for t in i.tasks}
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=DRAIN_SECONDS)
            self.stuck = len(stuck)
            self.stuck_by_tenant = Counter(task.get_name() for task in stuck)
            for task in stuck:
                task.cancel()
        if series is not None:
            series.cancel()  # (through the drain: where the budget goes then)
        intervals = self._report_intervals()
        closing = [asyncio.ensure_future(i.ledger.aclose()) for i in self.instances]
        _, unclosed = await asyncio.wait(closing, timeout=DRAIN_SECONDS)
        self.unclosed = len(unclosed)
        for task in unclosed:
            task.cancel()
        # Abandoned leases expire: jump the clock past their TTL, and any instance sweeps.
        # Past any TTL (a stretched lease lives 4 report intervals, a pool twice that).
        sweeper = Ledger(store=self.backend.store(), lease_seconds=60, min_answer_tokens=16, clock=self.clock)
        if self.settings.allocated:
            # Reports given to claim rows after the last allocator cycle reach the window
            # rows; then, past every TTL, the claims of vanished instances expire.
            for tenant in self.tenants.values():
                await credit_all(sweeper, tenant, "auditor")
        self.clock.skip += 1800.0  # (not an hour: the sweep drops minute rows an hour old)
        if self.settings.allocated:
            for tenant in self.tenants.values():
                await credit_all(sweeper, tenant, "auditor")
        await sweeper.expire_holds()
        return await self.report(measured, intervals)

    async def heartbeat(self) -> None:
        """How late a 10 ms sleep wakes: the simulation's own CPU (hundreds of instances
        share one loop; a stalled loop would show as storage latency it did not model)."""
        while True:
            slept = time.monotonic()
            await asyncio.sleep(0.01)
            self.lags.append(time.monotonic() - slept - 0.01)

    def _report_intervals(self) -> list[float]:
        seen = []
        for instance in self.instances:
            keeper = instance.ledger.leases
            if keeper is not None:
                seen += [keeper.report_interval(lease) for lease in keeper._leases.values()]
        return seen

    async def report(self, seconds: float, intervals: list[float]) -> dict[str, Any]:
        everyone = [*self.instances, *self.gone]
        stored = {name: await self.backend.rows(name) for name in self.tenants}
        budget_rows = stored["budget"]
        day = self.clock.base.strftime("day-%Y%m%d")
        window = budget_rows.get(day, {})
        spent = _int(window.get("spent_nano"))
        budget = self.tenants["budget"].limits.daily_budget_nano
        rate = self.tenants["rate"].limits
        rate_rows = stored["rate"]
        minute_rows = {k: v for k, v in rate_rows.items() if k.startswith("minute-")}
        stored_rpm = max((_int(v.get("requests")) for v in minute_rows.values()), default=0)
        admitted_rpm = max(self.stats["rate"].admitted.values(), default=0)
        tokens = max(
            (_int(v.get("tokens")) for t in ("budget", "rate") for k, v in stored[t].items()
             if k.startswith("minute-")),
            default=0,
        )
        syncs = sum(i.ledger.leases.syncs for i in everyone if i.ledger.leases is not None)
        conflicts = sum(i.ledger.conflicts for i in everyone)
        partitions = {p: n / seconds for p, n in self.meter.ops.items() if p != "*"} or {"-": 0.0}
        hottest = max(partitions, key=lambda p: partitions[p])
        peak = max((n for (p, s), n in self.meter.per_second.items() if p == hottest), default=0)
        new = [i for i in everyone if i.started > min(j.started for j in everyone) + 0.5]
        grants = sorted(
            i.first_grant - i.first_request for i in (new or everyone)
            if i.first_grant is not None and i.first_request is not None
        )
        shares = [i.admitted / i.asked for i in everyone if i.asked]
        jain = (sum(shares) ** 2 / (len(shares) * sum(s * s for s in shares))) if shares else 1.0
        requests = sum(sum(s.admitted.values()) + sum(s.refusals.values()) for s in self.stats.values())
        leftover = _int(window.get("held_nano")) + _int(window.get("leased_nano"))
        return {
            "instances": self.n,
            "profile": self.profile.name,
            "seconds": round(seconds, 1),
            "requests": requests,
            "overspend_nano": max(0, spent - budget),
            "overspend": {
                "budget_nano": max(0, spent - budget),
                "rpm": max(0, stored_rpm - rate.requests_per_minute),
                "tpm": max(0, tokens - rate.tokens_per_minute),
                "concurrency": max(
                    0, max(s.peak_in_flight for s in self.stats.values()) - rate.max_concurrent
                ),
            },
            "budget_usable": round(spent / budget, 4) if budget else 0.0,
            # Exactness: the day row's spent is what the answers cost plus what expiry
            # charged for instances that vanished (their unreported slices): never less.
            "budget_settled_nano": self.stats["budget"].settled_nano,
            # How much of the budget answers had used when the demand ended (the rest was
            # admitted in the drain, after waiting on syncs): budget_usable counts both.
            "budget_used_in_demand": round(self.settled_in_demand / budget, 4) if budget else 0.0,
            "budget_spent_nano": spent,
            "budget_admitted": sum(self.stats["budget"].admitted.values()),
            "budget_admitted_clamped": self.stats["budget"].clamped,
            # Whether a refusal ever said "spent" (budget_usable is then spent at the end;
            # without one, demand never met the limit as spent and the figure is a floor).
            "budget_exceeded_seen": self.stats["budget"].first_exceeded is not None,
            # Whether demand reached the budget at all (else budget_usable says little).
            "budget_refusals": sum(
                n for code, n in self.stats["budget"].refusals.items() if code.startswith("budget_")
            ),
            "budget_left_leased_or_held_nano": leftover,
            "budget_expired_nano": _int(window.get("expired_nano")),
            "refusals": {name: dict(s.refusals) for name, s in self.stats.items()},
            "client_retries": self.client_retries,
            "retried": {name: dict(s.retried) for name, s in self.stats.items()},
            "rpm_limit": rate.requests_per_minute,
            "rpm_admitted": admitted_rpm,
            "rpm_over_limit": max(0, admitted_rpm - rate.requests_per_minute),
            "hottest_partition": hottest,
            "hottest_partition_ops_per_s": round(partitions[hottest], 1),
            "hottest_partition_peak_ops_per_s": peak,
            "partition_target_ops_per_s": PARTITION_TARGET,
            "account_transactions_per_s": round(self.meter.exchanges / seconds, 1),
            "account_target_per_s": ACCOUNT_TARGET,
            "storage_exchanges_per_request": round(self.meter.exchanges / max(1, requests), 3),
            "syncs_per_s": round(syncs / seconds, 1),
            "conflicts_per_sync": round(conflicts / max(1, syncs), 3),
            "report_interval_s": round(statistics.median(intervals), 2) if intervals else None,
            "first_grant_s": {
                "median": round(statistics.median(grants), 3) if grants else None,
                "max": round(grants[-1], 3) if grants else None,
            },
            "fairness": round(jain, 3),
            "updates": dict(KINDS),
            # Allocated: why processes wrote their claim rows (allocated.py)
            "claim_writes": dict(sum(
                (i.ledger.leases.why for i in everyone if isinstance(i.ledger.leases, AllocatedKeeper)),
                Counter(),
            )),
            # Allocated: what the allocators' cycles did; ``outruns``: cycles whose commit
            # order let a grant land before a return funding it (offers.overshoots);
            # ``reclaims_failed``: cycles ended, before any grant, by a failed transaction that
            # held a reclaim (its process claimed at that moment, or another write raced).
            "allocation": _allocation(everyone),
            "loop_lag_ms": _lag_summary(self.lags),
            "requests_unfinished_after_drain": self.stuck,
            "requests_unfinished_by_tenant": {name: self.stuck_by_tenant[name] for name in self.tenants},
            **({"series": self.series} if self.record_series else {}),
            "instances_not_closed_after_drain": self.unclosed,
        }


def _allocation(instances: list[Any]) -> dict[str, int]:
    total = sum(
        (i.ledger.leases.allocation for i in instances if isinstance(i.ledger.leases, AllocatedKeeper)),
        Counter[str](),
    )
    return {name: total[name] for name in ("cycles", "outruns", "reclaims_failed")}


def _lag_summary(lags: list[float]) -> dict[str, float]:
    samples = lags or [0.0]
    points = (("p50", 50), ("p99", 99), ("max", 100))
    return {name: round(1000 * percentile(samples, pct), 1) for name, pct in points}


def _int(value: Any) -> int:
    if value is None:
        return 0
    return int(getattr(value, "value", value))


PROFILES: dict[str, Callable[[int], Profile]] = {
    "steady": lambda n: Profile("steady", rate=300),
    "bursty": lambda n: Profile("bursty", rate=40, burst_every=4.0, burst_per_instance=max(1, 512 // n)),
    "churn": lambda n: Profile("churn", rate=300, churn_every=2.0, churn_share=0.1),
}


async def simulate(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    azurite = None
    plans = [("memory", n) for n in args.instances]
    if args.azurite:
        plans += [("azurite", n) for n in args.azurite_instances]
    try:
        for kind, n in plans:
            if kind == "azurite" and azurite is None:
                port = free_port()
                azurite = start_azurite(port=port)
                connection = development_connection_string(port)
            backend = Backend(kind, latency_ms=args.latency_ms,
                              connection_string=connection if kind == "azurite" else "",
                              split_pools=args.model_split)
            for name in args.profiles:
                KINDS.clear()
                backend.new_run(f"scale{n}{name}")
                simulation = Simulation(
                    n, PROFILES[name](n), args.seconds, backend=backend, seed=7, settings=args.lease_settings
                )
                simulation.record_series = args.series and kind == "memory"
                simulation.client_retries = args.client_retries
                try:
                    run = await simulation.run(args.ramp_seconds)
                finally:
                    await backend.end_run()
                runs.append({"backend": kind, **run})
                print(json.dumps(runs[-1]), file=sys.stderr)
    finally:
        if azurite is not None:
            azurite.stop()
    return {
        "bench": "scale",
        "storage": {
            "memory": "sk_core's MemoryTableStore (Azurite's ETag, conflict and query rules) with "
            f"{args.latency_ms} ms +-50 % per round trip and {PARTITION_TARGET} entities/s per partition"
            + (" (--model-split: pool syncs counted in partitions of their own)" if args.model_split else ""),
            "azurite": "a real Azurite (in memory, loopback): no latency added, no throughput model",
        },
        "latency_ms": args.latency_ms,
        "seconds_per_run": args.seconds,
        "ramp_seconds": args.ramp_seconds,
        "lease_settings": asdict(args.lease_settings),
        "machine": {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]},
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="N=256, steady and bursty, in memory, short")
    parser.add_argument("--instances", type=int, nargs="*", default=[8, 64, 256, 1024])
    parser.add_argument("--profiles", nargs="*", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--seconds", type=float, default=15.0, help="demand per run")
    parser.add_argument("--latency-ms", type=float, default=8.0)
    parser.add_argument("--ramp-seconds", type=float, default=5.0, help="instances start over this")
    parser.add_argument("--azurite", action=argparse.BooleanOptionalAction, default=True,
                        help="also run against a real Azurite (default; --no-azurite: memory only)")
    parser.add_argument("--azurite-instances", type=int, nargs="*", default=[8, 64],
                        help="instance counts run on Azurite (one emulator process cannot serve more)")
    parser.add_argument("--max-pools", type=int, default=LeaseSettings().max_pools,
                        help="sub-pools at most (0: one pool, the design before sub-pools)")
    parser.add_argument("--pool-threshold", type=int, default=LeaseSettings().pool_threshold,
                        help="sub-pools with more holders than this (SKF_LEASE_POOL_THRESHOLD)")
    parser.add_argument("--model-split", action="store_true",
                        help="memory: count pool syncs against partitions of their own (an upper "
                        "bound of sub-pools in partitions of their own; bench/_scale_storage.py)")
    parser.add_argument("--client-retries", type=int, default=0,
                        help="a refused client retries up to this many times after its Retry-After "
                        f"(when at most {RETRY_AFTER_MAX} s and within the demand), as the OpenAI "
                        "SDK's do (2); default 0: a refusal is final")
    parser.add_argument("--pools", action="store_true",
                        help="slices taken from shared pool rows, not granted by one allocator per "
                        "tenant (SKF_LEASE_ALLOCATOR=false)")
    parser.add_argument("--series", action="store_true",
                        help="per run (memory), where the budget sits every 0.5 s (bench/_scale_series.py)")
    args = parser.parse_args(argv)
    args.lease_settings = replace(
        LeaseSettings(), max_pools=args.max_pools, pool_threshold=args.pool_threshold,
        allocated=not args.pools,
    )
    if args.quick:
        args.instances, args.profiles, args.seconds, args.azurite = [256], ["steady", "bursty"], 12.0, False
    _count_updates()
    result = asyncio.run(simulate(args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
