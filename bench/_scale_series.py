"""Where the budget tenant's budget sits during a ``bench/scale.py`` run (``--series``).

Every half second, from the in-memory account's rows (read directly: a query through a
store would count against the partition it measures) and the instances' leases: the
fractions of the budget spent, leased out of the window rows, free in sub-pools and
held by lease rows; and requests admitted, refused and waiting for a sync. This is how
the shortfall at 256 instances was found: requests piling up on syncs while the pools
held half of the budget (bench/README.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.scale import Simulation


def _int(value: Any) -> int:
    return int(value) if value not in (None, "") else 0


def sample(simulation: Simulation, started: float) -> dict[str, Any]:
    account = simulation.backend.account
    assert account is not None  # (memory backend only)
    rows: dict[str, dict[str, Any]] = {}
    for name, table in account.tables.items():
        if name.lower().endswith("usage"):
            rows.update({row_key: row.wire for (pk, row_key), row in table.items() if pk == "budget"})
    budget = simulation.tenants["budget"].limits.daily_budget_nano
    day = next((row for key, row in rows.items() if key.startswith("day-")), {})

    def share(total: int) -> float:
        return round(total / budget, 3)

    def held(prefix: str, field: str) -> float:
        return share(sum(_int(r.get(field)) for k, r in rows.items() if k.startswith(prefix)))

    keepers = [i.ledger.leases for i in simulation.instances if i.ledger.leases is not None]
    leases = [keeper._leases.get("budget") for keeper in keepers]
    stats = simulation.stats["budget"]
    return {
        "t": round(time.monotonic() - started, 1),
        "spent": share(_int(day.get("spent_nano"))),
        "leased": share(_int(day.get("leased_nano"))),
        "pools_free": held("pool-", "free_nano"),
        "leases_hold": held("lease-", "amount_nano"),
        "admitted": sum(stats.admitted.values()),
        "refused": sum(stats.refusals.values()),
        "waiting": sum(lease.demand.waiting for lease in leases if lease is not None),
        # In the instances' memory: free in their slices, reserved by their calls in flight.
        "slices_free": share(sum(lease.current.free for lease in leases if lease and lease.current)),
        "slices_held": share(sum(lease.current.held for lease in leases if lease and lease.current)),
        # Allocated: offered and not yet claimed.
        "unclaimed": share(
            sum(_int(r.get("budget_nano")) for k, r in rows.items() if k.startswith("offer-"))
            - sum(_int(r.get("claimed_nano")) for k, r in rows.items() if k.startswith("claim-"))
        ),
        "syncing": sum(1 for lease in leases if lease is not None and lease.sync is not None),
    }


async def record(simulation: Simulation, into: list[dict[str, Any]]) -> None:
    """Append a sample every half second until cancelled."""
    started = time.monotonic()
    while True:
        await asyncio.sleep(0.5)
        into.append(sample(simulation, started))

