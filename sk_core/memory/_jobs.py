"""An ingestion job's outcomes (retry later, poison) and its rendering for the API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sk_core.memory._records import (
    JobStatus,
)
from sk_core.memory._state import Job
from sk_core.pricing import usd

if TYPE_CHECKING:
    pass



class RetryLater(Exception):
    """A job failed for a reason that may pass (a dependency down, a rate limit)."""

    def __init__(self, code: str, delay: int = 5) -> None:
        super().__init__(code)
        self.code = code
        self.delay = delay


class PoisonMessage(Exception):
    """A message no retry can help (malformed, or naming no job)."""


def job_with_etag(stored: Job | None, job: Job) -> Job:
    """``job``'s new state over the stored row's ETag (for a conditional save)."""
    if stored is not None:
        job.etag = stored.etag
    return job


def render_job(job: Job) -> JobStatus:
    return JobStatus(
        job_id=job.job_id,
        collection=job.collection,
        status=job.status,  # type: ignore[arg-type]
        documents=job.documents,
        chunks=job.chunks,
        attempts=job.attempts,
        cost_usd=usd(job.cost_nano),
        error=job.error,
    )
