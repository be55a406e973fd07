"""The window-key format: every key written parses back to its window, and keys sort as
their windows do (a day range is one RowKey range query; the sweep drops old minutes by
comparing keys)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import example, given
from hypothesis import strategies as st

from sk_core.limits import policy, window_keys
from sk_core.limits.windows import day_key, day_of, day_start, minute_key, month_key, month_of

INSTANTS = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.just(UTC)
)


def test_the_keys_of_an_instant() -> None:
    at = datetime(2025, 1, 31, 23, 59, 30, tzinfo=UTC)
    assert window_keys(at) == ("day-20250131", "month-202501", "minute-202501312359")
    # Another zone is the same instant: the windows are UTC.
    assert window_keys(at.astimezone(timezone(timedelta(hours=5)))) == window_keys(at)
    # The admission rules and the lease code read the same function through policy.
    assert policy.window_keys is window_keys


@given(INSTANTS)
@example(datetime(2024, 2, 29, 0, 0, tzinfo=UTC))
def test_every_key_parses_back_to_its_window(at: datetime) -> None:
    day, month, minute = window_keys(at)
    assert day_of(day) == at.date()
    assert month_of(month) == at.date().replace(day=1)
    assert day_start(day) == at.replace(hour=0, minute=0, second=0, microsecond=0)
    assert (day, month, minute) == (day_key(at.date()), month_key(at.date()), minute_key(at))


@given(INSTANTS, INSTANTS)
def test_keys_sort_as_their_windows(a: datetime, b: datetime) -> None:
    # Same-width digits after a fixed prefix: string order is time order.
    assert (day_key(a.date()) < day_key(b.date())) == (a.date() < b.date())
    assert (minute_key(a) < minute_key(b)) == (
        a.replace(second=0, microsecond=0) < b.replace(second=0, microsecond=0)
    )


def test_a_month_key_names_its_month_from_any_day() -> None:
    assert month_key(date(2025, 12, 31)) == "month-202512"
    assert month_of("month-202512") == date(2025, 12, 1)
