"""Hard per-tenant limits: budgets, requests and tokens per minute, concurrency.

- ``policy``: the admission rules, pure arithmetic on counters.
- ``rows``: how the counters are stored in Table Storage.
- ``ledger``: the committer (group commit, one optimistic-retry loop).
- ``sweep``: expiry of abandoned holds, old rows, and the usage read model.
"""

from sk_core.limits.ledger import Contended, Hold, Ledger, Settlement
from sk_core.limits.policy import Counters, Grant, decide, remaining_budget, window_keys
from sk_core.limits.rows import INFLIGHT, USAGE_TABLE

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
