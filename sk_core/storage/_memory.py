"""An in-memory Table Storage account: ``TableStore``'s interface with the table service's rules.

For unit tests of the code above storage (limits, leases, usage, accounts) without
Azurite, and for simulations at a scale no emulator reaches (``bench/scale.py``). It
keeps what that code relies on, and is property-tested against Azurite on the same
operation sequences (tests/storage/test_memory.py):

- entities are serialized and read back through the SDK's own converters, so values come
  back with the SDK's types (Int64 as ``EntityProperty``, ``TablesEntityDatetime``,
  ``metadata["etag"]``) and an unsupported value fails as the SDK fails;
- every write gets a new ETag; ``IfNotModified`` with a stale ETag fails with 412,
  a create of an existing entity with 409, an update of a missing one with 404, raised
  as the SDK raises them (``ResourceModifiedError``, ``ResourceExistsError``,
  ``ResourceNotFoundError``; ``TableTransactionError`` inside a transaction, which is
  all or nothing); ``delete_entity`` of a missing entity is silent, as in the SDK;
- queries take the OData subset the code writes (``eq ne gt ge lt le``, ``and or not``,
  parentheses; string, datetime, number, bool, guid literals; ``@name`` parameters
  substituted by the SDK's own function, with its word-by-word quirk), answered in
  PartitionKey, RowKey order.

Not modelled: entity size limits, key character rules, continuation tokens, table ACLs.

The account can also model a service: ``latency_s`` per round trip, a per-partition
throughput limit (``partition_ops_per_s`` entities per second; over it a caller waits,
or with ``over_limit="reject"`` gets 503 ServerBusy as Azure answers; ``throttle_key``
may count an operation against another partition's), an async hook
called before every operation (to inject faults), and counters of entities per partition.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableEntity, TableErrorCode, TableTransactionError, UpdateMode

# The SDK's own converters, so that values, types and refusals are the SDK's (private
# modules of a pinned SDK; the property test against Azurite catches any drift).
from azure.data.tables._deserialize import _convert_to_entity
from azure.data.tables._serialize import _add_entity_properties, _parameter_filter_substitution
from azure.data.tables.aio import TableClient

from sk_core.storage._filter import FilterError, Keys, Predicate, Wire, parse_filter, utf16
from sk_core.storage._tables import TableStore, Waits

_TRANSACTION_LIMIT = 100


@dataclass(frozen=True)
class Operation:
    """One round trip, as the hook and the counters see it."""

    table: str
    partition: str | None  # None: a query across partitions
    kind: str  # create, get, upsert, update, delete, query, transaction
    entities: int
    rows: tuple[str, ...] = ()  # the RowKeys it touched (a query: those it returned, or pinned)


def _error(cls: type[HttpResponseError], status: int, code: str, message: str, **kwargs: Any) -> Any:
    """An SDK exception as the SDK builds it from a service answer (no HTTP response here)."""
    error: Any = cls(message=f"{message}\nErrorCode:{code}", **kwargs)
    error.status_code = status
    # The SDK decodes a known code to the enum, except inside a transaction's answer.
    known = cls is not TableTransactionError and code in TableErrorCode.__members__.values()
    error.error_code = TableErrorCode(code) if known else code
    return error


def _not_found() -> Any:
    return _error(ResourceNotFoundError, 404, "ResourceNotFound", "The specified resource does not exist.")


def _exists() -> Any:
    return _error(ResourceExistsError, 409, "EntityAlreadyExists", "The specified entity already exists.")


def _modified() -> Any:
    return _error(ResourceModifiedError, 412, "UpdateConditionNotSatisfied", "Condition not satisfied.")


@dataclass
class _Row:
    wire: Wire
    etag: str
    timestamp: str


class MemoryAccount:
    """The storage account: tables, ETags, and the optional service model (shared by stores)."""

    def __init__(
        self,
        *,
        latency_s: float | Callable[[], float] = 0.0,
        partition_ops_per_s: float | None = None,
        over_limit: Literal["wait", "reject"] = "wait",
        burst_s: float = 0.0,
        on_operation: Callable[[Operation], Awaitable[None]] | None = None,
        throttle_key: Callable[[Operation], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.tables: dict[str, dict[tuple[str, str], _Row]] = {}
        self.latency_s = latency_s
        self.partition_ops_per_s = partition_ops_per_s
        self.over_limit = over_limit
        self.burst_s = burst_s  # how far a partition's queue may run ahead before "reject"
        self.on_operation = on_operation
        # Which partition's throughput an operation counts against (default: its own).
        # bench/scale.py models another layout of the same rows with it.
        self.throttle_key = throttle_key
        self._clock = clock
        self._sleep = sleep
        # Entities touched per (table, partition): what a partition's throughput target counts.
        self.partition_ops: Counter[tuple[str, str | None]] = Counter()
        self.operations = 0
        self._next_free: dict[tuple[str, str | None], float] = {}
        self._last_stamp = datetime.min.replace(tzinfo=UTC)

    def stamp(self) -> tuple[str, str]:
        """A fresh (ETag, Timestamp): strictly increasing, so every write's ETag is new."""
        now = max(datetime.now(UTC), self._last_stamp + timedelta(microseconds=1))
        self._last_stamp = now
        text = now.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"  # the service's 7 digits
        return f"W/\"datetime'{text.replace(':', '%3A')}'\"", text

    async def round_trip(self, op: Operation) -> None:
        """Account for one exchange: hook, per-partition throughput, latency."""
        self.operations += 1
        self.partition_ops[(op.table, op.partition)] += op.entities
        if self.on_operation is not None:
            await self.on_operation(op)
        if self.partition_ops_per_s:
            key = (op.table, self.throttle_key(op) if self.throttle_key else op.partition)
            now = self._clock()
            start = max(now, self._next_free.get(key, now))
            if self.over_limit == "reject" and start - now > self.burst_s:
                raise _error(HttpResponseError, 503, "ServerBusy", "The server is busy.")
            self._next_free[key] = start + max(1, op.entities) / self.partition_ops_per_s
            if start > now:
                await self._sleep(start - now)
        latency = self.latency_s() if callable(self.latency_s) else self.latency_s
        if latency > 0:
            await self._sleep(latency)


