"""Running ingestion jobs from the queue: the same job code under both hosts.

- Functions host: the queue trigger (``function_app.py``) calls ``handle_message`` with
  the message text and its dequeue count. A raised exception makes the host retry the
  message (after host.json's ``visibilityTimeout``) and, after ``maxDequeueCount``
  deliveries, move it to ``<queue>-poison``.
- Container host: ``run_worker`` polls the queue and does the same by hand: delete on
  success, a growing visibility timeout on a retryable failure (the backoff), and the
  poison queue after ``SKF_MEMORY_MAX_ATTEMPTS`` deliveries or for a message no retry
  can help.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from sk_core.memory._jobs import PoisonMessage, RetryLater
from sk_core.memory._queue import Delivery, QueueUnavailable

if TYPE_CHECKING:
    from sk_core.memory._service import Memory

logger = logging.getLogger(__name__)
# The container worker's visibility timeout while it runs a job, and the longest backoff.
_LEASE_SECONDS = 300
_MAX_BACKOFF_SECONDS = 300


def parse_message(content: str) -> tuple[str, str]:
    """(tenant id, job id) of a message; ``PoisonMessage`` if it is not one of ours."""
    try:
        data = json.loads(content)
        tenant, job = data["tenant"], data["job"]
    except (ValueError, TypeError, KeyError) as exc:
        raise PoisonMessage("not an ingestion message") from exc
    if not isinstance(tenant, str) or not isinstance(job, str) or not tenant or not job:
        raise PoisonMessage("not an ingestion message")
    return tenant, job


def backoff(attempt: int, base: int = 5) -> int:
    """Seconds before delivery ``attempt + 1``: 5, 10, 20, 40 ... capped at 5 minutes."""
    return int(min(_MAX_BACKOFF_SECONDS, base * 2 ** max(0, attempt - 1)))


async def handle_message(memory: Memory, content: str, dequeue_count: int) -> None:
    """The queue trigger's body. Returns normally when the message is done with
    (succeeded, failed for good, or malformed: that one is moved to the poison queue
    at once, no retry can help); raises to have the host deliver it again."""
    final = dequeue_count >= memory.settings.memory_max_attempts
    try:
        tenant, job = parse_message(content)
        await memory.run_job(tenant, job, attempt=dequeue_count, final=final)
    except PoisonMessage as exc:
        logger.error("ingestion message poisoned: %s", exc)
        await memory.queue.poison(content)
    except RetryLater as exc:
        logger.warning("ingestion job will be retried (delivery %d): %s", dequeue_count, exc.code)
        raise


async def process_delivery(memory: Memory, delivery: Delivery) -> str:
    """One delivery in the container worker; what became of it (for logs and tests)."""
    try:
        await handle_message(memory, delivery.content, delivery.dequeue_count)
    except RetryLater as exc:
        if delivery.dequeue_count >= memory.settings.memory_max_attempts:
            await memory.queue.poison(delivery.content)
            await memory.queue.delete(delivery)
            return "poisoned"
        await memory.queue.delay(delivery, max(exc.delay, backoff(delivery.dequeue_count)))
        return "retrying"
    await memory.queue.delete(delivery)
    return "done"


async def drain(memory: Memory, *, limit: int = 8) -> int:
    """Process what is waiting now; how many deliveries were handled."""
    deliveries = await memory.queue.receive(limit=limit, visibility_timeout=_LEASE_SECONDS)
    for delivery in deliveries:
        try:
            await process_delivery(memory, delivery)
        except QueueUnavailable as exc:
            # The message reappears after its visibility timeout and is delivered again.
            logger.warning("ingestion message %s left for redelivery: %s", delivery.id, exc)
        except Exception:
            logger.exception("ingestion message %s failed unexpectedly; left for redelivery", delivery.id)
    return len(deliveries)


async def run_worker(memory: Memory, *, idle_seconds: float = 1.0) -> None:
    """Poll forever (until cancelled at shutdown); back off while the queue is down."""
    quiet = idle_seconds
    warned = False
    while True:
        try:
            handled = await drain(memory)
            warned = False
            quiet = 0 if handled else idle_seconds
        except QueueUnavailable as exc:
            if not warned:  # once per outage, not once per poll
                logger.warning("ingestion queue unavailable: %s", exc)
                warned = True
            quiet = min(30.0, max(idle_seconds, quiet * 2))
        await asyncio.sleep(quiet)
