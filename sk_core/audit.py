"""The audit log: one Table Storage row per API call, never the prompt.

Rows are written off the request path (a tracked background task): an audit write
must neither slow an answer nor fail it. Each row carries an ``expires_at``; the
maintenance sweep deletes rows past the retention period.

Layout: PartitionKey = tenant id (``_anonymous`` for calls that never authenticated),
RowKey = inverted milliseconds + request id, so a partition reads newest first.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the route boundary imports AuditEntry; keep the Azure SDK out of that
    from sk_core.storage import TableStore

logger = logging.getLogger(__name__)

AUDIT_TABLE = "audit"
ANONYMOUS = "_anonymous"
_MAX_MS = 10**15  # inverted timestamps stay positive and sort newest first


@dataclass
class AuditEntry:
    """What one call did. Filled in by the handler and the route boundary."""

    route: str
    status: int = 0
    tenant_id: str | None = None
    key_id: str | None = None
    function: str | None = None
    code: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nano: int = 0
    latency_ms: float = 0.0
    trace_id: str | None = None
    guard: dict[str, Any] = field(default_factory=dict)
    redactions: int = 0


class AuditLog:
    """Writes and reads audit rows."""

    def __init__(self, *, store: TableStore, retention_days: float) -> None:
        self._store = store
        self._retention = timedelta(days=retention_days)
        self._pending: set[asyncio.Task[None]] = set()

    def record(self, entry: AuditEntry) -> None:
        """Write ``entry`` in the background."""
        task = asyncio.get_running_loop().create_task(self._write(entry))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, entry: AuditEntry) -> None:
        from sk_core.storage import int64

        now = datetime.now(UTC)
        millis = int(now.timestamp() * 1000)
        row = {
            "PartitionKey": entry.tenant_id or ANONYMOUS,
            "RowKey": f"{_MAX_MS - millis:015d}-{uuid.uuid4().hex[:12]}",
            "route": entry.route,
            "status": entry.status,
            "key_id": entry.key_id or "",
            "function": entry.function or "",
            "code": entry.code or "",
            "prompt_tokens": entry.prompt_tokens,
            "completion_tokens": entry.completion_tokens,
            "cost_nano": int64(entry.cost_nano),
            "latency_ms": round(entry.latency_ms, 1),
            "trace_id": entry.trace_id or "",
            "guard": _compact(entry.guard),
            "redactions": entry.redactions,
            "created_at": now,
            "expires_at": now + self._retention,
        }
        try:
            table = await self._store.table(AUDIT_TABLE)
            await table.create_entity(row)
        except Exception:  # an audit gap is logged, never turned into a failed answer
            logger.warning("audit write failed for %s %s", entry.route, entry.status)

    async def recent(self, tenant_id: str, limit: int = 20) -> list[dict[str, Any]]:
        """The tenant's newest rows first."""
        from sk_core.storage import read_int

        table = await self._store.table(AUDIT_TABLE)
        rows: list[dict[str, Any]] = []
        async for entity in table.query_entities(
            "PartitionKey eq @p", parameters={"p": tenant_id}, results_per_page=min(limit, 1000)
        ):
            row = dict(entity)
            row["cost_nano"] = read_int(entity.get("cost_nano"))
            rows.append(row)
            if len(rows) >= limit:
                break
        return rows

    async def purge(self, now: datetime | None = None) -> int:
        """Delete rows past retention; returns how many."""
        from azure.core.exceptions import AzureError

        from sk_core.errors import StorageUnavailable
        from sk_core.storage import Conflict, delete_op, etag_of, submit

        table = await self._store.table(AUDIT_TABLE)
        deleted = 0
        try:
            async for entity in table.query_entities(
                "expires_at lt @now", parameters={"now": now or datetime.now(UTC)}
            ):
                key = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}
                await submit(table, [delete_op(key, etag_of(entity))])
                deleted += 1
        except (AzureError, Conflict, StorageUnavailable):
            logger.warning("audit purge interrupted; the next sweep continues")
        return deleted

    async def aclose(self) -> None:
        """Wait for pending writes (shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def _compact(guard: dict[str, Any]) -> str:
    import json

    return json.dumps(guard, separators=(",", ":"), sort_keys=True) if guard else ""
