"""The sweep and the read model: expiry of abandoned holds, old minute rows, usage.

A hold whose lease passed without a settlement (its process was killed, or storage
was down when it tried) is charged at its reserved amount, flagged and recorded as an
``expired-`` audit row: the call may have happened, so it is never released silently.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sk_core.errors import StorageUnavailable
from sk_core.limits.leases import LEASE_PREFIX, lease_amounts, lease_rows_expired
from sk_core.limits.ledger import Contended
from sk_core.limits.rows import (
    INFLIGHT,
    INFLIGHT_FIELDS,
    USAGE_TABLE,
    WINDOW_FIELDS,
    CounterRow,
    PartitionRows,
)
from sk_core.storage import (
    Conflict,
    TableStore,
    delete_op,
    etag_of,
    int64,
    query_partition,
    read_int,
    storage_errors,
    submit,
)

if TYPE_CHECKING:
    from sk_core.limits.ledger import Ledger, Plan

logger = logging.getLogger(__name__)


async def expire_holds(ledger: Ledger) -> int:
    """Charge every hold whose lease has passed at its reserved amount, flagged. Returns how many."""
    table = await ledger.store.table(USAGE_TABLE)
    now = ledger.now()
    with storage_errors():
        expired = [
            entity
            async for entity in table.query_entities(
                "RowKey ge 'hold-' and RowKey lt 'hold.' and expires_at lt @now", parameters={"now": now}
            )
        ]
    charged = 0
    for entity in expired:
        if await _expire_one(ledger, table, entity["PartitionKey"], entity["RowKey"]):
            charged += 1
    charged += await expire_leases(ledger)
    await _drop_old_minutes(table, now)
    return charged


async def expire_leases(ledger: Ledger) -> int:
    """Charge every lease whose process stopped renewing it: its whole outstanding budget
    slice counts as spent (flagged), its slots are released. Returns how many."""
    table = await ledger.store.table(USAGE_TABLE)
    now = ledger.now()
    with storage_errors():
        stale = [
            entity
            async for entity in table.query_entities(
                f"RowKey ge '{LEASE_PREFIX}' and RowKey lt 'lease.' and expires_at lt @now",
                parameters={"now": now},
            )
        ]
    charged = 0
    for entity in stale:
        if await _expire_lease(ledger, table, entity["PartitionKey"], entity["RowKey"]):
            charged += 1
    return charged


async def _expire_lease(ledger: Ledger, table: Any, tenant_id: str, row: str) -> bool:
    async def plan() -> Plan[int | None]:
        lease = (await query_partition(table, tenant_id, [row])).get(row)
        if lease is None or not lease_rows_expired(lease, ledger.now()):
            return [], None  # handed back or renewed meanwhile
        slices = lease_amounts(lease)
        keys = list(dict.fromkeys([INFLIGHT, *(key for day, month, _ in slices for key in (day, month))]))
        rows = PartitionRows(tenant_id, await query_partition(table, tenant_id, keys))
        total = 0
        for day, month, amount in slices:
            total += amount
            for key in (day, month):
                window = rows.counter(key, WINDOW_FIELDS)
                window.add("leased_nano", -amount)
                window.add("spent_nano", amount)
                window.add("expired_leases", 1)
                window.add("expired_nano", amount)
        rows.counter(INFLIGHT, INFLIGHT_FIELDS).add("count", -read_int(lease.get("slots")))
        audit = {k: v for k, v in lease.items() if k not in ("PartitionKey", "RowKey")}
        operations = [
            *rows.operations(),
            delete_op({"PartitionKey": tenant_id, "RowKey": row}, etag_of(lease)),
            (
                "create",
                {
                    "PartitionKey": tenant_id,
                    "RowKey": f"expired-{row}-{int(ledger.now().timestamp())}",
                    **audit,
                    "charged_nano": int64(total),
                    "flagged": True,
                    "charged_at": ledger.now(),
                },
                {},
            ),
        ]
        return operations, total

    try:
        amount = await ledger.update(table, tenant_id, "lease expiry", plan)
    except Contended:
        return False  # the next sweep tries again
    if amount is None:
        return False
    logger.warning(
        "lease %s of tenant %s expired unrenewed: charged %d nano-USD and flagged", row, tenant_id, amount
    )
    return True

async def _expire_one(ledger: Ledger, table: Any, tenant_id: str, row: str) -> bool:
    async def plan() -> Plan[int | None]:
        holds = await query_partition(table, tenant_id, [row])
        hold = holds.get(row)
        if hold is None:
            return [], None  # settled meanwhile
        amount = read_int(hold["amount_nano"])
        rows = await query_partition(table, tenant_id, [hold["day"], hold["month"], INFLIGHT])
        operations = []
        for key in (hold["day"], hold["month"]):
            window = CounterRow(tenant_id, key, rows.get(key), WINDOW_FIELDS)
            window.add("held_nano", -amount)
            window.add("spent_nano", amount)
            window.add("expired_holds", 1)
            window.add("expired_nano", amount)
            operations.append(window.operation())
        inflight = CounterRow(tenant_id, INFLIGHT, rows.get(INFLIGHT), INFLIGHT_FIELDS)
        inflight.add("count", -1)
        operations.append(inflight.operation())
        operations.append(delete_op({"PartitionKey": tenant_id, "RowKey": row}, etag_of(hold)))
        # The audit trail: which hold was charged without a settlement, and why.
        audit = {k: v for k, v in hold.items() if k not in ("PartitionKey", "RowKey")}
        operations.append(
            (
                "create",
                {
                    "PartitionKey": tenant_id,
                    "RowKey": "expired-" + row[5:],
                    **audit,
                    "flagged": True,
                    "charged_at": ledger.now(),
                },
                {},
            )
        )
        return operations, amount

    try:
        amount = await ledger.update(table, tenant_id, "expiry", plan)
    except Contended:
        return False  # the next sweep tries again
    if amount is None:
        return False
    logger.warning(
        "hold %s of tenant %s expired unsettled: charged %d nano-USD and flagged", row, tenant_id, amount
    )
    return True

async def _drop_old_minutes(table: Any, now: datetime) -> None:
    # Minute rows are only needed while their minute (and late settlements) may
    # still touch them; keep an hour, then delete.
    cutoff = (now - timedelta(hours=1)).strftime("minute-%Y%m%d%H%M")
    try:
        with storage_errors():
            old = [
                entity
                async for entity in table.query_entities(
                    "RowKey ge 'minute-' and RowKey lt @cutoff", parameters={"cutoff": cutoff}
                )
            ]
        for entity in old:
            await submit(
                table,
                [
                    delete_op(
                        {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]},
                        etag_of(entity),
                    )
                ],
            )
    except (Conflict, StorageUnavailable):
        pass  # housekeeping; the next sweep tries again

async def usage(store: TableStore, tenant_id: str, window: str) -> dict[str, int]:
    """Counters of one window row (``day-YYYYMMDD`` / ``month-YYYYMM``); zeros if none."""
    table = await store.table(USAGE_TABLE)
    rows = await query_partition(table, tenant_id, [window, INFLIGHT])
    values = CounterRow(tenant_id, window, rows.get(window), WINDOW_FIELDS).values
    result = {k: int(v) for k, v in values.items() if k in WINDOW_FIELDS}
    result["inflight"] = CounterRow(tenant_id, INFLIGHT, rows.get(INFLIGHT), INFLIGHT_FIELDS)["count"]
    return result

async def expired(store: TableStore, tenant_id: str) -> list[dict[str, Any]]:
    """The flagged expired-hold audit rows of a tenant."""
    table = await store.table(USAGE_TABLE)
    with storage_errors():
        return [
            dict(e)
            async for e in table.query_entities(
                "PartitionKey eq @p and RowKey ge 'expired-' and RowKey lt 'expired.'",
                parameters={"p": tenant_id},
            )
        ]
