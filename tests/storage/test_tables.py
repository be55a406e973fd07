"""Table Storage access: the one error translation, conflicts, batched reads (in memory and
real Azurite)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.data.tables import UpdateMode

from scripts.devservices import free_port
from sk_core.errors import LimitsUnavailable, StorageUnavailable
from sk_core.pipeline import fail_closed
from sk_core.storage import (
    Conflict,
    MemoryAccount,
    MemoryTableStore,
    Operation,
    TableStore,
    development_connection_string,
    etag_of,
    int64,
    query_partition,
    read_int,
    submit,
    submit_bulk,
    update_op,
)
from tests.support.stores import STORE_BACKENDS, open_stores


@pytest.fixture(params=STORE_BACKENDS)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TableStore]:
    async with open_stores(request, "sto") as (table_store,):
        yield table_store


async def test_a_stale_etag_is_a_conflict_not_an_overwrite(store: TableStore) -> None:
    table = await store.table("t")
    await submit(table, [("create", {"PartitionKey": "p", "RowKey": "r", "n": int64(1)}, {})])
    first = (await query_partition(table, "p", ["r"]))["r"]
    await submit(table, [update_op({"PartitionKey": "p", "RowKey": "r", "n": int64(2)}, etag_of(first))])
    with pytest.raises(Conflict):
        await submit(table, [update_op({"PartitionKey": "p", "RowKey": "r", "n": int64(3)}, etag_of(first))])
    assert read_int((await query_partition(table, "p", ["r"]))["r"]["n"]) == 2


async def test_one_query_reads_several_rows_of_a_partition(store: TableStore) -> None:
    table = await store.table("t")
    await submit(table, [("create", {"PartitionKey": "p", "RowKey": k}, {}) for k in ("a", "b", "c")])
    assert sorted(await query_partition(table, "p", ["a", "c", "missing"])) == ["a", "c"]


async def test_an_unreachable_account_is_storage_unavailable_quickly() -> None:
    dead = TableStore(connection_string=development_connection_string(free_port()), retries=0)
    started = time.monotonic()
    try:
        with pytest.raises(StorageUnavailable):
            await dead.ping()
    finally:
        await dead.aclose()
    assert time.monotonic() - started < 5


async def test_tables_prepared_at_start_up_cost_no_exchange_later_and_lost_ones_come_back(
    azurite: str,
) -> None:
    """Issue 23, defect 3: ``prepare`` lists the prefix's tables once and creates only the
    missing ones; a prepared table's first use costs nothing; a table lost later (deleted,
    an emulator restarted empty) fails the call that finds it gone, and its next use
    creates it again."""
    import secrets

    prefix = "prep" + secrets.token_hex(4)
    first = TableStore(connection_string=azurite, table_prefix=prefix)
    second = TableStore(connection_string=azurite, table_prefix=prefix)
    try:
        first.trace = []
        await first.prepare(["a", "b"])
        assert sorted(first.trace) == ["GET Tables 200", "POST Tables 201", "POST Tables 201"]
        second.trace = []
        await second.prepare(["a", "b", "c"])  # another process: only c is missing
        assert sorted(second.trace) == ["GET Tables 200", "POST Tables 201"]
        before = second.round_trips
        table = await second.table("a")
        assert second.round_trips == before
        await submit(table, [("create", {"PartitionKey": "p", "RowKey": "r"}, {})])
        await first._service.delete_table(f"{prefix}a")  # lost
        with pytest.raises(StorageUnavailable):
            await query_partition(await second.table("a"), "p", ["r"])
        assert await query_partition(await second.table("a"), "p", ["r"]) == {}  # created again
    finally:
        for name in ("a", "b", "c"):
            await first._service.delete_table(f"{prefix}{name}")
        await first.aclose()
        await second.aclose()


async def test_storage_silence_is_time_kept_waiting_not_time_since_the_last_answer(store: TableStore) -> None:
    """Issue 23, defect 5: the request path's storage deadline (``fail_closed``) counts how
    long storage has kept this process waiting for an answer. A process that asks it
    nothing meanwhile (backing off after a lost ETag race, a request queued behind that)
    is not kept waiting by storage: before, such a wait near a budget's end failed
    requests closed (503 limits_unavailable) while storage answered every exchange."""
    table = await store.table("t")
    await query_partition(table, "p", ["r"])
    async with fail_closed(0.2, store.silence):
        await asyncio.sleep(0.5)  # a back-off: nothing asked of storage
        await query_partition(table, "p", ["r"])
    assert store.silence() == 0.0


async def test_storage_that_does_not_answer_is_silence_until_it_answers() -> None:
    """The other side: an exchange in flight and unanswered is silence (a black hole fails
    closed within the bound), and so is one that ended without an answer (a reset, a
    timeout) until storage answers again, also for a request that asks nothing itself."""
    answering = asyncio.Event()
    failing = False

    async def service(_: Operation) -> None:
        if failing:
            raise ServiceRequestError("connection reset")
        await answering.wait()

    store = MemoryTableStore(MemoryAccount(on_operation=service))
    table = await store.table("t")
    with pytest.raises(LimitsUnavailable):
        async with fail_closed(0.2, store.silence):
            await query_partition(table, "p", ["r"])  # never answered
    failing = True
    with pytest.raises(StorageUnavailable):
        await query_partition(table, "p", ["r"])
    with pytest.raises(LimitsUnavailable):
        async with fail_closed(0.2, store.silence):
            await asyncio.sleep(0.5)  # queued behind the reset exchange's retry, say
    failing = False
    answering.set()
    await query_partition(table, "p", ["r"])
    assert store.silence() == 0.0



# Keys and values the hand-built body must carry exactly as the SDK does: quotes and
# URL-reserved characters in keys (those a key may hold: not / \\ # ?), non-ASCII text,
# every property type the code writes.
_KEYS = ["plain", "it's", "a%e&f+g:h=i;j,k@l$(m)", "ünï cödé"]


def _rows(partition: str) -> list[dict[str, Any]]:
    return [
        {
            "PartitionKey": partition, "RowKey": key, "text": f"{key} \"q\" <x> & é", "n": 7,
            "big": int64(2**40 + i), "ratio": 0.25, "flag": i % 2 == 0,
            "at": datetime(2026, 12, 7, 3, 4, 5, 678000, tzinfo=UTC),
        }
        for i, key in enumerate(_KEYS)
    ]


def _stored(rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        key: {name: read_int(v) if name == "big" else v for name, v in row.items() if name != "PartitionKey"}
        for key, row in rows.items()
    }


async def test_a_bulk_transaction_stores_what_the_sdks_would(store: TableStore) -> None:
    """``submit_bulk`` (the audit flush's: its body built without the SDK's ``email``
    machinery) against ``submit`` (the SDK's): the same rows, creates then merge and
    replace upserts, read back equal; and it is one counted exchange."""
    table = await store.table("t")
    trips = store.round_trips
    await submit_bulk(table, [("create", row, {}) for row in _rows("bulk")])
    assert store.round_trips - trips == 1
    await submit(table, [("create", row, {}) for row in _rows("sdk")])
    changes: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("upsert", {"RowKey": _KEYS[0], "text": "merged"}, {}),
        ("upsert", {"RowKey": _KEYS[1], "text": "replaced"}, {"mode": UpdateMode.REPLACE}),
        ("upsert", {"RowKey": _KEYS[2], "n": 8}, {}),
        ("upsert", {"RowKey": _KEYS[3], "n": 9}, {"mode": UpdateMode.REPLACE}),
        ("upsert", {"RowKey": "new", "n": 1}, {"mode": UpdateMode.MERGE}),
    ]
    await submit_bulk(table, [(k, {"PartitionKey": "bulk", **e}, o) for k, e, o in changes])
    await submit(table, [(k, {"PartitionKey": "sdk", **e}, o) for k, e, o in changes])
    keys = [*_KEYS, "new"]
    bulk = _stored(await query_partition(table, "bulk", keys))
    assert bulk == _stored(await query_partition(table, "sdk", keys))
    assert bulk[_KEYS[0]]["text"] == "merged"
    assert bulk[_KEYS[0]]["big"] == 2**40  # kept by the merge
    assert bulk[_KEYS[1]] == {"RowKey": _KEYS[1], "text": "replaced"}
    assert (bulk[_KEYS[2]]["n"], bulk[_KEYS[2]]["ratio"]) == (8, 0.25)
    assert bulk[_KEYS[3]] == {"RowKey": _KEYS[3], "n": 9}
    assert bulk[_KEYS[2]]["at"] == datetime(2026, 12, 7, 3, 4, 5, 678000, tzinfo=UTC)


async def test_a_bulk_transaction_is_all_or_nothing_and_a_lost_race_is_a_conflict(store: TableStore) -> None:
    table = await store.table("t")
    await submit_bulk(table, [("create", {"PartitionKey": "p", "RowKey": "taken"}, {})])
    with pytest.raises(Conflict):
        await submit_bulk(table, [("create", {"PartitionKey": "p", "RowKey": k}, {}) for k in ("a", "taken")])
    assert sorted(await query_partition(table, "p", ["a", "taken"])) == ["taken"]


async def test_a_bulk_transaction_against_a_dead_account_is_storage_unavailable() -> None:
    dead = TableStore(connection_string=development_connection_string(free_port()), retries=0)
    dead._created.add(dead._prefix + "t")  # as if prepared: only the transaction meets the dead port
    try:
        with pytest.raises(StorageUnavailable):
            await submit_bulk(await dead.table("t"), [("create", {"PartitionKey": "p", "RowKey": "r"}, {})])
    finally:
        await dead.aclose()
