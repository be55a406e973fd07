"""Azure Table Storage access: one service client per worker, tables made ready at start-up.

A host prepares the tables it uses before it takes traffic (``TableStore.prepare``: one
listing, then only the missing ones created), so a request never waits for a table
creation; a table not prepared is created on its first use, and a table lost later (the
account answers ``TableNotFound``) is created again on its next use.

Local development uses Azurite through a connection string (``UseDevelopmentStorage=true``
is understood, as Functions does); production uses the account endpoint with
``DefaultAzureCredential`` (managed identity). Request-path calls get few, fast retries:
the SDK default (10 tries, exponential from 0.8 s) would hold a request for seconds
against a dead endpoint, and limits must fail closed quickly instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline.transport import AioHttpTransport
from azure.data.tables import EdmType, EntityProperty, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from sk_core.errors import StorageUnavailable

logger = logging.getLogger(__name__)

# Azurite's well-known development account (public, documented by Microsoft).
_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

# A transaction is planned on rows just read; any of these means one of them changed
# (ETag), appeared (insert) or disappeared (a conditional delete of a row another
# process deleted) since: re-read and decide again.
CONFLICT_CODES = frozenset(
    {"UpdateConditionNotSatisfied", "EntityAlreadyExists", "ConditionNotMet", "ResourceNotFound"}
)


@contextlib.contextmanager
def storage_errors(reason: str = "storage unreachable") -> Iterator[None]:
    """Translate the Azure SDK's errors into ``StorageUnavailable`` (the one place that does).

    Put the SDK-specific cases (not found, already exists) inside, as ``except`` clauses
    of an inner ``try``: only what they leave unhandled becomes an outage.
    """
    try:
        yield
    except AzureError as exc:
        raise StorageUnavailable(reason) from exc


class Conflict(Exception):
    """An optimistic-concurrency write lost the race (412 on ETag, 409 on insert)."""


def development_connection_string(port: int = 10002) -> str:
    """What ``UseDevelopmentStorage=true`` means, for the table endpoint."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={_DEV_ACCOUNT};AccountKey={_DEV_KEY};"
        f"TableEndpoint=http://127.0.0.1:{port}/{_DEV_ACCOUNT};"
    )


def _retry_options(total: int, timeout: float) -> dict[str, Any]:
    # Each try waits at most ``timeout`` for an answer (a black-holed endpoint otherwise
    # holds a request for 3 tries x 5 s). The request path also bounds the whole call
    # (pipeline.fail_closed); these bound what runs on without a waiter (settlements,
    # audit flushes, lease syncs), so a dead endpoint never piles up work for long.
    return {
        "retry_total": total,
        "retry_backoff_factor": 0.1,
        "retry_backoff_max": 1,
        "connection_timeout": max(0.5, timeout / 2),
        "read_timeout": timeout,
    }


class Waits:
    """How long the account has kept this process waiting for an answer: since the later
    of its last answer and the oldest exchange sent and not answered since (in flight, or
    ended without an answer: reset, timed out). Zero while nothing waits for it: a process
    that asks nothing (backing off after a lost race, queued behind its own lock) is not
    kept waiting by storage, however long since it last heard from it (issue 23, defect 5)."""

    def __init__(self) -> None:
        self._ids = itertools.count()
        self._in_flight: dict[int, float] = {}  # exchange -> when it was sent
        self._unanswered: float | None = None  # the oldest one that ended without an answer
        self._answered = time.monotonic()

    @contextlib.contextmanager
    def exchange(self) -> Iterator[None]:
        """One exchange: answered when it returns or raises an HTTP error; a cancelled one
        (its caller gone) says nothing about storage."""
        exchange, sent = next(self._ids), time.monotonic()
        self._in_flight[exchange] = sent
        answered: bool | None = False
        try:
            yield
            answered = True
        except HttpResponseError:
            answered = True
            raise
        except asyncio.CancelledError:
            answered = None
            raise
        finally:
            del self._in_flight[exchange]
            if answered:
                self._answered, self._unanswered = time.monotonic(), None
            elif answered is False:
                self._unanswered = min(sent, self._unanswered or sent)

    def silence(self) -> float:
        waiting = [*self._in_flight.values(), *([self._unanswered] if self._unanswered is not None else [])]
        if not waiting:
            return 0.0
        return max(0.0, time.monotonic() - max(self._answered, min(waiting)))


