"""One call as the stages after screening see it, and what a failed call is charged."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sk_core.errors import ApiError
from sk_core.model import Chain

if TYPE_CHECKING:
    from sk_core.accounts import Principal
    from sk_core.catalog import FunctionSpec
    from sk_core.limits import Hold
    from sk_core.usage import AuditEntry

logger = logging.getLogger(__name__)
T = TypeVar("T")


# Failures after which the provider may still have done (and billed) the work keep
# their reserved charge: ``ApiError.billable`` (a timeout, a connection broken after
# sending, a 2xx without a usable answer); anything not an ApiError (a cancelled call)
# too. A refused connection, a 4xx/5xx/429 answer or a refusal before the call is free.
def _charge_on_failure(failure: BaseException, hold: Hold) -> int:
    return hold.amount_nano if not isinstance(failure, ApiError) or failure.billable else 0


@dataclass(frozen=True)
class _Call:
    """One call as the stages after screening see it."""

    principal: Principal
    spec: FunctionSpec
    arguments: dict[str, Any]
    requested: int  # the answer cap asked for, before the budget clamps it
    record: AuditEntry | None
    chain: Chain  # the model fallback chain it may use
    options: Mapping[str, Any] | None = None  # the caller's sampling settings, if any