class MemoryTableStore(TableStore):
    """``TableStore`` over a ``MemoryAccount``; several stores on one account are several
    processes. A subclass, so that everything typed ``TableStore`` takes it; it shares no
    state with the SDK-backed parent (whose ``__init__`` would build a service client)."""

    def __init__(self, account: MemoryAccount | None = None, *, table_prefix: str = "skf") -> None:
        self.account = account if account is not None else MemoryAccount()
        self._prefix = table_prefix
        self._memory_tables: dict[str, MemoryTable] = {}
        self.round_trips = 0
        self.conflicts = 0
        self.trace: list[str] | None = None
        self._waits = Waits()

    async def table(self, name: str) -> TableClient:
        """The client for ``<prefix><name>`` (duck-typed as the SDK's); exists from first use."""
        full = f"{self._prefix}{name}"
        client = self._memory_tables.get(full)
        if client is None:
            client = self._memory_tables[full] = MemoryTable(self, full)
        return cast("TableClient", client)

    async def prepare(self, names: Iterable[str]) -> None:
        """Nothing to create: a table exists from its first use."""

    async def ping(self) -> None:
        """Readiness: the account is this process."""

    async def aclose(self) -> None:
        """Nothing to close."""

    async def _exchange(self, op: Operation) -> None:
        self.round_trips += 1
        if self.trace is not None:
            self.trace.append(f"{op.kind} {op.table} {op.partition}")
        with self._waits.exchange():
            await self.account.round_trip(op)


