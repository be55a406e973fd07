"""Admission and accounting: rate limits, concurrency and hard USD budgets in one ledger.

All of a tenant's counters live in one Table Storage partition (the tenant id):

    day-YYYYMMDD        spent_nano, held_nano, requests, tokens, expired holds
    month-YYYYMM        the same, for the calendar month (UTC)
    minute-YYYYMMDDHHMM requests admitted and tokens charged in that UTC minute
    inflight            requests admitted and not yet settled
    hold-<request id>   one reservation: amount, windows, lease expiry

**Admission** reads those rows in one query and writes them back in one entity-group
transaction, every update conditional on the ETag it read and every new row an insert:
if another process changed anything in between, the whole transaction fails (412/409)
and we re-read and retry with jittered backoff. So each admission decision is made on
the exact current state, across any number of processes, and the rows change together.

**Guarantees** (each checked against the state the transaction commits on):

- Budget: ``spent + held + worst_case <= budget`` for the day and the month, where the
  worst case is the prompt's upper bound (UTF-8 bytes + per-message overhead) at the
  input price plus the clamped ``max_tokens`` at the output price. Settled cost never
  exceeds the hold (a provider that honours ``max_tokens`` cannot go over), so the sum
  of settled cost in a window never exceeds its budget.
- Requests per minute: a fixed window per UTC calendar minute. At most ``rpm``
  requests are admitted with an admission time inside any one calendar minute.
  (A fixed window allows up to 2 x rpm across a minute boundary; the guarantee is per
  calendar minute, exactly.)
- Tokens per minute: admitted requests' worst-case tokens, corrected to actual tokens
  at settlement, never exceed ``tpm`` within one calendar minute.
- Concurrency: at most ``max_concurrent`` admitted-but-unsettled requests.

**Settlement** replaces the hold with the actual cost in one transaction (windows
updated, hold deleted). A hold never settled (process killed) expires after its lease
and is charged at the reserved amount and flagged (``expire_holds``), never released
silently: the call may have happened.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from azure.core.exceptions import AzureError

from sk_core.errors import LimitExceeded
from sk_core.pricing import Price, usd
from sk_core.storage import (
    Conflict,
    StorageUnavailable,
    TableStore,
    delete_op,
    etag_of,
    int64,
    query_partition,
    read_int,
    submit,
    update_op,
)
from sk_core.tenants import Tenant

logger = logging.getLogger(__name__)

USAGE_TABLE = "usage"
INFLIGHT = "inflight"
_WINDOW_FIELDS = (
    "spent_nano",
    "held_nano",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "expired_holds",
    "expired_nano",
    "overrun_nano",
)


@dataclass(frozen=True)
class Hold:
    """An admitted request's reservation."""

    tenant_id: str
    request_id: str
    amount_nano: int
    max_tokens: int
    reserved_tokens: int
    day: str
    month: str
    minute: str
    rpm_limit: int
    rpm_remaining: int
    rpm_reset: int

    @property
    def row(self) -> str:
        """The hold's RowKey."""
        return f"hold-{self.request_id}"


@dataclass(frozen=True)
class Settlement:
    """What a settled request cost."""

    cost_nano: int
    late: bool = False


def window_keys(now: datetime) -> tuple[str, str, str]:
    """(day, month, minute) RowKeys for an instant (UTC)."""
    now = now.astimezone(UTC)
    return now.strftime("day-%Y%m%d"), now.strftime("month-%Y%m"), now.strftime("minute-%Y%m%d%H%M")


def _seconds_to_next_minute(now: datetime) -> int:
    return max(1, 60 - now.second)


def _seconds_to_next_day(now: datetime) -> int:
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()) + 1)


def _seconds_to_next_month(now: datetime) -> int:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + timedelta(days=32)).replace(day=1)
    return max(1, int((following - now).total_seconds()) + 1)


