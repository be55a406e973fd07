"""Operator CLI: tenants, API keys, usage and the hold sweep, against the service's storage.

Run it with the same environment as the service (``SKF_STORAGE_CONNECTION_STRING`` or
``AzureWebJobsStorage``, or ``SKF_STORAGE_ACCOUNT_ENDPOINT``; ``SKF_API_KEY_PEPPER``;
``SKF_STORAGE_TABLE_PREFIX``): keys issued here are hashed with the service's pepper and
land in the service's tables, so any other environment would issue keys that never work.

    python -m sk_core.admin tenant create acme --name "Acme Corp" --daily-usd 5
    python -m sk_core.admin key issue acme --name ci --scopes text/summarize
    python -m sk_core.admin usage acme --expired
    python -m sk_core.admin usage acme --days 30 --csv > acme.csv
    python -m sk_core.admin admin-key issue --name ops
    python -m sk_core.admin --json tenant list

Every command takes ``--json`` (before or after the command) for scripts. Exit codes:
0 done; 1 refused (unknown tenant or key, duplicate, scope outside the tenant);
2 bad usage, bad value or bad settings; 3 storage unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import logging
import re
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError
from pydantic import ValidationError

# The store's own tenant-id rule. tenants.py has no public validator, and the CLI must
# check ids before they reach storage: an id with '/' is not "unknown", the Table service
# answers it with an error (Azurite 500), which the store reports as "unavailable".
from sk_core.accounts import (
    ALL,
    ApiKey,
    Limits,
    Tenant,
    TenantError,
    TenantStore,
    parse_admin_key,
    parse_key,
    validate_tenant_id,
)
from sk_core.catalog import Catalog
from sk_core.composition import make_store, make_tenant_store
from sk_core.errors import StorageUnavailable
from sk_core.limits import Ledger
from sk_core.pricing import NANO_PER_USD, nano, usd
from sk_core.settings import Settings
from sk_core.storage import TableStore, development_connection_string, read_int
from sk_core.usage import (
    Window,
    current_windows,
    day_window,
    last_days,
    month_window,
    read_windows,
    usage_csv,
    window_entry,
)

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_STORAGE = 3

_KEY_ID_RE = re.compile(r"^[0-9a-f]{12}$")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH_RE = re.compile(r"^\d{4}-\d{2}$")
_FUNCTION_RE = re.compile(r"^[A-Za-z0-9_-]+/[A-Za-z0-9_-]+$")
_MAX_NAME = 256
# Limits and budgets (nano-USD) are stored as Int64; anything larger could not be stored.
_INT64_MAX = 2**63 - 1
_MICRO = Decimal("0.000001")


class Refused(Exception):
    """The store refused the operation (unknown id, duplicate): exit 1."""


class BadValue(Exception):
    """A value is invalid in a way argparse could not see on its own: exit 2."""


@dataclass(frozen=True)
class Output:
    """What a command produced: the same facts for ``--json`` and for people."""

    data: Any
    text: str


@dataclass(frozen=True)
class Context:
    """Everything a command may touch; the store is closed by the caller."""

    settings: Settings
    store: TableStore
    tenants: TenantStore

    def ledger(self) -> Ledger:
        """A ledger configured exactly as the service's (same lease, same minimum answer)."""
        return Ledger(
            store=self.store,
            lease_seconds=self.settings.hold_lease_seconds,
            min_answer_tokens=self.settings.min_answer_tokens,
        )


Handler = Callable[[argparse.Namespace, Context], Awaitable[Output]]


# --- argument types: each raises ArgumentTypeError naming the bad value (exit 2) ------


