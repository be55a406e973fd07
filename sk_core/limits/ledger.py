"""The ledger: admit and settle against a tenant's counters in Table Storage.

The rules are ``policy.py``; the stored layout is ``rows.py`` (window keys:
``windows.py``); the values handed out are ``holds.py``; expiry of abandoned holds is
``sweep.py``. This module is the committer.

**Admission** reads the tenant's rows in one query and writes them back in one
entity-group transaction, every update conditional on the ETag it read and every new
row an insert: if another process changed anything in between, the whole transaction
fails (412/409) and we re-read and retry with jittered backoff. So each admission
decision is made on the exact current state, across any number of processes, and the
rows change together. Within a process, the admissions and settlements of a tenant
that arrive while its previous transaction is in flight share the next one (group
commit, see ``Ledger``).

**Settlement** replaces the hold with the actual cost in one transaction (windows
updated, hold deleted); settled cost never exceeds the hold (a provider that honours
``max_tokens`` cannot go over). A hold never settled (process killed) is charged at its
reserved amount and flagged when its lease passes (``sweep.expire_holds``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sk_core.accounts import Tenant
from sk_core.errors import LimitExceeded, RateState
from sk_core.limits import policy, sweep
from sk_core.limits.holds import Hold, Settlement, hold_row
from sk_core.limits.jobs import Admission, Job, Known, Settling
from sk_core.limits.keepers import keeper_for
from sk_core.limits.lease_state import LeaseSettings, leased_out, recall_operation
from sk_core.limits.offers import ALLOC, Allocating, allocating
from sk_core.limits.rows import (
    INFLIGHT,
    INFLIGHT_FIELDS,
    MINUTE_FIELDS,
    USAGE_TABLE,
    WINDOW_FIELDS,
    Contended,
    PartitionRows,
    read_expired,
    read_window,
)
from sk_core.limits.windows import window_keys
from sk_core.pricing import Price
from sk_core.storage import Conflict, TableStore, delete_op, etag_of, int64, query_partition, read_int, submit

logger = logging.getLogger(__name__)

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


# How long a usage read waits for settlements still in flight.
_FLUSH_WAIT_SECONDS = 10.0

# Rows remembered per tenant (see Ledger.read); beyond this the memory is cleared.
_KNOWN_ROWS = 64
# After a lost race, decisions read the rows first for this long; and an exact refusal
# made meanwhile is repeated without storage for a moment.
_CONTENDED_SECONDS = 2.0
_CONTENDED_REFUSAL_SECONDS = 0.5




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
        leases: LeaseSettings | None = None,
    ) -> None:
        self._store = store
        self._lease = timedelta(seconds=lease_seconds)
        self.min_answer_tokens = min_answer_tokens
        self._max_attempts = max_attempts
        self._clock = clock
        # Within one process, one ledger write per tenant at a time: the transaction
        # would lose the ETag race to its own siblings otherwise. Across processes the
        # ETag decides.
        self._locks: dict[str, asyncio.Lock] = {}
        self._queues: dict[str, list[Job]] = {}
        self._committers: dict[str, asyncio.Task[None]] = {}
        self.conflicts = 0
        self.transactions = 0
        # Each tenant's rows as this ledger last read or wrote them, with their ETags
        # (see ``read``): an exact decision plans on them and writes conditionally, one
        # storage exchange instead of a read and a write (issue 23, defect 5).
        self._known: dict[str, dict[str, Any]] = {}
        self._contended_until: dict[str, float] = {}
        # The last exact refusal per tenant while contended, repeated for a moment.
        self._refused: dict[str, tuple[float, LimitExceeded]] = {}
        self._releasing: set[asyncio.Task[Settlement]] = set()
        # Exact-path settlements not committed yet, by tenant (flush waits for them).
        self._settling: dict[asyncio.Future[Settlement], str] = {}
        # Quota leases (leases.py): admit and settle in memory; None: every decision exact.
        self.leases = keeper_for(self, leases) if leases is not None else None
        # A recall lasts a few report intervals (every active keeper syncs within one);
        # a request refused while it goes out waits about two of them, once, and asks again.
        report = (leases or LeaseSettings()).report_seconds
        self._recall_seconds = max(1.0, 3 * report)
        self._recall_wait = min(1.0, 2 * report)

    async def flush(self, tenant_id: str | None = None) -> None:
        """Report what this process's leases settled so far, and let settlements still in
        flight land (an answer does not wait for a slow one), so stored usage is current."""
        await self.settled(tenant_id)
        if self.leases is not None:
            await self.leases.flush(tenant_id)

    async def settled(self, tenant_id: str | None = None) -> None:
        """Until this process's exact settlements in flight (of a tenant) land, briefly."""
        pending = [f for f, owner in self._settling.items() if tenant_id in (None, owner)]
        if pending:
            await asyncio.wait(pending, timeout=_FLUSH_WAIT_SECONDS)

    async def aclose(self) -> None:
        """Hand leased capacity back and report what was settled (host shutdown)."""
        if self.leases is not None:
            await self.leases.aclose()

    async def _backoff(self, attempt: int, patience: float | Callable[[int], float]) -> None:
        self.conflicts += 1
        self._store.note_conflict()
        if callable(patience):
            # The caller sizes the window (a pool's holders race): full jitter over it.
            await asyncio.sleep(random.uniform(0, patience(attempt)))
            return
        await asyncio.sleep(random.uniform(0, min(patience, 0.005 * 2 ** min(attempt, 10))))

    async def _submit(self, table: Any, tenant_id: str, operations: list[Any]) -> None:
        try:
            results = await submit(table, operations)
        except BaseException as failure:
            self._known.pop(tenant_id, None)  # lost a race, or the outcome is unknown
            if isinstance(failure, Conflict):
                # Others write this partition too (many processes near one limit): a plan
                # on remembered rows would mostly lose; read first for a while.
                self._contended_until[tenant_id] = time.monotonic() + _CONTENDED_SECONDS
            raise
        self.transactions += 1
        self._remember(tenant_id, operations, results)

    def _remember(self, tenant_id: str, operations: list[Any], results: list[Mapping[str, Any]]) -> None:
        known = self._known.setdefault(tenant_id, {})
        if not isinstance(results, list) or len(results) != len(operations) or len(known) > _KNOWN_ROWS:
            known.clear()
            return
        for (kind, entity, _), result in zip(operations, results, strict=True):
            key, etag = entity["RowKey"], result.get("etag")
            if kind == "delete" or not etag or entity["PartitionKey"] != tenant_id:
                known.pop(key, None)
            else:
                known[key] = Known(entity, str(etag))

    async def read(
        self, table: Any, tenant_id: str, keys: list[str], *, remembered: bool = False
    ) -> dict[str, Any]:
        """Rows of a tenant's partition (absent ones left out), in one query; or, with
        ``remembered``, as this ledger last read or wrote them when it knows them all.

        Remembered rows may be stale: a write planned on them is conditional on their
        ETags and fails if another process wrote since, and then the update reads again.
        """
        known = self._known.get(tenant_id)
        uncontended = time.monotonic() >= self._contended_until.get(tenant_id, 0.0)
        if remembered and uncontended and known is not None and all(key in known for key in keys):
            return {key: known[key] for key in keys if known[key] is not None}
        found = await query_partition(table, tenant_id, keys)
        known = self._known.setdefault(tenant_id, {})
        if len(known) > _KNOWN_ROWS:
            known.clear()
        known.update({key: found.get(key) for key in keys})
        return found

    async def update(
        self,
        table: Any,
        tenant_id: str,
        what: str,
        plan: Callable[[], Awaitable[Plan[_T]]],
        *,
        patience: float | Callable[[int], float] = 0.25,
        lost: Callable[[], None] = lambda: None,
    ) -> _T:
        """The one optimistic-update loop: read and plan, submit, and on a lost ETag race
        (``lost`` is told) back off and do both again, until the transaction commits.

        ``plan`` re-reads the rows each time, so a retry decides again on fresh numbers
        (it may find the work already done, and then plans no operations). The tenant's
        lock covers an attempt, not the back-off after it: a loser's wait (a lease sync's
        runs to seconds) must not hold up the others' decisions (issue 23, defect 5).
        """
        for attempt in range(self._max_attempts):
            async with self._locks.setdefault(tenant_id, asyncio.Lock()):
                operations, result = await plan()
                if not operations:
                    return result
                try:
                    await self._submit(table, tenant_id, operations)
                    return result
                except Conflict:
                    lost()
            await self._backoff(attempt, patience)
        raise Contended(f"{what} did not converge under contention")

    # ------------------------------------------------------------------ group commit

    async def _enqueue(self, tenant_id: str, job: Job) -> Any:
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
            elif isinstance(job, Admission):
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

    def _release(self, hold: Hold) -> None:
        task = asyncio.get_running_loop().create_task(
            self.settle(hold, cost_nano=0, prompt_tokens=0, completion_tokens=0)
        )
        self._releasing.add(task)
        # If this fails too, the hold expires and is charged, as for a crash (logged).
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[Settlement]) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("could not release abandoned hold: it will expire and be charged")

    def _take(self, queue: list[Job]) -> list[Job]:
        """The oldest jobs that fit one query and one transaction."""
        now = self._clock()
        batch: list[Job] = []
        keys: set[str] = set()
        while queue and len(batch) < _BATCH_JOBS:
            wanted = keys | set(queue[0].keys(now))
            if batch and len(wanted) > _BATCH_KEYS:
                break
            keys = wanted
            batch.append(queue.pop(0))
        return batch

    async def _commit(self, tenant_id: str, batch: list[Job]) -> None:
        table = await self._store.table(USAGE_TABLE)

        async def plan() -> Plan[list[tuple[Job, Any, BaseException | None]]]:
            operations, outcomes = await decide(remembered=True)
            if any(isinstance(error, LimitExceeded) for _, _, error in outcomes):
                # A refusal writes nothing that could fail on a stale ETag: decide it on
                # rows read now (the money may have come back meanwhile).
                operations, outcomes = await decide(remembered=False)
            return operations, outcomes

        async def decide(*, remembered: bool) -> Plan[list[tuple[Job, Any, BaseException | None]]]:
            now = self._clock()
            keys = list(dict.fromkeys(key for job in batch for key in job.keys(now)))
            rows = PartitionRows(tenant_id, await self.read(table, tenant_id, keys, remembered=remembered))
            outcomes: list[tuple[Job, Any, BaseException | None]] = []
            creates_and_deletes: list[Any] = []
            recall = False
            for job in batch:
                if isinstance(job, Admission) and job.abandoned:
                    continue
                result: Hold | Settlement
                try:
                    if isinstance(job, Admission):
                        operation, result = self._plan_admission(rows, job, now)
                    else:
                        operation, result = self._plan_settlement(rows, job)
                except Allocating as busy:
                    outcomes.append((job, None, busy))
                    continue
                except LimitExceeded as refused:
                    outcomes.append((job, None, refused))
                    if isinstance(job, Admission) and leased_out(rows, refused, now):
                        job.recalled = recall = True
                    continue
                if operation is not None:
                    creates_and_deletes.append(operation)
                outcomes.append((job, result, None))
            if recall:
                # Refused for want of budget that processes hold leased: recall it (every
                # keeper hands its free slice back at its next sync).
                mark = recall_operation(rows, now, self._recall_seconds)
                if mark is not None:
                    creates_and_deletes.append(mark)
            return rows.operations() + creates_and_deletes, outcomes

        outcomes = await self.update(table, tenant_id, "ledger update", plan)
        for job, outcome, error in outcomes:
            future: asyncio.Future[Any] = job.future
            if isinstance(job, Admission) and job.abandoned and isinstance(outcome, Hold):
                # Its caller gave up (e.g. storage too slow for its deadline) after the
                # batch was planned: no model call will follow, so release the hold now
                # instead of letting it expire and be charged.
                self._release(outcome)
            if future.done():  # its caller was cancelled while it was in flight
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(outcome)
        self._log_outcomes(outcomes)

    def _log_outcomes(self, outcomes: list[tuple[Job, Any, BaseException | None]]) -> None:
        for job, result, _ in outcomes:
            if not isinstance(job, Settling) or result is None:
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
        if self.leases is not None:
            leased = await self.leases.admit(tenant, price, prompt_tokens_bound, requested_max_tokens)
            if leased is not None:
                return leased
        first = self.leases is not None and self.leases.first_request(tenant)
        refused = self._refused.get(tenant.id)
        if refused is not None and time.monotonic() < refused[0]:
            # Many processes race for this tenant's rows and it was just refused here:
            # the same answer, without another read of a partition at its limit.
            raise refused[1].with_traceback(None)
        for attempt in range(2):
            job = Admission(
                tenant,
                price,
                prompt_tokens_bound,
                requested_max_tokens,
                function,
                key_id,
                asyncio.get_running_loop().create_future(),
                first=first,
            )
            try:
                hold: Hold = await self._enqueue(tenant.id, job)
            except Allocating:  # (at scale: exact first requests of hundreds would storm the rows)
                assert self.leases is not None
                self.leases.not_first(tenant)
                return await self.admit(
                    tenant, price=price, prompt_tokens_bound=prompt_tokens_bound,
                    requested_max_tokens=requested_max_tokens, function=function, key_id=key_id,
                )  # fmt: skip
            except LimitExceeded as refusal:
                if not job.recalled or attempt > 0:
                    if time.monotonic() < self._contended_until.get(tenant.id, 0.0):
                        self._refused[tenant.id] = (time.monotonic() + _CONTENDED_REFUSAL_SECONDS, refusal)
                    raise
                # The budget was only leased out and is being recalled: one more exact
                # decision once the keepers have had time to hand their slices back.
                await asyncio.sleep(self._recall_wait)
                continue
            if self.leases is not None:
                self.leases.admitted_exactly(tenant)
            return hold
        raise AssertionError("unreachable")

    async def settle(
        self, hold: Hold, *, cost_nano: int, prompt_tokens: int, completion_tokens: int
    ) -> Settlement:
        """Replace the hold by the actual cost; a settled or expired hold is never charged twice."""
        if hold.lease is not None and self.leases is not None:
            return self.leases.settle(hold, cost_nano, prompt_tokens, completion_tokens)
        job = Settling(
            hold, cost_nano, prompt_tokens, completion_tokens, asyncio.get_running_loop().create_future()
        )
        self._settling[job.future] = hold.tenant_id
        job.future.add_done_callback(self._settling.pop)
        settlement: Settlement = await self._enqueue(hold.tenant_id, job)
        return settlement

    async def count_request(self, tenant: Tenant) -> RateState:
        """Count one request against the tenant's requests per minute and nothing else
        (no budget, tokens or slot): what a cached answer costs. Raises ``LimitExceeded``.

        From this process's minute slice when it has one; else one exact transaction on
        the minute row, under the same ETag rule as every admission.
        """
        if self.leases is not None:
            counted = await self.leases.count_request(tenant)
            if counted is not None:
                return counted
        table = await self._store.table(USAGE_TABLE)
        # A first request, as in ``admit``: exact unless an allocator is at work, whose
        # offers the minute row counts as taken (a cached answer elsewhere was refused
        # ``rate_limited`` while the minute sat offered, unclaimed, to another process).
        first = self.leases is not None and self.leases.first_request(tenant)

        async def plan() -> Plan[RateState]:
            now = self._clock()
            minute_key = window_keys(now)[2]
            keys = [minute_key, *([ALLOC] if first else [])]
            rows = PartitionRows(tenant.id, await query_partition(table, tenant.id, keys))
            if first and allocating(rows.entities.get(ALLOC), now):
                raise Allocating
            minute = rows.counter(minute_key, MINUTE_FIELDS)
            rate = policy.count_request(tenant.limits, minute["requests"], now)
            minute.add("requests", 1)
            return rows.operations(), rate

        try:
            counted = await self.update(table, tenant.id, "request count", plan)
        except Allocating:
            assert self.leases is not None
            self.leases.not_first(tenant)
            return await self.count_request(tenant)
        if self.leases is not None:
            self.leases.admitted_exactly(tenant)
        return counted

    def _plan_admission(self, rows: PartitionRows, job: Admission, now: datetime) -> tuple[Any, Hold]:
        tenant = job.tenant
        if job.first and allocating(rows.entities.get(ALLOC), now):
            raise Allocating
        day_key, month_key, minute_key = window_keys(now)
        grant = policy.decide(
            tenant.limits,
            rows.counters(day_key, month_key, minute_key),
            price=job.price,
            prompt_tokens_bound=job.prompt_tokens_bound,
            requested_max_tokens=job.requested_max_tokens,
            min_answer_tokens=self.min_answer_tokens,
            now=now,
        )
        for key in (day_key, month_key):
            rows.counter(key, WINDOW_FIELDS).add("held_nano", grant.amount_nano)
        minute = rows.counter(minute_key, MINUTE_FIELDS)
        minute.add("requests", 1)
        minute.add("tokens", grant.reserved_tokens)
        rows.counter(INFLIGHT, INFLIGHT_FIELDS).add("count", 1)
        request_id = uuid.uuid4().hex
        hold_entity = {
            "PartitionKey": tenant.id,
            "RowKey": hold_row(request_id),
            "amount_nano": int64(grant.amount_nano),
            "reserved_tokens": int64(grant.reserved_tokens),
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
            amount_nano=grant.amount_nano,
            max_tokens=grant.max_tokens,
            reserved_tokens=grant.reserved_tokens,
            day=day_key,
            month=month_key,
            minute=minute_key,
            rpm_limit=grant.rpm_limit,
            rpm_remaining=grant.rpm_remaining,
            rpm_reset=grant.rpm_reset,
        )

    def _plan_settlement(self, rows: PartitionRows, job: Settling) -> tuple[Any, Settlement]:
        hold, cost_nano = job.hold, job.cost_nano
        stored = rows.entities.get(hold.row)
        if stored is None:
            # Already expired by the sweeper (charged at the reserved amount) or
            # settled by an earlier try whose answer was lost: never charge twice.
            return None, Settlement(cost_nano=int(hold.amount_nano), late=True)
        amount = read_int(stored["amount_nano"])
        for key in (hold.day, hold.month):
            window = rows.counter(key, WINDOW_FIELDS)
            window.add("held_nano", -amount)
            window.add("spent_nano", cost_nano)
            window.add("requests", 1)
            window.add("prompt_tokens", job.prompt_tokens)
            window.add("completion_tokens", job.completion_tokens)
            if cost_nano > amount:
                window.add("overrun_nano", cost_nano - amount)
        if rows.exists(hold.minute):  # the sweeper deletes old minute rows; nothing to correct then
            minute = rows.counter(hold.minute, MINUTE_FIELDS)
            actual = job.prompt_tokens + job.completion_tokens
            minute.add("tokens", actual - read_int(stored["reserved_tokens"]))
        rows.counter(INFLIGHT, INFLIGHT_FIELDS).add("count", -1)
        delete = delete_op({"PartitionKey": hold.tenant_id, "RowKey": hold.row}, etag_of(stored))
        return delete, Settlement(cost_nano=cost_nano)

    async def expire_holds(self) -> int:
        """Charge every hold whose lease has passed (see ``sweep.expire_holds``)."""
        return await sweep.expire_holds(self)

    async def usage(self, tenant_id: str, window: str) -> dict[str, int]:
        """``rows.read_window`` once this process's unreported settlements are reported."""
        await self.flush(tenant_id)
        return await read_window(self._store, tenant_id, window, self.now())

    async def expired(self, tenant_id: str) -> list[dict[str, Any]]:
        """The flagged expired-hold and -lease audit rows of a tenant (``rows.read_expired``)."""
        return await read_expired(self._store, tenant_id)

    @property
    def store(self) -> TableStore:  # (the storage this ledger writes to)
        return self._store

    def now(self) -> datetime:  # (the ledger's clock: tests move it)
        return self._clock()
