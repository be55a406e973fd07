"""How the admin commands print: USD amounts, times, aligned tables, and the JSON of
tenants and keys (the same facts as the text, for ``--json``)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sk_core.accounts import ApiKey, Limits, Tenant
from sk_core.pricing import NANO_PER_USD, usd

_MICRO = Decimal("0.000001")
# Control characters (terminal escape sequences start with ESC) and bidi overrides in
# stored text (a tenant's display name) are shown escaped, never sent to the terminal.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _safe(text: str) -> str:
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def fmt_usd(amount_nano: int, *, fixed: bool = False) -> str:
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


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def iso(value: Any) -> str | None:
    return value.astimezone(UTC).isoformat() if isinstance(value, datetime) else None


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> str:
    """Plain aligned columns; ``right`` lists the numeric columns."""
    rows = [[_safe(cell) for cell in row] for row in rows]
    widths = [max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])


def pairs(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(label) for label, _ in pairs)
    return "\n".join(f"{label.ljust(width)}  {_safe(value)}" for label, value in pairs)


def limits_json(limits: Limits) -> dict[str, Any]:
    return {
        **dataclasses.asdict(limits),
        "daily_budget_usd": usd(limits.daily_budget_nano),
        "monthly_budget_usd": usd(limits.monthly_budget_nano),
    }


def tenant_json(tenant: Tenant) -> dict[str, Any]:
    return {
        "tenant_id": tenant.id,
        "name": tenant.display_name,
        "status": tenant.status,
        "limits": limits_json(tenant.limits),
        "functions": list(tenant.allowed_functions),
    }


def tenant_text(tenant: Tenant) -> str:
    limits = tenant.limits
    return pairs(
        [
            ("tenant", tenant.id),
            ("name", tenant.display_name),
            ("status", tenant.status),
            ("functions", ", ".join(tenant.allowed_functions)),
            ("requests/minute", str(limits.requests_per_minute)),
            ("tokens/minute", str(limits.tokens_per_minute)),
            ("concurrency", str(limits.max_concurrent)),
            ("daily budget", f"{fmt_usd(limits.daily_budget_nano)} USD"),
            ("monthly budget", f"{fmt_usd(limits.monthly_budget_nano)} USD"),
        ]
    )


def key_json(key: ApiKey) -> dict[str, Any]:
    # Deliberately field by field: the record carries the key's hash, which stays in storage.
    return {
        "key_id": key.key_id,
        "tenant_id": key.tenant_id,
        "name": key.name,
        "scopes": list(key.scopes),
        "status": key.status,
        "created_at": iso(key.created_at),
        "last_used_at": iso(key.last_used_at),
    }
