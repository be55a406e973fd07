"""The sweep: expiry of abandoned holds and leases, and of old minute rows.

A hold whose lease passed without a settlement (its process was killed, or storage
was down when it tried) is charged at its reserved amount, flagged and recorded as an
``expired-`` audit row: the call may have happened, so it is never released silently.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sk_core.accounts import Limits, Tenant
from sk_core.errors import StorageUnavailable
from sk_core.limits.allocation import Allocator
from sk_core.limits.holds import EXPIRED_PREFIX, HOLD_PREFIX
from sk_core.limits.lease_state import LEASE_PREFIX, lease_amounts, lease_in_flight
from sk_core.limits.offers import ALLOC, CLAIM_PREFIX, allocating, take_alloc
from sk_core.limits.pools import POOL_PREFIX, PoolRow
from sk_core.limits.rows import (
    INFLIGHT,
    INFLIGHT_FIELDS,
    USAGE_TABLE,
    WINDOW_FIELDS,
    Contended,
    PartitionRows,
)
from sk_core.limits.windows import MINUTE_PREFIX, minute_key
from sk_core.storage import (
    Conflict,
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


@dataclass(frozen=True)
class _Expiry:
    """One kind of reservation the sweep charges when its owner never came back."""

    prefix: str  # RowKey prefix of the reservation rows
    reserved_field: str  # the window field its amount sits in
    counter: str  # the window field counting such expiries
    slices: Callable[[Any], list[tuple[str, str, int]]]  # (day, month, amount) it reserved
    slots: Callable[[Any], int]  # in-flight slots it held
    audit_key: Callable[[str, datetime], str]
    # Other in-flight row fields it counts in (a lease: its slots and calls in flight).
    in_flight_parts: Callable[[Any], dict[str, int]] = lambda _: {}


_HOLDS = _Expiry(
    prefix=HOLD_PREFIX,
    reserved_field="held_nano",
    counter="expired_holds",
    slices=lambda hold: [(str(hold["day"]), str(hold["month"]), read_int(hold["amount_nano"]))],
    slots=lambda hold: 1,
    audit_key=lambda row, now: EXPIRED_PREFIX + row.removeprefix(HOLD_PREFIX),
)
_LEASES = _Expiry(
    prefix=LEASE_PREFIX,
    reserved_field="leased_nano",
    counter="expired_leases",
    slices=lease_amounts,
    slots=lambda lease: read_int(lease.get("slots")),
    audit_key=lambda row, now: f"{EXPIRED_PREFIX}{row}-{int(now.timestamp())}",
    in_flight_parts=lease_in_flight,
)


async def expire_holds(ledger: Ledger) -> int:
    """Charge every hold and every lease whose owner stopped settling or renewing it, at
    everything it reserved, flagged; drop old minute rows. Returns how many were charged."""
    charged = 0
    for kind in (_HOLDS, _LEASES):
        charged += await _expire_all(ledger, kind)
    charged += await expire_claims(ledger)
    await flush_pools(ledger)
    await _drop_old_minutes(await ledger.store.table(USAGE_TABLE), ledger.now())
    return charged


async def _expire_all(ledger: Ledger, kind: _Expiry) -> int:
    table = await ledger.store.table(USAGE_TABLE)
    upper = kind.prefix[:-1] + "."  # the first key after every "<prefix>..." key
    with storage_errors():
        stale = [
            entity
            async for entity in table.query_entities(
                f"RowKey ge '{kind.prefix}' and RowKey lt '{upper}' and expires_at lt @now",
                parameters={"now": ledger.now()},
            )
        ]
    charged = 0
    for entity in stale:
        if await _expire_one(ledger, table, kind, entity["PartitionKey"], entity["RowKey"]):
            charged += 1
    return charged


async def _expire_one(ledger: Ledger, table: Any, kind: _Expiry, tenant_id: str, row: str) -> bool:
    async def plan() -> Plan[int | None]:
        reservation = (await query_partition(table, tenant_id, [row])).get(row)
        expires = reservation.get("expires_at") if reservation is not None else None
        if reservation is None or expires is None or expires >= ledger.now():
            return [], None  # settled, handed back or renewed meanwhile
        slices = kind.slices(reservation)
        keys = list(dict.fromkeys([INFLIGHT, *(key for day, month, _ in slices for key in (day, month))]))
        rows = PartitionRows(tenant_id, await query_partition(table, tenant_id, keys))
        total = 0
        for day, month, amount in slices:
            total += amount
            for key in (day, month):
                window = rows.counter(key, WINDOW_FIELDS)
                window.add(kind.reserved_field, -amount)
                window.add("spent_nano", amount)
                window.add(kind.counter, 1)
                window.add("expired_nano", amount)
        in_flight_row = rows.counter(INFLIGHT, INFLIGHT_FIELDS)
        in_flight_row.add("count", -kind.slots(reservation))
        for name, value in kind.in_flight_parts(reservation).items():
            in_flight_row.add(name, -value)
        # The audit trail: what was charged without a settlement, and why.
        audit = {k: v for k, v in reservation.items() if k not in ("PartitionKey", "RowKey")}
        flagged = {
            "PartitionKey": tenant_id,
            "RowKey": kind.audit_key(row, ledger.now()),
            **audit,
            "charged_nano": int64(total),
            "flagged": True,
            "charged_at": ledger.now(),
        }
        operations = [
            *rows.operations(),
            delete_op({"PartitionKey": tenant_id, "RowKey": row}, etag_of(reservation)),
            ("create", flagged, {}),
        ]
        return operations, total

    try:
        amount = await ledger.update(table, tenant_id, "expiry", plan)
    except Contended:
        return False  # the next sweep tries again
    if amount is None:
        return False
    logger.warning(
        "%s of tenant %s expired unsettled: charged %d nano-USD and flagged", row, tenant_id, amount
    )
    return True


async def expire_claims(ledger: Ledger) -> int:
    """Allocated leases: claims past their expiry in tenants nobody allocates for now
    (their last process died, and no request came since) are charged by one cycle of an
    allocator that expires them only (``Allocator(expiring_only=True)``), taken over for
    the moment, then given up. A tenant with a live allocator is left to it."""
    table = await ledger.store.table(USAGE_TABLE)
    now = ledger.now()
    with storage_errors():
        tenants = {
            str(entity["PartitionKey"]): entity["RowKey"]
            async for entity in table.query_entities(
                f"RowKey ge '{CLAIM_PREFIX}' and RowKey lt '{CLAIM_PREFIX[:-1]}.' and expires_at lt @now",
                parameters={"now": now},
                select=["PartitionKey", "RowKey"],
            )
        }
    charged = 0
    for tenant_id in tenants:
        alloc = (await query_partition(table, tenant_id, [ALLOC])).get(ALLOC)
        if allocating(alloc, now):
            continue
        owner = f"sweep-{uuid.uuid4().hex[:12]}"
        # (The tenant's limits are not needed: an expiring cycle grants nothing.)
        tenant = Tenant(id=tenant_id, display_name=tenant_id, limits=Limits())
        allocator = Allocator(ledger, tenant, owner, horizon=0.0, cycle=0.0, expiring_only=True)
        try:
            allocator.alloc_etag = await take_alloc(table, tenant_id, owner, alloc, now)
            if await allocator.cycle_once():
                charged += allocator.tally["expirations"]
            await allocator.release()
        except (Conflict, StorageUnavailable):
            continue  # an allocator started meanwhile, or storage failed: the next sweep
    return charged


async def credit_all(ledger: Ledger, tenant: Tenant, process_id: str) -> None:
    """Take the allocator over now, whoever holds it, and run one cycle: every claim's
    reports reach the window rows (an operator's flush; bench/scale.py after its drain)."""
    table = await ledger.store.table(USAGE_TABLE)
    for _ in range(10):
        alloc = (await query_partition(table, tenant.id, [ALLOC])).get(ALLOC)
        try:
            await take_alloc(table, tenant.id, process_id, alloc, ledger.now())
            allocator = Allocator(ledger, tenant, process_id, horizon=0.0, cycle=0.0)
            if await allocator.cycle_once():
                return
        except Conflict:
            await asyncio.sleep(0.05)


async def flush_pools(ledger: Ledger) -> int:
    """Flush every sub-pool no keeper touched for its TTL (``pools.py``): what it holds
    goes back to the window rows, what its keepers reported becomes spent. Not a charge:
    a pool's free part belongs to no process. Returns how many were flushed."""
    table = await ledger.store.table(USAGE_TABLE)
    upper = POOL_PREFIX[:-1] + "."
    with storage_errors():
        stale = [
            (entity["PartitionKey"], entity["RowKey"])
            async for entity in table.query_entities(
                f"RowKey ge '{POOL_PREFIX}' and RowKey lt '{upper}' and expires_at lt @now",
                parameters={"now": ledger.now()},
            )
        ]
    flushed = 0
    for tenant_id, key in stale:

        async def plan(tenant_id: str = tenant_id, key: str = key) -> Plan[bool]:
            now = ledger.now()
            minute = minute_key(now)
            found = await query_partition(table, tenant_id, [key])
            pool = found.get(key)
            if pool is None or pool["expires_at"] >= now:
                return [], False  # touched meanwhile
            keys = [INFLIGHT, minute, *(str(pool.get(k) or "") for k in ("day", "month"))]
            rows = PartitionRows(tenant_id, await query_partition(table, tenant_id, [k for k in keys if k]))
            rows.entities[key] = pool
            row = PoolRow.read(rows, key)
            row.flush(rows, minute)
            inflight = rows.counter(INFLIGHT, INFLIGHT_FIELDS)
            if inflight["leases"] <= 0 < inflight["pools"]:  # nobody holds a lease: no pools
                inflight.add("pools", -inflight["pools"])
            emptied = delete_op({"PartitionKey": tenant_id, "RowKey": key}, etag_of(pool))
            return [*rows.operations(), emptied], True

        try:
            flushed += await ledger.update(table, tenant_id, "pool flush", plan)
        except Contended:
            continue  # the next sweep tries again
    return flushed


async def _drop_old_minutes(table: Any, now: datetime) -> None:
    # Minute rows are only needed while their minute (and late settlements) may
    # still touch them; keep an hour, then delete.
    cutoff = minute_key(now - timedelta(hours=1))
    try:
        with storage_errors():
            old = [
                entity
                async for entity in table.query_entities(
                    "RowKey ge @first and RowKey lt @cutoff",
                    parameters={"first": MINUTE_PREFIX, "cutoff": cutoff},
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