class MemoryTable:
    """The async ``TableClient`` operations the code uses, on one table of the account."""

    def __init__(self, store: MemoryTableStore, name: str) -> None:
        self._store = store
        self.table_name = name

    @property
    def _rows(self) -> dict[tuple[str, str], _Row]:
        return self._store.account.tables.setdefault(self.table_name, {})

    async def close(self) -> None:
        """Nothing to close."""

    async def _exchange(
        self, kind: str, partition: str | None, entities: int = 1, rows: tuple[str, ...] = ()
    ) -> None:
        await self._store._exchange(Operation(self.table_name, partition, kind, entities, rows))

    def _conflict(self, error: Exception) -> Exception:
        self._store.note_conflict()
        return error

    # --- single-entity operations -----------------------------------------------------

    async def create_entity(self, entity: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        """Insert; 409 ``ResourceExistsError`` when the entity exists."""
        wire, key = _wire(entity)
        await self._exchange("create", key[0])
        if key in self._rows:
            error = _exists()
            error.error_code = None  # the SDK re-raises the undecoded 409 here, without a code
            raise self._conflict(error)
        return self._put(key, wire)

    async def get_entity(
        self, partition_key: str, row_key: str, *, select: str | list[str] | None = None, **_: Any
    ) -> TableEntity:
        """One entity; 404 ``ResourceNotFoundError`` when missing."""
        await self._exchange("get", partition_key)
        row = self._rows.get((partition_key, row_key))
        if row is None:
            raise _not_found()
        return _entity(partition_key, row_key, row, select)

    async def upsert_entity(
        self, entity: Mapping[str, Any], mode: UpdateMode | str = UpdateMode.MERGE, **_: Any
    ) -> dict[str, Any]:
        """Insert or merge/replace, unconditionally."""
        wire, key = _wire(entity)
        await self._exchange("upsert", key[0])
        return self._apply_upsert(key, wire, mode)

    async def update_entity(
        self,
        entity: Mapping[str, Any],
        mode: UpdateMode | str = UpdateMode.MERGE,
        *,
        etag: str | None = None,
        match_condition: MatchConditions | None = None,
        **_: Any,
    ) -> dict[str, Any]:
        """Merge/replace an existing entity; 404 when missing, 412 on a stale ETag."""
        wire, key = _wire(entity)
        condition = _condition(entity, etag, match_condition)
        await self._exchange("update", key[0])
        error = self._check(key, condition)
        if error is not None:
            raise self._conflict(error) if error.status_code == 412 else error
        return self._apply_upsert(key, wire, mode)

    async def delete_entity(self, *args: Any, **kwargs: Any) -> None:
        """Delete (by entity or by keys); missing is not an error, a stale ETag is 412."""
        entity = kwargs.pop("entity", None) or (args[0] if args and isinstance(args[0], Mapping) else None)
        if entity is not None:
            key = (entity["PartitionKey"], entity["RowKey"])
        else:
            key = (kwargs.pop("partition_key", None) or args[0], kwargs.pop("row_key", None) or args[1])
        condition = _condition(entity or {}, kwargs.get("etag"), kwargs.get("match_condition"))
        await self._exchange("delete", key[0])
        error = self._check(key, condition)
        if error is not None and error.status_code == 412:
            raise self._conflict(error)
        self._rows.pop(key, None)

    # --- queries ----------------------------------------------------------------------

    def query_entities(
        self,
        query_filter: str,
        *,
        parameters: dict[str, Any] | None = None,
        select: str | list[str] | None = None,
        **_: Any,
    ) -> AsyncIterator[TableEntity]:
        """Entities matching an OData filter, in key order (not a coroutine, as in the SDK)."""
        try:
            predicate, keys = parse_filter(_parameter_filter_substitution(parameters, query_filter))
        except FilterError as bad:
            raise _error(HttpResponseError, 400, "InvalidInput", str(bad)) from None
        return self._scan(predicate, select, keys)

    def list_entities(self, *, select: str | list[str] | None = None, **_: Any) -> AsyncIterator[TableEntity]:
        """Every entity, in key order."""
        return self._scan(lambda _: True, select, Keys())

    def _candidates(self, keys: Keys) -> list[tuple[tuple[str, str], _Row]]:
        """The rows that may match: looked up by the keys the filter pins, else all."""
        rows = self._rows
        if keys.partitions is not None and keys.rows is not None:
            pairs = ((p, r) for p in keys.partitions for r in keys.rows)
            return [(key, rows[key]) for key in pairs if key in rows]
        return [
            (key, row)
            for key, row in rows.items()
            if (keys.partitions is None or key[0] in keys.partitions)
            and (keys.rows is None or key[1] in keys.rows)
        ]

    async def _scan(
        self, predicate: Predicate, select: str | list[str] | None, keys: Keys
    ) -> AsyncIterator[TableEntity]:
        found = [
            (key, row)
            for key, row in sorted(self._candidates(keys), key=lambda kv: (utf16(kv[0][0]), utf16(kv[0][1])))
            if predicate({**row.wire, "PartitionKey": key[0], "RowKey": key[1], "Timestamp": row.timestamp,
                          "Timestamp@odata.type": "Edm.DateTime"})
        ]
        partitions = {key[0] for key, _ in found}
        rows = tuple(sorted(keys.rows)) if keys.rows is not None else tuple(key[1] for key, _ in found)
        await self._exchange(
            "query", partitions.pop() if len(partitions) == 1 else None, max(1, len(found)), rows
        )
        for (partition, row_key), row in found:
            yield _entity(partition, row_key, row, select)

    # --- transactions -----------------------------------------------------------------

    async def submit_transaction(self, operations: Iterable[Any], **_: Any) -> list[dict[str, Any]]:
        """An entity-group transaction: all operations apply, or none does."""
        planned: list[tuple[str, tuple[str, str], Wire, Mapping[str, Any]]] = []
        for operation in operations:
            kind, entity = operation[0], operation[1]
            options: Mapping[str, Any] = operation[2] if len(operation) > 2 else {}
            if "PartitionKey" not in entity or "RowKey" not in entity:
                raise ValueError("PartitionKey and/or RowKey were not provided in entity")
            if planned and entity["PartitionKey"] != planned[0][1][0]:
                raise ValueError("Partition Keys in the batch must all be the same.")
            if kind not in ("create", "upsert", "update", "delete"):
                raise ValueError(f"Unrecognized operation: {kind}")
            key = (entity["PartitionKey"], entity["RowKey"])
            wire = {} if kind == "delete" else _wire(entity)[0]
            planned.append((kind, key, wire, {**options, "_entity": entity}))
        if not planned:
            return []  # the SDK turns the service's 400 for an empty batch into []
        touched = tuple(key[1] for _, key, _, _ in planned)
        await self._exchange("transaction", planned[0][1][0], len(planned), touched)
        if len(planned) > _TRANSACTION_LIMIT:
            raise _error(TableTransactionError, 400, "InvalidInput", "0:more than 100 changes in a batch")
        if len({key for _, key, _, _ in planned}) < len(planned):
            raise _error(TableTransactionError, 400, "InvalidDuplicateRow", "0:two changes of one row")
        # Check every operation against the state before the transaction (no two touch one row).
        for index, (kind, key, _, options) in enumerate(planned):
            if kind == "create":
                error = _exists() if key in self._rows else None
            elif kind in ("update", "delete"):
                etag, match = options.get("etag"), options.get("match_condition")
                error = self._check(key, _condition(options["_entity"], etag, match))
            else:
                error = None
            if error is not None:
                code = str(getattr(error.error_code, "value", error.error_code))
                message = f"{index}:{error.message}"
                failed = _error(TableTransactionError, error.status_code, code, message, index=index)
                # Not counted as a conflict here: the batch answer is a 202, as for TableStore,
                # whose callers report a lost race themselves (note_conflict).
                raise failed
        results: list[dict[str, Any]] = []
        for kind, key, wire, options in planned:
            if kind == "delete":
                del self._rows[key]
                results.append({})
            elif kind == "create":
                results.append(self._put(key, wire))
            else:
                results.append(self._apply_upsert(key, wire, options.get("mode", UpdateMode.MERGE)))
        return results

    # --- the rules --------------------------------------------------------------------

    def _check(self, key: tuple[str, str], etag: str | None) -> Any:
        """The error an update or delete meets: missing (404), stale ETag (412), or None."""
        row = self._rows.get(key)
        if row is None:
            return _not_found()
        if etag is not None and etag != "*" and etag != row.etag:
            return _modified()
        return None

    def _apply_upsert(self, key: tuple[str, str], wire: Wire, mode: UpdateMode | str) -> dict[str, Any]:
        row = self._rows.get(key)
        if row is not None and UpdateMode(mode) == UpdateMode.MERGE:
            merged = dict(row.wire)
            for name in [n for n in wire if not n.endswith("@odata.type")]:
                merged.pop(f"{name}@odata.type", None)
            merged.update(wire)
            wire = merged
        return self._put(key, wire)

    def _put(self, key: tuple[str, str], wire: Wire) -> dict[str, Any]:
        etag, timestamp = self._store.account.stamp()
        self._rows[key] = _Row(wire, etag, timestamp)
        return {"etag": etag, "date": None, "version": None}


def _wire(entity: Mapping[str, Any]) -> tuple[Wire, tuple[str, str]]:
    """The entity's properties as the SDK sends them (raises as the SDK does), and its key."""
    if "PartitionKey" not in entity or "RowKey" not in entity:
        raise ValueError("PartitionKey and/or RowKey were not provided in entity")
    wire = _add_entity_properties(entity)
    key = (str(wire.pop("PartitionKey")), str(wire.pop("RowKey")))
    wire.pop("PartitionKey@odata.type", None)
    wire.pop("RowKey@odata.type", None)
    return wire, key


def _condition(entity: Mapping[str, Any], etag: str | None, match_condition: MatchConditions | None) -> str:
    """The ETag a conditional write must match (``*``: it must only exist), as the SDK picks it."""
    if match_condition == MatchConditions.IfNotModified:
        etag = etag or (entity.metadata.get("etag") if isinstance(entity, TableEntity) else None)
        if not etag:
            raise ValueError("IfNotModified must be specified with etag.")
        return etag
    if match_condition not in (None, MatchConditions.Unconditionally):
        raise ValueError(f"Unsupported match condition: {match_condition}")
    if etag:
        raise ValueError("Etag is not supported for an Unconditional operation.")
    return "*"


def _entity(partition: str, row_key: str, row: _Row, select: str | list[str] | None) -> TableEntity:
    """The entity as the SDK returns it from a service answer."""
    wire: Wire = {"PartitionKey": partition, "RowKey": row_key, **row.wire}
    wire.update({"Timestamp": row.timestamp, "Timestamp@odata.type": "Edm.DateTime"})
    if select is not None:  # only what was selected: the keys and Timestamp too
        keep = set(select.split(",") if isinstance(select, str) else select)
        wire = {k: v for k, v in wire.items() if k.split("@", 1)[0] in keep}
    entity: TableEntity = _convert_to_entity({**wire, "odata.etag": row.etag})  # type: ignore[no-untyped-call]
    return entity
