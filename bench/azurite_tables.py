"""How Azurite's table reads scale with the size of the table they read.

    PYTHONPATH=. .venv/bin/python bench/azurite_tables.py [--sizes 1000 10000 30000]

The soak (``bench/soak.py``) slows down minute by minute while each tenant's audit
partition grows by a row per call. This isolates the emulator: one Azurite, a table
grown in steps (rows of 1.5 KB in one partition, as a tenant's audit rows are), and at
each size the time of a point read (``get_entity``) in it, of a point read in a
one-row table next to it, of a filter on a non-key property (what the sweeps run), and
of a batch of 50 new rows written into the partition as creates and as upserts (the
audit flush). Writes ``bench/results/azurite_tables.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench._common import machine, markdown_table, write_results
from scripts.devservices import free_port, start_azurite
from sk_core.storage import development_connection_string

ROUNDS = 20
COLUMNS = (
    "rows",
    "get_in_grown_ms",
    "get_in_small_ms",
    "filter_non_key_ms",
    "batch_of_50_creates_ms",
    "batch_of_50_upserts_ms",
)


async def _timed(operation: Callable[[], Awaitable[Any]]) -> float:
    """Mean milliseconds of ``operation`` over ``ROUNDS`` calls, one at a time."""
    started = time.perf_counter()
    for _ in range(ROUNDS):
        await operation()
    return (time.perf_counter() - started) / ROUNDS * 1000


async def run(sizes: list[int]) -> dict[str, Any]:
    from azure.data.tables.aio import TableClient, TableServiceClient

    async def query(table: TableClient, where: str) -> list[Any]:
        return [entity async for entity in table.query_entities(where)]

    fresh = iter(range(10**9))

    async def insert(table: TableClient, operation: str) -> None:
        # New keys after every grown row (as audit keys are), one transaction.
        await table.submit_transaction(
            [
                (operation, {"PartitionKey": "p", "RowKey": f"z{next(fresh):09d}", "blob": "x" * 1500})
                for _ in range(50)
            ]
        )

    rows: list[dict[str, Any]] = []
    with TemporaryDirectory() as tmp:
        port = free_port()
        azurite = start_azurite(port=port, log=Path(tmp) / "azurite.log")
        try:
            async with TableServiceClient.from_connection_string(
                development_connection_string(port)
            ) as tables:
                big = await tables.create_table_if_not_exists("grown")
                small = await tables.create_table_if_not_exists("small")
                await small.upsert_entity({"PartitionKey": "p", "RowKey": "r"})
                written = 0
                for size in sorted(sizes):
                    while written < size:
                        batch = [
                            (
                                "upsert",
                                {"PartitionKey": "p", "RowKey": f"{written + i:08d}", "blob": "x" * 1500},
                            )
                            for i in range(100)
                        ]
                        await big.submit_transaction(batch)
                        written += 100
                    rows.append(
                        {
                            "rows": written,
                            "get_in_grown_ms": round(
                                await _timed(lambda: big.get_entity("p", "00000005")), 2
                            ),
                            "get_in_small_ms": round(await _timed(lambda: small.get_entity("p", "r")), 2),
                            "filter_non_key_ms": round(await _timed(lambda: query(big, "blob eq 'none'")), 2),
                            "batch_of_50_creates_ms": round(await _timed(lambda: insert(big, "create")), 2),
                            "batch_of_50_upserts_ms": round(await _timed(lambda: insert(big, "upsert")), 2),
                        }
                    )
                    written += 2 * ROUNDS * 50  # the batches just timed stay in the partition
        finally:
            azurite.stop()
    return {
        "config": {"sizes": sizes, "rounds": ROUNDS, "row_bytes": 1500},
        "machine": machine(),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 30000])
    result = asyncio.run(run(parser.parse_args().sizes))
    print(
        markdown_table(
            [
                "rows in the partition",
                "point read in it (ms)",
                "point read in a 1-row table (ms)",
                "non-key filter (ms)",
                "50 creates (ms)",
                "50 upserts (ms)",
            ],
            [[r[k] for k in COLUMNS] for r in result["rows"]],
        )
    )
    print(f"wrote {write_results('azurite_tables', result)}")


if __name__ == "__main__":
    main()