def _count(text: str) -> int:
    """A limit that must be a whole number of at least 1 (rpm, tpm, concurrency)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be at least 1")
    if value > _INT64_MAX:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: too large")
    return value


def _usd_budget(text: str) -> int:
    """A budget typed in USD, returned in nano-USD (the unit every ledger row uses)."""
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an amount in USD") from None
    if not amount.is_finite():
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected an amount in USD")
    if amount < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: a budget must not be negative")
    value = nano(amount)
    if value > _INT64_MAX:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: too large")
    return value


def _tenant_id(text: str) -> str:
    """A tenant id the store accepts (checked here so it never reaches storage malformed)."""
    try:
        return validate_tenant_id(text)
    except TenantError as exc:
        raise argparse.ArgumentTypeError(f"invalid tenant id {text!r}: {exc}") from None


def _id_of(text: str, parse: Callable[[str], str | None]) -> str:
    from_key = parse(text)
    if from_key is not None:
        return from_key
    if not _KEY_ID_RE.match(text):
        raise argparse.ArgumentTypeError(f"invalid key id {text!r}: expected 12 hex digits")
    return text


def _key_id(text: str) -> str:
    """A key id; a whole key is accepted too (revoking a leaked key is pasting it)."""
    return _id_of(text, parse_key)


def _admin_key_id(text: str) -> str:
    """An operator key id; the whole admin key is accepted too."""
    return _id_of(text, parse_admin_key)


def _day_count(text: str) -> int:
    """How many days of history (1 to 400: beyond that, day rows are a year old)."""
    if not text.isdigit() or not 1 <= int(text) <= 400:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number from 1 to 400")
    return int(text)


def _name(text: str) -> str:
    """A display name: not blank, not absurdly long."""
    value = text.strip()
    if not value:
        raise argparse.ArgumentTypeError("invalid value '': a name must not be blank")
    if len(value) > _MAX_NAME:
        raise argparse.ArgumentTypeError(f"invalid value {text[:20]!r}...: longer than {_MAX_NAME} chars")
    return value


@functools.cache
def _catalog_ids() -> frozenset[str]:
    return frozenset(spec.id for spec in Catalog.load())


def _functions(text: str) -> tuple[str, ...]:
    """``*`` or a comma list of catalog functions (``plugin/name``).

    Checked against the catalog because a typo would otherwise be stored silently and
    surface only as 403s for the customer.
    """
    items = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not items:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected '*' or plugin/name[,...]")
    if ALL in items:
        if len(items) > 1:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: '*' already means every function")
        return (ALL,)
    known = _catalog_ids()
    for item in items:
        if not _FUNCTION_RE.match(item):
            raise argparse.ArgumentTypeError(f"invalid function {item!r}: expected plugin/name")
        if item not in known:
            raise argparse.ArgumentTypeError(f"unknown function {item!r} (known: {', '.join(sorted(known))})")
    return items


def _function_id(text: str) -> str:
    """One catalog function (``plugin/name``), checked as ``_functions`` checks a list."""
    items = _functions(text)
    if len(items) != 1 or items == (ALL,):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected one plugin/name")
    return items[0]


def _day(text: str) -> date:
    """A UTC calendar day, YYYY-MM-DD."""
    if not _DAY_RE.match(text):
        raise argparse.ArgumentTypeError(f"invalid day {text!r}: expected YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid day {text!r}: no such date") from None


def _month(text: str) -> date:
    """A UTC calendar month, YYYY-MM (returned as its first day)."""
    if not _MONTH_RE.match(text):
        raise argparse.ArgumentTypeError(f"invalid month {text!r}: expected YYYY-MM")
    try:
        return date.fromisoformat(f"{text}-01")
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid month {text!r}: no such month") from None


# --- formatting ----------------------------------------------------------------------


def _fmt_usd(amount_nano: int, *, fixed: bool = False) -> str:
    """USD with up to 6 decimals: at least 2 in prose, exactly 6 in columns (so points align)."""
    amount = Decimal(amount_nano) / NANO_PER_USD
    if 0 < abs(amount) < _MICRO / 2:
        # Never print a real, tiny charge as 0: zero must mean nothing was spent.
        return ("-" if amount < 0 else "") + "<0.000001"
    text = f"{amount.quantize(_MICRO, rounding=ROUND_HALF_UP):f}"
    if fixed:
        return text
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _iso(value: Any) -> str | None:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else None


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> str:
    """Plain aligned columns; ``right`` lists the numeric columns."""
    widths = [max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def _pairs(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in pairs)


def _limits_json(limits: Limits) -> dict[str, Any]:
    return {
        **dataclasses.asdict(limits),
        "daily_budget_usd": usd(limits.daily_budget_nano),
        "monthly_budget_usd": usd(limits.monthly_budget_nano),
    }


def _tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {
        "tenant_id": tenant.id,
        "name": tenant.display_name,
        "status": tenant.status,
        "limits": _limits_json(tenant.limits),
        "functions": list(tenant.allowed_functions),
    }


def _tenant_text(tenant: Tenant) -> str:
    limits = tenant.limits
    return _pairs(
        [
            ("tenant", tenant.id),
            ("name", tenant.display_name),
            ("status", tenant.status),
            ("functions", ", ".join(tenant.allowed_functions)),
            ("requests/minute", str(limits.requests_per_minute)),
            ("tokens/minute", str(limits.tokens_per_minute)),
            ("concurrency", str(limits.max_concurrent)),
            ("daily budget", f"{_fmt_usd(limits.daily_budget_nano)} USD"),
            ("monthly budget", f"{_fmt_usd(limits.monthly_budget_nano)} USD"),
        ]
    )


def _key_json(key: ApiKey) -> dict[str, Any]:
    # Deliberately field by field: the record carries the key's hash, which stays in storage.
    return {
        "key_id": key.key_id,
        "tenant_id": key.tenant_id,
        "name": key.name,
        "scopes": list(key.scopes),
        "status": key.status,
        "created_at": _iso(key.created_at),
        "last_used_at": _iso(key.last_used_at),
    }


# --- tenant commands -------------------------------------------------------------------


async def tenant_create(args: argparse.Namespace, ctx: Context) -> Output:
    """Insert a tenant; limits default to ``Limits()``, functions to all."""
    defaults = Limits()
    limits = Limits(
        requests_per_minute=args.rpm if args.rpm is not None else defaults.requests_per_minute,
        tokens_per_minute=args.tpm if args.tpm is not None else defaults.tokens_per_minute,
        max_concurrent=args.concurrency if args.concurrency is not None else defaults.max_concurrent,
        daily_budget_nano=args.daily_usd if args.daily_usd is not None else defaults.daily_budget_nano,
        monthly_budget_nano=args.monthly_usd
        if args.monthly_usd is not None
        else defaults.monthly_budget_nano,
    )
    tenant = Tenant(
        id=args.tenant_id,
        display_name=args.name,
        limits=limits,
        allowed_functions=args.functions or (ALL,),
    )
    await ctx.tenants.create_tenant(tenant)
    text = (
        f"created tenant {tenant.id}\n\n{_tenant_text(tenant)}\n\n"
        f"next: issue a key with 'key issue {tenant.id}'"
    )
    return Output(_tenant_json(tenant), text)


async def tenant_list(args: argparse.Namespace, ctx: Context) -> Output:
    """Every tenant with its limits."""
    tenants = await ctx.tenants.list_tenants()
    rows = [
        [
            t.id,
            t.display_name,
            t.status,
            str(t.limits.requests_per_minute),
            str(t.limits.tokens_per_minute),
            str(t.limits.max_concurrent),
            _fmt_usd(t.limits.daily_budget_nano, fixed=True),
            _fmt_usd(t.limits.monthly_budget_nano, fixed=True),
            ",".join(t.allowed_functions),
        ]
        for t in tenants
    ]
    headers = [
        "TENANT",
        "NAME",
        "STATUS",
        "RPM",
        "TPM",
        "CONCURRENCY",
        "DAILY USD",
        "MONTHLY USD",
        "FUNCTIONS",
    ]
    text = _table(headers, rows, right={3, 4, 5, 6, 7}) if rows else "no tenants"
    return Output([_tenant_json(t) for t in tenants], text)


async def tenant_show(args: argparse.Namespace, ctx: Context) -> Output:
    """A tenant's settings and its usage today and this month."""
    tenant = await ctx.tenants.require_tenant(args.tenant_id)
    usage = await _usage(ctx, tenant, current_windows(datetime.now(UTC)), expired=False)
    data = {**_tenant_json(tenant), "usage": usage.data}
    return Output(data, f"{_tenant_text(tenant)}\n\n{usage.text}")


