"""The values admission hands out and settlement returns: ``Hold`` and ``Settlement``.

Both the exact path (``ledger.py``, a ``hold-`` row per request) and quota leases
(``leases.py``, held in memory) produce them, and the sweep charges the ``hold-`` rows
nobody settled; they live here so that none of those modules imports another for them.
"""

from __future__ import annotations

from dataclasses import dataclass

HOLD_PREFIX = "hold-"
# The flagged audit record the sweep leaves of a reservation it charged unsettled.
EXPIRED_PREFIX = "expired-"


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
    # The lease generation it was admitted from (settled in memory); None: a hold row.
    lease: int | None = None

    @property
    def row(self) -> str:
        """The hold's RowKey."""
        return hold_row(self.request_id)


@dataclass(frozen=True)
class Settlement:
    """What a settled request cost."""

    cost_nano: int
    late: bool = False


def hold_row(request_id: str) -> str:
    """The RowKey of a request's hold."""
    return f"{HOLD_PREFIX}{request_id}"
