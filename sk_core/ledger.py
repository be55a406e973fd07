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
Within a process, the admissions and settlements of a tenant that arrive while its
previous transaction is in flight share the next one (group commit, see ``Ledger``).

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


_T = TypeVar("_T")
# A read-and-plan step of an optimistic update: the operations to submit as one
# ETag-conditional transaction (none: nothing to write) and the result once they commit.
Plan = tuple[list[Any], _T]

# Limits of one batch (group commit, see Ledger): Table Storage allows 100 entities per
# transaction and 15 comparisons per query filter (PartitionKey plus 14 RowKeys). Three
# keys stay spare: the day, month and minute may roll over between taking a batch and
# reading its rows, which adds the new windows' keys.
_BATCH_JOBS = 32
_BATCH_KEYS = 11


class _Contended(StorageUnavailable):
    """An update lost the ETag race on every attempt."""


@dataclass(eq=False)
class _Admission:
    """A queued admission (Ledger.admit's arguments and the caller's future)."""

    tenant: Tenant
    price: Price
    prompt_tokens_bound: int
    requested_max_tokens: int
    function: str
    key_id: str
    future: asyncio.Future[Hold]
    # Its caller went away after the batch took it: skipped unless already committed.
    abandoned: bool = False

    def keys(self, now: datetime) -> list[str]:
        return [*window_keys(now), INFLIGHT]


@dataclass(eq=False)
class _Settling:
    """A queued settlement."""

    hold: Hold
    cost_nano: int
    prompt_tokens: int
    completion_tokens: int
    future: asyncio.Future[Settlement]

    def keys(self, now: datetime) -> list[str]:
        hold = self.hold
        return [hold.day, hold.month, hold.minute, INFLIGHT, hold.row]


_Job = _Admission | _Settling


class _Rows:
    """One read of a tenant's rows, the counters changed in memory as jobs are planned."""

    def __init__(self, tenant_id: str, entities: dict[str, Any]) -> None:
        self.tenant_id = tenant_id
        self.entities = entities
        self._counters: dict[str, _Row] = {}

    def counter(self, key: str, fields: tuple[str, ...]) -> _Row:
        if key not in self._counters:
            self._counters[key] = _Row(self.tenant_id, key, self.entities.get(key), fields)
        return self._counters[key]

    def exists(self, key: str) -> bool:
        return key in self.entities or key in self._counters

    def operations(self) -> list[Any]:
        """One conditional write per counter row a planned job changed."""
        return [row.operation() for row in self._counters.values() if row.changed]


