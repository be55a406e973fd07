"""How a tenant's counters are stored: rows of its partition in the usage table.

    day-YYYYMMDD        spent_nano, held_nano, requests, tokens, expired holds
    month-YYYYMM        the same, for the calendar month (UTC)
    minute-YYYYMMDDHHMM requests admitted and tokens charged in that UTC minute
    inflight            requests admitted and not yet settled
    hold-<request id>   one reservation: amount, windows, lease expiry
    lease-<process id>  one process's lease: budget slices, slots, expiry (leases.py)
    alloc, offer-<pid>, claim-<pid>  allocated leases (offers.py, allocation.py)

Window rows count ``leased_nano`` (budget slices held by processes) beside
``held_nano``; minute and in-flight rows count leased requests, tokens and slots as
used, so an exact admission always sees what the leases took.

A ``CounterRow`` is a row as read (with its ETag), changed in memory and written back
as one operation of an ETag-conditional entity-group transaction. The key format of the
window rows is ``windows.py``; hold rows are ``holds.py``. ``read_window`` and
``read_expired`` are the ledger's raw reads of these rows; the usage read model
(``sk_core.usage``) decodes the rows it reads with ``counters``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sk_core.errors import StorageUnavailable
from sk_core.limits.holds import EXPIRED_PREFIX
from sk_core.limits.offers import CLAIM_ROWS, claimed
from sk_core.limits.policy import Counters
from sk_core.limits.windows import window_keys
from sk_core.storage import TableStore, etag_of, int64, query_partition, read_int, storage_errors, update_op

USAGE_TABLE = "usage"
INFLIGHT = "inflight"
WINDOW_FIELDS = (
    "spent_nano",
    "held_nano",
    "leased_nano",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "expired_holds",
    "expired_nano",
    "expired_leases",
    "overrun_nano",
)
MINUTE_FIELDS = ("requests", "tokens")
# count: slots in use (holds of calls admitted exactly, plus slots leased to processes);
# leased_slots: the leased part of count; leased_in_flight: of those, the ones used by
# calls in flight when their process last reported (issue 23: leased is not in flight);
# leases: lease rows in the partition (holders of the pool: they space their reports);
# pools: how many sub-pools the tenant's keepers use (pools.py: grows, never shrinks
# while anyone holds a lease, so that no pool is left behind holding capacity).
INFLIGHT_FIELDS = ("count", "leased_slots", "leased_in_flight", "leases", "pools")


class Contended(StorageUnavailable):
    """An ETag-conditional update of these rows lost the race on every attempt."""


class CounterRow:
    """A counter row as read, with its ETag (None: it does not exist yet)."""

    def __init__(self, tenant_id: str, key: str, entity: Any, fields: tuple[str, ...]) -> None:
        self.etag = etag_of(entity) if entity is not None else None
        self.changed = False
        self.values: dict[str, Any] = {"PartitionKey": tenant_id, "RowKey": key}
        for name in fields:
            self.values[name] = read_int(entity.get(name)) if entity is not None else 0

    def __getitem__(self, name: str) -> int:
        return int(self.values[name])

    def add(self, name: str, amount: int) -> None:
        self.values[name] = int(self.values[name]) + amount
        self.changed = True

    def operation(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        entity = {k: v if k in ("PartitionKey", "RowKey") else int64(v) for k, v in self.values.items()}
        # New rows are inserts: two processes creating the same window collide (409)
        # instead of one overwriting the other.
        return ("create", entity, {}) if self.etag is None else update_op(entity, self.etag)


def in_flight(row: CounterRow) -> tuple[int, int]:
    """(calls in flight, slots leased to processes) of a tenant's in-flight row; calls in
    flight on leases as of each process's last report (``SKF_LEASE_REPORT_SECONDS``)."""
    return row["count"] - row["leased_slots"] + row["leased_in_flight"], row["leased_slots"]


class PartitionRows:
    """One read of a tenant's rows, the counters changed in memory as jobs are planned."""

    def __init__(self, tenant_id: str, entities: dict[str, Any]) -> None:
        self.tenant_id = tenant_id
        self.entities = entities
        self._counters: dict[str, CounterRow] = {}

    def counter(self, key: str, fields: tuple[str, ...]) -> CounterRow:
        if key not in self._counters:
            self._counters[key] = CounterRow(self.tenant_id, key, self.entities.get(key), fields)
        return self._counters[key]

    def exists(self, key: str) -> bool:
        return key in self.entities or key in self._counters

    def operations(self) -> list[Any]:
        """One conditional write per counter row a planned job changed."""
        return [row.operation() for row in self._counters.values() if row.changed]

    def counters(self, day: str, month: str, minute: str) -> Counters:
        """The admission policy's view of these rows."""
        day_row = self.counter(day, WINDOW_FIELDS)
        month_row = self.counter(month, WINDOW_FIELDS)
        minute_row = self.counter(minute, MINUTE_FIELDS)
        return Counters(
            inflight=self.counter(INFLIGHT, INFLIGHT_FIELDS)["count"],
            minute_requests=minute_row["requests"],
            minute_tokens=minute_row["tokens"],
            day_spent_nano=day_row["spent_nano"],
            # Capacity leased to processes is as unavailable here as a held reservation.
            day_held_nano=day_row["held_nano"] + day_row["leased_nano"],
            month_spent_nano=month_row["spent_nano"],
            month_held_nano=month_row["held_nano"] + month_row["leased_nano"],
        )


def counters(tenant_id: str, key: str, entity: Any, fields: tuple[str, ...]) -> dict[str, int]:
    """The ``fields`` of a counter row as read (zeros for a row that does not exist)."""
    values = CounterRow(tenant_id, key, entity, fields).values
    return {name: int(values[name]) for name in fields}


async def read_window(store: TableStore, tenant_id: str, window: str, now: datetime) -> dict[str, int]:
    """Counters of one window row (``day-YYYYMMDD`` / ``month-YYYYMM``), zeros if none,
    and the tenant's requests in flight (``inflight``): one query. With allocated leases,
    the claim rows' reports the allocator has not credited yet count (``claimed``)."""
    table = await store.table(USAGE_TABLE)
    rows = await query_partition(table, tenant_id, [window, INFLIGHT], also=CLAIM_ROWS)
    day, month, minute = window_keys(now)
    seen = claimed(rows, day, minute, now)
    result = counters(tenant_id, window, rows.get(window), WINDOW_FIELDS)
    if window in (day, month):
        result = seen.credit(result)
    # Calls really in flight, and slots leased to processes apart (issue 23).
    calls, result["leased_slots"] = in_flight(
        CounterRow(tenant_id, INFLIGHT, rows.get(INFLIGHT), INFLIGHT_FIELDS)
    )
    result["inflight"] = calls + seen.busy
    return result


# Every flagged expiry record of a partition: RowKeys from "expired-" up to "expired."
# (the first key after them).
EXPIRED_RANGE = f"( RowKey ge '{EXPIRED_PREFIX}' and RowKey lt '{EXPIRED_PREFIX[:-1]}.' )"


async def read_expired(store: TableStore, tenant_id: str) -> list[dict[str, Any]]:
    """The flagged expired-hold and -lease audit rows of a tenant."""
    table = await store.table(USAGE_TABLE)
    with storage_errors():
        return [
            dict(e)
            async for e in table.query_entities(
                f"PartitionKey eq @p and {EXPIRED_RANGE}", parameters={"p": tenant_id}
            )
        ]