async def _set_status(ctx: Context, tenant_id: str, status: str) -> Output:
    tenant = await ctx.tenants.require_tenant(tenant_id)
    was = tenant.status
    tenant = await ctx.tenants.save_tenant(dataclasses.replace(tenant, status=status))
    note = " (it already was)" if was == status else ""
    # The service caches tenants per key; say when the change is certain to be in force.
    text = (
        f"tenant {tenant.id} is {status}{note}; running services see it within "
        f"{ctx.settings.auth_cache_seconds:g} s (SKF_AUTH_CACHE_SECONDS)"
    )
    return Output(_tenant_json(tenant), text)


async def tenant_disable(args: argparse.Namespace, ctx: Context) -> Output:
    """Refuse the tenant's requests (403) without touching its keys."""
    return await _set_status(ctx, args.tenant_id, "disabled")


async def tenant_enable(args: argparse.Namespace, ctx: Context) -> Output:
    """Accept the tenant's requests again."""
    return await _set_status(ctx, args.tenant_id, "active")


async def tenant_set_limits(args: argparse.Namespace, ctx: Context) -> Output:
    """Change only the limits (and functions) that were given."""
    changes = {
        field: value
        for field, value in (
            ("requests_per_minute", args.rpm),
            ("tokens_per_minute", args.tpm),
            ("max_concurrent", args.concurrency),
            ("daily_budget_nano", args.daily_usd),
            ("monthly_budget_nano", args.monthly_usd),
        )
        if value is not None
    }
    if not changes and args.functions is None:
        raise BadValue(
            "nothing to change: give --rpm, --tpm, --concurrency, --daily-usd, --monthly-usd or --functions"
        )
    tenant = await ctx.tenants.require_tenant(args.tenant_id)
    try:
        limits = dataclasses.replace(tenant.limits, **changes)
    except TenantError as exc:  # Limits re-validates the combination
        raise BadValue(str(exc)) from None
    updated = dataclasses.replace(
        tenant, limits=limits, allowed_functions=args.functions or tenant.allowed_functions
    )
    await ctx.tenants.save_tenant(updated)
    lines = [
        f"updated tenant {updated.id}; running services see it within "
        f"{ctx.settings.auth_cache_seconds:g} s (SKF_AUTH_CACHE_SECONDS)",
        "",
        _tenant_text(updated),
    ]
    if args.functions is not None and ALL not in updated.allowed_functions:
        # Keys keep their scopes; a call needs both, so narrowed functions silently
        # turn some scoped calls into 403s. Say which keys are affected.
        for key in await ctx.tenants.list_keys(updated.id):
            outside = [s for s in key.scopes if s != ALL and not updated.allows(s)]
            if key.status == "active" and outside:
                lines.append(
                    f"note: key {key.key_id} has scopes the tenant no longer allows: {', '.join(outside)}"
                )
    return Output(_tenant_json(updated), "\n".join(lines))


