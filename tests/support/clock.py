"""Waiting for the wall clock where a test's calls must share one calendar minute."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime


async def inside_one_minute(seconds: float) -> None:
    """Wait, if need be, so that the next ``seconds`` fall inside one calendar minute:
    requests per minute are counted in calendar minutes, so a test that expects a 429
    from its third call must not have its calls straddle a minute's end."""
    now = datetime.now(UTC)
    if now.second + now.microsecond / 1e6 > 60 - seconds - 1:
        await asyncio.sleep(61 - now.second - now.microsecond / 1e6)
