"""Which lease keeper a process runs: slices from the tenant's allocator
(``allocated.py``, the default), or from shared pool rows (``leases.py``,
``SKF_LEASE_ALLOCATOR=false``).

The allocator's modules are imported only when asked for (about 12 ms of import a
process running pools would not use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sk_core.limits.lease_state import LeaseSettings
from sk_core.limits.leases import LeaseKeeper

if TYPE_CHECKING:
    from sk_core.limits.ledger import Ledger


def keeper_for(ledger: Ledger, settings: LeaseSettings) -> LeaseKeeper:
    if settings.allocated:
        from sk_core.limits.allocated import AllocatedKeeper

        return AllocatedKeeper(ledger, settings)
    return LeaseKeeper(ledger, settings)
