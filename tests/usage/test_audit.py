"""The audit log in memory and in real Azurite: one row per call, newest first, never the prompt."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from sk_core.storage import TableStore
from sk_core.usage import ANONYMOUS, AuditEntry, AuditLog
from tests.support.stores import STORE_BACKENDS, open_stores


@pytest.fixture(params=STORE_BACKENDS)
async def audit(request: pytest.FixtureRequest) -> AsyncIterator[AuditLog]:
    async with open_stores(request, "aud") as (store,):
        log = AuditLog(store=store, retention_days=1)
        yield log
        await log.aclose()


async def test_rows_read_back_newest_first_and_expire(audit: AuditLog) -> None:
    for status in (200, 429):
        audit.record(AuditEntry(route="/api/v1/summarize", status=status, tenant_id="acme", cost_nano=5))
        await audit.aclose()  # wait for the background write
        await asyncio.sleep(0.005)  # rows order by millisecond: keep the two apart
    rows = await audit.recent("acme")
    assert [row["status"] for row in rows] == [429, 200]
    assert rows[0]["cost_nano"] == 5
    assert await audit.purge(now=datetime.now(UTC) + timedelta(days=2)) == 2
    assert await audit.recent("acme") == []


async def test_a_row_recorded_during_a_flush_is_written_without_another_call(azurite: str) -> None:
    store = TableStore(connection_string=azurite, table_prefix="aud" + secrets.token_hex(4))
    log = AuditLog(store=store, retention_days=1, flush_seconds=0.05)
    try:
        log.record(AuditEntry(route="/api/v1/summarize", status=200, tenant_id="acme"))
        for _ in range(1000):  # until the flusher has taken the first row and is writing it
            if not log._queue:
                break
            await asyncio.sleep(0.001)
        log.record(AuditEntry(route="/api/v1/summarize", status=429, tenant_id="acme", code="rate_limited"))
        # No further call, no shutdown: the second row must still be written soon.
        for _ in range(100):
            if len(await log.recent("acme")) == 2:
                break
            await asyncio.sleep(0.02)
        assert [row["status"] for row in await log.recent("acme")] == [429, 200]
    finally:
        await log.aclose()
        await store.aclose()


async def test_a_retried_batch_that_had_landed_is_written_again_harmlessly(audit: AuditLog) -> None:
    # A first write is a create; a row whose write failed is retried as an upsert, because
    # the failed write may have landed (its answer lost). Landed here, then retried. (Rows
    # of no tenant: they have no usage rollups, which a real lost answer leaves unplanned.)
    entry = AuditEntry(route="/api/v1/summarize", status=401, code="unauthorized")
    rows = [audit.row(entry) for _ in range(3)]
    audit._queue.extend(dict(row) for row in rows)
    await audit.flush()
    audit._queue.extend(dict(row) for row in rows)
    audit._retried.update(row["RowKey"] for row in rows)
    await audit.flush()
    assert (audit._queue, audit._retried, audit.lost) == ([], set(), 0)
    recent = await audit.recent(ANONYMOUS)
    assert sorted(row["RowKey"] for row in recent) == sorted(row["RowKey"] for row in rows)
    # The same rows as creates again would fail (and be queued for a retry): the reason
    # retried rows are upserts.
    audit._queue.extend(dict(row) for row in rows)
    await audit.flush()
    assert len(audit._queue) == 3
    assert audit._retried == {row["RowKey"] for row in rows}
    await audit.flush()
    assert (audit._queue, audit.lost) == ([], 0)


async def test_rows_given_up_after_an_outage_leave_no_retry_marks_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The retry marks (RowKeys whose write failed once) must belong to queued rows only:
    # a mark left by a row that was then given up (the retry queue full) would stay for
    # the life of the process, one per row lost in every outage.
    from azure.core.exceptions import ServiceRequestError

    from sk_core.storage import MemoryAccount, MemoryTableStore
    from sk_core.usage import _audit

    monkeypatch.setattr(_audit, "_RETRY_ROWS", 5)
    down = True

    async def outage(_operation: object) -> None:
        if down:
            raise ServiceRequestError("storage down")

    store = MemoryTableStore(MemoryAccount(on_operation=outage), table_prefix="aud")
    log = AuditLog(store=store, retention_days=1)
    for _ in range(40):  # calls of two tenants (two partitions) while storage is down
        for tenant in ("acme", "beta"):
            log._queue.append(log.row(AuditEntry(route="/api/v1/summarize", status=200, tenant_id=tenant)))
        await log.flush()
        queued = {row["RowKey"] for row in log._queue}
        assert len(queued) <= 5
        assert log._retried <= queued
    assert log.lost == 80 - len(log._queue)
    down = False
    await log.aclose()
    assert (log._queue, log._retried) == ([], set())
    await store.aclose()


async def test_a_flush_writes_its_transactions_without_the_sdks_email_machinery(
    azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Azure SDK turns a transaction into a multipart body with ``email.generator``
    and reads the answer with ``email.parser``: about 0.4 ms of CPU per audit row,
    synchronously, on the event loop: a 100-row flush stalled every request in flight
    for tens of ms once a second (bench/README.md, defect 6). A flush must call
    neither (``submit_bulk``); its rows all land, and their rollups."""
    import email.generator
    import email.parser

    calls: list[str] = []
    flushing = asyncio.current_task()

    def spy(cls: type, name: str) -> None:
        original = getattr(cls, name)

        def recording(*args: object, **kwargs: object) -> object:
            # Only this test's task (the flush): background tasks left by earlier tests on
            # the session's loop may use the SDK's transactions meanwhile (a CI flake).
            if asyncio.current_task() is flushing:
                calls.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(cls, name, recording)

    spy(email.generator.Generator, "flatten")
    spy(email.parser.Parser, "parse")
    store = TableStore(connection_string=azurite, table_prefix="aud" + secrets.token_hex(4))
    log = AuditLog(store=store, retention_days=1)
    try:
        for n in range(150):  # two transactions of one partition (100 + 50), then the rollups
            entry = AuditEntry(route="/api/v1/summarize", status=200, tenant_id="acme", cost_nano=n)
            log._queue.append(log.row(entry))
        await log.flush()
        assert calls == []
        rows = await log.recent("acme", limit=200)
        assert sorted(row["cost_nano"] for row in rows) == list(range(150))
        assert (log._queue, log.lost, log._dirty) == ([], 0, set())  # the rollups written too
    finally:
        monkeypatch.undo()
        await log.aclose()
        await store.aclose()
