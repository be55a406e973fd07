"""Tenants with known traffic, for the usage API and dashboard tests.

The ledger is read from storage in the test process; the service under test may run in
another process whose quota leases report settled usage within
``SKF_LEASE_REPORT_SECONDS`` and hand idle capacity back after ``SKF_LEASE_IDLE_SECONDS``
(0.2 s and 0.5 s in the tests). ``settled_usage`` waits for both, so the numbers a test
compares no longer move.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sk_core.accounts import Limits, Tenant
from sk_core.composition import Service
from sk_core.limits import Ledger, window_keys
from tests.support.processes import run_admin

ROOT = Path(__file__).resolve().parents[2]
SUMMARIZE = "/api/v1/summarize"
BODY = {"text": "Quarterly numbers went up; costs went down.", "style": "bullets", "max_words": 20}


async def new_tenant(service: Service, stem: str, limits: Limits | None = None) -> tuple[str, str]:
    """A fresh tenant and one of its keys."""
    tenant_id = f"{stem}-{secrets.token_hex(4)}"
    await service.tenants.create_tenant(
        Tenant(id=tenant_id, display_name=stem.title(), limits=limits or Limits())
    )
    return tenant_id, (await service.tenants.issue_key(tenant_id)).secret


def cost_nano(headers: dict[str, str]) -> int:
    """The charge a response reports (nine decimals: exact in nano-USD)."""
    return int(Decimal(headers["x-request-cost-usd"]) * 10**9)


async def settled_usage(ledger: Ledger, tenant_id: str, patience: float = 15.0) -> dict[str, dict[str, int]]:
    """Today's and this month's stored counters once nothing is held, leased or in flight."""
    deadline = asyncio.get_running_loop().time() + patience
    previous: dict[str, dict[str, int]] | None = None
    while True:
        day, month, _ = window_keys(datetime.now(UTC))
        current = {"day": await ledger.usage(tenant_id, day), "month": await ledger.usage(tenant_id, month)}
        quiet = all(
            w["held_nano"] == 0 and w["leased_nano"] == 0 and w["inflight"] == 0 for w in current.values()
        )
        if quiet and current == previous:
            return current
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"usage of {tenant_id} did not settle: {current}")
        previous = current
        await asyncio.sleep(0.3)


def admin_cli(env: dict[str, str], *args: str) -> str:
    """``python -m sk_core.admin ARGS`` against the service's storage; its stdout."""
    result = run_admin(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def cli_rows(table: str) -> dict[str, list[str]]:
    """``admin usage`` text output: label -> its cells (one per window)."""
    rows: dict[str, list[str]] = {}
    for line in table.splitlines()[1:]:
        label, _, cells = line.partition("  ")
        if cells.strip() and not line.startswith(("in flight", "!")):
            rows[label.strip()] = cells.split()
    return rows


def usage_headers(key: str) -> dict[str, str | None]:
    """Headers that present ``key`` on either host (replacing the host's default key)."""
    return {"authorization": f"Bearer {key}", "x-api-key": None}
