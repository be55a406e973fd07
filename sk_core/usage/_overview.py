"""The operators' overview: every tenant's usage now, nearest its budget first, with
totals, spend per hour over the last day for all tenants (the top spenders stacked, the
rest as "other") and refusals by code.

Counters (spend, holds, budgets, requests) come from the ledger's rows on every request
(two reads: ``overview``). The hourly charts and the refusal count come from the audit
rollups through the process's ``RollupHistory`` snapshot: no storage read on the
request path once it is warm, at most ``SNAPSHOT_SECONDS`` plus one refresh behind.
Scanning audit rows per refresh is what this replaces (and what made the overview slow
on Azurite, which scans the whole table per query).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sk_core.usage._history import RollupHistory, history_for, hour_names
from sk_core.usage._read_model import CHART_HOURS, UsageResponse, WindowUsage, overview
from sk_core.usage._rollups import Bucket, bucket_start, stamp

if TYPE_CHECKING:
    from sk_core.accounts import Tenant, TenantStore
    from sk_core.limits import Ledger

TOP_TENANTS = 5  # stacked in the spend chart; the others are summed as "other"
NEAR_BUDGET_PCT = 80.0  # the page highlights tenants at or above this share


def used_pct(window: WindowUsage) -> float:
    """Spent or held by requests as a percentage of the window's budget. Budget leased
    to processes is not counted (shown apart, ``leased_nano``): it is not spent, and a
    lease's unused part comes back (issue 23, defect 2)."""
    used = window.spent_nano + window.held_nano - window.leased_nano
    if window.budget_nano > 0:
        return round(100 * used / window.budget_nano, 2)
    return 100.0 if used > 0 else 0.0


def nearest(usage: UsageResponse) -> tuple[float, str]:
    """The larger share of the day's and the month's budget, and which window it is."""
    return max((used_pct(usage.day), "day"), (used_pct(usage.month), "month"))


def _sum_windows(windows: Sequence[WindowUsage]) -> dict[str, int]:
    return {
        field: sum(getattr(w, field) for w in windows)
        for field in ("spent_nano", "held_nano", "leased_nano", "budget_nano", "remaining_nano")
    }


def summarize(
    listed: Sequence[tuple[Tenant, UsageResponse]],
    buckets: Mapping[str, Mapping[str, Bucket]],
    names: Sequence[str],
    now: datetime,
    top: int = TOP_TENANTS,
) -> dict[str, Any]:
    """The overview document from every tenant's usage and hourly buckets (pure)."""
    empty = Bucket()
    today = stamp(now.astimezone(UTC).replace(hour=0))
    tenants = []
    for tenant, usage in listed:
        pct, window = nearest(usage)
        hours = [buckets.get(tenant.id, {}).get(name, empty) for name in names]
        tenants.append(
            {
                "name": tenant.display_name,
                "status": tenant.status,
                **usage.model_dump(mode="json"),
                "budget_used_pct": pct,
                "nearest_window": window,
                "cost_by_hour": [b.cost_nano for b in hours],
                "refusals_today": sum(
                    b.errors for b, name in zip(hours, names, strict=True) if name >= today
                ),
            }
        )
    # Nearest its budget first; then the bigger spender today; then by id (stable).
    tenants.sort(key=lambda t: (-t["budget_used_pct"], -t["day"]["spent_nano"], t["tenant_id"]))

    spenders = sorted(
        (t for t in tenants if sum(t["cost_by_hour"])),
        key=lambda t: (-sum(t["cost_by_hour"]), t["tenant_id"]),
    )
    series = [
        {"tenant_id": t["tenant_id"], "label": t["tenant_id"], "cost_nano": t["cost_by_hour"]}
        for t in spenders[:top]
    ]
    if len(spenders) > top:
        rest = spenders[top:]
        series.append(
            {
                "tenant_id": None,
                "label": f"other ({len(rest)})",
                "cost_nano": [sum(column) for column in zip(*(t["cost_by_hour"] for t in rest), strict=True)],
            }
        )

    codes: dict[str, list[int]] = {}
    for tenant_buckets in buckets.values():
        for i, name in enumerate(names):
            bucket = tenant_buckets.get(name)
            for code, count in (bucket.codes if bucket else {}).items():
                codes.setdefault(code, [0] * len(names))[i] += count
    totals_by_code = sorted(
        ((code, sum(v)) for code, v in codes.items()), key=lambda item: (-item[1], item[0])
    )

    usages = [usage for _, usage in listed]
    times = [int(bucket_start(name).timestamp()) for name in names]
    return {
        "as_of": now.isoformat(),
        "totals": {
            "tenants": len(listed),
            "active": sum(1 for tenant, _ in listed if tenant.active),
            "near_budget": sum(1 for t in tenants if t["budget_used_pct"] >= NEAR_BUDGET_PCT),
            "day": _sum_windows([u.day for u in usages]),
            "month": _sum_windows([u.month for u in usages]),
            "requests_today": sum(u.day.requests for u in usages),
            "refusals_today": sum(t["refusals_today"] for t in tenants),
            # Used, then leased to processes and unused (they count against the limits).
            "requests_this_minute": sum(u.minute.requests for u in usages),
            "leased_requests": sum(u.minute.leased_requests for u in usages),
            "in_flight": sum(u.concurrency.in_flight for u in usages),
            "leased_slots": sum(u.concurrency.leased_slots for u in usages),
        },
        "spend_by_hour": {"t": times, "series": series},
        "refusals_by_code": {
            "t": times,
            "codes": {code: codes[code] for code, _ in totals_by_code},
            "totals": dict(totals_by_code),
        },
        "tenants": tenants,
    }


async def overview_document(
    ledger: Ledger, tenants: TenantStore, now: datetime | None = None, history: RollupHistory | None = None
) -> dict[str, Any]:
    """What ``GET /api/v1/admin/tenants`` answers: ``summarize`` of the ledger's counters
    read now and the rollup snapshot (``charts_as_of``: when it was read)."""
    now = now or ledger.now()
    listed = await overview(ledger, tenants, now)
    names = hour_names(stamp(now - timedelta(hours=CHART_HOURS - 1)), now)
    history = history or history_for(ledger.store)
    history.remember_tenants(tenant for tenant, _ in listed)
    buckets, charts_as_of = await history.snapshot([t.id for t, _ in listed], names, ledger.now)
    document = summarize(listed, buckets, names, now)
    document["charts_as_of"] = charts_as_of.isoformat() if charts_as_of else None
    return document
