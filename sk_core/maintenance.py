"""Scheduled work shared by both hosts: charging expired holds, purging old audit rows
and expired response-cache entries.

The Functions host runs ``sweep_expired_holds`` from a timer trigger; the container
host runs ``sweep_periodically`` as a background task. Several instances sweeping at
once is safe: each hold is charged by an ETag-conditional transaction, so exactly one
sweeper wins and the others find it gone.
"""

from __future__ import annotations

import asyncio
import logging

from sk_core.errors import StorageUnavailable
from sk_core.service import get_service

logger = logging.getLogger(__name__)


async def sweep_expired_holds() -> int:
    """Charge and flag every expired hold once; returns how many were charged."""
    service = get_service()
    try:
        charged = await service.ledger.expire_holds()
    except StorageUnavailable as exc:
        logger.warning("hold sweep skipped: %s", exc.reason)
        return 0
    await service.audit.purge()
    if service.cache is not None:
        try:
            await service.cache.purge_expired()
        except StorageUnavailable as exc:
            logger.warning("cache sweep skipped: %s", exc.reason)
    if charged:
        logger.warning("charged %d expired holds at their reserved amount (flagged for audit)", charged)
    return charged


async def sweep_periodically(interval_seconds: float) -> None:
    """Sweep forever (until cancelled at shutdown)."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await sweep_expired_holds()
        except Exception:
            logger.exception("hold sweep failed; retrying next interval")
