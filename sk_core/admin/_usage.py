"""``usage``, ``sweep`` and ``audit``: a tenant's spend and counters, the hold sweep,
its recent calls."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from sk_core.accounts import Tenant
from sk_core.admin._arguments import day_arg, day_count_arg, month_arg, tenant_id_arg
from sk_core.admin._command import BadValue, Commands, Context, Leaf, Output
from sk_core.admin._format import fmt_usd, iso, text_table
from sk_core.pricing import usd
from sk_core.storage import read_int
from sk_core.usage import (
    AuditLog,
    Window,
    current_windows,
    day_window,
    last_days,
    month_window,
    read_windows,
    usage_csv,
    window_entry,
)


def _expired_json(row: dict[str, Any]) -> dict[str, Any]:
    amount = read_int(row.get("amount_nano"))
    return {
        "request_id": str(row.get("RowKey", "")).removeprefix("expired-"),
        "function": row.get("function", ""),
        "key_id": row.get("key_id", ""),
        "amount_nano": amount,
        "amount_usd": usd(amount),
        "reserved_tokens": read_int(row.get("reserved_tokens")),
        "day": row.get("day", ""),
        "month": row.get("month", ""),
        "created_at": iso(row.get("created_at")),
        "expires_at": iso(row.get("expires_at")),
        "charged_at": iso(row.get("charged_at")),
        "flagged": bool(row.get("flagged", False)),
    }


async def usage_report(ctx: Context, tenant: Tenant, windows: list[Window], *, expired: bool) -> Output:
    ledger = ctx.ledger()
    in_flight = leased_slots = 0
    window_data: list[dict[str, Any]] = []
    for window in windows:
        counters = await ledger.usage(tenant.id, window.row)
        in_flight = counters.pop("inflight")  # tenant-wide, not per window
        leased_slots = counters.pop("leased_slots", 0)  # slots leased to instances, used or not
        window_data.append(window_entry(window, counters, tenant.limits))

    data: dict[str, Any] = {
        "tenant_id": tenant.id, "in_flight": in_flight, "leased_slots": leased_slots, "windows": window_data
    }

    rows: list[list[str]] = []
    for label, field, money in (
        ("spent USD", "spent_nano", True),
        ("held USD", "held_nano", True),
        ("leased USD", "leased_nano", True),
        ("budget USD", "budget_nano", True),
        ("remaining USD", "remaining_nano", True),
        ("requests", "requests", False),
        ("prompt tokens", "prompt_tokens", False),
        ("completion tokens", "completion_tokens", False),
        ("expired holds", "expired_holds", False),
        ("expired USD", "expired_nano", True),
        ("overrun USD", "overrun_nano", True),
    ):
        cells = [fmt_usd(w[field], fixed=True) if money else str(w[field]) for w in window_data]
        if field == "expired_holds":
            cells = [f"{c} (flagged)" if w[field] else c for c, w in zip(cells, window_data, strict=True)]
        rows.append([label, *cells])
    headers = [f"tenant {tenant.id} ({tenant.status})", *(f"{w.period} {w.label}" for w in windows)]
    lines = [
        text_table(headers, rows, right=set(range(1, len(headers)))),
        f"in flight now: {in_flight} (slots leased to instances: {leased_slots})",
    ]
    flagged = max((w["expired_holds"] for w in window_data), default=0)
    if flagged:
        lines.append(
            f"! {flagged} hold(s) expired unsettled and were charged at their reserved amount "
            "(the call may have happened); list them with --expired"
        )

    if expired:
        # Only the audit rows of the windows shown, so the list matches the counts above.
        wanted = {w.row for w in windows}
        audit = [
            _expired_json(row)
            for row in await ledger.expired(tenant.id)
            if row.get("day") in wanted or row.get("month") in wanted
        ]
        audit.sort(key=lambda r: r["charged_at"] or "")
        data["expired"] = audit
        lines.append("")
        if audit:
            audit_rows = [
                [
                    r["request_id"],
                    r["function"],
                    r["key_id"],
                    fmt_usd(r["amount_nano"], fixed=True),
                    (r["created_at"] or "-")[:19],
                    (r["charged_at"] or "-")[:19],
                ]
                for r in audit
            ]
            lines.append("expired holds (flagged, charged at the reserved amount):")
            lines.append(
                text_table(
                    ["REQUEST ID", "FUNCTION", "KEY ID", "CHARGED USD", "ADMITTED", "CHARGED"],
                    audit_rows,
                    {3},
                )
            )
        else:
            lines.append("no expired holds in these windows")
    return Output(data, "\n".join(lines))


async def usage_cmd(args: argparse.Namespace, ctx: Context) -> Output:
    """Spend, holds and counters of a tenant for a day and/or a month (UTC), or as CSV."""
    tenant = await ctx.tenants.require_tenant(args.tenant_id)
    if args.day is not None:
        windows = [day_window(args.day)]
    elif args.month is not None:
        windows = [month_window(args.month)]
    elif args.days is not None:
        windows = last_days(datetime.now(UTC), args.days)
    else:
        windows = current_windows(datetime.now(UTC))
    if args.csv:
        # The dashboard's download link serves this same CSV (sk_core.usage._read_model.usage_csv).
        entries = await read_windows(ctx.ledger(), tenant, windows)
        return Output(entries, usage_csv(tenant.id, entries).rstrip("\n"))
    if args.days is not None:
        raise BadValue("--days needs --csv (the table shows at most a day and a month)")
    return await usage_report(ctx, tenant, windows, expired=args.expired)


async def sweep(args: argparse.Namespace, ctx: Context) -> Output:
    """One pass of the hold sweeper (what the timer trigger / background task runs)."""
    charged = await ctx.ledger().expire_holds()
    text = f"charged {charged} expired hold(s) at their reserved amount" + (
        " (flagged; see 'usage TENANT --expired')" if charged else ""
    )
    return Output({"charged": charged}, text)


async def audit_cmd(args: argparse.Namespace, ctx: Context) -> Output:
    """A tenant's most recent calls from the audit log (newest first; never prompt text)."""

    await ctx.tenants.require_tenant(args.tenant_id)
    days, shards = ctx.settings.audit_retention_days, ctx.settings.audit_shards
    log = AuditLog(store=ctx.store, retention_days=days, shards=shards)
    rows = await log.recent(args.tenant_id, args.limit)
    data = [
        {
            "time": row["created_at"],
            "route": row.get("route", ""),
            "function": row.get("function", ""),
            "status": row.get("status", 0),
            "code": row.get("code", ""),
            "key_id": row.get("key_id", ""),
            "prompt_tokens": row.get("prompt_tokens", 0),
            "completion_tokens": row.get("completion_tokens", 0),
            "cost_usd": usd(row["cost_nano"]),
            "latency_ms": row.get("latency_ms", 0.0),
            "trace_id": row.get("trace_id", ""),
            "guard": row.get("guard", ""),
            "redactions": row.get("redactions", 0),
            "cache": row.get("cache", ""),
        }
        for row in rows
    ]
    headers = (
        "time (UTC)",
        "function",
        "status",
        "code",
        "key",
        "tokens in/out",
        "cost USD",
        "ms",
        "trace id",
    )
    table_rows = [
        (
            d["time"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            str(d["function"]),
            str(d["status"]),
            str(d["code"]),
            str(d["key_id"]),
            f"{d['prompt_tokens']}/{d['completion_tokens']}",
            f"{d['cost_usd']:.6f}",
            f"{d['latency_ms']:.0f}",
            str(d["trace_id"]),
        )
        for d in data
    ]
    return Output(
        data, text_table(headers, table_rows, right=(2, 5, 6, 7)) if table_rows else "no calls recorded"
    )


def add_usage_command(commands: Commands, leaf: Leaf) -> None:
    """``usage``."""
    usage = leaf(commands, "usage", usage_cmd, "a tenant's spend, holds and counters (UTC windows)")
    usage.add_argument("tenant_id", type=tenant_id_arg, metavar="TENANT")
    when = usage.add_mutually_exclusive_group()
    when.add_argument("--day", type=day_arg, metavar="YYYY-MM-DD", help="one UTC day (default: today)")
    when.add_argument(
        "--month", type=month_arg, metavar="YYYY-MM", help="one UTC month (default: this month)"
    )
    when.add_argument(
        "--days", type=day_count_arg, metavar="N", help="the last N UTC days and this month (with --csv)"
    )
    usage.add_argument("--expired", action="store_true", help="list the flagged expired-hold audit rows")
    usage.add_argument("--csv", action="store_true", help="CSV: one line per window, USD and nano-USD")


def add_sweep_and_audit_commands(commands: Commands, leaf: Leaf) -> None:
    """``sweep`` and ``audit``."""
    leaf(commands, "sweep", sweep, "charge holds whose lease expired (one pass)")

    audit = leaf(commands, "audit", audit_cmd, "a tenant's recent calls (status, tokens, cost, trace id)")
    audit.add_argument("tenant_id", type=tenant_id_arg, metavar="TENANT")
    audit.add_argument("--limit", type=int, default=20, help="how many calls (default 20)")
