"""Hard per-tenant limits: budgets, requests and tokens per minute, concurrency.

- ``policy``: the admission rules, pure arithmetic on counters.
- ``windows``: the day, month and minute window keys (written and parsed there only).
- ``holds``: the values admission hands out and settlement returns.
- ``rows``: how the counters are stored in Table Storage, and their raw reads.
- ``ledger``: the committer (group commit, one optimistic-retry loop).
- ``leases``, ``slices``, ``lease_state``, ``lease_admit``: quota leases, admitting and
  settling in memory.
- ``pools``, ``pool_sync``: sub-pools, for tenants with many lease holders.
- ``sweep``: expiry of abandoned holds and leases, of old minute rows, of idle pools.
"""

from sk_core.limits.holds import Hold, Settlement
from sk_core.limits.ledger import Ledger
from sk_core.limits.policy import Counters, Grant, decide, remaining_budget
from sk_core.limits.rows import INFLIGHT, USAGE_TABLE, Contended
from sk_core.limits.windows import window_keys

__all__ = [
    "INFLIGHT",
    "USAGE_TABLE",
    "Contended",
    "Counters",
    "Grant",
    "Hold",
    "Ledger",
    "Settlement",
    "decide",
    "remaining_budget",
    "window_keys",
]
