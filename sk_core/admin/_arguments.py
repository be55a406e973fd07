"""Argument types of the admin commands: each raises ArgumentTypeError naming the bad
value (exit 2), so nothing malformed reaches storage."""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal, InvalidOperation

from sk_core.accounts import ALL, TenantError, parse_admin_key, parse_key, validate_tenant_id
from sk_core.catalog import Catalog
from sk_core.pricing import nano

_KEY_ID_RE = re.compile(r"^[0-9a-f]{12}$")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH_RE = re.compile(r"^\d{4}-\d{2}$")
_FUNCTION_RE = re.compile(r"^[A-Za-z0-9_-]+/[A-Za-z0-9_-]+$")
_MAX_NAME = 256
# Limits and budgets (nano-USD) are stored as Int64; anything larger could not be stored.
_INT64_MAX = 2**63 - 1


def count_arg(text: str) -> int:
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


def usd_budget_arg(text: str) -> int:
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


def tenant_id_arg(text: str) -> str:
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


def key_id_arg(text: str) -> str:
    """A key id; a whole key is accepted too (revoking a leaked key is pasting it)."""
    return _id_of(text, parse_key)


def admin_key_id_arg(text: str) -> str:
    """An operator key id; the whole admin key is accepted too."""
    return _id_of(text, parse_admin_key)


def day_count_arg(text: str) -> int:
    """How many days of history (1 to 400: beyond that, day rows are a year old)."""
    if not text.isdigit() or not 1 <= int(text) <= 400:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number from 1 to 400")
    return int(text)


def name_arg(text: str) -> str:
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


def functions_arg(text: str) -> tuple[str, ...]:
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


def function_id_arg(text: str) -> str:
    """One catalog function (``plugin/name``), checked as ``functions_arg`` checks a list."""
    items = functions_arg(text)
    if len(items) != 1 or items == (ALL,):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected one plugin/name")
    return items[0]


def day_arg(text: str) -> date:
    """A UTC calendar day, YYYY-MM-DD."""
    if not _DAY_RE.match(text):
        raise argparse.ArgumentTypeError(f"invalid day {text!r}: expected YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid day {text!r}: no such date") from None


def month_arg(text: str) -> date:
    """A UTC calendar month, YYYY-MM (returned as its first day)."""
    if not _MONTH_RE.match(text):
        raise argparse.ArgumentTypeError(f"invalid month {text!r}: expected YYYY-MM")
    try:
        return date.fromisoformat(f"{text}-01")
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid month {text!r}: no such month") from None
