"""Quota leases: admit and settle in memory against slices leased from the tenant's pool
(shared pool rows, ``SKF_LEASE_ALLOCATOR=false``; the allocator's keeper, the default,
is ``allocated.py``). Each process holds, per tenant, one lease row ``lease-<process id>``;
one ETag-conditional transaction (a *sync*) moves capacity between the window rows and
it, and reports what was settled since. Between syncs, no storage (``slices.py``).

The stored state always satisfies ``spent + held + leased <= budget`` (day, month),
``requests <= rpm``, ``tokens <= tpm`` (leased ones count as used when granted) and
``inflight <= max_concurrent`` (leased slots count): the exact path's guarantees hold
across processes. **A sync runs** before the first local admission; ahead of
exhaustion (below half of its last grant); when settled usage has waited
``report_seconds``; when idle ``idle_seconds`` (everything unused goes back); at
shutdown; off the request path unless a slice cannot admit. Grants follow recent
demand, take at most ``share`` of what is left, and are zero close to the limit.
**Crashes:** see ``lease_state`` (a lease row that stops being renewed expires, charged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sk_core.accounts import Tenant
from sk_core.errors import RateState, StorageUnavailable
from sk_core.limits import lease_admit, policy
from sk_core.limits.holds import Hold, Settlement
from sk_core.limits.lease_state import (
    LEASE_PREFIX,
    RECALL,
    Demand,
    LeaseSettings,
    Snapshot,
    TenantLease,
    lease_entity,
)
from sk_core.limits.pool_sync import PoolHook, first_read, plan_pool_sync
from sk_core.limits.pools import pool_key, store_pool_count
from sk_core.limits.rows import (
    INFLIGHT,
    INFLIGHT_FIELDS,
    MINUTE_FIELDS,
    USAGE_TABLE,
    WINDOW_FIELDS,
    PartitionRows,
)
from sk_core.limits.slices import BudgetSlice, MinuteSlice, Report, grant
from sk_core.pricing import Price
from sk_core.storage import delete_op, etag_of, query_partition, read_int, update_op

if TYPE_CHECKING:
    from sk_core.limits.ledger import Ledger, Plan

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

class LeaseKeeper:
    """The leases of one process, for every tenant it serves."""

    def __init__(self, ledger: Ledger, settings: LeaseSettings) -> None:
        self._ledger = ledger
        self._settings = settings
        self._leases: dict[str, TenantLease] = {}
        self.process_id = uuid.uuid4().hex[:16]
        self.syncs = 0
        self._closing = False

    def stretch(self, lease: TenantLease) -> float:
        """How much longer than configured this lease's intervals are (>= 1): the
        number of holders of the pool over ``holders_per_report``, capped; with sub-pools
        (``pools.py``), what keeps every holder's syncs within half the partition's
        throughput target."""
        settings = self._settings
        if self.pools(lease):
            entities = lease.holders * settings.entities_per_sync / settings.report_seconds
            return min(settings.max_stretch, max(1.0, entities / (settings.partition_ops_per_s / 2)))
        return min(settings.max_stretch, max(1.0, lease.holders / settings.holders_per_report))

    def pools(self, lease: TenantLease) -> int:
        """Sub-pools of this lease's tenant (0: one pool), as stored (``store_pool_count``)."""
        return lease.pools if self._settings.max_pools > 0 else 0

    @property
    def settings(self) -> LeaseSettings:
        return self._settings

    @property
    def closing(self) -> bool:
        return self._closing

    def ledger_now(self) -> datetime:
        return self._ledger.now()

    def idle(self, lease: TenantLease) -> bool:
        return self._idle(lease)

    def ttl(self, lease: TenantLease) -> float:
        return self._ttl(lease)

    def pool_ttl(self, lease: TenantLease) -> float:
        """A sub-pool untouched this long is flushed by the sweep (its keepers are gone)."""
        return 2 * self._ttl(lease)

    def report_interval(self, lease: TenantLease) -> float:
        """Seconds between this lease's reports (``report_seconds``, stretched)."""
        return self._settings.report_seconds * self.stretch(lease)

    def _idle(self, lease: TenantLease) -> bool:
        # Stretched too: with many holders each sees few calls, and handing back between
        # two of them would turn every call into a sync.
        quiet = time.monotonic() - lease.last_used
        return lease.demand.waiting == 0 and quiet >= self._settings.idle_seconds * self.stretch(lease)

    def _ttl(self, lease: TenantLease) -> float:
        # Four report intervals at least: a live keeper always renews before expiry.
        return max(self._settings.ttl_seconds, 4 * self.report_interval(lease))

    @property
    def row_key(self) -> str:
        """This process's lease row in every tenant partition."""
        return f"{LEASE_PREFIX}{self.process_id}"

    # ---------------------------------------------------------------- request path

    async def admit(self, tenant: Tenant, price: Price, prompt: int, requested: int) -> Hold | None:
        """Admit from this process's slices, renewing them once if needed.

        None: the slices cannot admit it (close to a limit, or storage unreachable):
        the caller decides on the exact path, which also gives the precise refusal.
        """
        amount = price.cost_nano(prompt, requested)
        tokens = prompt + requested

        def size(demand: Demand) -> None:
            demand.unit_amount = max(demand.unit_amount, amount)
            demand.unit_tokens = max(demand.unit_tokens, tokens)

        def take(lease: TenantLease) -> Hold | None:
            return lease_admit.take(self._ledger.now(), lease, price, prompt, requested)

        return await self._from_lease(tenant, take, size)

    async def count_request(self, tenant: Tenant) -> RateState | None:
        """Take one request (no tokens, no budget, no slot) from this process's slice of
        the current minute, renewing it once if needed; None: the ledger decides exactly."""
        return await self._from_lease(
            tenant, lambda lease: lease_admit.count(self._ledger.now(), lease), lambda _: None
        )

    async def _from_lease(
        self,
        tenant: Tenant,
        take: Callable[[TenantLease], _T | None],
        size: Callable[[Demand], None],
    ) -> _T | None:
        """``take`` from the tenant's lease; if it cannot, sync (sized by ``size``) and retry."""
        lease = self._lease_of(tenant)
        if lease is None:
            return None
        taken = take(lease)
        if taken is not None:
            self._renew_ahead(lease)
            return taken
        now = time.monotonic()
        if now < lease.exact_until or now < lease.recalled_until:
            return None
        lease.demand.waiting += 1
        size(lease.demand)
        try:
            # Twice at most: a renewal in flight may be sized without this request. Near
            # the limit, one that lost a race: exact (defect 5; see renewed()).
            for _ in range(2):
                sync = self._start_sync(tenant.id, lease)
                if not await lease_admit.renewed(sync, lease.contended, lambda: lease.near_limit):
                    lease.demand.admitted += 1  # demand all the same: the next grant covers it
                    return None
                taken = take(lease)
                if taken is not None:
                    return taken
        except StorageUnavailable:
            return None
        finally:
            lease.demand.waiting -= 1
        # Not covered by the grant: near the limit, decide exactly for a while.
        lease.exact_until = time.monotonic() + self.report_interval(lease)
        return None

    # The exact path's hooks (``AllocatedKeeper``: a process's first requests, exact while
    # no allocator is at work; ``Allocating``).
    def admitted_exactly(self, tenant: Tenant) -> None: ...

    def first_request(self, tenant: Tenant) -> bool:
        return False

    def not_first(self, tenant: Tenant) -> None: ...

    def _lease_of(self, tenant: Tenant) -> TenantLease | None:
        """The tenant's lease in this process (made on first use), marked used; None: closing."""
        if self._closing:
            return None
        lease = self._leases.get(tenant.id)
        if lease is None:  # (not setdefault: a lease is not built on every request)
            lease = self._leases[tenant.id] = TenantLease(tenant=tenant)
        lease.tenant, lease.last_used = tenant, time.monotonic()
        return lease

    def settle(self, hold: Hold, cost: int, prompt_tokens: int, completion_tokens: int) -> Settlement:
        """Settle a call admitted from a slice: in memory; reported with the next sync."""
        lease = self._leases.get(hold.tenant_id)
        budget = lease.slice_for(hold.day) if lease is not None else None
        if lease is None or lease.generation != hold.lease or budget is None:
            # The lease expired at the store meanwhile and was charged in full.
            logger.warning("late settlement of %s/%s: lease already expired", hold.tenant_id, hold.request_id)
            return Settlement(cost_nano=hold.amount_nano, late=True)
        budget.settle(hold.amount_nano, cost, prompt_tokens, completion_tokens)
        lease.inflight -= 1
        if cost > hold.amount_nano:
            logger.warning(
                "provider overran the hold of %s by %d nano-USD", hold.request_id, cost - hold.amount_nano
            )
        if lease.minute is not None and lease.minute.minute == hold.minute:
            lease.minute.give_back(max(0, hold.reserved_tokens - prompt_tokens - completion_tokens))
        self._ensure_keeper(hold.tenant_id, lease)
        now = time.monotonic()
        if now < lease.recalled_until and budget.free > 0 and now >= lease.renew_after:
            # Recalled: what this call did not use goes back to the pool now, not at the
            # next report (a burst elsewhere is waiting for it).
            lease.renew_after = now + self.report_interval(lease) / 4
            self._start_sync(hold.tenant_id, lease)
        return Settlement(cost_nano=cost)

    # ---------------------------------------------------------------- background

    def _renew_ahead(self, lease: TenantLease) -> None:
        """Renew in the background once a slice is down to half of its last grant."""
        self._ensure_keeper(lease.tenant.id, lease)
        budget, minute = lease.current, lease.minute
        if budget is None or minute is None or lease.sync is not None:
            return
        granted = lease.granted
        low = (
            budget.free * 2 < granted[0]
            or minute.requests * 2 < granted[1]
            or minute.tokens * 2 < granted[2]
            # A quarter left: calls come in bursts, and one finding no slot waits (defect 6).
            or lease.slots - lease.inflight < max(1, lease.slots // 4)
        )
        now = time.monotonic()
        if low and now >= lease.renew_after:
            # Near a limit the grants stay small: renew at most a few times a second.
            lease.renew_after = now + self.report_interval(lease) / 4
            self._start_sync(lease.tenant.id, lease)

    def _ensure_keeper(self, tenant_id: str, lease: TenantLease) -> None:
        if lease.keeper is None or lease.keeper.done():
            lease.keeper = asyncio.get_running_loop().create_task(self._keep(tenant_id, lease))

    async def _keep(self, tenant_id: str, lease: TenantLease) -> None:
        """Report, renew and hand back, until the lease is empty."""
        while not self._closing:
            # Jittered: keepers started by one burst would otherwise report in lockstep,
            # every sync of a wave racing for the same rows (bench/scale.py).
            await asyncio.sleep(self.report_interval(lease) * random.uniform(0.5, 1.5))
            if self._leases.get(tenant_id) is not lease:
                return
            idle = self._idle(lease)
            slices = [s for s in (lease.current, lease.previous) if s is not None]
            recalled = time.monotonic() < lease.recalled_until and any(s.free > 0 for s in slices)
            due = any(s.unreported for s in slices) or lease.previous is not None or recalled
            expiring = lease.stored and lease.valid_until - time.monotonic() < self._ttl(lease) / 4
            if not (due or expiring or (idle and lease.stored)):
                if idle and lease.empty and not lease.stored:
                    return
                continue
            try:
                await self._sync_now(tenant_id, lease)
            except StorageUnavailable as exc:
                logger.warning("lease sync for %s failed (%s); retrying", tenant_id, exc.reason)
            if idle and not lease.stored and lease.empty:
                return

    def _start_sync(self, tenant_id: str, lease: TenantLease) -> asyncio.Task[None]:
        if lease.sync is None or lease.sync.done():
            lease.contended.clear()  # (set by this sync's lost races)
            task = asyncio.get_running_loop().create_task(self._sync(tenant_id, lease))
            lease.sync = task

            def done(finished: asyncio.Task[None]) -> None:
                if lease.sync is finished:
                    lease.sync = None
                if not finished.cancelled() and finished.exception() is not None:
                    logger.warning("lease sync for %s failed: %s", tenant_id, finished.exception())

            task.add_done_callback(done)
        return lease.sync

    async def _sync_now(self, tenant_id: str, lease: TenantLease) -> None:
        await asyncio.shield(self._start_sync(tenant_id, lease))  # join or start one, wait

    async def flush(self, tenant_id: str | None = None) -> None:
        """Report settled usage now (of one tenant, or all), keeping the slices; a sync in
        flight lands first (requests do not wait for one that lost a race)."""
        for leased_tenant, lease in list(self._leases.items()):
            joined = lease.sync is not None and not lease.sync.done()
            if tenant_id in (None, leased_tenant) and (lease.stored or not lease.empty or joined):
                await self._sync_now(leased_tenant, lease)
                if joined:
                    # The sync in flight was planned before the settlements made since
                    # (the ones a caller of flush wants stored): one more, fresh.
                    await self._sync_now(leased_tenant, lease)

    async def aclose(self) -> None:
        """Hand every lease back (shutdown): unused capacity returns, usage is reported."""
        self._closing = True
        for tenant_id, lease in list(self._leases.items()):
            if lease.keeper is not None:
                lease.keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lease.keeper
            if lease.sync is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await lease.sync
            if lease.stored or not lease.empty:
                lease.last_used = 0.0  # idle: give everything back
                with contextlib.suppress(StorageUnavailable):
                    await self._sync(tenant_id, lease)

    # ---------------------------------------------------------------- the sync

    async def _sync(self, tenant_id: str, lease: TenantLease) -> None:
        ledger = self._ledger
        table = await ledger.store.table(USAGE_TABLE)
        snapshot: list[Snapshot] = []

        async def plan() -> Plan[None]:
            operations, snap = await self._plan_any(table, tenant_id, lease)
            snapshot[:] = [snap]
            # Until we hear back, this sync may or may not have committed.
            lease.pending = snap
            return operations, None

        # Holders racing: the tenant's, or a sub-pool's (two rows a sync: a narrower window).
        pools = self.pools(lease)
        racing = lease.holders // pools // 2 if pools else lease.holders
        base = 0.01 if pools else 0.04  # seconds per racing holder
        # Backing off longer the more holders race for the pool (as last read, or doubling
        # with each lost race): a pool commits one sync per two round trips, so N racing
        # holders need a window of about N x 40 ms. Until this sync is acknowledged (or a
        # later one finds out whether it committed), what it takes back is held back
        # (``TenantLease.holdback``, from ``lease.pending``).
        await ledger.update(
            table, tenant_id, "lease sync", plan, lost=lease.contended.set,
            patience=lambda attempt: min(10.0, base * max(4, racing, 2 ** min(attempt, 8))),
        )
        self.syncs += 1
        self._acknowledge(lease, snapshot[0])
        if lease.stored and not self._closing:
            # Whatever the requests did with it, its keeper renews, reports and hands back.
            self._ensure_keeper(tenant_id, lease)

    async def _plan_any(self, table: Any, tenant_id: str, lease: TenantLease) -> tuple[list[Any], Snapshot]:
        """Through the lease's sub-pool when its tenant has them (a rebalance when the
        pool cannot serve it), else on the window rows."""
        # A new lease learns the holders and pool count from its first read (one query).
        first = await first_read(self, table, tenant_id, lease)
        pools = self.pools(lease)
        if not pools:
            return await self._plan(table, tenant_id, lease, prefetched=first)
        key = pool_key(self.process_id, pools)
        planned = await plan_pool_sync(self, table, tenant_id, lease, key, first)
        return planned or await self._plan(table, tenant_id, lease, PoolHook(self, key, pools), first)

    def caught_up(self, lease: TenantLease, stored: Any) -> None:
        """Our previous sync committed although its answer never reached us (a reset
        connection): take it as done before planning, or its deltas (slots, leased budget,
        reported spend) would be applied to the rows a second time."""
        if lease.pending is not None and stored is not None and read_int(stored.get("seq")) == lease.seq + 1:
            self._acknowledge(lease, lease.pending)

    async def _plan(
        self,
        table: Any,
        tenant_id: str,
        lease: TenantLease,
        pool: PoolHook | None = None,
        prefetched: dict[str, Any] | None = None,
    ) -> tuple[list[Any], Snapshot]:
        settings = self._settings
        now = self._ledger.now()
        day, month, minute_key = policy.window_keys(now)
        limits = lease.tenant.limits
        idle = self._closing or self._idle(lease)
        # Yesterday's slice (if any) only drains; today's is resized.
        if lease.current is not None and lease.current.day != day:
            lease.previous, lease.current = lease.current, None
        slices = [s for s in (lease.current, lease.previous) if s is not None]
        keys = [day, month, minute_key, INFLIGHT, RECALL, self.row_key, *([pool.key] if pool else [])]
        for budget in slices:
            keys += [budget.day, budget.month]
        keys = list(dict.fromkeys(keys))
        if prefetched is None:
            prefetched = await query_partition(table, tenant_id, keys)
        rows = PartitionRows(tenant_id, prefetched)
        stored = rows.entities.get(self.row_key)
        self.caught_up(lease, stored)
        slices = [s for s in (lease.current, lease.previous) if s is not None]
        if pool is not None:
            await pool.prepare(table, rows, minute_key)

        recall = rows.entities.get(RECALL)
        recall_left = (recall["until"] - now).total_seconds() if recall is not None else 0.0
        if recall_left > 0:
            # Honour the pool's recall: hand back every free nano-USD, admit budget
            # exactly until the mark runs out.
            lease.recalled_until = time.monotonic() + recall_left
        lost = stored is None and lease.stored
        if lost:
            # The sweep expired this lease (we could not renew it in time) and charged
            # everything on it: calls still in flight settle as late, nothing is reported.
            logger.warning("lease of %s expired at the store; starting a new one", tenant_id)
            lease.generation += 1
            lease.pending = None
            lease.current = lease.previous = lease.minute = None
            lease.slots = lease.inflight = lease.reported_busy = 0
            slices = []
        if lease.current is None:
            lease.current = BudgetSlice(day=day, month=month)
            slices.insert(0, lease.current)

        demand = lease.demand
        demand.roll(time.monotonic())
        horizon = settings.horizon_seconds * self.stretch(lease)  # a grant lasts to the next report
        # With many holders, the first to ask must not take half of what is left each:
        # a grant takes at most share / (holders / 4) of it, so the pool spreads evenly
        # (with sub-pools: its pool's holders, among whom the pool's part is spread).
        share = settings.share / max(1.0, lease.holders / (pool.pools if pool else 1) / 4)
        expected_calls = max(demand.rate * horizon, float(demand.waiting), float(demand.peak_inflight))
        snap_budget: list[tuple[BudgetSlice, Report]] = []
        new_free: dict[int, int] = {}
        for budget in slices:
            snap_budget.append((budget, budget.report()))
            day_row = rows.counter(budget.day, WINDOW_FIELDS)
            month_row = rows.counter(budget.month, WINDOW_FIELDS)
            free = 0
            if budget is lease.current and not idle and recall_left <= 0:
                left = min(
                    policy.remaining_budget(
                        limits.daily_budget_nano, day_row["spent_nano"],
                        day_row["held_nano"] + day_row["leased_nano"],
                    ),
                    policy.remaining_budget(
                        limits.monthly_budget_nano, month_row["spent_nano"],
                        month_row["held_nano"] + month_row["leased_nano"],
                    ),
                )
                unit = max(1, demand.unit_amount)
                # At most twice a fair part of what is unspent: excess of a burst goes back.
                unspent = left + day_row["leased_nano"]  # (this lease's slice is leased too)
                fair = 2 * unspent // max(1, lease.holders)
                # Under two calls a holder (four in all): see _from_lease.
                lease.near_limit = unspent < unit * max(4, 2 * lease.holders)
                free = grant(
                    available=left + budget.free,
                    demand=min(int(expected_calls * unit), max(fair, 2 * unit)),
                    unit=unit,
                    share=share,
                )
            new_free[id(budget)] = free
            for window in (day_row, month_row):
                window.add("spent_nano", budget.spent)
                window.add("leased_nano", budget.held + free - budget.outstanding)
                window.add("requests", budget.requests)
                window.add("prompt_tokens", budget.prompt_tokens)
                window.add("completion_tokens", budget.completion_tokens)
                window.add("overrun_nano", budget.overrun)

        minute_row = rows.counter(minute_key, MINUTE_FIELDS)
        same_minute = lease.minute is not None and lease.minute.minute == minute_key
        unused_requests = lease.minute.requests if same_minute and lease.minute else 0
        unused_tokens = lease.minute.tokens if same_minute and lease.minute else 0
        new_requests = new_tokens = 0
        if not idle:
            new_requests = grant(
                available=limits.requests_per_minute - minute_row["requests"] + unused_requests,
                demand=int(expected_calls + demand.count_rate * horizon) + 1,
                unit=1,
                share=share,
            )
            token_unit = max(1, demand.unit_tokens)
            new_tokens = grant(
                available=limits.tokens_per_minute - minute_row["tokens"] + unused_tokens,
                demand=int((expected_calls + 1) * token_unit),
                unit=token_unit,
                share=share,
            )
        minute_row.add("requests", new_requests - unused_requests)
        minute_row.add("tokens", new_tokens - unused_tokens)

        inflight_row = rows.counter(INFLIGHT, INFLIGHT_FIELDS)
        new_slots = lease.inflight
        if not idle:
            wanted = max(demand.peak_inflight * 2, lease.inflight + demand.waiting + 1, 2)
            new_slots = max(
                lease.inflight,
                grant(
                    available=limits.max_concurrent - inflight_row["count"] + lease.slots,
                    demand=wanted,
                    unit=1,
                    share=(1.0 if demand.waiting else settings.share) * share / settings.share,
                ),
            )
        inflight_row.add("count", new_slots - lease.slots)
        # Leased slots apart from the calls really in flight on them (the read model).
        busy = lease.inflight
        inflight_row.add("leased_slots", new_slots - lease.slots)
        inflight_row.add("leased_in_flight", busy - lease.reported_busy)
        demand.synced_peak(lease.inflight)

        amounts = {id(b): b.held + new_free[id(b)] for b in slices}
        keep = new_slots > 0 or any(amounts.values()) or lease.inflight > 0
        # The pool's holders: this row created or deleted now (the sweep counts expiries).
        joined = int(keep and stored is None) - int(not keep and stored is not None)
        inflight_row.add("leases", joined)
        lease.holders = inflight_row["leases"]
        store_pool_count(settings, lease, inflight_row)
        pool_write = None
        if pool is not None:
            unit, token_unit = max(1, demand.unit_amount), max(1, demand.unit_tokens)
            pool_write = pool.finish(
                rows, lease, (day, month, minute_key), joined, budget_ok=not idle and recall_left <= 0,
                unit=(unit, 1, token_unit),
                wanted=(
                    max(int(expected_calls * unit), 2 * unit),
                    int(expected_calls + demand.count_rate * horizon) + 1,
                    int((expected_calls + 1) * token_unit),
                ),
            )
        operations = rows.operations() + ([pool_write] if pool_write is not None else [])
        if keep:
            entity = lease_entity(tenant_id, self.row_key, lease, amounts, new_slots, busy, minute_key,
                                  new_requests, now, self._ttl(lease))
            write = ("create", entity, {}) if stored is None else update_op(entity, etag_of(stored))
            operations.append(write)
        elif stored is not None:
            operations.append(
                delete_op({"PartitionKey": tenant_id, "RowKey": self.row_key}, etag_of(stored))
            )
        return operations, Snapshot(
            budget=snap_budget,
            new_free=new_free,
            minute=lease.minute,
            minute_requests=unused_requests,
            minute_tokens=unused_tokens,
            new_minute=MinuteSlice(minute_key, new_requests, new_tokens),
            minute_stored=minute_row["requests"],
            slots=lease.slots,
            new_slots=new_slots,
            busy=busy,
            lost=lost,
        )

    def _acknowledge(self, lease: TenantLease, snap: Snapshot) -> None:
        """A sync committed: count it and move the local numbers by what it changed."""
        lease.seq += 1
        lease.pending = None
        self._apply(lease, snap)

    def _apply(self, lease: TenantLease, snap: Snapshot) -> None:
        """The sync committed: move the local numbers by what it changed."""
        for budget, report in snap.budget:
            budget.synced(snap.new_free[id(budget)], report)
        new_minute = snap.new_minute
        if new_minute is not None:
            lease.minute_stored = snap.minute_stored
            kept = lease.minute
            if kept is not None and kept is snap.minute and kept.minute == new_minute.minute:
                kept.requests += new_minute.requests - snap.minute_requests
                kept.tokens += new_minute.tokens - snap.minute_tokens
            else:
                lease.minute = new_minute
        lease.slots += snap.new_slots - snap.slots
        lease.reported_busy = snap.busy
        if lease.previous is not None and lease.previous.drained:
            lease.previous = None
        current = lease.current
        lease.stored = lease.slots > 0 or lease.inflight > 0 or any(
            s.outstanding > 0 for s in (current, lease.previous) if s is not None
        )
        lease.valid_until = time.monotonic() + self._ttl(lease) / 2 if lease.stored else 0.0
        current_free = snap.new_free.get(id(current), 0) if current is not None else 0
        if new_minute is not None:
            lease.granted = (current_free, new_minute.requests, new_minute.tokens)
        if current_free > 0:
            lease.exact_until = 0.0