class _WatchedTransport(AioHttpTransport):  # type: ignore[misc]  # (typed Any: a lazy import)
    """The SDK's aiohttp transport, each try of each request timed by ``Waits``."""

    def __init__(self, waits: Waits, **options: Any) -> None:
        super().__init__(**options)
        self._waits = waits

    async def send(self, request: Any, **config: Any) -> Any:
        with self._waits.exchange():
            return await super().send(request, **config)


class TableStore:
    """Owns the ``TableServiceClient`` and hands out per-table clients."""

    def __init__(
        self,
        *,
        connection_string: str = "",
        endpoint: str = "",
        table_prefix: str = "skf",
        retries: int = 2,
        timeout_seconds: float = 2.0,
    ) -> None:
        self._waits = Waits()
        retry = _retry_options(retries, timeout_seconds)
        options: dict[str, Any] = {
            **retry,
            "raw_response_hook": self._count,
            "transport": _WatchedTransport(self._waits, **retry),
        }
        # Every HTTP exchange with the account (a round trip), and the conflicts among
        # them: what the benchmarks report per request, and what leases keep low.
        self.round_trips = 0
        self.conflicts = 0
        # When a list: each exchange as "METHOD resource status" (tests and benchmarks
        # show what a request waited for).
        self.trace: list[str] | None = None
        self._credential: Any = None
        if connection_string:
            if connection_string.strip().rstrip(";").lower() == "usedevelopmentstorage=true":
                connection_string = development_connection_string()
            self._service = TableServiceClient.from_connection_string(connection_string, **options)
        elif endpoint:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
            self._service = TableServiceClient(endpoint, credential=self._credential, **options)
        else:
            raise ValueError("storage needs a connection string or an account endpoint")
        self._prefix = table_prefix
        self._clients: dict[str, TableClient] = {}
        self._created: set[str] = set()
        self._create_lock = asyncio.Lock()

    def silence(self) -> float:
        """Seconds the account has kept this process waiting for an answer (an error or a
        412 is one), zero while nothing waits for it (``Waits``): what the request path's
        storage deadline measures."""
        return self._waits.silence()

    def _count(self, response: Any) -> None:
        self.round_trips += 1
        http = response.http_response
        status = getattr(http, "status_code", 0)
        if self.trace is not None:
            request = response.http_request
            resource = str(request.url).split("?", 1)[0].rsplit("/", 1)[-1]
            self.trace.append(f"{request.method} {resource} {status}")
        if status in (409, 412):
            self.conflicts += 1
        elif status == 404 and http.headers.get("x-ms-error-code") == "TableNotFound":
            # The account lost its tables (Azurite restarted without persistence, a table
            # deleted by hand): forget what we created, so the next call re-creates them.
            # This request still fails closed; the next one is served.
            if self._created:
                logger.warning("storage lost its tables; re-creating them on next use")
            self._created.clear()

    def note_conflict(self) -> None:
        """A transaction lost an ETag race (reported inside a 202 batch answer)."""
        self.conflicts += 1

    async def table(self, name: str) -> TableClient:
        """The client for ``<prefix><name>``, creating the table on first use."""
        full = f"{self._prefix}{name}"
        client = self._clients.get(full)
        if client is None:
            client = self._clients[full] = self._service.get_table_client(full)
        if full not in self._created:
            async with self._create_lock:
                if full not in self._created:
                    await self._create(full)
        return client

    async def prepare(self, names: Iterable[str]) -> None:
        """Make sure the tables ``<prefix><name>`` exist, before traffic: one listing of
        this prefix's tables, then the missing ones created together. Afterwards their
        first use costs no exchange (``table``)."""
        wanted = {f"{self._prefix}{name}" for name in names}
        # Table names are letters and digits: every name with this prefix sorts below
        # the prefix followed by "{" (the character after "z").
        query = "TableName ge @low and TableName lt @high"
        bounds = {"low": self._prefix, "high": f"{self._prefix}{{"}
        async with self._create_lock:
            with storage_errors("cannot list tables"):
                existing = {t.name async for t in self._service.query_tables(query, parameters=bounds)}
            missing = sorted(wanted - existing)  # never made, or lost since
            self._created.difference_update(missing)
            self._created.update(wanted & existing)
            await asyncio.gather(*(self._create(full) for full in missing))

    async def _create(self, full: str) -> None:
        with storage_errors(f"cannot create table {full}"), contextlib.suppress(ResourceExistsError):
            await self._service.create_table(full)
        self._created.add(full)

    async def ping(self) -> None:
        """Readiness: one cheap call that proves the account answers."""
        with storage_errors("storage did not answer"):
            async for _ in self._service.list_tables(results_per_page=1):
                break

    async def aclose(self) -> None:
        """Close every client's connection pool."""
        for client in self._clients.values():
            await client.close()
        await self._service.close()
        if self._credential is not None:
            await self._credential.close()


