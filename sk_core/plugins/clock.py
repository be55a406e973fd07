"""Date and time arithmetic in a named time zone (IANA, ``zoneinfo``).

Wall-clock arithmetic: adding a day across a daylight-saving change keeps the local
time (09:00 stays 09:00), as a person means it; differences are between instants.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from semantic_kernel.functions import kernel_function

_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400, "weeks": 604800}
# Far enough for any calendar question; beyond it datetime overflows (year 9999).
_MAX_DAYS = 3_650_000


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; use an IANA name such as Europe/Paris") from None


def _moment(text: str, zone: ZoneInfo) -> datetime:
    """An ISO 8601 date or date-time; one without an offset is read in ``zone``."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or date-time: {text!r}") from None
    return parsed.replace(tzinfo=zone) if parsed.tzinfo is None else parsed


class ClockPlugin:
    """Dates and times in time zones."""

    def __init__(self, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._now = now  # injectable: tests and replays need a fixed "now"

    @kernel_function(name="now", description="The current date and time in an IANA time zone, as ISO 8601.")
    def now(self, timezone: Annotated[str, "IANA time zone name, e.g. Europe/Paris or UTC"] = "UTC") -> str:
        """The current time in ``timezone``."""
        return self._now().astimezone(_zone(timezone)).isoformat(timespec="seconds")

    @kernel_function(
        name="add",
        description="Add (or, with negative numbers, subtract) days, hours and minutes to a date-time "
        "in a time zone; the local wall-clock time is kept across daylight-saving changes.",
    )
    def add(
        self,
        start: Annotated[str, "ISO 8601 date or date-time; without an offset it is read in the time zone"],
        days: Annotated[int, "Days to add (negative to subtract)"] = 0,
        hours: Annotated[int, "Hours to add (negative to subtract)"] = 0,
        minutes: Annotated[int, "Minutes to add (negative to subtract)"] = 0,
        timezone: Annotated[str, "IANA time zone name"] = "UTC",
    ) -> str:
        """``start`` plus the duration, in ``timezone``."""
        zone = _zone(timezone)
        moment = _moment(start, zone).astimezone(zone)
        if abs(days) + abs(hours) // 24 + abs(minutes) // 1440 > _MAX_DAYS:
            raise ValueError("the duration is too large")
        # Arithmetic on the naive local time, then localised again: wall-clock semantics.
        try:
            local = moment.replace(tzinfo=None) + timedelta(days=days, hours=hours, minutes=minutes)
            return local.replace(tzinfo=zone).isoformat(timespec="seconds")
        except OverflowError:
            raise ValueError("the result is out of the supported range") from None

    @kernel_function(
        name="difference",
        description="The time from one date-time to another, in seconds, minutes, hours, days or weeks "
        "(negative when the end is earlier).",
    )
    def difference(
        self,
        start: Annotated[str, "ISO 8601 date or date-time"],
        end: Annotated[str, "ISO 8601 date or date-time"],
        unit: Annotated[str, "One of seconds, minutes, hours, days, weeks"] = "days",
        timezone: Annotated[str, "IANA time zone for values without an offset"] = "UTC",
    ) -> str:
        """``end - start`` in ``unit``."""
        if unit not in _UNITS:
            raise ValueError(f"unit must be one of {', '.join(_UNITS)}")
        zone = _zone(timezone)
        # In UTC: Python subtracts two datetimes of the same tzinfo as wall-clock times,
        # which would ignore a daylight-saving change between them.
        seconds = (_moment(end, zone).astimezone(UTC) - _moment(start, zone).astimezone(UTC)).total_seconds()
        value = seconds / _UNITS[unit]
        return f"{value:.6g} {unit}" if value != int(value) else f"{int(value)} {unit}"

    @kernel_function(name="convert", description="The same instant expressed in another time zone.")
    def convert(
        self,
        moment: Annotated[str, "ISO 8601 date-time; without an offset it is read in from_timezone"],
        to_timezone: Annotated[str, "IANA time zone to express it in"],
        from_timezone: Annotated[str, "IANA time zone of a value without an offset"] = "UTC",
    ) -> str:
        """``moment`` in ``to_timezone``."""
        return (
            _moment(moment, _zone(from_timezone)).astimezone(_zone(to_timezone)).isoformat(timespec="seconds")
        )

    @kernel_function(name="weekday", description="The day of the week of a date (Monday to Sunday).")
    def weekday(self, day: Annotated[str, "ISO 8601 date, e.g. 2026-12-24"]) -> str:
        """The English weekday name of ``day``."""
        try:
            return date.fromisoformat(day.strip()[:10]).strftime("%A")
        except ValueError:
            raise ValueError(f"not an ISO 8601 date: {day!r}") from None
