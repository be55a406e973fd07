"""The operators' usage dashboard: ``GET /api/dashboard`` and ``/api/dashboard/{asset}``.

Anonymous: static files with no data in them. The page asks the operator for an admin
key and calls the admin API (``sk_core.http.admin_api``) with it. Its scripts (ours and
uPlot, shipped inside the package) come from this origin only, so its CSP is
``script-src 'self'`` and nothing else is allowed out.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from sk_core.errors import NotFound
from sk_core.http.rendering import DASHBOARD_CSP

if TYPE_CHECKING:
    from sk_core.composition import Service
    from sk_core.http.context import RequestContext

STATIC = Path(__file__).parent / "static"
# The only files served, with their types: nothing else under STATIC (or beside it) is reachable.
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}


@functools.cache
def _file(name: str) -> bytes:
    return (STATIC / name).read_bytes()


async def page(request: Request, service: Service, context: RequestContext) -> Response:
    """The dashboard page (static; its data comes from the admin API)."""
    return Response(
        _file("dashboard.html"),
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": DASHBOARD_CSP},
    )


async def asset(request: Request, service: Service, context: RequestContext) -> Response:
    """One of the page's scripts or stylesheets."""
    name = request.path_params.get("asset", "")
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound("No such dashboard file.")
    return Response(_file(name), media_type=media_type)
