"""Budget gauges: each active tenant's daily and monthly budget and what is left of it.

Grafana can chart spend from the ``sk.cost`` counter, but not spend against budget: the
budget lives in storage. This keeps a small snapshot per tenant that the observable
gauges ``sk.budget.limit`` and ``sk.budget.remaining`` read at collection time (a
collection never touches storage), refreshed off the request path:

- the pipeline *notes* a tenant on every admission; a tenant with no snapshot, or one
  older than ``refresh_seconds``, gets one background refresh (single flight per tenant);
- the maintenance sweep refreshes every noted tenant, so the gauges catch up once
  traffic stops.

Cardinality is bounded: at most ``max_tenants`` tenants (the most recently active; the
least recently active is dropped first) times two windows. One refresh is one read of
the tenant's counter rows (``usage_of`` without reporting leases: a read must not make
this process write).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sk_core.errors import StorageUnavailable
from sk_core.pricing import usd
from sk_core.usage._read_model import usage_of

if TYPE_CHECKING:
    from sk_core.accounts import Tenant
    from sk_core.limits import Ledger

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetSnapshot:
    """One tenant's budgets and settled spend, as read at ``taken`` (monotonic seconds)."""

    daily_budget_nano: int
    daily_spent_nano: int
    monthly_budget_nano: int
    monthly_spent_nano: int
    taken: float


class BudgetGauges:
    """The snapshot the budget gauges read; bounded, refreshed in the background."""

    def __init__(
        self,
        *,
        max_tenants: int = 50,
        refresh_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_tenants
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._tenants: OrderedDict[str, Tenant] = OrderedDict()  # most recently active last
        self._snapshots: dict[str, BudgetSnapshot] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}  # strong references, one per tenant

    def note(self, tenant: Tenant, ledger: Ledger) -> None:
        """A request of ``tenant`` is being admitted: keep it, refresh it if stale."""
        if self._max <= 0:
            return
        self._tenants[tenant.id] = tenant
        self._tenants.move_to_end(tenant.id)
        while len(self._tenants) > self._max:
            gone, _ = self._tenants.popitem(last=False)
            self._snapshots.pop(gone, None)
        snapshot = self._snapshots.get(tenant.id)
        stale = snapshot is None or self._clock() - snapshot.taken >= self._refresh_seconds
        if stale and tenant.id not in self._refreshing:
            task = asyncio.get_running_loop().create_task(self.refresh(tenant, ledger))
            self._refreshing[tenant.id] = task
            task.add_done_callback(lambda _: self._refreshing.pop(tenant.id, None))

    async def refresh(self, tenant: Tenant, ledger: Ledger) -> None:
        """Read one tenant's counters into its snapshot (a failure keeps the old one)."""
        try:
            usage = await usage_of(ledger, tenant, report_own_leases=False)
        except StorageUnavailable as exc:
            logger.info("budget gauge of %s not refreshed: %s", tenant.id, exc.reason)
            return
        if tenant.id not in self._tenants:  # dropped while reading: stay bounded
            return
        self._snapshots[tenant.id] = BudgetSnapshot(
            daily_budget_nano=usage.day.budget_nano,
            daily_spent_nano=usage.day.spent_nano,
            monthly_budget_nano=usage.month.budget_nano,
            monthly_spent_nano=usage.month.spent_nano,
            taken=self._clock(),
        )

    async def refresh_all(self, ledger: Ledger) -> None:
        """Refresh every kept tenant (the maintenance sweep), one read each."""
        await asyncio.gather(*(self.refresh(t, ledger) for t in list(self._tenants.values())))

    def observations(self) -> Iterator[tuple[str, str, float, float]]:
        """(tenant, window, limit USD, remaining USD) for every snapshot."""
        for tenant_id, s in list(self._snapshots.items()):
            yield tenant_id, "day", usd(s.daily_budget_nano), usd(s.daily_budget_nano - s.daily_spent_nano)
            yield (
                tenant_id,
                "month",
                usd(s.monthly_budget_nano),
                usd(s.monthly_budget_nano - s.monthly_spent_nano),
            )
