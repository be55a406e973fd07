"""The audit log: one Table Storage row per API call, never the prompt.

Rows are written off the request path, batched: ``record`` queues the row, and a
background flusher writes what queued at least every ``flush_seconds`` (1 s), as one
entity-group transaction per tenant partition (up to 100 rows each), and on shutdown.
An audit write must neither slow an answer nor fail it. A process killed outright loses
the rows it had not flushed yet (at most the last second's). Each row carries an
``expires_at``; the maintenance sweep deletes rows past the retention period.

Layout (``sk_core.usage._partitions``): PartitionKey = tenant id (``_anonymous`` for
calls that never authenticated) + the UTC hour (+ a shard, ``SKF_AUDIT_SHARDS``), RowKey =
inverted milliseconds + request id, so a partition reads newest first. Once a partition's
rows are stored, the flusher upserts the tenant's hourly rollups (``_rollups``, RowKeys
``rollup-...``, in the tenant's partition without an hour), which the dashboard's charts
read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError
from azure.data.tables import UpdateMode

from sk_core.errors import StorageUnavailable
from sk_core.storage import (
    Conflict,
    TableStore,
    delete_op,
    etag_of,
    int64,
    read_int,
    submit,
    submit_bulk,
)
from sk_core.usage._partitions import (
    calls_between,
    inverted,
    partition_key,
    recent_calls,
    stamp,
    tenant_of,
)
from sk_core.usage._rollups import ROLLUP_PREFIX, Bucket, Rollups

logger = logging.getLogger(__name__)

AUDIT_TABLE = "audit"
ANONYMOUS = "_anonymous"
_BATCH = 100  # entities per entity-group transaction (the Table Storage maximum)
# Rows kept for another try while storage is down (~1 KB each): a short outage loses
# none; a long one loses what is beyond this, counted in ``lost`` and logged.
_RETRY_ROWS = 10_000


@dataclass
class AuditEntry:
    """What one call did. Filled in by the handler and the route boundary."""

    route: str
    status: int = 0
    tenant_id: str | None = None
    key_id: str | None = None
    function: str | None = None
    code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nano: int = 0
    latency_ms: float = 0.0
    trace_id: str | None = None
    guard: dict[str, Any] = field(default_factory=dict)
    redactions: int = 0
    cache: str = ""  # "hit" (answered from the response cache, nothing charged) or "miss"
    steps: int = 0  # a tool run's model round trips (sk_core.tools); 0 for other calls
    tool_calls: int = 0  # a tool run's tool executions
    run_stop: str = ""  # why a tool run stopped before an answer (max_steps, budget_exceeded...)


class AuditLog:
    """Writes (batched) and reads audit rows."""

    def __init__(
        self, *, store: TableStore, retention_days: float, flush_seconds: float = 1.0, shards: int = 1
    ) -> None:
        self._store = store
        self.shards = shards  # partitions per tenant and hour (``_partitions``)
        # The shard this second's rows go to: the next one at every flush, from a random
        # start, so a flush stays one transaction per tenant and processes spread out.
        self._shard = uuid.uuid4().int % shards
        self._retention = timedelta(days=retention_days)
        self._flush_seconds = flush_seconds
        self._queue: list[dict[str, Any]] = []
        # RowKeys of queued rows whose write failed once: it may have landed all the same.
        self._retried: set[str] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.lost = 0  # rows that could not be written (logged)
        self._closing = False  # shutting down: one last try, no retry loop
        # This process's rollup buckets; a writer id of its own keeps its rows apart.
        self.rollups = Rollups(writer=uuid.uuid4().hex[:12])
        # (tenant, hour) buckets whose rows were stored but whose rollup write is pending
        # or failed: written (whole) at the next flush.
        self._dirty: set[tuple[str, str]] = set()

    def record(self, entry: AuditEntry) -> None:
        """Queue ``entry``; the flusher writes it within ``flush_seconds``."""
        self._queue.append(self.row(entry))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    def row(self, entry: AuditEntry, at: datetime | None = None) -> dict[str, Any]:
        """The stored row of ``entry``, recorded ``at`` (default now; benchmarks backdate)."""
        now = at or datetime.now(UTC)
        key = f"{inverted(now)}-{uuid.uuid4().hex[:12]}"
        tenant = entry.tenant_id or ANONYMOUS
        return {
            "PartitionKey": partition_key(tenant, stamp(now), self._shard),
            "RowKey": key,
            "route": entry.route,
            "status": entry.status,
            "key_id": entry.key_id or "",
            "function": entry.function or "",
            "code": entry.code or "",
            "prompt_tokens": entry.prompt_tokens,
            "completion_tokens": entry.completion_tokens,
            "cost_nano": int64(entry.cost_nano),
            "latency_ms": round(entry.latency_ms, 1),
            "trace_id": entry.trace_id or "",
            "guard": _compact(entry.guard),
            "redactions": entry.redactions,
            "cache": entry.cache,
            **(
                {"steps": entry.steps, "tool_calls": entry.tool_calls, "run_stop": entry.run_stop}
                if entry.steps
                else {}
            ),
            "created_at": now,
            "expires_at": now + self._retention,
        }

    async def _flush_later(self) -> None:
        # Sleeps until the flush is due, or until aclose() wakes it to write right away.
        # Rows recorded while a flush is writing found this task still running and
        # started none, and rows left for another try (storage down) wait with no new
        # call to come: go round again for both, except when shutting down.
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_seconds)
            self._wake.clear()
            await self.flush()
            if not (self._queue or self._dirty) or self._closing:
                return

    async def flush(self) -> None:
        """Write every queued row now: one transaction per partition and 100 rows, then
        the rollup buckets those rows changed (one transaction per tenant).

        Rows whose write failed go back to the queue for the next flush (a second later),
        up to ``_RETRY_ROWS``, and are then written as upserts (rollup rows are always
        whole-bucket replaces), so a batch that landed although its answer was lost is
        written again harmlessly. A first write is a create: the same on Azure, and
        Azurite's upserts cost twice its creates in a large partition
        (``bench/azurite_tables.py``).
        """
        rows, self._queue = self._queue, []
        self._shard = (self._shard + 1) % self.shards  # retried rows keep theirs: no twins
        failed: list[dict[str, Any]] = []
        by_partition: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_partition.setdefault(row["PartitionKey"], []).append(row)
        for partition, partition_rows in by_partition.items():
            for start in range(0, len(partition_rows), _BATCH):
                chunk = partition_rows[start : start + _BATCH]
                operations: list[Any] = [
                    ("upsert" if row["RowKey"] in self._retried else "create", row, {}) for row in chunk
                ]
                # Planned before the write, kept only once its rows are stored.
                changed = self.rollups.plan(chunk) if tenant_of(partition) != ANONYMOUS else {}
                try:
                    # Not the SDK's transaction: it builds and parses a 100-row body with
                    # ``email``, tens of ms of CPU that stalled every request (``submit_bulk``).
                    await submit_bulk(await self._store.table(AUDIT_TABLE), operations)
                except Exception:  # an audit gap is logged, never turned into a failed answer
                    failed.extend(chunk)  # not committed to the rollups: planned again
                    continue
                self.rollups.commit(changed, datetime.now(UTC))
                self._dirty.update(changed)
                self._retried.difference_update(row["RowKey"] for row in chunk)
        await self._write_rollups()
        if failed:
            kept = failed[: max(0, _RETRY_ROWS - len(self._queue))]
            self._queue[:0] = kept
            self._retried.update(row["RowKey"] for row in kept)
            if len(kept) < len(failed):
                # Given up: their retry marks go with them (a mark outliving its row
                # would stay for the life of the process, one per row lost).
                self._retried.difference_update(row["RowKey"] for row in failed[len(kept) :])
                self.lost += len(failed) - len(kept)
                logger.warning("audit write failed: %d rows lost", len(failed) - len(kept))
            logger.warning("audit write failed for %d rows; retrying", len(kept))

    async def _write_rollups(self) -> None:
        """Upsert the changed buckets, whole (idempotent), per tenant; a failed tenant's
        stay changed for the next flush. A bucket dropped from memory meanwhile (older
        than ``KEEP``) is no longer written: its stored row stays as it was."""
        buckets = self.rollups.current(self._dirty)
        self._dirty.intersection_update(buckets)
        by_tenant: dict[str, dict[tuple[str, str], Bucket]] = {}
        for key, bucket in buckets.items():
            by_tenant.setdefault(key[0], {})[key] = bucket
        replace = {"mode": UpdateMode.REPLACE}
        for tenant_buckets in by_tenant.values():
            keys = list(tenant_buckets)
            for start in range(0, len(keys), _BATCH):
                part = {key: tenant_buckets[key] for key in keys[start : start + _BATCH]}
                try:
                    upserts = [("upsert", entity, replace) for entity in self.rollups.entities(part)]
                    await submit_bulk(await self._store.table(AUDIT_TABLE), upserts)
                except Exception:  # the charts lag until the next flush writes them
                    logger.warning("audit rollup write failed for %d buckets; retrying", len(part))
                    continue
                self._dirty.difference_update(part)

    async def recent(self, tenant_id: str, limit: int = 20, hours: int = 24) -> list[dict[str, Any]]:
        """The tenant's newest rows of the last ``hours`` hours, newest first."""
        table = await self._store.table(AUDIT_TABLE)
        now = datetime.now(UTC)
        rows = await recent_calls(table, tenant_id, limit, now, shards=self.shards, hours=hours)
        return [_with_cost(row) for row in rows]

    async def calls(self, tenant_id: str, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """Every row of the tenant's calls recorded in [start, end), newest first (both
        layouts: ``_partitions``)."""
        table = await self._store.table(AUDIT_TABLE)
        rows = await calls_between(table, tenant_id, start, end, shards=self.shards)
        return [_with_cost(row) for row in rows]

    async def purge(self, now: datetime | None = None) -> int:
        """Delete rows past retention (rollups included); returns how many calls' rows."""
        table = await self._store.table(AUDIT_TABLE)
        deleted = 0
        try:
            async for entity in table.query_entities(
                "expires_at lt @now", parameters={"now": now or datetime.now(UTC)}
            ):
                key = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}
                await submit(table, [delete_op(key, etag_of(entity))])
                # Rollup rows past their own retention go too, but are not calls.
                deleted += not str(entity["RowKey"]).startswith(ROLLUP_PREFIX)
        except (AzureError, Conflict, StorageUnavailable):
            logger.warning("audit purge interrupted; the next sweep continues")
        return deleted

    async def aclose(self) -> None:
        """Write everything queued (shutdown); the log stays usable afterwards."""
        self._closing = True
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            self._wake.set()
            await flusher  # never cancelled mid-write: rows it took would be lost
        await self.flush()
        self._closing = False  # the log stays usable (tests reuse it)
        if self._queue:  # storage still down at shutdown: these are gone
            self.lost += len(self._queue)
            logger.warning("audit: %d rows not written at shutdown", len(self._queue))
            self._queue = []
            self._retried.clear()


def _with_cost(entity: dict[str, Any]) -> dict[str, Any]:
    entity["cost_nano"] = read_int(entity.get("cost_nano"))
    return entity


def _compact(guard: dict[str, Any]) -> str:
    return json.dumps(guard, separators=(",", ":"), sort_keys=True) if guard else ""
