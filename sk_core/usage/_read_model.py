"""The usage read model: what a tenant spent and may still spend, for people and programs.

One computation serves the admin CLI (``admin usage``), the tenant's ``GET /api/v1/usage``,
the admin API and the dashboard, so every view prints the same numbers: counters come
from the ledger's rows (``sk_core.limits.rows``), "how much is left" from the admission
policy's ``remaining_budget``, charts from the audit rollups (``sk_core.usage._rollups``).

**Freshness.** Stored usage lags what processes settled on quota leases by up to
``SKF_LEASE_REPORT_SECONDS``; the operators' views first report this process's own
leases (``Ledger.flush``), so a single-process service shows them exactly. The tenant's
own ``/v1/usage`` does not (see ``usage_of``).

**Storage reads** (round trips; a page holds up to 1,000 rows):

- tenant usage (``usage_of``): 1 point query (day, month, minute and in-flight rows);
- all tenants (``overview``): 2 (the tenant list; one query for every tenant's four rows);
- one tenant's charts (``detail``): 4, issued together (the tenant; its usage partition's
  30 day rows, month, minute, in-flight and expired rows in one query; its hourly
  rollups, minute series inside, of the hours not yet final (4 or 5: final hours are
  kept in memory, ``sk_core.usage._history``); the 20 newest audit rows), whatever the
  traffic: a rollup is one row per hour per writing process, never one per call.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from sk_core.limits.holds import EXPIRED_PREFIX
from sk_core.limits.lease_state import LEASE_PREFIX, leased_requests
from sk_core.limits.offers import CLAIM_ROWS, claimed
from sk_core.limits.policy import (
    remaining_budget,
    seconds_to_next_day,
    seconds_to_next_minute,
    seconds_to_next_month,
)
from sk_core.limits.rows import (
    EXPIRED_RANGE,
    INFLIGHT,
    INFLIGHT_FIELDS,
    MINUTE_FIELDS,
    USAGE_TABLE,
    WINDOW_FIELDS,
    CounterRow,
    counters,
    in_flight,
)
from sk_core.limits.windows import day_key, day_start, month_key, window_keys
from sk_core.pricing import usd
from sk_core.storage import query_partition, read_int, storage_errors
from sk_core.usage._audit import AuditLog
from sk_core.usage._history import history_for
from sk_core.usage._rollups import Bucket, bucket_start, percentile, stamp

if TYPE_CHECKING:
    from sk_core.accounts import Limits, Tenant, TenantStore
    from sk_core.limits import Ledger

CHART_MINUTES = 180  # requests and tokens per minute over the last 3 hours
CHART_HOURS = 24  # refusals, cost and latency by function over the last day
CHART_DAYS = 30  # spend per day
RECENT_CALLS = 20


# --- windows --------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A budget window: a UTC day or month, and its ledger row."""

    period: str  # "day" or "month"
    label: str  # 2025-01-31 / 2025-01
    row: str  # the ledger RowKey: day-20250131 / month-202501


def day_window(day: date) -> Window:
    """The window of one UTC day."""
    return Window("day", day.isoformat(), day_key(day))


def month_window(month: date) -> Window:
    """The window of one UTC month (any day of it)."""
    return Window("month", f"{month:%Y-%m}", month_key(month))


def current_windows(now: datetime) -> list[Window]:
    """Today and this month (UTC): the windows the ledger charges now."""
    today = now.astimezone(UTC).date()
    return [day_window(today), month_window(today)]


def last_days(now: datetime, days: int) -> list[Window]:
    """The last ``days`` UTC days (oldest first, today last) and this month."""
    today = now.astimezone(UTC).date()
    return [*(day_window(today - timedelta(days=n)) for n in range(days - 1, -1, -1)), month_window(today)]


def window_entry(window: Window, counters: Mapping[str, int], limits: Limits) -> dict[str, Any]:
    """One window's counters against its budget, in nano-USD and USD.

    ``held`` counts reservations of single requests, ``leased`` budget handed to
    processes as quota leases; both are unavailable, so ``remaining`` subtracts both.
    """
    budget = limits.daily_budget_nano if window.period == "day" else limits.monthly_budget_nano
    entry: dict[str, Any] = {
        "window": window.row,
        "period": window.period,
        "label": window.label,
        **{name: int(counters.get(name, 0)) for name in WINDOW_FIELDS},
    }
    entry["budget_nano"] = budget
    entry["remaining_nano"] = remaining_budget(
        budget, entry["spent_nano"], entry["held_nano"] + entry["leased_nano"]
    )
    for name in ("spent", "held", "leased", "budget", "remaining", "expired", "overrun"):
        entry[f"{name}_usd"] = usd(entry[f"{name}_nano"])
    return entry


