"""What a call produced and cost, as the handlers render it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sk_core.errors import RateState
from sk_core.pricing import usd

if TYPE_CHECKING:
    from sk_core.cache import CachedAnswer
    from sk_core.limits import Hold
    from sk_core.model import Completion
    from sk_core.tools import RunReport


@dataclass(frozen=True)
class Outcome:
    """What a successful call produced and cost."""

    completion: Completion | CachedAnswer
    text: str  # the answer after output redaction
    redactions: dict[str, int]
    cost_nano: int
    rate: RateState  # the requests-per-minute window after this admission
    clamped: bool = False  # the budget lowered max_tokens: not the answer others would get
    cache: str | None = None  # "hit" or "miss" for a cacheable function (X-Cache), else None
    age: int = 0  # seconds since a cached answer was produced (Age)
    run: RunReport | None = None  # a tool run's steps, tool calls and outcome (sk_core.tools)

    @property
    def deployment(self) -> str | None:
        """The deployment of the fallback chain that answered (and set the price
        charged); None for a cache hit, which called none."""
        return getattr(self.completion, "deployment", None)

    def fields(self) -> dict[str, Any]:
        """The members every function response carries besides its answer."""
        completion = self.completion
        return {
            "model": completion.model,
            "usage": completion.usage,
            "finish_reason": completion.finish_reason,
            "cost_usd": usd(self.cost_nano),
            "redacted": sum(self.redactions.values()),
            "redactions": self.redactions,
            "cached": self.cache == "hit",
            **({"run": {**self.run.public(), "cost_usd": usd(self.cost_nano)}} if self.run else {}),
        }


def rate_of(hold: Hold) -> RateState:
    """The requests-per-minute window after ``hold``'s admission (the RateLimit headers)."""
    return RateState(limit=hold.rpm_limit, remaining=hold.rpm_remaining, reset=hold.rpm_reset)