# --- key commands ----------------------------------------------------------------------


async def key_issue(args: argparse.Namespace, ctx: Context) -> Output:
    """Issue a key; its secret is printed here once and exists nowhere else."""
    issued = await ctx.tenants.issue_key(args.tenant_id, name=args.name or "", scopes=args.scopes or (ALL,))
    record = issued.record
    data = {**_key_json(record), "key": issued.secret}
    text = "\n".join(
        [
            _pairs(
                [
                    ("key id", record.key_id),
                    ("tenant", record.tenant_id),
                    ("name", record.name or "-"),
                    ("scopes", ", ".join(record.scopes)),
                ]
            ),
            "",
            issued.secret,
            "",
            "Store this key now: it cannot be shown again (only its hash is kept).",
        ]
    )
    return Output(data, text)


async def key_list(args: argparse.Namespace, ctx: Context) -> Output:
    """Key records, never secrets or hashes."""
    if args.tenant is not None:
        # An unknown tenant has no keys, but saying so hides a typo: refuse instead.
        await ctx.tenants.require_tenant(args.tenant)
    keys = await ctx.tenants.list_keys(args.tenant)
    rows = [
        [
            k.key_id,
            k.tenant_id,
            k.name or "-",
            ",".join(k.scopes),
            k.status,
            _fmt_time(k.created_at),
            _fmt_time(k.last_used_at),
        ]
        for k in keys
    ]
    headers = ["KEY ID", "TENANT", "NAME", "SCOPES", "STATUS", "CREATED", "LAST USED"]
    return Output([_key_json(k) for k in keys], _table(headers, rows) if rows else "no keys")


