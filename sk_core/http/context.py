"""One request's context: what the boundary and the route's handler share about it.

The boundary (``sk_core.http.boundary``) makes one ``RequestContext`` per request and
passes it to the handler as an argument, with the service; the handler fills in who
called (``authenticate``) and, for a streamed answer, how the stream failed after its
first byte; the boundary reads it back for the span, the metrics and the audit row.
Nothing travels on the Starlette request's own state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sk_core.accounts import Principal
    from sk_core.pipeline import Pipeline
    from sk_core.usage import AuditEntry


@dataclass(eq=False)
class RequestContext:
    """One request: its route, trace, caller, function, audit record and late failure."""

    route: str  # the route template, e.g. /api/v1/summarize
    trace_id: str | None  # the server span's trace, echoed in X-Trace-Id
    # The audit row being written as the request goes (audited routes only); the
    # pipeline fills in the charge, the guard verdict, the cache result.
    audit: AuditEntry | None = None
    principal: Principal | None = None  # the authenticated caller, once known
    function: str | None = None  # the catalog function it called (None: no function)
    # The error code of a streamed answer that failed after its first byte: the status
    # (200) is sent by then, so this is what the audit row records instead.
    stream_error: str | None = None

    async def authenticate(
        self, pipeline: Pipeline, headers: Mapping[str, str], function_id: str | None
    ) -> Principal:
        """The caller, allowed to call ``function_id`` (any function when None): from
        here on the span, the refusal metrics and the audit row name its tenant."""
        principal = await pipeline.authenticate(headers, function_id, self.audit)
        self.principal, self.function = principal, function_id
        return principal

    def tenant_attributes(self) -> dict[str, str]:
        """``sk.tenant`` for spans and metrics, once the caller is known."""
        return {"sk.tenant": self.principal.tenant.id} if self.principal is not None else {}
