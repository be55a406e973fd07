"""Usage over HTTP: the tenant's own usage, the operators' admin API and dashboard page.

- ``GET /api/v1/usage`` (tenant key): the caller's spend, holds and rates against its limits.
- ``GET /api/v1/admin/tenants[/{tenant_id}[/usage.csv]]`` (admin key; a tenant key is
  refused with 403): every tenant's usage, one tenant's charts, its CSV.
- ``GET /api/dashboard`` and ``/api/dashboard/{asset}`` (anonymous: static files with
  no data in them): the page asks the operator for an admin key and calls the admin API
  with it. Its scripts (ours and uPlot, shipped inside the package) come from this
  origin only, so its CSP is ``script-src 'self'`` and nothing else is allowed out.

Parse → read model (``sk_core.usage._read_model``) → render, like every handler.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sk_core.accounts import Tenant, TenantError, validate_tenant_id
from sk_core.composition import Service, get_service
from sk_core.errors import BadRequest, NotFound
from sk_core.http.rendering import DASHBOARD_CSP, json_response
from sk_core.usage import (
    CHART_DAYS,
    detail,
    last_days,
    overview_document,
    read_windows,
    usage_csv,
    usage_of,
)

STATIC = Path(__file__).parent / "static"
# The only files served, with their types: nothing else under STATIC (or beside it) is reachable.
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}


async def usage(request: Request) -> Response:
    """The caller's own usage: today's and this month's budget, this minute's rates, in flight."""
    service = get_service()
    principal = await service.pipeline.authenticate(request.headers, None)
    request.state.tenant_id = principal.tenant.id
    # Stored rows as they are: reporting this process's leases first would be a write
    # per poll (lag: at most SKF_LEASE_REPORT_SECONDS, as for every other instance).
    return json_response(await usage_of(service.ledger, principal.tenant, report_own_leases=False))


async def _operator(request: Request) -> Service:
    service = get_service()
    await service.auth.authenticate_admin(request.headers)
    return service


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


async def admin_tenants(request: Request) -> Response:
    """Every tenant with its usage now, nearest its budget first, with totals and charts."""
    service = await _operator(request)
    return _json(await overview_document(service.ledger, service.tenants))


async def admin_tenant(request: Request) -> Response:
    """One tenant: usage, per-minute and per-hour series, spend by day, calls, expired holds."""
    service = await _operator(request)
    tenant_id = _tenant_id(request)
    data = await detail(service.ledger, service.tenants, tenant_id, service.audit)
    if data is None:
        raise NotFound(f"No tenant {tenant_id}.")
    return _json(data)


async def admin_tenant_csv(request: Request) -> Response:
    """The tenant's last 30 days and this month as CSV (= ``admin usage T --days 30 --csv``)."""
    service = await _operator(request)
    tenant = await _tenant(service, request)
    now = datetime.now(UTC)
    entries = await read_windows(service.ledger, tenant, last_days(now, CHART_DAYS))
    filename = f"usage-{tenant.id}-{now:%Y%m%d}.csv"
    return Response(
        usage_csv(tenant.id, entries),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@functools.cache
def _file(name: str) -> bytes:
    return (STATIC / name).read_bytes()


async def page(request: Request) -> Response:
    """The dashboard page (static; its data comes from the admin API)."""
    return Response(
        _file("dashboard.html"),
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": DASHBOARD_CSP},
    )


async def asset(request: Request) -> Response:
    """One of the page's scripts or stylesheets."""
    name = request.path_params.get("asset", "")
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound("No such dashboard file.")
    return Response(_file(name), media_type=media_type)