async def key_revoke(args: argparse.Namespace, ctx: Context) -> Output:
    """Revoke a key; services stop accepting it within their auth cache TTL."""
    key = await ctx.tenants.revoke_key(args.key_id)
    text = (
        f"revoked key {key.key_id} of tenant {key.tenant_id}; running services refuse it within "
        f"{ctx.settings.auth_cache_seconds:g} s (SKF_AUTH_CACHE_SECONDS)"
    )
    return Output(_key_json(key), text)


async def admin_key_issue(args: argparse.Namespace, ctx: Context) -> Output:
    """Issue an operator key (scope ``admin``); its secret is printed here once."""
    issued = await ctx.tenants.issue_admin_key(name=args.name or "")
    record = issued.record
    data = {**_key_json(record), "key": issued.secret}
    text = "\n".join(
        [
            _pairs([("admin key id", record.key_id), ("name", record.name or "-"), ("scopes", "admin")]),
            "",
            issued.secret,
            "",
            "Store this key now: it cannot be shown again (only its hash is kept).",
            "It opens the admin API and the dashboard (/api/dashboard), never a tenant route.",
        ]
    )
    return Output(data, text)


async def admin_key_list(args: argparse.Namespace, ctx: Context) -> Output:
    """Operator key records, never secrets or hashes."""
    keys = await ctx.tenants.list_admin_keys()
    rows = [
        [k.key_id, k.name or "-", k.status, _fmt_time(k.created_at), _fmt_time(k.last_used_at)] for k in keys
    ]
    headers = ["ADMIN KEY ID", "NAME", "STATUS", "CREATED", "LAST USED"]
    return Output([_key_json(k) for k in keys], _table(headers, rows) if rows else "no admin keys")


async def admin_key_revoke(args: argparse.Namespace, ctx: Context) -> Output:
    """Revoke an operator key; services refuse it within their auth cache TTL."""
    key = await ctx.tenants.revoke_key(args.key_id, admin=True)
    text = (
        f"revoked admin key {key.key_id}; running services refuse it within "
        f"{ctx.settings.auth_cache_seconds:g} s (SKF_AUTH_CACHE_SECONDS)"
    )
    return Output(_key_json(key), text)


# --- usage and sweep -------------------------------------------------------------------


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
        "created_at": _iso(row.get("created_at")),
        "expires_at": _iso(row.get("expires_at")),
        "charged_at": _iso(row.get("charged_at")),
        "flagged": bool(row.get("flagged", False)),
    }


