"""Hourly rollups as the dashboard reads them: hours no writer can change any more are
read once per process and kept; only the live hours are read again.

A writer (``Rollups``) rewrites an hour's bucket only while it keeps it in memory, for
``KEEP`` (2 h) after the hour ended; rows older than that are skipped, never restarted
from zero. So an hour that ended more than ``KEEP`` (plus a margin for clock skew and a
flush in flight) ago is final in storage, for every process: reading it again can only
return the same rows. A view of the last 25 hours then reads 4 or 5 rows per tenant and
writer instead of 25. That matters on both stores: Azurite scans the whole table per
query and pays per row it returns, and Table Storage still sends every row, which the
SDK decodes (a rollup row carries its JSON minute and latency columns).

The one exception: audit rows that could not be stored are retried (bounded) until
storage answers; after an outage longer than ``KEEP`` plus the margin, a writer that
had no bucket of their hour in memory writes one late, and a process that had already
kept that hour as final shows it without them until it restarts (the ledger's counters,
which every figure but the hourly charts comes from, are not affected).

Two readers:

- ``hours`` (one tenant's view): final hours from memory, the rest read now, every call.
- ``snapshot`` (every tenant: the overview's charts): what the last refresh read; a
  refresh reads each tenant's live hours (one partition query each, two at a time:
  Table Storage serves a partition query from its index, where a query across
  partitions would scan the whole audit table). It runs in the background when the
  snapshot is older than ``SNAPSHOT_SECONDS``, so an overview request waits for it only
  the first time. The overview's counters (spend, budgets, requests) are read fresh on
  every request; only its hourly charts may lag, by at most that period plus one refresh.

The tenant view also takes the tenant (its limits, for the budgets) from the overview
that listed it at most ``LISTED_SECONDS`` before, when there is one (``listed``).

Memory: per tenant, the buckets of the last ``KEPT_HOURS`` hours; minute slots are
dropped from hours older than the minute chart reaches.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sk_core.usage._partitions import recent_calls
from sk_core.usage._rollups import HOUR_PREFIX, KEEP, Bucket, bucket_start, combine, stamp

if TYPE_CHECKING:
    from sk_core.accounts import Tenant
    from sk_core.storage import TableStore

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
# Clock skew between processes and a flush planned just before its bucket was dropped.
FINAL_MARGIN = timedelta(minutes=15)
KEPT_HOURS = 26  # the dashboard's longest chart is 25 hours
MINUTE_SLOTS_HOURS = 5  # the minute chart reaches at most 4 hour buckets back
SNAPSHOT_SECONDS = 15.0  # hourly bars: a few seconds behind changes nothing a person reads
LISTED_SECONDS = 5.0  # the page polls every 5 s: the overview's tenants serve its tenant view
# Few at a time: a refresh runs beside the page's own reads and must not crowd them out
# (Azurite answers one query at a time; Table Storage would take more).
REFRESH_CONCURRENCY = 2


def last_final(now: datetime) -> str:
    """The newest hour no writer can change any more: hour names up to it are final."""
    # An hour starting at or before this instant ended KEEP + FINAL_MARGIN ago or more.
    return stamp(now - HOUR - KEEP - FINAL_MARGIN)


def hour_names(first: str, now: datetime) -> list[str]:
    """Hour names from ``first`` through the hour of ``now``, oldest first."""
    names, at, last = [], bucket_start(first), stamp(now)
    while (name := stamp(at)) <= last:
        names.append(name)
        at += HOUR
    return names


@dataclass
class _Tenant:
    """What this process knows of one tenant's rollups."""

    final: dict[str, Bucket] = field(default_factory=dict)  # every final hour in [first, last]
    first: str | None = None  # the known final hours are contiguous: first..last
    last: str | None = None
    live: dict[str, Bucket] = field(default_factory=dict)  # non-final hours as last read

    def start_for(self, first: str) -> str:
        """The first hour to read for a view from ``first``: after the known final ones."""
        if self.first is None or self.last is None or not (self.first <= first <= self.last):
            return first
        return stamp(bucket_start(self.last) + HOUR)

    def remember(self, start: str, read: Mapping[str, Bucket], now: datetime) -> None:
        names, cut = hour_names(start, now), last_final(now)
        final = [name for name in names if name <= cut]
        if final:
            for name in final:
                self.final[name] = read.get(name) or Bucket()
            contiguous = self.last is not None and stamp(bucket_start(self.last) + HOUR) == start
            self.first = self.first if contiguous and self.first is not None else final[0]
            self.last = final[-1]
        self.live = {name: read[name] for name in names if name in read and name > cut}
        self._prune(now)

    def _prune(self, now: datetime) -> None:
        oldest = stamp(now - HOUR * (KEPT_HOURS - 1))
        no_minutes = stamp(now - HOUR * MINUTE_SLOTS_HOURS)
        for name in list(self.final):
            if name < oldest:
                del self.final[name]
            elif name < no_minutes:
                self.final[name].minutes.clear()
        if self.first is not None and self.first < oldest:
            self.first = oldest if self.last is not None and oldest <= self.last else None
            if self.first is None:
                self.last = None

    def buckets(self, names: Iterable[str]) -> dict[str, Bucket]:
        known = {**self.final, **self.live}
        return {name: known[name] for name in names if name in known}


