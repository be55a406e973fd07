"""The operators' admin API (admin key; a tenant key is refused with 403).

- ``GET /api/v1/admin/tenants``: every tenant with its usage now (the dashboard's table).
- ``GET /api/v1/admin/tenants/{tenant_id}``: one tenant's usage, series, calls, expired holds.
- ``GET /api/v1/admin/tenants/{tenant_id}/usage.csv``: its last 30 days and this month.

Parse → read model (``sk_core.usage``) → render, like every handler. The dashboard page
(``sk_core.http.dashboard``) calls these with the key its operator types in.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from sk_core.accounts import Tenant, TenantError, validate_tenant_id
from sk_core.errors import BadRequest, NotFound
from sk_core.usage import CHART_DAYS, detail, last_days, overview_document, read_windows, usage_csv

if TYPE_CHECKING:
    from sk_core.composition import Service
    from sk_core.http.context import RequestContext


def _tenant_id(request: Request) -> str:
    try:
        return validate_tenant_id(request.path_params.get("tenant_id", ""))
    except TenantError as exc:
        raise BadRequest(f"Invalid tenant id: {exc}.") from None


async def _tenant(service: Service, request: Request) -> Tenant:
    tenant_id = _tenant_id(request)
    tenant = await service.tenants.get_tenant(tenant_id)
    if tenant is None:
        raise NotFound(f"No tenant {tenant_id}.")
    return tenant


def _json(data: Any) -> Response:
    return Response(json.dumps(data, separators=(",", ":")), media_type="application/json")


async def admin_tenants(request: Request, service: Service, context: RequestContext) -> Response:
    """Every tenant with its usage now, nearest its budget first, with totals and charts."""
    await service.auth.authenticate_admin(request.headers)
    return _json(await overview_document(service.ledger, service.tenants))


async def admin_tenant(request: Request, service: Service, context: RequestContext) -> Response:
    """One tenant: usage, per-minute and per-hour series, spend by day, calls, expired holds."""
    await service.auth.authenticate_admin(request.headers)
    tenant_id = _tenant_id(request)
    data = await detail(service.ledger, service.tenants, tenant_id, service.audit)
    if data is None:
        raise NotFound(f"No tenant {tenant_id}.")
    return _json(data)


async def admin_tenant_csv(request: Request, service: Service, context: RequestContext) -> Response:
    """The tenant's last 30 days and this month as CSV (= ``admin usage T --days 30 --csv``)."""
    await service.auth.authenticate_admin(request.headers)
    tenant = await _tenant(service, request)
    now = datetime.now(UTC)
    entries = await read_windows(service.ledger, tenant, last_days(now, CHART_DAYS))
    filename = f"usage-{tenant.id}-{now:%Y%m%d}.csv"
    return Response(
        usage_csv(tenant.id, entries),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