async def _usage(ctx: Context, tenant: Tenant, windows: list[Window], *, expired: bool) -> Output:
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
        cells = [_fmt_usd(w[field], fixed=True) if money else str(w[field]) for w in window_data]
        if field == "expired_holds":
            cells = [f"{c} (flagged)" if w[field] else c for c, w in zip(cells, window_data, strict=True)]
        rows.append([label, *cells])
    headers = [f"tenant {tenant.id} ({tenant.status})", *(f"{w.period} {w.label}" for w in windows)]
    lines = [
        _table(headers, rows, right=set(range(1, len(headers)))),
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
                    _fmt_usd(r["amount_nano"], fixed=True),
                    (r["created_at"] or "-")[:19],
                    (r["charged_at"] or "-")[:19],
                ]
                for r in audit
            ]
            lines.append("expired holds (flagged, charged at the reserved amount):")
            lines.append(
                _table(
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
    return await _usage(ctx, tenant, windows, expired=args.expired)


async def sweep(args: argparse.Namespace, ctx: Context) -> Output:
    """One pass of the hold sweeper (what the timer trigger / background task runs)."""
    charged = await ctx.ledger().expire_holds()
    text = f"charged {charged} expired hold(s) at their reserved amount" + (
        " (flagged; see 'usage TENANT --expired')" if charged else ""
    )
    return Output({"charged": charged}, text)


async def audit_cmd(args: argparse.Namespace, ctx: Context) -> Output:
    """A tenant's most recent calls from the audit log (newest first; never prompt text)."""
    from sk_core.usage import AuditLog

    await ctx.tenants.require_tenant(args.tenant_id)
    rows = await AuditLog(store=ctx.store, retention_days=ctx.settings.audit_retention_days).recent(
        args.tenant_id, args.limit
    )
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
        data, _table(headers, table_rows, right=(2, 5, 6, 7)) if table_rows else "no calls recorded"
    )


# --- the response cache ----------------------------------------------------------------


async def cache_purge(args: argparse.Namespace, ctx: Context) -> Output:
    """Delete cached answers of a tenant (or the cross-tenant ones), of one function or all."""
    from sk_core.cache import SHARED
    from sk_core.composition import make_cache

    if args.tenant is not None:
        await ctx.tenants.require_tenant(args.tenant)
    scope = args.tenant if args.tenant is not None else SHARED
    deleted = await make_cache(ctx.settings, ctx.store).purge(scope, args.function)
    what = ("shared entries" if scope == SHARED else scope) + (f" / {args.function}" if args.function else "")
    memory = ctx.settings.cache_memory_seconds
    return Output(
        {"scope": scope, "function": args.function, "deleted": deleted},
        f"deleted {deleted} cached answer(s) of {what}; running instances forget them within {memory:g} s",
    )


async def cache_stats(args: argparse.Namespace, ctx: Context) -> Output:
    """Cached answers in the shared table, by tenant (or shared) and function."""
    from sk_core.composition import make_cache

    stats = await make_cache(ctx.settings, ctx.store).stats()
    rows = stats["table"]
    table_rows = [
        (r["scope"], r["function"], str(r["entries"]), str(r["expired"]), str(r["text_bytes"])) for r in rows
    ]
    text = (
        _table(("scope", "function", "entries", "expired", "text bytes"), table_rows, right=(2, 3, 4))
        if table_rows
        else "no cached answers"
    )
    return Output(rows, text)


def _add_cache_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    leaf: Callable[
        [argparse._SubParsersAction[argparse.ArgumentParser], str, Handler, str], argparse.ArgumentParser
    ],
) -> None:
    cache = commands.add_parser("cache", help="purge, stats of the response cache")
    cache_cmds = cache.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    purge = leaf(cache_cmds, "purge", cache_purge, "delete cached answers (a tenant's, or --shared ones)")
    scope = purge.add_mutually_exclusive_group(required=True)
    scope.add_argument("--tenant", type=_tenant_id, metavar="ID", help="this tenant's answers")
    scope.add_argument(
        "--shared", action="store_true", help="the answers of functions cached across tenants"
    )
    purge.add_argument("--function", type=_function_id, metavar="PLUGIN/NAME", help="only this function's")
    leaf(cache_cmds, "stats", cache_stats, "cached answers by tenant and function")


