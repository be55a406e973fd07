"""Quota leases at serverless scale: N lease keepers on one tenant's pool, simulated.

    PYTHONPATH=. .venv/bin/python bench/scale.py --quick          # N=256, steady + bursty, < 2 min
    PYTHONPATH=. .venv/bin/python bench/scale.py                  # N=8, 64, 256, 1024 x 3 profiles

Azure Functions scales one app to hundreds of instances; this machine has 2 cores. So
each *instance* here is one ``Ledger`` with its own ``LeaseKeeper`` (the real lease and
ledger code, nothing stubbed above storage), many of them in one asyncio loop, all on
one in-memory storage account that models Azure Table Storage's documented
scalability targets:

- a single table partition: about **2,000 entities per second**
  (https://learn.microsoft.com/azure/storage/tables/scalability-targets, "Target
  throughput for a single table partition (1 KiB-entities): Up to 2,000 entities per
  second"); over it Azure answers 503 ServerBusy, here a caller waits (queued per
  partition), so an overloaded partition shows as latency and as ops/s at the target;
- a storage account: about 20,000 transactions per second (same page), never the
  binding limit here (one tenant);
- a round trip: ``--latency-ms`` (default 8 ms, jittered +-50 %), in-region order.

Entities are counted as the target counts them: a transaction counts its entities, a
query the entities it returns (at least one).

The account is written here (a small table service: point and range queries the limits
code issues, ETag-conditional all-or-nothing transactions) because the shared in-memory
``TableStore`` (``sk_core/storage/_memory.py``) was not on this branch yet; it follows
the same interface (``table()``, ``query_entities``, ``submit_transaction``).

**Tenants** (each its own partition, served by every instance): ``budget`` (a daily
budget the demand exhausts mid-run; RPM and TPM far away) and ``rate`` (an RPM limit
the demand saturates; budget far away). The clock is simulated so each run lies inside
one UTC calendar minute.

**Profiles**: ``steady`` (Poisson arrivals on every instance), ``bursty`` (every 4 s all
instances receive a burst at once, a trickle between), ``churn`` (steady; every 2 s a
tenth of the instances vanish without a shutdown hook, as on a Functions scale-in, and
as many new ones start).

Prints one JSON object: ``{"machine": ..., "runs": [...]}``; per run ``instances``,
``profile``, ``overspend_nano`` (and RPM / TPM / concurrency overspend), ``budget_usable``
(0-1: the budget tenant's spend at the end over its budget), ``rpm_admitted`` and
``rpm_over_limit``, ``hottest_partition_ops_per_s`` (mean over the run) and its peak
second, ``partition_target_ops_per_s``, ``conflicts_per_sync``, ``first_grant_s`` (new
instances: first request to first admission from a lease), ``fairness`` (Jain's index
of admitted/asked over instances) and the report interval the keepers ended at.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

from sk_core.accounts import Limits, Tenant
from sk_core.errors import LimitExceeded, StorageUnavailable
from sk_core.limits import Hold, Ledger
from sk_core.limits.lease_state import LeaseSettings
from sk_core.pricing import Price

DRAIN_SECONDS = 10.0  # after the demand: calls finishing, then hand-backs, each at most this
PARTITION_TARGET = 2000  # entities per second, one table partition (see the docstring)
ACCOUNT_TARGET = 20000  # transactions per second, one storage account

PRICE = Price(Decimal("1.0"), Decimal("2.0"))  # USD per million tokens: 1000 / 2000 nano each
PROMPT_BOUND = 200  # what admission reserves for the prompt
PROMPT_USED = 150
MAX_TOKENS = 300


# --------------------------------------------------------------------- the account


class _Row(dict[str, Any]):
    """An entity as returned: a dict with the ETag in ``metadata`` (as the SDK's)."""

    def __init__(self, values: dict[str, Any], etag: str) -> None:
        super().__init__(values)
        self.metadata = {"etag": etag}


class Account:
    """Tables in memory, with latency and a per-partition throughput limit."""

    def __init__(self, *, latency_s: float, partition_ops_per_s: float) -> None:
        self.rows: dict[str, dict[tuple[str, str], _Row]] = {}
        self.latency_s = latency_s
        self.partition_ops_per_s = partition_ops_per_s
        self.started = time.monotonic()
        self.ops: Counter[str] = Counter()  # entities per partition
        self.per_second: Counter[tuple[str, int]] = Counter()  # (partition, second) -> entities
        self.exchanges = 0
        self.measuring = True
        self._free_at: dict[str, float] = {}
        self._etags = 0

    def etag(self) -> str:
        self._etags += 1
        return f'W/"{self._etags}"'

    async def exchange(self, partition: str, entities: int) -> None:
        """One round trip touching ``entities`` of ``partition``: queue, then latency."""
        entities = max(1, entities)
        now = time.monotonic()
        if self.measuring:  # the demand period (not the drain and hand-back after it)
            self.exchanges += 1
            self.ops[partition] += entities
            self.per_second[(partition, int(now - self.started))] += entities
        start = max(now, self._free_at.get(partition, now))
        self._free_at[partition] = start + entities / self.partition_ops_per_s
        delay = (start - now) + self.latency_s * random.uniform(0.5, 1.5)
        await asyncio.sleep(delay)


_POINT = re.compile(r"^PartitionKey eq @pk and \( (RowKey eq @r\d+(?: or RowKey eq @r\d+)*) \)$")
_RANGE = re.compile(r"^RowKey ge '([^']*)' and RowKey lt (?:'([^']*)'|@cutoff)(?: and expires_at lt @now)?$")
_PARTITION_RANGE = re.compile(r"^PartitionKey eq @p and RowKey ge '([^']*)' and RowKey lt '([^']*)'$")


class Table:
    """The ``TableClient`` calls the limits code makes, on one table of the account."""

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self._rows = store.account.rows.setdefault(name, {})

    def query_entities(self, query_filter: str, *, parameters: dict[str, Any]) -> AsyncIterator[_Row]:
        return self._query(query_filter, parameters)

    async def _query(self, query_filter: str, parameters: dict[str, Any]) -> AsyncIterator[_Row]:
        found: list[_Row]
        partition = "*"
        if point := _POINT.match(query_filter):
            partition = parameters["pk"]
            keys = [parameters[name[1:]] for name in re.findall(r"@r\d+", point.group(1))]
            found = [self._rows[(partition, k)] for k in keys if (partition, k) in self._rows]
        elif scan := _PARTITION_RANGE.match(query_filter):
            partition = parameters["p"]
            low, high = scan.groups()
            found = [r for (p, k), r in self._rows.items() if p == partition and low <= k < high]
        elif scan := _RANGE.match(query_filter):
            low, high = scan.group(1), scan.group(2) or parameters.get("cutoff", "")
            now = parameters.get("now")
            found = [
                r for (_, k), r in self._rows.items()
                if low <= k < high and (now is None or r.get("expires_at", now) < now)
            ]
        else:
            raise NotImplementedError(query_filter)
        await self._store.exchange(partition, len(found))
        for row in sorted(found, key=lambda r: (r["PartitionKey"], r["RowKey"])):
            yield _Row(dict(row), row.metadata["etag"])

    async def submit_transaction(self, operations: list[Any]) -> list[dict[str, Any]]:
        partition = operations[0][1]["PartitionKey"]
        await self._store.exchange(partition, len(operations))
        for kind, entity, options in operations:  # all or nothing: check first
            key = (entity["PartitionKey"], entity["RowKey"])
            current = self._rows.get(key)
            if kind == "create" and current is not None:
                raise ResourceExistsError("EntityAlreadyExists")
            if kind in ("update", "delete") and (
                current is None or current.metadata["etag"] != options.get("etag")
            ):
                raise ResourceModifiedError("UpdateConditionNotSatisfied")
        results: list[dict[str, Any]] = []
        for kind, entity, _ in operations:
            key = (entity["PartitionKey"], entity["RowKey"])
            if kind == "delete":
                del self._rows[key]
                results.append({})
            else:
                row = self._rows[key] = _Row(dict(entity), self._store.account.etag())
                results.append({"etag": row.metadata["etag"]})
        return results


class Store:
    """One instance's ``TableStore`` on the shared account (its own counters)."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.round_trips = 0
        self.conflicts = 0
        self._tables: dict[str, Table] = {}
        self._last = time.monotonic()

    async def exchange(self, partition: str, entities: int) -> None:
        self.round_trips += 1
        await self.account.exchange(partition, entities)
        self._last = time.monotonic()

    async def table(self, name: str) -> Table:
        if name not in self._tables:
            self._tables[name] = Table(self, name)
        return self._tables[name]

    def note_conflict(self) -> None:
        self.conflicts += 1

    def silence(self) -> float:
        return time.monotonic() - self._last

    async def aclose(self) -> None:
        """Nothing to close."""


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

    def __init__(self, n: int, profile: Profile, seconds: float, *, latency_ms: float, seed: int) -> None:
        self.n = n
        self.profile = profile
        self.seconds = seconds
        self.account = Account(latency_s=latency_ms / 1000, partition_ops_per_s=PARTITION_TARGET)
        self.clock = SimClock()
        self.tenants = make_tenants(profile, seconds, n)
        self.stats = {name: Stats() for name in self.tenants}
        self.instances: list[Instance] = []
        self.gone: list[Instance] = []
        self.random = random.Random(seed)
        self.settings = LeaseSettings()
        self.stuck = self.unclosed = 0

    def start_instance(self) -> Instance:
        ledger = Ledger(
            store=Store(self.account),  # type: ignore[arg-type]  # the TableStore interface
            lease_seconds=60,
            min_answer_tokens=16,
            clock=self.clock,
            leases=self.settings,
        )
        instance = Instance(ledger=ledger, started=time.monotonic())
        self.instances.append(instance)
        return instance

    async def request(self, instance: Instance, tenant_name: str) -> None:
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
            stats.refusals[refused.code] += 1
            if refused.code == "budget_exceeded" and stats.first_exceeded is None:
                stats.first_exceeded = time.monotonic()
            return
        except StorageUnavailable:
            stats.refusals["limits_unavailable"] += 1
            return
        instance.admitted += 1
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
        task = asyncio.create_task(self.request(instance, tenant_name))
        instance.tasks.add(task)
        task.add_done_callback(instance.tasks.discard)

    async def demand(self, until: float) -> None:
        profile = self.profile
        next_burst = time.monotonic() + 1.0 if profile.burst_every else math.inf
        next_churn = time.monotonic() + profile.churn_every if profile.churn_every else math.inf
        step = 0.02
        while (now := time.monotonic()) < until:
            for name in self.tenants:
                arrivals = self._poisson(profile.rate * step)
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
        # Knuth's method is fine for the small means of one 20 ms step.
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
        await self.demand(started + self.seconds)
        await ramping
        measured = time.monotonic() - started
        self.account.measuring = False
        # Let the calls in flight finish (a bounded wait: requests still retrying a
        # contended pool are given up, counted), then every live instance shuts down.
        pending = {t for i in [*self.instances, *self.gone] for t in i.tasks}
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=DRAIN_SECONDS)
            self.stuck = len(stuck)
            for task in stuck:
                task.cancel()
        intervals = self._report_intervals()
        closing = [asyncio.ensure_future(i.ledger.aclose()) for i in self.instances]
        _, unclosed = await asyncio.wait(closing, timeout=DRAIN_SECONDS)
        self.unclosed = len(unclosed)
        for task in unclosed:
            task.cancel()
        # Abandoned leases expire: jump the clock past their TTL, and any instance sweeps.
        self.clock.skip += self.settings.ttl_seconds * 8
        sweeper = Ledger(store=Store(self.account), lease_seconds=60, min_answer_tokens=16,  # type: ignore[arg-type]
                         clock=self.clock)
        await sweeper.expire_holds()
        return self.report(measured, intervals)

    def _report_intervals(self) -> list[float]:
        seen = []
        for instance in self.instances:
            keeper = instance.ledger.leases
            if keeper is not None:
                seen += [keeper.report_interval(lease) for lease in keeper._leases.values()]
        return seen

    def rows(self, tenant: str) -> dict[str, dict[str, Any]]:
        table = self.account.rows.get("usage", {})
        return {k: dict(r) for (p, k), r in table.items() if p == tenant}

    def report(self, seconds: float, intervals: list[float]) -> dict[str, Any]:
        everyone = [*self.instances, *self.gone]
        budget_rows = self.rows("budget")
        day = self.clock.base.strftime("day-%Y%m%d")
        window = budget_rows.get(day, {})
        spent = _int(window.get("spent_nano"))
        budget = self.tenants["budget"].limits.daily_budget_nano
        rate = self.tenants["rate"].limits
        rate_rows = self.rows("rate")
        minute_rows = {k: v for k, v in rate_rows.items() if k.startswith("minute-")}
        stored_rpm = max((_int(v.get("requests")) for v in minute_rows.values()), default=0)
        admitted_rpm = max(self.stats["rate"].admitted.values(), default=0)
        tokens = max(
            (_int(v.get("tokens")) for t in ("budget", "rate") for k, v in self.rows(t).items()
             if k.startswith("minute-")),
            default=0,
        )
        syncs = sum(i.ledger.leases.syncs for i in everyone if i.ledger.leases is not None)
        conflicts = sum(i.ledger.conflicts for i in everyone)
        partitions = {p: n / seconds for p, n in self.account.ops.items() if p != "*"} or {"-": 0.0}
        hottest = max(partitions, key=lambda p: partitions[p])
        peak = max((n for (p, s), n in self.account.per_second.items() if p == hottest), default=0)
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
            # Whether demand reached the budget at all (else budget_usable says little).
            "budget_refusals": sum(
                n for code, n in self.stats["budget"].refusals.items() if code.startswith("budget_")
            ),
            "budget_left_leased_or_held_nano": leftover,
            "budget_expired_nano": _int(window.get("expired_nano")),
            "refusals": {name: dict(s.refusals) for name, s in self.stats.items()},
            "rpm_limit": rate.requests_per_minute,
            "rpm_admitted": admitted_rpm,
            "rpm_over_limit": max(0, admitted_rpm - rate.requests_per_minute),
            "hottest_partition": hottest,
            "hottest_partition_ops_per_s": round(partitions[hottest], 1),
            "hottest_partition_peak_ops_per_s": peak,
            "partition_target_ops_per_s": PARTITION_TARGET,
            "account_transactions_per_s": round(self.account.exchanges / seconds, 1),
            "account_target_per_s": ACCOUNT_TARGET,
            "storage_exchanges_per_request": round(self.account.exchanges / max(1, requests), 3),
            "syncs_per_s": round(syncs / seconds, 1),
            "conflicts_per_sync": round(conflicts / max(1, syncs), 3),
            "report_interval_s": round(statistics.median(intervals), 2) if intervals else None,
            "first_grant_s": {
                "median": round(statistics.median(grants), 3) if grants else None,
                "max": round(grants[-1], 3) if grants else None,
            },
            "fairness": round(jain, 3),
            "updates": dict(KINDS),
            "requests_unfinished_after_drain": self.stuck,
            "instances_not_closed_after_drain": self.unclosed,
        }


def _int(value: Any) -> int:
    if value is None:
        return 0
    return int(getattr(value, "value", value))


PROFILES: dict[str, Callable[[int], Profile]] = {
    "steady": lambda n: Profile("steady", rate=300),
    "bursty": lambda n: Profile("bursty", rate=40, burst_every=4.0, burst_per_instance=max(1, 512 // n)),
    "churn": lambda n: Profile("churn", rate=300, churn_every=2.0, churn_share=0.1),
}


async def simulate(
    instances: list[int], profiles: list[str], seconds: float, latency_ms: float, ramp_seconds: float
) -> dict[str, Any]:
    runs = []
    for n in instances:
        for name in profiles:
            KINDS.clear()
            simulation = Simulation(n, PROFILES[name](n), seconds, latency_ms=latency_ms, seed=7)
            runs.append(await simulation.run(ramp_seconds))
            print(json.dumps(runs[-1]), file=sys.stderr)
    return {
        "bench": "scale",
        "storage": "in-memory account modelling Azure Table Storage targets",
        "latency_ms": latency_ms,
        "seconds_per_run": seconds,
        "ramp_seconds": ramp_seconds,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="N=256, steady and bursty, short runs")
    parser.add_argument("--instances", type=int, nargs="*", default=[8, 64, 256, 1024])
    parser.add_argument("--profiles", nargs="*", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--seconds", type=float, default=25.0, help="demand per run")
    parser.add_argument("--latency-ms", type=float, default=8.0)
    parser.add_argument("--ramp-seconds", type=float, default=5.0, help="instances start over this")
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.profiles, args.seconds = [256], ["steady", "bursty"], 15.0
    _count_updates()
    result = asyncio.run(
        simulate(args.instances, args.profiles, args.seconds, args.latency_ms, args.ramp_seconds)
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
