"""Which lease keeper a process runs: slices from shared pools (``leases.py``, the
default), or from the tenant's allocator (``LeaseSettings.allocated``, ``allocated.py``).

The allocator's modules are imported only when asked for: they cost about 12 ms of
import, and a cold start should not pay for an opt-in mode.
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
