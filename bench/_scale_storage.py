"""The storage side of ``bench/scale.py``: where its tables live, and how they are metered.

- ``Backend``: sk_core's ``MemoryTableStore`` on one ``MemoryAccount`` with a latency and
  Azure Table Storage's per-partition target (each instance its own store, as its own
  process), or a real Azurite (one SDK client shared by the instances of this process).
- ``MeteredStore``: a table store whose queries and transactions are counted per
  partition and per second, as the target counts them.
- ``split_pools`` (``--model-split``): the in-memory account counts an operation that
  touches a sub-pool row and no window row (a pool sync, a loan) against a partition of
  that pool's own, as if pools and their keepers' lease rows lived in partitions of
  their own. An upper bound of that layout: built for real, its rebalances would take
  two more round trips (a transfer between partitions is two transactions), loans
  would go, and the recall row a pool sync reads would cost the tenant's partition an
  entity.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from sk_core.limits import INFLIGHT, USAGE_TABLE
from sk_core.limits.pools import POOL_PREFIX
from sk_core.limits.windows import DAY_PREFIX, MINUTE_PREFIX, MONTH_PREFIX
from sk_core.storage import MemoryAccount, MemoryTableStore, Operation, TableStore

PARTITION_TARGET = 2000  # entities per second, one table partition (see scale.py's docstring)


class Meter:
    """Entities per partition and per second, counted as the target counts them: a
    transaction its entities, a query the entities it returns (at least one)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.ops: Counter[str] = Counter()  # entities per partition
        self.per_second: Counter[tuple[str, int]] = Counter()  # (partition, second) -> entities
        self.exchanges = 0
        self.measuring = True

    def count(self, partition: str, entities: int) -> None:
        if not self.measuring:  # the demand period only (not the drain and hand-back after it)
            return
        entities = max(1, entities)
        self.exchanges += 1
        self.ops[partition] += entities
        self.per_second[(partition, int(time.monotonic() - self.started))] += entities


class MeteredTable:
    """A table client (memory or Azurite) whose queries and transactions are metered
    (``split``: by the partition ``split_pool_partition`` names, as the account throttles)."""

    def __init__(self, table: Any, meter: Meter, split: bool = False) -> None:
        self._table = table
        self._meter = meter
        self._split = split

    def _partition(self, partition: str, rows: tuple[str, ...]) -> str:
        if not self._split:
            return partition
        return split_pool_partition(Operation("", partition, "", 0, rows)) or partition

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def query_entities(
        self, query_filter: str, *, parameters: dict[str, Any], **options: Any
    ) -> AsyncIterator[Any]:
        return self._query(query_filter, parameters, options)

    async def _query(self, query_filter: str, parameters: dict[str, Any], options: Any) -> AsyncIterator[Any]:
        found = [e async for e in self._table.query_entities(query_filter, parameters=parameters, **options)]
        # The RowKeys a point query pins: sk_core.storage.query_partition names them r0, r1...
        rows = tuple(str(v) for k, v in parameters.items() if k[:1] == "r" and k[1:].isdigit())
        partition = str(parameters.get("pk", parameters.get("p", "*")))
        self._meter.count(self._partition(partition, rows), len(found))
        for entity in found:
            yield entity

    async def submit_transaction(self, operations: list[Any], **options: Any) -> Any:
        rows = tuple(str(op[1]["RowKey"]) for op in operations)
        self._meter.count(self._partition(str(operations[0][1]["PartitionKey"]), rows), len(operations))
        return await self._table.submit_transaction(operations, **options)


class MeteredStore:
    """A ``TableStore`` whose tables are metered (several ledgers may share one)."""

    def __init__(self, store: TableStore, meter: Meter, split: bool = False) -> None:
        self._store = store
        self._meter = meter
        self._split = split
        self._tables: dict[str, MeteredTable] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def table(self, name: str) -> Any:
        if name not in self._tables:
            self._tables[name] = MeteredTable(await self._store.table(name), self._meter, self._split)
        return self._tables[name]


_WINDOW_ROWS = (DAY_PREFIX, MONTH_PREFIX, MINUTE_PREFIX, INFLIGHT)


def split_pool_partition(op: Operation) -> str | None:
    """``split_pools``: the partition an operation counts against (see the docstring)."""
    pools = sorted(row for row in op.rows if row.startswith(POOL_PREFIX))
    if op.partition is None or not pools or any(row.startswith(_WINDOW_ROWS) for row in op.rows):
        return op.partition
    return f"{op.partition}~{pools[0]}"


class Backend:
    """Where the tables live: sk_core's in-memory account with a latency and the per-partition
    target (each instance its own store, as its own process), or a real Azurite (one
    HTTP client shared by the instances of this process: 1,024 clients would exhaust it)."""

    def __init__(
        self, kind: str, *, latency_ms: float, connection_string: str = "", split_pools: bool = False
    ) -> None:
        self.kind = kind
        self.split_pools = split_pools
        self.latency_ms = latency_ms
        self.connection_string = connection_string
        self.prefix = ""
        self.account: MemoryAccount | None = None
        self.shared: TableStore | None = None

    def new_run(self, prefix: str) -> None:
        self.prefix = prefix
        if self.kind == "memory":
            latency = self.latency_ms / 1000
            self.account = MemoryAccount(
                latency_s=lambda: latency * random.uniform(0.5, 1.5),
                partition_ops_per_s=PARTITION_TARGET,
                throttle_key=split_pool_partition if self.split_pools else None,
            )
        else:
            self.shared = TableStore(
                connection_string=self.connection_string, table_prefix=prefix, retries=2, timeout_seconds=15.0
            )

    def store(self) -> TableStore:
        if self.account is not None:
            return MemoryTableStore(self.account, table_prefix=self.prefix)
        assert self.shared is not None
        return self.shared

    async def rows(self, tenant: str) -> dict[str, dict[str, Any]]:
        table = await self.store().table(USAGE_TABLE)
        entities = table.query_entities("PartitionKey eq @p", parameters={"p": tenant})
        return {str(e["RowKey"]): dict(e) async for e in entities}

    async def end_run(self) -> None:
        if self.shared is not None:
            await self.shared.aclose()
            self.shared = None
        self.account = None