class RollupHistory:
    """One process's view of every tenant's hourly rollups (see the module docstring)."""

    def __init__(self, store: TableStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._refreshed: float | None = None  # monotonic time the last refresh began
        self._refreshed_at: datetime | None = None  # its wall-clock time, for the page
        self._refresh: asyncio.Task[None] | None = None
        self.reads = 0  # partition queries issued (tests and the benchmark count them)
        self._listed: dict[str, tuple[float, Tenant]] = {}

    def remember_tenants(self, tenants: Iterable[Tenant]) -> None:
        """The tenants as the overview just read them (``listed``)."""
        at = self._clock()
        self._listed = {tenant.id: (at, tenant) for tenant in tenants}

    def listed(self, tenant_id: str) -> Tenant | None:
        """The tenant as the overview read it at most ``LISTED_SECONDS`` ago, else None.

        The page polls the overview and then the open tenant: the tenant view need not
        read again what the overview read a moment before (admission itself uses
        tenants up to ``SKF_AUTH_CACHE_SECONDS`` old)."""
        seen = self._listed.get(tenant_id)
        if seen is None or self._clock() - seen[0] > LISTED_SECONDS:
            return None
        return seen[1]

    async def _query(
        self, tenant_id: str, query: str, parameters: dict[str, str], limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Rows of the tenant's audit partition (at most ``limit``), in RowKey order, with
        only the columns the views use (``_COLUMNS``: no timestamps or columns nobody
        shows, which the SDK would parse for nothing)."""
        from sk_core.storage import storage_errors
        from sk_core.usage._audit import AUDIT_TABLE

        table = await self._store.table(AUDIT_TABLE)
        self.reads += 1
        rows: list[dict[str, Any]] = []
        with storage_errors():
            async for entity in table.query_entities(
                query,
                parameters={"p": tenant_id, **parameters},
                select=_COLUMNS,
                results_per_page=min(limit or 1000, 1000),
            ):
                rows.append(entity)
                if limit is not None and len(rows) >= limit:
                    break
        return rows

    async def hours(self, tenant_id: str, names: Sequence[str], now: datetime) -> dict[str, Bucket]:
        """The tenant's buckets of hours ``names`` (contiguous, oldest first, through ``now``):
        final ones from memory, the others read from storage now."""
        entry = self._tenants.setdefault(tenant_id, _Tenant())
        start = entry.start_for(names[0])
        rows = await self._query(
            tenant_id,
            "PartitionKey eq @p and RowKey ge @first and RowKey lt @end",
            {"first": HOUR_PREFIX + start, "end": HOUR_PREFIX + "~"},
        )
        entry.remember(start, combine(rows), now)
        return entry.buckets(names)

    async def hours_and_recent(
        self, tenant_id: str, names: Sequence[str], now: datetime, limit: int, shards: int = 1
    ) -> tuple[dict[str, Bucket], list[dict[str, Any]]]:
        """``hours``, and the tenant's ``limit`` newest call rows (newest first), read
        together: the rollups from the tenant's partition, the calls from the partitions
        of the last hours, newest first, until ``limit`` (``_partitions.recent_calls``,
        rows of the old layout included): a busy tenant's newest hour holds them all."""
        from sk_core.storage import storage_errors
        from sk_core.usage._audit import AUDIT_TABLE

        table = await self._store.table(AUDIT_TABLE)

        async def calls() -> list[dict[str, Any]]:
            with storage_errors():
                return await recent_calls(table, tenant_id, limit, now, shards=shards, select=_CALL_SELECT)

        buckets, recent = await asyncio.gather(self.hours(tenant_id, names, now), calls())
        return buckets, [_call_row(row) for row in recent]

    async def snapshot(
        self, tenant_ids: Sequence[str], names: Sequence[str], now: Callable[[], datetime]
    ) -> tuple[dict[str, dict[str, Bucket]], datetime | None]:
        """Every tenant's buckets of hours ``names`` as the last refresh read them, and when
        that refresh began. Starts a refresh in the background when the last one is older
        than ``SNAPSHOT_SECONDS``; waits for one only when there was none yet."""
        if self._refreshed is None:
            await self._refresh_all(tenant_ids, names, now)
        elif self._clock() - self._refreshed >= SNAPSHOT_SECONDS and not self._refreshing():
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_all(tenant_ids, names, now))
            self._refresh.add_done_callback(_log_failure)
        return (
            {tid: self._tenants[tid].buckets(names) for tid in tenant_ids if tid in self._tenants},
            self._refreshed_at,
        )

    def _refreshing(self) -> bool:
        task = self._refresh
        if task is None or task.done():
            return False
        # A task of a loop that was closed (a test's, or a host that restarted its loop) never ends.
        return not task.get_loop().is_closed()

    async def _refresh_all(
        self, tenant_ids: Sequence[str], names: Sequence[str], now: Callable[[], datetime]
    ) -> None:
        started, started_at = self._clock(), now()
        gate = asyncio.Semaphore(REFRESH_CONCURRENCY)

        async def one(tenant_id: str) -> None:
            async with gate:
                await self.hours(tenant_id, names, started_at)

        await asyncio.gather(*(one(tid) for tid in tenant_ids))
        for gone in set(self._tenants) - set(tenant_ids):
            del self._tenants[gone]  # deleted tenants
        self._refreshed, self._refreshed_at = started, started_at


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # The snapshot stays as it was; the next overview request tries again.
        log.warning("refreshing the dashboard's rollups failed: %r", task.exception())


# What the tenant view shows of a call (``_call_json``) and what a rollup row holds.
_CALL_COLUMNS = ["created_at", "function", "status", "code", "latency_ms", "trace_id"]
_ROLLUP_COLUMNS = ["calls", "errors", "codes", "functions", "minutes"]
_CALL_SELECT = ["RowKey", *_CALL_COLUMNS, "prompt_tokens", "completion_tokens", "cost_nano"]
_COLUMNS = [*_CALL_SELECT, *_ROLLUP_COLUMNS]


def _call_row(entity: Mapping[str, Any]) -> dict[str, Any]:
    from sk_core.storage import read_int

    row = dict(entity)
    row["cost_nano"] = read_int(entity.get("cost_nano"))
    return row


_HISTORIES: weakref.WeakKeyDictionary[TableStore, RollupHistory] = weakref.WeakKeyDictionary()


def history_for(store: TableStore) -> RollupHistory:
    """The process's rollup history of a store (one per store, so per service)."""
    history = _HISTORIES.get(store)
    if history is None:
        history = _HISTORIES[store] = RollupHistory(store)
    return history