# --- the tenant's usage document (GET /api/v1/usage) -----------------------------------


class WindowUsage(BaseModel):
    """Spend against one budget window."""

    window: str = Field(description="The ledger window, day-YYYYMMDD or month-YYYYMM (UTC).")
    budget_usd: float
    spent_usd: float = Field(description="Settled cost, expired holds included.")
    held_usd: float = Field(description="Reserved and not yet settled: request holds plus leased budget.")
    leased_usd: float = Field(description="The part of held_usd leased to service processes.")
    remaining_usd: float = Field(description="budget - spent - held: what new requests may still reserve.")
    budget_nano: int
    spent_nano: int
    held_nano: int
    leased_nano: int
    remaining_nano: int
    requests: int = Field(description="Settled requests in the window.")
    prompt_tokens: int
    completion_tokens: int
    expired_holds: int = Field(description="Holds charged unsettled (flagged).")
    resets_at: datetime
    resets_in_seconds: int


class RateUsage(BaseModel):
    """This UTC minute's admissions against the per-minute limits.

    Capacity leased to service processes counts as used (it is not available to others).
    """

    requests: int = Field(
        description="Requests admitted this minute (as of each process's last lease sync, so "
        "at most SKF_LEASE_REPORT_SECONDS behind)."
    )
    leased_requests: int = Field(
        default=0,
        description="Requests of this minute leased to service processes and unused at their "
        "last sync: not available to others, not used either.",
    )
    requests_limit: int
    tokens: int = Field(
        description="Tokens admitted or leased this minute (reserved; corrected to actual on settlement)."
    )
    tokens_limit: int
    resets_at: datetime
    resets_in_seconds: int


class ConcurrencyUsage(BaseModel):
    """Requests admitted and not settled, and concurrency slots leased to service processes."""

    in_flight: int = Field(
        description="Calls admitted and not settled (on leases: as of each process's last report)."
    )
    limit: int
    leased_slots: int = Field(
        default=0,
        description="Slots leased to service processes (used or not); they count against the limit.",
    )


class UsageResponse(BaseModel):
    """``GET /api/v1/usage``: the caller's own usage against its limits."""

    tenant_id: str
    as_of: datetime
    day: WindowUsage
    month: WindowUsage
    minute: RateUsage
    concurrency: ConcurrencyUsage


def usage_document(tenant: Tenant, rows: Mapping[str, Any], now: datetime) -> UsageResponse:
    """The usage document from a tenant's day, month, minute and in-flight rows."""
    _, _, minute_key = window_keys(now)
    limits = tenant.limits
    day, month = current_windows(now)

    # Allocated leases: claim rows hold what the allocator credits at its next cycle.
    seen = claimed(rows, day.row, minute_key, now)

    def window(w: Window, reset_in: int) -> WindowUsage:
        entry = window_entry(
            w, seen.credit(counters(tenant.id, w.row, rows.get(w.row), WINDOW_FIELDS)), limits
        )
        reserved = entry["held_nano"] + entry["leased_nano"]
        return WindowUsage.model_validate(
            {
                **entry,
                "held_nano": reserved,
                "held_usd": usd(reserved),
                "resets_at": _whole_second(now) + timedelta(seconds=reset_in),
                "resets_in_seconds": reset_in,
            }
        )

    minute = counters(tenant.id, minute_key, rows.get(minute_key), MINUTE_FIELDS)
    # Lease rows (when read with the counters) say what of the minute is only leased.
    leased = min(minute["requests"], leased_requests(rows.values(), minute_key) + seen.requests)
    minute_reset = seconds_to_next_minute(now)
    return UsageResponse(
        tenant_id=tenant.id,
        as_of=now,
        day=window(day, seconds_to_next_day(now)),
        month=window(month, seconds_to_next_month(now)),
        minute=RateUsage(
            requests=minute["requests"] - leased,
            leased_requests=leased,
            requests_limit=limits.requests_per_minute,
            tokens=minute["tokens"],
            tokens_limit=limits.tokens_per_minute,
            resets_at=_whole_second(now) + timedelta(seconds=minute_reset),
            resets_in_seconds=minute_reset,
        ),
        concurrency=_concurrency(tenant, rows.get(INFLIGHT), seen.busy),
    )