class _Row:
    """A counter row as read, with its ETag (None: it does not exist yet)."""

    def __init__(self, tenant_id: str, key: str, entity: Any, fields: tuple[str, ...]) -> None:
        self.etag = etag_of(entity) if entity is not None else None
        self.values: dict[str, Any] = {"PartitionKey": tenant_id, "RowKey": key}
        for name in fields:
            self.values[name] = read_int(entity.get(name)) if entity is not None else 0

    def __getitem__(self, name: str) -> int:
        return int(self.values[name])

    def add(self, name: str, amount: int) -> None:
        self.values[name] = int(self.values[name]) + amount

    def operation(self) -> tuple[str, dict[str, Any], dict[str, Any]]:
        entity = {k: v if k in ("PartitionKey", "RowKey") else int64(v) for k, v in self.values.items()}
        # New rows are inserts: two processes creating the same window collide (409)
        # instead of one overwriting the other.
        return ("create", entity, {}) if self.etag is None else update_op(entity, self.etag)


_T = TypeVar("_T")
# A read-and-plan step of an optimistic update: the operations to submit as one
# ETag-conditional transaction (none: nothing to write) and the result once they commit.
Plan = tuple[list[Any], _T]


class _Contended(StorageUnavailable):
    """An update lost the ETag race on every attempt."""