class Ledger:
    """Reserve, settle and expire, against the tenant's partition.

    **Group commit.** Admissions and settlements of one tenant queue per process; one
    task at a time reads the tenant's rows, decides every queued job in arrival order
    on that state (each job sees the ones before it), and commits all of them in one
    ETag-conditional transaction. A lost race re-reads and re-decides the whole batch.
    Under load, one round trip and one transaction's CPU serve many requests instead of
    one; alone, a request costs what it did before. Every guarantee above holds per
    decision, because each decision is made on the exact state the batch commits on.
    """

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
        self._queues: dict[str, list[_Job]] = {}
        self._committers: dict[str, asyncio.Task[None]] = {}
        self.conflicts = 0
        self.transactions = 0

    def _lock(self, tenant_id: str) -> asyncio.Lock:
        return self._locks.setdefault(tenant_id, asyncio.Lock())

    async def _backoff(self, attempt: int) -> None:
        self.conflicts += 1
        await asyncio.sleep(random.uniform(0, min(0.25, 0.005 * 2 ** min(attempt, 6))))

    async def _submit(self, table: Any, operations: list[Any]) -> None:
        await submit(table, operations)
        self.transactions += 1

    async def _update(
        self, table: Any, tenant_id: str, what: str, plan: Callable[[], Awaitable[Plan[_T]]]
    ) -> _T:
        """Read, plan and submit until the transaction commits (expiry's path).

        ``plan`` re-reads the rows each time, so a retry after a lost ETag race decides
        again on fresh numbers (it may find the work already done).
        """
        async with self._lock(tenant_id):
            for attempt in range(self._max_attempts):
                operations, result = await plan()
                if not operations:
                    return result
                try:
                    await self._submit(table, operations)
                except Conflict:
                    await self._backoff(attempt)
                    continue
                return result
        raise _Contended(f"{what} did not converge under contention")

    # ------------------------------------------------------------------ group commit

    async def _enqueue(self, tenant_id: str, job: _Job) -> Any:
        self._queues.setdefault(tenant_id, []).append(job)
        if tenant_id not in self._committers:
            # A task of its own: a caller that goes away must not abort the others' batch.
            self._committers[tenant_id] = asyncio.create_task(self._commit_queue(tenant_id))
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            queue = self._queues.get(tenant_id, [])
            if job in queue:  # not taken yet: drop it, nothing was written for it
                queue.remove(job)
            elif isinstance(job, _Admission):
                # In a batch already: skipped if not committed yet; if it was, the hold
                # expires after its lease and is charged, as for a crashed process.
                job.abandoned = True
            # Nobody will read the outcome now; retrieve it so asyncio does not log it.
            job.future.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise

    async def _commit_queue(self, tenant_id: str) -> None:
        queue = self._queues[tenant_id]
        try:
            while queue:
                batch = self._take(queue)
                try:
                    await self._commit(tenant_id, batch)
                except BaseException as exc:  # storage down, contention, a bug: tell every waiter
                    for job in batch:
                        if job.future.done():
                            continue
                        if isinstance(exc, Exception):
                            job.future.set_exception(exc)
                        else:  # this task is being cancelled (shutdown)
                            job.future.cancel()
                    if not isinstance(exc, Exception):
                        raise
        finally:
            del self._committers[tenant_id]

    def _take(self, queue: list[_Job]) -> list[_Job]:
        """The oldest jobs that fit one query and one transaction."""
        now = self._clock()
        batch: list[_Job] = []
        keys: set[str] = set()
        while queue and len(batch) < _BATCH_JOBS:
            wanted = keys | set(queue[0].keys(now))
            if batch and len(wanted) > _BATCH_KEYS:
                break
            keys = wanted
            batch.append(queue.pop(0))
        return batch

    async def _commit(self, tenant_id: str, batch: list[_Job]) -> None:
        table = await self._store.table(USAGE_TABLE)
        async with self._lock(tenant_id):
            for attempt in range(self._max_attempts):
                now = self._clock()
                keys = list(dict.fromkeys(key for job in batch for key in job.keys(now)))
                rows = _Rows(tenant_id, await query_partition(table, tenant_id, keys))
                outcomes: list[tuple[_Job, Any, BaseException | None]] = []
                creates_and_deletes: list[Any] = []
                for job in batch:
                    if isinstance(job, _Admission) and job.abandoned:
                        continue
                    result: Hold | Settlement
                    try:
                        if isinstance(job, _Admission):
                            operation, result = self._plan_admission(rows, job, now)
                        else:
                            operation, result = self._plan_settlement(rows, job)
                    except LimitExceeded as refused:
                        outcomes.append((job, None, refused))
                        continue
                    if operation is not None:
                        creates_and_deletes.append(operation)
                    outcomes.append((job, result, None))
                operations = rows.operations() + creates_and_deletes
                if operations:
                    try:
                        await self._submit(table, operations)
                    except Conflict:
                        await self._backoff(attempt)
                        continue
                for job, outcome, error in outcomes:
                    future: asyncio.Future[Any] = job.future
                    if future.done():  # its caller was cancelled while it was in flight
                        continue
                    if error is not None:
                        future.set_exception(error)
                    else:
                        future.set_result(outcome)
                self._log_outcomes(outcomes)
                return
        raise _Contended("ledger update did not converge under contention")

    def _log_outcomes(self, outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
        for job, result, _ in outcomes:
            if not isinstance(job, _Settling) or result is None:
                continue
            hold = job.hold
            if result.late:
                logger.warning("late settlement of %s/%s: hold already gone", hold.tenant_id, hold.request_id)
            elif job.cost_nano > hold.amount_nano:
                logger.warning(
                    "provider overran the hold of %s by %d nano-USD",
                    hold.request_id,
                    job.cost_nano - hold.amount_nano,
                )

    # ------------------------------------------------------------------ decisions

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
        """Admit a request or raise ``LimitExceeded``; the returned hold must be settled."""
        job = _Admission(
            tenant,
            price,
            prompt_tokens_bound,
            requested_max_tokens,
            function,
            key_id,
            asyncio.get_running_loop().create_future(),
        )
        hold: Hold = await self._enqueue(tenant.id, job)
        return hold

    async def settle(
        self, hold: Hold, *, cost_nano: int, prompt_tokens: int, completion_tokens: int
    ) -> Settlement:
        """Replace the hold by the actual cost; a settled or expired hold is never charged twice."""
        job = _Settling(
            hold, cost_nano, prompt_tokens, completion_tokens, asyncio.get_running_loop().create_future()
        )
        settlement: Settlement = await self._enqueue(hold.tenant_id, job)
        return settlement

    def _plan_admission(self, rows: _Rows, job: _Admission, now: datetime) -> tuple[Any, Hold]:
        tenant, limits, price = job.tenant, job.tenant.limits, job.price
        prompt_tokens_bound, requested_max_tokens = job.prompt_tokens_bound, job.requested_max_tokens
        day_key, month_key, minute_key = window_keys(now)
        day = rows.counter(day_key, _WINDOW_FIELDS)
        month = rows.counter(month_key, _WINDOW_FIELDS)
        minute = rows.counter(minute_key, ("requests", "tokens"))
        inflight = rows.counter(INFLIGHT, ("count",))
        minute_reset = _seconds_to_next_minute(now)

        refuse = functools.partial(
            LimitExceeded,
            limit=limits.requests_per_minute,
            remaining=limits.requests_per_minute - minute["requests"],
            reset=minute_reset,
        )

        if inflight["count"] >= limits.max_concurrent:
            raise refuse("concurrency_limited", "Too many requests in flight for this tenant.", retry_after=1)
        if minute["requests"] >= limits.requests_per_minute:
            raise refuse("rate_limited", "Requests-per-minute limit reached.", retry_after=minute_reset)
        smallest = min(self._min_tokens, requested_max_tokens)
        tpm_room = limits.tokens_per_minute - minute["tokens"] - prompt_tokens_bound
        if tpm_room < smallest:
            raise refuse("tokens_rate_limited", "Tokens-per-minute limit reached.", retry_after=minute_reset)
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
            "function": job.function,
            "key_id": job.key_id,
            "created_at": now,
            "expires_at": now + self._lease,
        }
        return ("create", hold_entity, {}), Hold(
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

    def _plan_settlement(self, rows: _Rows, job: _Settling) -> tuple[Any, Settlement]:
        hold, cost_nano = job.hold, job.cost_nano
        stored = rows.entities.get(hold.row)
        if stored is None:
            # Already expired by the sweeper (charged at the reserved amount) or
            # settled by an earlier try whose answer was lost: never charge twice.
            return None, Settlement(cost_nano=int(hold.amount_nano), late=True)
        amount = read_int(stored["amount_nano"])
        for key in (hold.day, hold.month):
            window = rows.counter(key, _WINDOW_FIELDS)
            window.add("held_nano", -amount)
            window.add("spent_nano", cost_nano)
            window.add("requests", 1)
            window.add("prompt_tokens", job.prompt_tokens)
            window.add("completion_tokens", job.completion_tokens)
            if cost_nano > amount:
                window.add("overrun_nano", cost_nano - amount)
        if rows.exists(hold.minute):  # the sweeper deletes old minute rows; nothing to correct then
            minute = rows.counter(hold.minute, ("requests", "tokens"))
            actual = job.prompt_tokens + job.completion_tokens
            minute.add("tokens", actual - read_int(stored["reserved_tokens"]))
        rows.counter(INFLIGHT, ("count",)).add("count", -1)
        delete = delete_op({"PartitionKey": hold.tenant_id, "RowKey": hold.row}, etag_of(stored))
        return delete, Settlement(cost_nano=cost_nano)

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
