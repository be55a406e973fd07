"""Audit partitions: a tenant's calls land in a partition per UTC hour (and shard); reads
by tenant and time range query only the hours in range and still read the old layout
(one partition per tenant), in memory and in real Azurite."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sk_core.storage import TableStore, submit
from sk_core.usage import AUDIT_TABLE, AuditEntry, AuditLog
from sk_core.usage._partitions import (
    READ_CONCURRENCY,
    calls_between,
    hours_between,
    inverted,
    partition_key,
    recent_calls,
    stamp,
    tenant_of,
)
from sk_core.usage._rollups import HOUR_PREFIX
from tests.support.stores import STORE_BACKENDS, open_stores

T0 = datetime(2026, 12, 6, 9, 40, tzinfo=UTC)  # the range starts inside an hour


@pytest.fixture(params=STORE_BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TableStore]:
    async with open_stores(request, "part") as (made,):
        yield made


class Recording:
    """A real table client that notes every query's filter and partition (a spy, not a fake)."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self.queries: list[tuple[str, str]] = []

    def query_entities(self, query_filter: str, **kwargs: Any) -> Any:
        self.queries.append((query_filter, str(kwargs.get("parameters", {}).get("p"))))
        return self._table.query_entities(query_filter, **kwargs)


async def _old_layout_row(table: Any, tenant: str, at: datetime) -> str:
    """A call row as the previous release wrote it: PartitionKey = the tenant."""
    key = f"{inverted(at)}-{uuid.uuid4().hex[:12]}"
    row = {"PartitionKey": tenant, "RowKey": key, "status": 200, "created_at": at, "cost_nano": 7}
    await submit(table, [("create", row, {})])
    return key


async def _write(log: AuditLog, tenant: str, at: datetime, status: int = 200) -> str:
    row = log.row(AuditEntry(route="/api/v1/summarize", status=status, tenant_id=tenant, cost_nano=3), at=at)
    log._queue.append(row)
    await log.flush()
    return str(row["RowKey"])


def test_partition_keys_name_the_tenant_the_hour_and_a_shard_beyond_the_first() -> None:
    assert partition_key("acme", "2026120609") == "acme~2026120609"
    assert partition_key("acme", "2026120609", 2) == "acme~2026120609~2"
    assert tenant_of("acme~2026120609~2") == tenant_of("acme") == "acme"
    assert hours_between(T0, T0 + timedelta(hours=2)) == ["2026120611", "2026120610", "2026120609"]
    assert hours_between(T0, T0 + timedelta(minutes=20)) == ["2026120609"]


@pytest.mark.parametrize("shards", [1, 3])
async def test_a_range_read_spanning_hours_and_the_old_layout_returns_exactly_the_rows_in_range(
    store: TableStore, shards: int
) -> None:
    log = AuditLog(store=store, retention_days=30, shards=shards)
    table = await store.table(AUDIT_TABLE)
    start, end = T0, T0 + timedelta(hours=2, minutes=5)  # 09:40 to 11:45: three hours
    inside = [
        start,
        start + timedelta(minutes=19),
        start + timedelta(hours=1),
        end - timedelta(milliseconds=1),
    ]
    outside = [start - timedelta(milliseconds=1), end, end + timedelta(hours=1), start - timedelta(hours=2)]
    written: dict[str, datetime] = {}
    # Rolled up (an hour still kept in memory): its rollup row goes to the old partition.
    current = datetime.now(UTC)
    written[await _write(log, "acme", current)] = current
    for at in inside + outside:
        written[await _write(log, "acme", at)] = at
    for at in inside[:2] + outside:
        written[await _old_layout_row(table, "acme", at)] = at
    await _write(log, "other", start + timedelta(minutes=1))  # another tenant, in range
    await log.aclose()

    partitions = {str(e["PartitionKey"]) async for e in table.list_entities()}
    hours = {"2026120607", "2026120609", "2026120610", "2026120611", "2026120612", stamp(current)}
    assert {p.split("~")[1] for p in partitions if p.startswith("acme~")} == hours
    rollups = [e async for e in table.list_entities() if str(e["RowKey"]).startswith(HOUR_PREFIX)]
    assert [e["PartitionKey"] for e in rollups] == ["acme"]

    rows = await log.calls("acme", start, end)
    # Newest first (RowKeys are inverted times), exactly the rows in range, both layouts.
    assert [row["RowKey"] for row in rows] == sorted(k for k, at in written.items() if start <= at < end)
    assert {row["cost_nano"] for row in rows} == {3, 7}

    # The newest calls up to a time, with a limit: newest first across the layouts.
    now = T0 + timedelta(hours=1, minutes=30)
    newest = await recent_calls(table, "acme", 3, now, shards=shards, hours=3)
    until = now + timedelta(minutes=5)
    assert [row["RowKey"] for row in newest] == sorted(k for k, at in written.items() if at < until)[:3]


async def test_a_range_read_queries_only_the_partitions_of_the_hours_in_range(store: TableStore) -> None:
    table = Recording(await store.table(AUDIT_TABLE))
    start, end = T0, T0 + timedelta(hours=2)
    await calls_between(table, "acme", start, end, shards=2)
    wanted = {"acme"} | {
        partition_key("acme", h, s) for h in ("2026120609", "2026120610", "2026120611") for s in (0, 1)
    }
    # One query per partition, each an equality on its PartitionKey: no scan of the table.
    assert sorted(p for _, p in table.queries) == sorted(wanted)
    assert all(f.startswith("PartitionKey eq @p and ") for f, _ in table.queries)


async def test_a_newest_first_read_stops_at_the_first_hours_that_hold_enough(store: TableStore) -> None:
    log = AuditLog(store=store, retention_days=30)
    now = T0 + timedelta(hours=30)
    keys = [await _write(log, "busy", now - timedelta(minutes=m)) for m in (1, 2, 3)]
    await _write(log, "busy", now - timedelta(hours=20))
    table = Recording(await store.table(AUDIT_TABLE))
    rows = await recent_calls(table, "busy", 3, now, hours=24)
    assert [row["RowKey"] for row in rows] == sorted(keys)
    # The old layout's partition and one batch of hours, not the day's 25.
    assert len(table.queries) == 1 + READ_CONCURRENCY


async def test_each_flush_writes_its_rows_to_the_next_shard_and_reads_find_them_all(
    store: TableStore,
) -> None:
    log = AuditLog(store=store, retention_days=30, shards=3)
    at = T0 + timedelta(minutes=5)
    flushes: list[set[str]] = []
    for _ in range(6):
        rows = [
            log.row(AuditEntry(route="/api/v1/summarize", status=200, tenant_id="acme"), at=at)
            for _ in range(2)
        ]
        log._queue.extend(rows)
        await log.flush()
        flushes.append({str(row["PartitionKey"]) for row in rows})
    # One partition per flush (one transaction), the next shard each time, all three used.
    assert all(len(partitions) == 1 for partitions in flushes)
    order = [partitions.pop() for partitions in flushes]
    assert set(order) == {partition_key("acme", "2026120609", s) for s in range(3)}
    assert order[:3] == order[3:]
    assert len(set(order[:3])) == 3
    assert len(await log.calls("acme", T0, T0 + timedelta(hours=1))) == 12