def int64(value: int) -> EntityProperty:
    """An Int64 property: the SDK would send a plain int as Int32 and refuse large ones."""
    return EntityProperty(int(value), EdmType.INT64)


def read_int(value: Any, default: int = 0) -> int:
    """An integer property as read back (Int64 arrives as an ``EntityProperty``)."""
    if value is None:
        return default
    if isinstance(value, EntityProperty):
        return int(value.value)
    return int(value)


def etag_of(entity: Any) -> str:
    """The ETag the SDK attached to an entity it returned."""
    return str(entity.metadata["etag"])


def update_op(entity: dict[str, Any], etag: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A transaction operation replacing ``entity`` only if it still has ``etag``."""
    return (
        "update",
        entity,
        {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified},
    )


def delete_op(entity: dict[str, Any], etag: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A transaction operation deleting ``entity`` only if it still has ``etag``."""
    return ("delete", entity, {"etag": etag, "match_condition": MatchConditions.IfNotModified})


async def submit(
    table: TableClient, operations: list[tuple[str, dict[str, Any], dict[str, Any]]]
) -> list[Mapping[str, Any]]:
    """Submit one entity-group transaction; lost races become ``Conflict``. Returns each
    operation's response metadata (its new ``etag``), in order."""
    with storage_errors():
        try:
            return list(await table.submit_transaction(operations))
        except TableTransactionError as exc:
            code = str(getattr(exc, "error_code", "") or "")
            if code in CONFLICT_CODES or exc.status_code in (409, 412):
                raise Conflict(code or str(exc.status_code)) from exc
            raise StorageUnavailable(f"transaction failed: {code or exc.status_code}") from exc
        except (ResourceModifiedError, ResourceExistsError) as exc:
            raise Conflict(type(exc).__name__) from exc
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                raise Conflict(str(exc.status_code)) from exc
            raise StorageUnavailable(f"transaction failed: HTTP {exc.status_code}") from exc


async def query_partition(
    table: TableClient, partition: str, row_keys: list[str], *, also: str | None = None
) -> dict[str, Any]:
    """Read several entities of one partition in one round trip, keyed by RowKey; ``also``
    is a RowKey clause whose rows come in the same query (a range, say)."""
    clauses = " or ".join([*(f"RowKey eq @r{i}" for i in range(len(row_keys))), *([also] if also else [])])
    parameters: dict[str, Any] = {"pk": partition, **{f"r{i}": key for i, key in enumerate(row_keys)}}
    found: dict[str, Any] = {}
    with storage_errors():
        async for entity in table.query_entities(
            f"PartitionKey eq @pk and ( {clauses} )", parameters=parameters
        ):
            found[entity["RowKey"]] = entity
    return found


async def get_or_none(table: TableClient, partition: str, row: str) -> Any:
    """One entity, or None when it does not exist."""
    with storage_errors():
        try:
            return await table.get_entity(partition, row)
        except ResourceNotFoundError:
            return None
