"""The ledger's queued work (``ledger.py``: group commit): an admission or a settlement
waiting for its tenant's next transaction, and a row as the ledger last wrote it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sk_core.accounts import Tenant
from sk_core.limits.holds import Hold, Settlement
from sk_core.limits.lease_state import RECALL
from sk_core.limits.offers import ALLOC
from sk_core.limits.rows import INFLIGHT
from sk_core.limits.windows import window_keys
from sk_core.pricing import Price


class Known(dict[str, Any]):
    """A row as this ledger last wrote it, with the ETag the store answered (as read)."""

    def __init__(self, entity: Mapping[str, Any], etag: str) -> None:
        super().__init__(entity)
        self.metadata = {"etag": etag}


@dataclass(eq=False)
class Admission:
    """A queued admission (Ledger.admit's arguments and the caller's future)."""

    tenant: Tenant
    price: Price
    prompt_tokens_bound: int
    requested_max_tokens: int
    function: str
    key_id: str
    future: asyncio.Future[Hold]
    abandoned: bool = False  # its caller went away after the batch took it (skipped unless committed)
    recalled: bool = False  # refused as ``budget_held`` while budget sat leased: the pool was recalled
    first: bool = False  # a process's first of the tenant (allocated leases): not while one allocates

    def keys(self, now: datetime) -> list[str]:
        return [*window_keys(now), INFLIGHT, RECALL, *([ALLOC] if self.first else [])]


@dataclass(eq=False)
class Settling:
    """A queued settlement."""

    hold: Hold
    cost_nano: int
    prompt_tokens: int
    completion_tokens: int
    future: asyncio.Future[Settlement]

    def keys(self, now: datetime) -> list[str]:
        hold = self.hold
        return [hold.day, hold.month, hold.minute, INFLIGHT, hold.row]


Job = Admission | Settling