def _concurrency(tenant: Tenant, entity: Any, busy: int) -> ConcurrencyUsage:
    calls, leased = in_flight(CounterRow(tenant.id, INFLIGHT, entity, INFLIGHT_FIELDS))
    return ConcurrencyUsage(in_flight=calls + busy, limit=tenant.limits.max_concurrent, leased_slots=leased)


def _whole_second(now: datetime) -> datetime:
    return now.replace(microsecond=0)


def _usage_keys(now: datetime) -> list[str]:
    return [*window_keys(now), INFLIGHT]


async def usage_of(
    ledger: Ledger, tenant: Tenant, now: datetime | None = None, *, report_own_leases: bool = True
) -> UsageResponse:
    """A tenant's usage now: one query of its four counter rows.

    ``report_own_leases=False`` reads the stored rows as they are (lagging by at most
    ``SKF_LEASE_REPORT_SECONDS``): reporting is a storage write, and a tenant polling its
    usage must not be able to make this process write on every poll.
    """

    if report_own_leases:
        await ledger.flush(tenant.id)
    now = now or ledger.now()
    table = await ledger.store.table(USAGE_TABLE)
    # The tenant's lease rows in the same query: what of the minute is only leased.
    rows = await query_partition(table, tenant.id, _usage_keys(now), also=_LEASE_ROWS)
    return usage_document(tenant, rows, now)


# Every lease row of a partition: RowKeys from "lease-" up to "lease." (the first key
# after); and every claim and offer row (allocated leases).
_LEASE_ROWS = f"( RowKey ge '{LEASE_PREFIX}' and RowKey lt '{LEASE_PREFIX[:-1]}.' ) or {CLAIM_ROWS}"


async def overview(
    ledger: Ledger, tenants: TenantStore, now: datetime | None = None
) -> list[tuple[Tenant, UsageResponse]]:
    """Every tenant with its usage: the tenant list and one query for all their counter
    rows and lease rows (cross-partition), read at the same time. The lease rows tell the
    requests of the minute that are only leased from the ones used (issue 23, defect 2),
    as in each tenant's own usage."""

    await ledger.flush()
    now = now or ledger.now()
    table = await ledger.store.table(USAGE_TABLE)
    keys = _usage_keys(now)
    clauses = " or ".join([*(f"RowKey eq @r{i}" for i in range(len(keys))), _LEASE_ROWS])

    async def counter_rows() -> dict[str, dict[str, Any]]:
        by_tenant: dict[str, dict[str, Any]] = {}
        with storage_errors():
            async for entity in table.query_entities(
                clauses, parameters={f"r{i}": key for i, key in enumerate(keys)}, results_per_page=1000
            ):
                by_tenant.setdefault(entity["PartitionKey"], {})[entity["RowKey"]] = entity
        return by_tenant

    listed, by_tenant = await asyncio.gather(tenants.list_tenants(), counter_rows())
    return [(t, usage_document(t, by_tenant.get(t.id, {}), now)) for t in listed]


# --- history: day rows and rollups -------------------------------------------------------


async def read_windows(
    ledger: Ledger, tenant: Tenant, windows: Sequence[Window], *, report_own_leases: bool = True
) -> list[dict[str, Any]]:
    """``window_entry`` of each window, read in two concurrent queries (the day range, the months)."""

    if report_own_leases:
        await ledger.flush(tenant.id)
    table = await ledger.store.table(USAGE_TABLE)
    days = sorted(w.row for w in windows if w.period == "day")
    months = [w.row for w in windows if w.period == "month"]

    async def day_rows() -> dict[str, Any]:
        found: dict[str, Any] = {}
        if days:
            with storage_errors():
                async for entity in table.query_entities(
                    "PartitionKey eq @p and RowKey ge @first and RowKey le @last",
                    parameters={"p": tenant.id, "first": days[0], "last": days[-1]},
                ):
                    found[entity["RowKey"]] = entity
        return found

    async def month_rows() -> dict[str, Any]:
        # With the claim rows: today's and this month's uncredited reports (``claimed``).
        return await query_partition(table, tenant.id, months, also=CLAIM_ROWS)

    now = ledger.now()
    by_day, by_month = await asyncio.gather(day_rows(), month_rows())
    found = {**by_day, **by_month}
    day, month, minute = window_keys(now)
    seen = claimed(found, day, minute, now)

    def values(w: Window) -> dict[str, int]:
        stored = counters(tenant.id, w.row, found.get(w.row), WINDOW_FIELDS)
        return seen.credit(stored) if w.row in (day, month) else stored

    return [window_entry(w, values(w), tenant.limits) for w in windows]


