"""Where a call's audit row lives, and how a tenant's rows of a time range are read.

Layout: PartitionKey = ``<tenant>~<YYYYMMDDHH>`` (the UTC hour the call was recorded in),
``<tenant>~<YYYYMMDDHH>~<shard>`` for shards 1 and up; RowKey = inverted milliseconds +
request id (``_audit``), so a partition reads newest first and keys never collide.

Why: Table Storage serves a partition from one server, with a target of about 2,000
entities per second per partition, and the old layout (one partition per tenant: every
call of a tenant, forever) capped one tenant's audit at that. An hour bounds what a
partition receives, and the emulator (Azurite scans a partition to find a key) no longer
slows down as a tenant's history grows. ``SKF_AUDIT_SHARDS`` (default 1) spreads one hour
over more partitions, for a tenant whose calls pass ~2,000 a second across all its
processes (one shard per 2,000 calls/s, rounded up, with headroom). A process writes the
rows of one flush (a second) to one shard and moves to the next shard at every flush,
from a random start: a flush stays one transaction per tenant, shards fill evenly over
time, and processes spread over them. Readers query every shard of an hour, so the
setting may be raised at any time; lowering it hides rows of the higher shards until
they expire (``purge`` still deletes them). On Azurite, where a write's cost grows with
the rows of its partition (``bench/azurite_tables.py``), shards also keep partitions
small: the soak runs with them (``bench/README.md``).

A tenant's partition without a time bucket (``<tenant>``) keeps its hourly rollup rows
(``_rollups``; a writer's one row per hour, rewritten each flush: a few writes a second
at most, whatever the traffic) and, from before this layout, its call rows ("the old
layout"). Readers read that partition's call rows too (a RowKey range: cheap on Table
Storage), so nothing written before the change disappears; they age out with retention,
or ``python -m sk_core.admin audit-migrate`` moves them now.

Reads by tenant and time range query only the partitions of the hours in range
(PartitionKey equality, a RowKey range inside), a few at a time, never the whole table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

SEPARATOR = "~"  # not in a tenant id ([a-z0-9-] or ``_anonymous``); sorts after them
_STAMP = "%Y%m%d%H"
_HOUR = timedelta(hours=1)
MAX_MS = 10**15  # inverted timestamps stay positive and sort newest first
# Partition queries in flight for one read: a range read stays a few round trips deep
# without crowding out requests (Azurite answers one query at a time).
READ_CONCURRENCY = 4
# Queries of a "newest calls" read before it gives up (an idle tenant's last day).
RECENT_HOURS = 24


def stamp(when: datetime) -> str:
    """The bucket name of an instant: its UTC hour, ``YYYYMMDDHH``."""
    return when.astimezone(UTC).strftime(_STAMP)


def bucket_start(name: str) -> datetime:
    """The first instant of a bucket (UTC)."""
    return datetime.strptime(name, _STAMP).replace(tzinfo=UTC)


def inverted(at: datetime) -> str:
    """The RowKey prefix of a row recorded at ``at`` (inverted milliseconds, 15 digits)."""
    return f"{MAX_MS - int(at.timestamp() * 1000):015d}"


def partition_key(tenant_id: str, hour: str, shard: int = 0) -> str:
    """The partition of ``tenant_id``'s calls of ``hour`` (``stamp``) in ``shard``."""
    key = f"{tenant_id}{SEPARATOR}{hour}"
    return f"{key}{SEPARATOR}{shard}" if shard else key


def tenant_of(partition: str) -> str:
    """The tenant of an audit partition, new layout or old."""
    return partition.split(SEPARATOR, 1)[0]


def hours_between(start: datetime, end: datetime) -> list[str]:
    """The hours (``stamp``) that hold instants in [start, end), newest first."""
    names: list[str] = []
    at = bucket_start(stamp(start))
    while at < end:
        names.append(stamp(at))
        at += _HOUR
    return names[::-1]


def _key_range(start: datetime, end: datetime) -> dict[str, str]:
    # Recorded in [start, end) <=> inverted ms in (inv(end), inv(start)]; ``-~`` sorts
    # after every "<digits>-<hex>" key of that millisecond.
    return {"lo": inverted(end) + "-~", "hi": inverted(start) + "-~"}


_RANGE = "PartitionKey eq @p and RowKey gt @lo and RowKey lt @hi"


async def _query(
    table: Any, partition: str, parameters: Mapping[str, str], select: Sequence[str] | None, limit: int | None
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async for entity in table.query_entities(
        _RANGE,
        parameters={"p": partition, **parameters},
        select=list(select) if select else None,
        results_per_page=min(limit or 1000, 1000),
    ):
        rows.append(dict(entity))
        if limit is not None and len(rows) >= limit:
            break
    return rows


async def calls_between(
    table: Any,
    tenant_id: str,
    start: datetime,
    end: datetime,
    *,
    shards: int = 1,
    limit: int | None = None,
    select: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """``tenant_id``'s call rows recorded in [start, end), newest first (at most ``limit``).

    Reads the old-layout partition and the hours' partitions, newest hour first,
    ``READ_CONCURRENCY`` at a time; with a ``limit``, stops at the first hour that
    completes it (older hours cannot hold newer rows)."""
    keys = _key_range(start, end)
    hours = hours_between(start, end)
    per_batch = max(1, READ_CONCURRENCY // shards)  # whole hours: every shard of each
    # The old layout's partition (call RowKeys are digits: no rollup rows) goes with the
    # first batch, so it costs no round trip of its own.
    old: list[Any] = [_query(table, tenant_id, keys, select, limit)]
    found: list[dict[str, Any]] = []
    newer = 0
    for index in range(0, max(1, len(hours)), per_batch):
        batch = [
            _query(table, partition_key(tenant_id, hour, shard), keys, select, limit)
            for hour in hours[index : index + per_batch]
            for shard in range(shards)
        ]
        results = await asyncio.gather(*old, *batch)
        found += [row for rows in results for row in rows]
        newer += sum(len(rows) for rows in results[len(old) :])
        old = []
        # The hours read so far hold enough rows: the older ones cannot hold newer rows.
        if limit is not None and newer >= limit:
            break
    found.sort(key=lambda row: str(row["RowKey"]))
    return found[:limit] if limit is not None else found


async def recent_calls(
    table: Any,
    tenant_id: str,
    limit: int,
    now: datetime,
    *,
    shards: int = 1,
    hours: int = RECENT_HOURS,
    select: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The tenant's ``limit`` newest call rows of the last ``hours`` hours, newest first."""
    start = now - timedelta(hours=hours)
    return await calls_between(
        table, tenant_id, start, now + timedelta(minutes=5), shards=shards, limit=limit, select=select
    )
