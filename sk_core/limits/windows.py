"""The window-key format: the RowKeys of a tenant's day, month and minute counter rows.

    day-YYYYMMDD        a UTC day
    month-YYYYMM        a UTC calendar month
    minute-YYYYMMDDHHMM a UTC minute

Written and read back here only. Keys sort as their windows do, so a range of days is
one RowKey range query, and "older than an hour" is a RowKey comparison. Parsing goes
through ``date.fromisoformat`` (its basic YYYYMMDD form), not ``strptime``, whose first
call imports the ``_strptime`` module.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

DAY_PREFIX = "day-"
MONTH_PREFIX = "month-"
MINUTE_PREFIX = "minute-"


def day_key(day: date) -> str:
    """The key of one UTC day."""
    return f"{DAY_PREFIX}{day:%Y%m%d}"


def month_key(month: date) -> str:
    """The key of the UTC month of ``month`` (any day of it)."""
    return f"{MONTH_PREFIX}{month:%Y%m}"


def minute_key(at: datetime) -> str:
    """The key of the UTC minute of an instant."""
    return f"{MINUTE_PREFIX}{at.astimezone(UTC):%Y%m%d%H%M}"


def window_keys(now: datetime) -> tuple[str, str, str]:
    """(day, month, minute) window names for an instant (UTC)."""
    today = now.astimezone(UTC).date()
    return day_key(today), month_key(today), minute_key(now)


def day_of(key: str) -> date:
    """The day a ``day-YYYYMMDD`` key names."""
    return date.fromisoformat(key.removeprefix(DAY_PREFIX))


def month_of(key: str) -> date:
    """The first day of the month a ``month-YYYYMM`` key names."""
    return date.fromisoformat(key.removeprefix(MONTH_PREFIX) + "01")


def day_start(key: str) -> datetime:
    """Midnight (UTC) that starts the day a ``day-`` key names."""
    day = day_of(key)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