CSV_COLUMNS = (
    "tenant_id",
    "period",
    "label",
    "spent_usd",
    "held_usd",
    "leased_usd",
    "budget_usd",
    "remaining_usd",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "expired_holds",
    "expired_leases",
    "expired_usd",
    "overrun_usd",
    "spent_nano",
    "held_nano",
    "leased_nano",
    "budget_nano",
    "remaining_nano",
)


def usage_csv(tenant_id: str, entries: Sequence[Mapping[str, Any]]) -> str:
    """Window entries as CSV: USD with nine decimals (exact: one nano-USD is 1e-9) and the
    integer nano-USD columns beside them."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for entry in entries:
        row: list[str] = []
        for column in CSV_COLUMNS:
            if column == "tenant_id":
                row.append(tenant_id)
            elif column.endswith("_usd"):
                row.append(_usd_text(int(entry[column.removesuffix("_usd") + "_nano"])))
            else:
                row.append(str(entry[column]))
        writer.writerow(row)
    return out.getvalue()


def _usd_text(amount_nano: int) -> str:
    sign = "-" if amount_nano < 0 else ""
    whole, fraction = divmod(abs(amount_nano), 10**9)
    return f"{sign}{whole}.{fraction:09d}"


def _hours(now: datetime, count: int) -> list[str]:
    """The names of the last ``count`` UTC hours, oldest first, the current one last."""
    return [stamp(now - timedelta(hours=n)) for n in range(count - 1, -1, -1)]


def _per_hour(buckets: Mapping[str, Bucket], names: Sequence[str]) -> dict[str, Any]:
    """Chart columns by hour: start times (epoch seconds), calls, errors, tokens, cost, codes."""
    empty = Bucket()
    picked = [buckets.get(name, empty) for name in names]
    codes = sorted({code for b in picked for code in b.codes})
    return {
        "t": [int(bucket_start(name).timestamp()) for name in names],
        "calls": [b.calls for b in picked],
        "errors": [b.errors for b in picked],
        "tokens": [b.prompt_tokens + b.completion_tokens for b in picked],
        "cost_usd": [usd(b.cost_nano) for b in picked],
        "codes": {code: [b.codes.get(code, 0) for b in picked] for code in codes},
    }


def _per_minute(buckets: Mapping[str, Bucket], now: datetime, count: int) -> dict[str, Any]:
    """Chart columns by minute for the last ``count`` minutes, from the hours' minute slots."""
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=count - 1)
    times, calls, tokens = [], [], []
    for n in range(count):
        minute = start + timedelta(minutes=n)
        bucket = buckets.get(stamp(minute))
        slot = bucket.minutes.get(minute.minute, [0, 0]) if bucket is not None else [0, 0]
        times.append(int(minute.timestamp()))
        calls.append(slot[0])
        tokens.append(slot[1])
    return {"t": times, "calls": calls, "tokens": tokens}


async def _ledger_rows(
    ledger: Ledger, tenant_id: str, now: datetime, days: Sequence[Window]
) -> dict[str, Any]:
    """One query of the tenant's usage partition: the day range, this month, this minute,
    in flight and the expired-hold and -lease records (Table Storage serves a partition
    query from its index; one round trip instead of four)."""

    _, month, minute = window_keys(now)
    table = await ledger.store.table(USAGE_TABLE)
    # Spaces around every parameter: the SDK substitutes @names word by word.
    query = (
        "PartitionKey eq @p and ( ( RowKey ge @first and RowKey le @last ) or RowKey eq @month"
        f" or RowKey eq @minute or RowKey eq @inflight or {EXPIRED_RANGE} )"
    )
    parameters = {
        "p": tenant_id,
        "first": days[0].row,
        "last": days[-1].row,
        "month": month,
        "minute": minute,
        "inflight": INFLIGHT,
    }
    with storage_errors():
        return {e["RowKey"]: e async for e in table.query_entities(query, parameters=parameters)}