# --- parser ----------------------------------------------------------------------------


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rpm", type=_count, metavar="N", help="requests per minute")
    parser.add_argument("--tpm", type=_count, metavar="N", help="tokens per minute")
    parser.add_argument("--concurrency", type=_count, metavar="N", help="requests in flight at once")
    parser.add_argument("--daily-usd", type=_usd_budget, metavar="X", help="daily budget in USD")
    parser.add_argument("--monthly-usd", type=_usd_budget, metavar="X", help="monthly budget in USD")
    parser.add_argument(
        "--functions",
        type=_functions,
        metavar="LIST",
        help="'*' or comma-separated plugin/name, e.g. text/summarize,chat/chat",
    )


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (every leaf command records its handler and parser)."""
    # --json may come before or after the command. SUPPRESS on the subcommands keeps
    # their unset flag from overwriting a top-level --json.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )

    parser = argparse.ArgumentParser(
        prog="python -m sk_core.admin",
        description="Manage tenants, API keys and usage in the service's Table Storage.",
        epilog="exit codes: 0 ok, 1 refused (unknown/duplicate), 2 bad usage or value, 3 storage unreachable",
    )
    parser.add_argument("--json", action="store_true", default=False, help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def leaf(
        group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Handler, help_: str
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help_, description=help_)
        sub.set_defaults(handler=handler, parser=sub)
        return sub

    tenant = commands.add_parser("tenant", help="create, list, show, disable, enable, set-limits")
    tenant_cmds = tenant.add_subparsers(dest="tenant_command", required=True, metavar="ACTION")

    create = leaf(tenant_cmds, "create", tenant_create, "create a tenant (limits default to the service's)")
    create.add_argument("tenant_id", type=_tenant_id, metavar="ID")
    create.add_argument("--name", type=_name, required=True, help="display name")
    _add_limit_flags(create)

    leaf(tenant_cmds, "list", tenant_list, "list tenants")

    show = leaf(tenant_cmds, "show", tenant_show, "a tenant's limits and today's and this month's usage")
    show.add_argument("tenant_id", type=_tenant_id, metavar="ID")

    for name, handler, help_ in (
        ("disable", tenant_disable, "refuse the tenant's requests (403); keys are kept"),
        ("enable", tenant_enable, "accept the tenant's requests again"),
    ):
        leaf(tenant_cmds, name, handler, help_).add_argument("tenant_id", type=_tenant_id, metavar="ID")

    set_limits = leaf(tenant_cmds, "set-limits", tenant_set_limits, "change the given limits only")
    set_limits.add_argument("tenant_id", type=_tenant_id, metavar="ID")
    _add_limit_flags(set_limits)

    key = commands.add_parser("key", help="issue, list, revoke API keys")
    key_cmds = key.add_subparsers(dest="key_command", required=True, metavar="ACTION")

    issue = leaf(key_cmds, "issue", key_issue, "issue a key (printed once)")
    issue.add_argument("tenant_id", type=_tenant_id, metavar="TENANT")
    issue.add_argument("--name", type=_name, help="a label, e.g. where the key is used")
    issue.add_argument(
        "--scopes", type=_functions, metavar="LIST", help="'*' (default) or comma-separated plugin/name"
    )

    listing = leaf(key_cmds, "list", key_list, "list keys (never secrets or hashes)")
    listing.add_argument("--tenant", type=_tenant_id, metavar="ID", help="only this tenant's keys")

    revoke = leaf(key_cmds, "revoke", key_revoke, "revoke a key")
    revoke.add_argument("key_id", type=_key_id, metavar="KEY_ID")

    usage = leaf(commands, "usage", usage_cmd, "a tenant's spend, holds and counters (UTC windows)")
    usage.add_argument("tenant_id", type=_tenant_id, metavar="TENANT")
    when = usage.add_mutually_exclusive_group()
    when.add_argument("--day", type=_day, metavar="YYYY-MM-DD", help="one UTC day (default: today)")
    when.add_argument("--month", type=_month, metavar="YYYY-MM", help="one UTC month (default: this month)")
    when.add_argument(
        "--days", type=_day_count, metavar="N", help="the last N UTC days and this month (with --csv)"
    )
    usage.add_argument("--expired", action="store_true", help="list the flagged expired-hold audit rows")
    usage.add_argument("--csv", action="store_true", help="CSV: one line per window, USD and nano-USD")

    admin_key = commands.add_parser("admin-key", help="issue, list, revoke operator (admin) keys")
    admin_key_cmds = admin_key.add_subparsers(dest="admin_key_command", required=True, metavar="ACTION")
    admin_issue = leaf(
        admin_key_cmds, "issue", admin_key_issue, "issue an operator key for the admin API and dashboard"
    )
    admin_issue.add_argument("--name", type=_name, help="a label, e.g. who holds the key")
    leaf(admin_key_cmds, "list", admin_key_list, "list operator keys (never secrets or hashes)")
    admin_revoke = leaf(admin_key_cmds, "revoke", admin_key_revoke, "revoke an operator key")
    admin_revoke.add_argument("key_id", type=_admin_key_id, metavar="KEY_ID")

    leaf(commands, "sweep", sweep, "charge holds whose lease expired (one pass)")

    audit = leaf(commands, "audit", audit_cmd, "a tenant's recent calls (status, tokens, cost, trace id)")
    audit.add_argument("tenant_id", type=_tenant_id, metavar="TENANT")
    audit.add_argument("--limit", type=int, default=20, help="how many calls (default 20)")
    _add_cache_commands(commands, leaf)
    return parser


# --- running ---------------------------------------------------------------------------


def _connection_parts(connection_string: str) -> dict[str, str]:
    parts: dict[str, str] = {}
    for item in connection_string.split(";"):
        name, sep, value = item.partition("=")
        if sep:
            parts[name.strip().lower()] = value.strip()
    return parts


def _without_secrets(url: str) -> str:
    """scheme://host[:port]/path: no user info, no query (a SAS token lives there)."""
    try:
        split = urllib.parse.urlsplit(url)
        host = split.hostname or ""
        port = f":{split.port}" if split.port else ""
    except ValueError:
        return "unparseable endpoint"
    return urllib.parse.urlunsplit((split.scheme, f"{host}{port}", split.path, "", "")) or "unknown endpoint"


