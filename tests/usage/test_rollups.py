"""Audit rollups: the arithmetic (pure) and the rows the audit flusher writes (Azurite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from sk_core.storage import TableStore
from sk_core.usage import (
    AUDIT_TABLE,
    HOUR_PREFIX,
    AuditEntry,
    AuditLog,
    Bucket,
    Rollups,
    bucket_bound,
    combine,
    latency_bucket,
    percentile,
    stamp,
)
from tests.support.stores import STORE_BACKENDS, open_stores

T0 = datetime(2026, 3, 4, 10, 15, 30, tzinfo=UTC)


def _row(tenant: str = "acme", **fields: object) -> dict[str, object]:
    row: dict[str, object] = {
        "PartitionKey": tenant,
        "status": 200,
        "code": "",
        "function": "text/summarize",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_nano": 700,
        "latency_ms": 40.0,
        "created_at": T0,
    }
    row.update(fields)
    return row


def test_latency_buckets_bound_every_latency_within_one_bucket() -> None:
    for latency in (0.2, 1.0, 1.1, 7.3, 40.0, 999.0, 12_345.6):
        index = latency_bucket(latency)
        assert latency <= bucket_bound(index) + 1e-9
        assert index == 0 or latency > bucket_bound(index - 1)


def test_percentiles_come_from_the_histogram() -> None:
    histogram: dict[int, int] = {}
    for latency in [10.0] * 90 + [500.0] * 10:
        index = latency_bucket(latency)
        histogram[index] = histogram.get(index, 0) + 1
    p50, p95 = percentile(histogram, 50), percentile(histogram, 95)
    assert p50 is not None
    assert 10.0 <= p50 < 10.0 * 1.19
    assert p95 is not None
    assert 500.0 <= p95 < 500.0 * 1.19
    assert percentile({}, 50) is None


def test_a_bucket_counts_calls_refusals_tokens_cost_and_functions() -> None:
    bucket = Bucket()
    bucket.add(_row())
    bucket.add(_row(status=429, code="rate_limited", prompt_tokens=0, completion_tokens=0, cost_nano=0))
    bucket.add(_row(function="chat/chat", cost_nano=300, created_at=T0 + timedelta(minutes=2)))
    assert (bucket.calls, bucket.errors) == (3, 1)
    # Per minute of the hour: calls and tokens (10:15 twice, 10:17 once).
    assert bucket.minutes == {15: [2, 15], 17: [1, 15]}
    assert bucket.codes == {"rate_limited": 1}
    assert bucket.cost_nano == 1000
    assert bucket.prompt_tokens + bucket.completion_tokens == 30
    assert {name: s.calls for name, s in bucket.functions.items()} == {"text/summarize": 2, "chat/chat": 1}
    # Stored and read back, it is the same bucket.
    again = Bucket.from_entity(bucket.entity("acme", stamp(T0), "w1"))
    assert again == bucket


def test_a_plan_changes_nothing_until_it_is_committed() -> None:
    rollups = Rollups(writer="w1")
    first = rollups.plan([_row(), _row(PartitionKey="beta", created_at=T0 + timedelta(hours=1))])
    assert set(first) == {("acme", "2026030410"), ("beta", "2026030411")}
    # Not committed (the transaction failed): the next plan starts from zero again.
    assert rollups.plan([_row()])[("acme", "2026030410")].calls == 1
    rollups.commit(first, T0)
    assert rollups.plan([_row()])[("acme", "2026030410")].calls == 2


def test_buckets_that_ended_long_ago_are_dropped_and_never_restarted_from_zero() -> None:
    rollups = Rollups(writer="w1", keep=timedelta(hours=2))
    rollups.commit(rollups.plan([_row()]), T0)
    rollups.commit({}, T0 + timedelta(hours=4))
    # A row that late would restart its bucket at zero and overwrite the stored total.
    assert rollups.plan([_row()]) == {}
    assert rollups.skipped == 1


@pytest.fixture(params=STORE_BACKENDS)
async def audit_store(request: pytest.FixtureRequest) -> AsyncIterator[TableStore]:
    async with open_stores(request, "rol") as (store,):
        yield store


async def _stored_rollups(store: TableStore, tenant: str) -> list[dict[str, object]]:
    table = await store.table(AUDIT_TABLE)
    prefix = HOUR_PREFIX
    return [
        dict(e)
        async for e in table.query_entities(
            "PartitionKey eq @p and RowKey ge @a and RowKey lt @b",
            parameters={"p": tenant, "a": prefix, "b": prefix + "~"},
        )
    ]


async def test_the_audit_flush_writes_rollups_idempotently_one_row_per_writer(
    audit_store: TableStore,
) -> None:
    first, second = (
        AuditLog(store=audit_store, retention_days=1),
        AuditLog(store=audit_store, retention_days=1),
    )
    for log, cost in ((first, 100), (first, 200), (second, 400)):
        log.record(AuditEntry(route="/api/v1/summarize", status=200, tenant_id="acme", cost_nano=cost))
        await log.aclose()  # one flush each: the first writer rewrites its row whole, once more
    first.record(AuditEntry(route="/api/v1/summarize", status=429, tenant_id="acme", code="rate_limited"))
    await first.aclose()
    await first.flush()  # nothing queued: nothing rewritten, nothing counted twice

    hour_rows = await _stored_rollups(audit_store, "acme")
    # A row per writer per hour, however often each flushed.
    writers = {str(row["RowKey"]).rsplit("-", 1)[1] for row in hour_rows}
    assert writers == {first.rollups.writer, second.rollups.writer}
    assert len(hour_rows) <= 4  # two writers, and the hour may have turned once
    total = Bucket()
    for bucket in combine(hour_rows).values():
        total.merge(bucket)
    assert (total.calls, total.errors, total.cost_nano) == (4, 1, 700)
    assert total.codes == {"rate_limited": 1}
    assert sum(calls for calls, _ in total.minutes.values()) == 4
    # The calls themselves, and only them, read back as recent calls.
    recent = await first.recent("acme", limit=50)
    assert sorted(row["cost_nano"] for row in recent) == [0, 100, 200, 400]
    # Purging past every retention removes rollups too, but counts only the calls' rows.
    assert await first.purge(now=datetime.now(UTC) + timedelta(days=60)) == 4
    assert await _stored_rollups(audit_store, "acme") == []


async def test_anonymous_calls_are_not_rolled_up(audit_store: TableStore) -> None:
    log = AuditLog(store=audit_store, retention_days=1)
    log.record(AuditEntry(route="/api/v1/summarize", status=401, code="unauthorized"))
    await log.aclose()
    assert await _stored_rollups(audit_store, "_anonymous") == []
    assert len(await log.recent("_anonymous")) == 1


async def test_a_rollup_write_that_failed_is_made_again_at_the_next_flush() -> None:
    # The calls' rows are in partitions per hour, the rollups in the tenant's own: two
    # transactions. Rows stored but their rollup write failed: the next flush writes
    # the whole bucket, with nothing new queued, and counts every row once.
    from azure.core.exceptions import ServiceRequestError

    from sk_core.storage import MemoryAccount, MemoryTableStore, Operation, read_int

    rollups_down = True

    async def outage(operation: Operation) -> None:
        if rollups_down and operation.partition == "acme":  # the rollups' partition only
            raise ServiceRequestError("storage down")

    store = MemoryTableStore(MemoryAccount(on_operation=outage), table_prefix="rol")
    log = AuditLog(store=store, retention_days=1)
    for cost in (100, 200):
        log._queue.append(
            log.row(AuditEntry(route="/api/v1/summarize", status=200, tenant_id="acme", cost_nano=cost))
        )
    await log.flush()
    assert log._queue == []  # the calls' rows are stored
    assert len(await log.recent("acme")) == 2
    rollups_down = False
    assert await _stored_rollups(store, "acme") == []
    await log.flush()  # nothing queued: the pending bucket alone
    [row] = await _stored_rollups(store, "acme")
    assert (read_int(row["calls"]), read_int(row["cost_nano"])) == (2, 300)
    await log.flush()
    assert [read_int(r["calls"]) for r in await _stored_rollups(store, "acme")] == [2]
    await store.aclose()