async def detail(
    ledger: Ledger, tenants: TenantStore, tenant_id: str, audit: AuditLog, now: datetime | None = None
) -> dict[str, Any] | None:
    """Everything the dashboard shows for one tenant (None: no such tenant).

    The newest calls come with the rollups (``RollupHistory.hours_and_recent``, the same
    rows ``AuditLog.recent`` returns, from ``audit``'s partitions)."""
    await ledger.flush(tenant_id)
    now = now or ledger.now()
    windows = last_days(now, CHART_DAYS)
    # The day's hours cover the minute chart's 3 hours too: one query for every chart.
    hour_names = _hours(now, max(CHART_HOURS, CHART_MINUTES // 60 + 1))

    history = history_for(ledger.store)
    listed = history.listed(tenant_id)

    async def read_tenant() -> Tenant | None:
        # As the overview read it a moment ago (the page polls both), or read now.
        return listed if listed is not None else await tenants.get_tenant(tenant_id)

    # Independent reads, issued together: a refresh waits for the slowest, not the sum.
    # The rollups: hours no writer can change any more come from memory, the live ones
    # are read with the 20 newest audit rows, in one query of the audit partition.
    found, rows, (hours, audit_rows) = await asyncio.gather(
        read_tenant(),
        _ledger_rows(ledger, tenant_id, now, windows[:-1]),
        history.hours_and_recent(tenant_id, hour_names, now, RECENT_CALLS, audit.shards),
    )
    if found is None:
        return None
    tenant = found
    usage = usage_document(tenant, rows, now)
    days = [
        window_entry(w, counters(tenant.id, w.row, rows.get(w.row), WINDOW_FIELDS), tenant.limits)
        for w in windows
    ]
    expired = [row for key, row in sorted(rows.items()) if key.startswith(EXPIRED_PREFIX)]
    last_day = Bucket()
    for name in hour_names[-CHART_HOURS:]:
        if name in hours:
            last_day.merge(hours[name])
    functions = [
        {
            "function": name,
            "calls": stats.calls,
            "cost_usd": usd(stats.cost_nano),
            "p50_ms": percentile(stats.latency, 50),
            "p95_ms": percentile(stats.latency, 95),
        }
        for name, stats in sorted(last_day.functions.items(), key=lambda item: -item[1].cost_nano)
    ]
    return {
        "tenant_id": tenant.id,
        "name": tenant.display_name,
        "status": tenant.status,
        "usage": usage.model_dump(mode="json"),
        "windows": days[-2:],  # today and this month, exactly as ``admin usage`` prints them
        "spend_by_day": {
            "t": [int(day_start(e["window"]).timestamp()) for e in days[:-1]],
            "spent_usd": [e["spent_usd"] for e in days[:-1]],
            "budget_usd": usd(tenant.limits.daily_budget_nano),
        },
        "per_minute": _per_minute(hours, now, CHART_MINUTES),
        "per_hour": _per_hour(hours, hour_names[-CHART_HOURS:]),
        "by_function": functions,
        "recent": [_call_json(row) for row in audit_rows],
        "expired": [_expired_json(row) for row in expired],
    }


def _iso(value: Any) -> str | None:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else None


def _call_json(row: Mapping[str, Any]) -> dict[str, Any]:

    return {
        "time": _iso(row.get("created_at")),
        "function": row.get("function", ""),
        "status": int(row.get("status", 0)),
        "code": row.get("code", ""),
        "prompt_tokens": int(row.get("prompt_tokens", 0)),
        "completion_tokens": int(row.get("completion_tokens", 0)),
        "cost_usd": usd(read_int(row.get("cost_nano"))),
        "latency_ms": float(row.get("latency_ms", 0.0)),
        "trace_id": row.get("trace_id", ""),
    }


def _expired_json(row: Mapping[str, Any]) -> dict[str, Any]:

    # Hold rows carry amount_nano; expired leases carry charged_nano (their whole slice).
    amount = read_int(row.get("amount_nano")) or read_int(row.get("charged_nano"))
    return {
        "id": str(row.get("RowKey", "")).removeprefix(EXPIRED_PREFIX),
        "kind": "lease" if str(row.get("RowKey", "")).startswith(EXPIRED_PREFIX + "lease-") else "hold",
        "function": row.get("function", ""),
        "key_id": row.get("key_id", ""),
        "charged_usd": usd(amount),
        "created_at": _iso(row.get("created_at")),
        "charged_at": _iso(row.get("charged_at")),
        "flagged": bool(row.get("flagged", False)),
    }
