"""``GET /api/v1/usage`` (tenant key): the caller's spend, holds and rates against its limits.

Parse → read model (``sk_core.usage``, which also owns the response models) → render,
like every handler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from sk_core.http.rendering import json_response
from sk_core.usage import usage_of

if TYPE_CHECKING:
    from sk_core.composition import Service
    from sk_core.http.context import RequestContext


async def usage(request: Request, service: Service, context: RequestContext) -> Response:
    """The caller's own usage: today's and this month's budget, this minute's rates, in flight."""
    principal = await context.authenticate(service.pipeline, request.headers, None)
    # Stored rows as they are: reporting this process's leases first would be a write
    # per poll (lag: at most SKF_LEASE_REPORT_SECONDS, as for every other instance).
    return json_response(await usage_of(service.ledger, principal.tenant, report_own_leases=False))