class Ledger:
    """Reserve, settle and expire, against the tenant's partition."""

    def __init__(
        self,
        *,
        store: TableStore,
        lease_seconds: float,
        min_answer_tokens: int,
        max_attempts: int = 60,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._lease = timedelta(seconds=lease_seconds)
        self._min_tokens = min_answer_tokens
        self._max_attempts = max_attempts
        self._clock = clock
        # Within one process, one ledger write per tenant at a time: the transaction
        # would lose the ETag race to its own siblings otherwise. Across processes the
        # ETag decides.
        self._locks: dict[str, asyncio.Lock] = {}
        self.conflicts = 0

    def _lock(self, tenant_id: str) -> asyncio.Lock:
        return self._locks.setdefault(tenant_id, asyncio.Lock())

    async def _backoff(self, attempt: int) -> None:
        self.conflicts += 1
        await asyncio.sleep(random.uniform(0, min(0.25, 0.005 * 2 ** min(attempt, 6))))

    async def _update(
        self, table: Any, tenant_id: str, what: str, plan: Callable[[], Awaitable[Plan[_T]]]
    ) -> _T:
        """Read, plan and submit until the transaction commits: every ledger write.

        ``plan`` re-reads the rows each time, so a retry after a lost ETag race decides
        again on fresh numbers (it may refuse, or find the work already done).
        """
        async with self._lock(tenant_id):
            for attempt in range(self._max_attempts):
                operations, result = await plan()
                if not operations:
                    return result
                try:
                    await submit(table, operations)
                except Conflict:
                    await self._backoff(attempt)
                    continue
                return result
        raise _Contended(f"{what} did not converge under contention")

    async def admit(
        self,
        tenant: Tenant,
        *,
        price: Price,
        prompt_tokens_bound: int,
        requested_max_tokens: int,
        function: str,
        key_id: str,
    ) -> Hold:
        """Admit a request or raise ``Refused``; the returned hold must be settled."""
        table = await self._store.table(USAGE_TABLE)
        limits = tenant.limits

        async def plan() -> Plan[Hold]:
            now = self._clock()
            day_key, month_key, minute_key = window_keys(now)
            rows = await query_partition(table, tenant.id, [day_key, month_key, minute_key, INFLIGHT])
            day = _Row(tenant.id, day_key, rows.get(day_key), _WINDOW_FIELDS)
            month = _Row(tenant.id, month_key, rows.get(month_key), _WINDOW_FIELDS)
            minute = _Row(tenant.id, minute_key, rows.get(minute_key), ("requests", "tokens"))
            inflight = _Row(tenant.id, INFLIGHT, rows.get(INFLIGHT), ("count",))
            minute_reset = _seconds_to_next_minute(now)

            refuse = functools.partial(
                LimitExceeded,
                limit=limits.requests_per_minute,
                remaining=limits.requests_per_minute - minute["requests"],
                reset=minute_reset,
            )

            if inflight["count"] >= limits.max_concurrent:
                raise refuse(
                    "concurrency_limited", "Too many requests in flight for this tenant.", retry_after=1
                )
            if minute["requests"] >= limits.requests_per_minute:
                raise refuse("rate_limited", "Requests-per-minute limit reached.", retry_after=minute_reset)
            smallest = min(self._min_tokens, requested_max_tokens)
            tpm_room = limits.tokens_per_minute - minute["tokens"] - prompt_tokens_bound
            if tpm_room < smallest:
                raise refuse(
                    "tokens_rate_limited", "Tokens-per-minute limit reached.", retry_after=minute_reset
                )
            day_left = limits.daily_budget_nano - day["spent_nano"] - day["held_nano"]
            month_left = limits.monthly_budget_nano - month["spent_nano"] - month["held_nano"]
            budget_room = price.max_output_tokens(min(day_left, month_left), prompt_tokens_bound)
            if budget_room < smallest:
                daily = day_left <= month_left
                resets = _seconds_to_next_day(now) if daily else _seconds_to_next_month(now)
                # The tenant's own numbers, so a caller (and the overspend test) can see
                # that the refusal was made because even the minimum did not fit.
                raise refuse(
                    "budget_exceeded",
                    f"The tenant's {'daily' if daily else 'monthly'} budget cannot cover this request; "
                    f"it resets in {resets} s.",
                    retry_after=resets,
                    extensions={
                        "budget_remaining_usd": usd(max(0, min(day_left, month_left))),
                        "minimum_cost_usd": usd(price.cost_nano(prompt_tokens_bound, smallest)),
                    },
                )

            max_tokens = min(requested_max_tokens, tpm_room, budget_room)
            amount = price.cost_nano(prompt_tokens_bound, max_tokens)
            reserved_tokens = prompt_tokens_bound + max_tokens
            request_id = uuid.uuid4().hex
            for window in (day, month):
                window.add("held_nano", amount)
            minute.add("requests", 1)
            minute.add("tokens", reserved_tokens)
            inflight.add("count", 1)
            hold_entity = {
                "PartitionKey": tenant.id,
                "RowKey": f"hold-{request_id}",
                "amount_nano": int64(amount),
                "reserved_tokens": int64(reserved_tokens),
                "day": day_key,
                "month": month_key,
                "minute": minute_key,
                "function": function,
                "key_id": key_id,
                "created_at": now,
                "expires_at": now + self._lease,
            }
            operations = [
                day.operation(),
                month.operation(),
                minute.operation(),
                inflight.operation(),
                ("create", hold_entity, {}),
            ]
            return operations, Hold(
                tenant_id=tenant.id,
                request_id=request_id,
                amount_nano=amount,
                max_tokens=max_tokens,
                reserved_tokens=reserved_tokens,
                day=day_key,
                month=month_key,
                minute=minute_key,
                rpm_limit=limits.requests_per_minute,
                rpm_remaining=limits.requests_per_minute - minute["requests"],
                rpm_reset=minute_reset,
            )

        return await self._update(table, tenant.id, "admission", plan)

    async def settle(
        self, hold: Hold, *, cost_nano: int, prompt_tokens: int, completion_tokens: int
    ) -> Settlement:
        """Replace the hold by the actual cost; a settled or expired hold is never charged twice."""
        table = await self._store.table(USAGE_TABLE)

        async def plan() -> Plan[Settlement]:
            rows = await query_partition(
                table, hold.tenant_id, [hold.day, hold.month, hold.minute, INFLIGHT, hold.row]
            )
            stored = rows.get(hold.row)
            if stored is None:
                # Already expired by the sweeper (charged at the reserved amount) or
                # settled by an earlier try whose answer was lost: never charge twice.
                logger.warning("late settlement of %s/%s: hold already gone", hold.tenant_id, hold.request_id)
                return [], Settlement(cost_nano=int(hold.amount_nano), late=True)
            amount = read_int(stored["amount_nano"])
            operations = []
            for key in (hold.day, hold.month):
                window = _Row(hold.tenant_id, key, rows.get(key), _WINDOW_FIELDS)
                window.add("held_nano", -amount)
                window.add("spent_nano", cost_nano)
                window.add("requests", 1)
                window.add("prompt_tokens", prompt_tokens)
                window.add("completion_tokens", completion_tokens)
                if cost_nano > amount:
                    window.add("overrun_nano", cost_nano - amount)
                operations.append(window.operation())
            if hold.minute in rows:  # the sweeper deletes old minute rows; nothing to correct then
                minute = _Row(hold.tenant_id, hold.minute, rows[hold.minute], ("requests", "tokens"))
                minute.add("tokens", prompt_tokens + completion_tokens - read_int(stored["reserved_tokens"]))
                operations.append(minute.operation())
            inflight = _Row(hold.tenant_id, INFLIGHT, rows.get(INFLIGHT), ("count",))
            inflight.add("count", -1)
            operations.append(inflight.operation())
            operations.append(
                delete_op({"PartitionKey": hold.tenant_id, "RowKey": hold.row}, etag_of(stored))
            )
            return operations, Settlement(cost_nano=cost_nano)

        settlement = await self._update(table, hold.tenant_id, "settlement", plan)
        overrun = cost_nano - hold.amount_nano
        if not settlement.late and overrun > 0:
            logger.warning("provider overran the hold of %s by %d nano-USD", hold.request_id, overrun)
        return settlement

    async def expire_holds(self) -> int:
        """Charge every hold whose lease has passed at its reserved amount, flagged. Returns how many."""
        table = await self._store.table(USAGE_TABLE)
        now = self._clock()
        try:
            expired = [
                entity
                async for entity in table.query_entities(
                    "RowKey ge 'hold-' and RowKey lt 'hold.' and expires_at lt @now", parameters={"now": now}
                )
            ]
        except AzureError as exc:
            raise StorageUnavailable("storage unreachable") from exc
        charged = 0
        for entity in expired:
            if await self._expire_one(table, entity["PartitionKey"], entity["RowKey"]):
                charged += 1
        await self._drop_old_minutes(table, now)
        return charged

    async def _expire_one(self, table: Any, tenant_id: str, row: str) -> bool:
        async def plan() -> Plan[int | None]:
            holds = await query_partition(table, tenant_id, [row])
            hold = holds.get(row)
            if hold is None:
                return [], None  # settled meanwhile
            amount = read_int(hold["amount_nano"])
            rows = await query_partition(table, tenant_id, [hold["day"], hold["month"], INFLIGHT])
            operations = []
            for key in (hold["day"], hold["month"]):
                window = _Row(tenant_id, key, rows.get(key), _WINDOW_FIELDS)
                window.add("held_nano", -amount)
                window.add("spent_nano", amount)
                window.add("expired_holds", 1)
                window.add("expired_nano", amount)
                operations.append(window.operation())
            inflight = _Row(tenant_id, INFLIGHT, rows.get(INFLIGHT), ("count",))
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
                        "charged_at": self._clock(),
                    },
                    {},
                )
            )
            return operations, amount

        try:
            amount = await self._update(table, tenant_id, "expiry", plan)
        except _Contended:
            return False  # the next sweep tries again
        if amount is None:
            return False
        logger.warning(
            "hold %s of tenant %s expired unsettled: charged %d nano-USD and flagged", row, tenant_id, amount
        )
        return True

    async def _drop_old_minutes(self, table: Any, now: datetime) -> None:
        # Minute rows are only needed while their minute (and late settlements) may
        # still touch them; keep an hour, then delete.
        cutoff = (now - timedelta(hours=1)).strftime("minute-%Y%m%d%H%M")
        try:
            async for entity in table.query_entities(
                "RowKey ge 'minute-' and RowKey lt @cutoff", parameters={"cutoff": cutoff}
            ):
                await submit(
                    table,
                    [
                        delete_op(
                            {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]},
                            etag_of(entity),
                        )
                    ],
                )
        except (Conflict, AzureError):
            pass  # housekeeping; the next sweep tries again

    async def usage(self, tenant_id: str, window: str) -> dict[str, int]:
        """Counters of one window row (``day-YYYYMMDD`` / ``month-YYYYMM``); zeros if none."""
        table = await self._store.table(USAGE_TABLE)
        rows = await query_partition(table, tenant_id, [window, INFLIGHT])
        values = _Row(tenant_id, window, rows.get(window), _WINDOW_FIELDS).values
        result = {k: int(v) for k, v in values.items() if k in _WINDOW_FIELDS}
        result["inflight"] = _Row(tenant_id, INFLIGHT, rows.get(INFLIGHT), ("count",))["count"]
        return result

    async def expired(self, tenant_id: str) -> list[dict[str, Any]]:
        """The flagged expired-hold audit rows of a tenant."""
        table = await self._store.table(USAGE_TABLE)
        try:
            return [
                dict(e)
                async for e in table.query_entities(
                    "PartitionKey eq @p and RowKey ge 'expired-' and RowKey lt 'expired.'",
                    parameters={"p": tenant_id},
                )
            ]
        except AzureError as exc:
            raise StorageUnavailable("storage unreachable") from exc