def storage_endpoint(settings: Settings) -> str:
    """Where the table service is expected, printable (account keys and SAS removed)."""
    if settings.storage_account_endpoint:
        return _without_secrets(settings.storage_account_endpoint)
    raw = settings.storage_connection_string.get_secret_value()
    if raw.strip().rstrip(";").lower() == "usedevelopmentstorage=true":
        raw = development_connection_string()
    parts = _connection_parts(raw)
    if "tableendpoint" in parts:
        return _without_secrets(parts["tableendpoint"])
    account = parts.get("accountname")
    if account:
        protocol = parts.get("defaultendpointsprotocol", "https")
        suffix = parts.get("endpointsuffix", "core.windows.net")
        return f"{protocol}://{account}.table.{suffix}"
    return "unknown endpoint"


def _redact(message: str, settings: Settings) -> str:
    # Errors raised while parsing a connection string may quote parts of it.
    parts = _connection_parts(settings.storage_connection_string.get_secret_value())
    for name in ("accountkey", "sharedaccesssignature"):
        if parts.get(name):
            message = message.replace(parts[name], "***")
    return message


def _settings_message(exc: ValidationError) -> str:
    # Not str(exc): pydantic quotes the input, and for a model-level check the input is
    # every setting, connection string and pepper included.
    messages = []
    for error in exc.errors(include_url=False, include_input=False):
        location = ".".join(str(part) for part in error["loc"])
        if location and location != "AzureWebJobsStorage" and not location.upper().startswith("SKF_"):
            location = f"SKF_{location.upper()}"  # name the variable the operator sets
        prefix = f"{location}: " if location else ""
        messages.append(f"{prefix}{error['msg'].removeprefix('Value error, ')}")
    return "; ".join(messages)


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


async def _run(args: argparse.Namespace, settings: Settings) -> Output:
    try:
        store = make_store(settings)
    except ValueError as exc:  # no storage configured, or a malformed connection string
        raise BadValue(f"invalid storage settings: {_redact(str(exc), settings)}") from None
    try:
        ctx = Context(settings=settings, store=store, tenants=make_tenant_store(settings, store))
        handler: Handler = args.handler
        try:
            return await handler(args, ctx)
        except TenantError as exc:
            raise Refused(str(exc)) from None
    finally:
        # Every path, errors included: an unclosed aiohttp session warns at exit.
        await store.aclose()


def main(argv: list[str] | None = None) -> int:
    """Run one admin command; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for bad usage or values, 0 for --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    command_parser: argparse.ArgumentParser = args.parser
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )

    try:
        settings = Settings()
    except ValidationError as exc:
        return _usage_error(command_parser, f"invalid settings: {_settings_message(exc)}")

    try:
        output = asyncio.run(_run(args, settings))
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BadValue as exc:
        return _usage_error(command_parser, str(exc))
    except (StorageUnavailable, AzureError) as exc:
        # One line, no traceback: the operator needs where, not the SDK's stack.
        cause = exc.__cause__ if isinstance(exc, StorageUnavailable) else exc
        detail = f": HTTP {cause.status_code}" if isinstance(cause, HttpResponseError) else ""
        print(f"error: storage unreachable ({storage_endpoint(settings)}){detail}", file=sys.stderr)
        return EXIT_STORAGE

    if args.json:
        print(json.dumps(output.data, indent=2, default=_json_default))
    else:
        print(output.text)
    return EXIT_OK

