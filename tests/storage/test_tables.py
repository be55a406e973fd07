"""Table Storage access: the one error translation, conflicts, batched reads (in memory and
real Azurite)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from scripts.devservices import free_port
from sk_core.errors import StorageUnavailable
from sk_core.storage import (
    Conflict,
    TableStore,
    development_connection_string,
    etag_of,
    int64,
    query_partition,
    read_int,
    submit,
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
