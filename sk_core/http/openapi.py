"""OpenAPI 3.1 document generated from the route table, the catalog and the schemas.

Generated rather than hand-written so it cannot drift from what the service does; it
is what API Management imports (``infra/``) and what the API fuzzer reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sk_core import __version__
from sk_core.catalog import Catalog
from sk_core.http.api_models import (
    ChatResponse,
    FunctionList,
    HealthResponse,
    InvokeResponse,
    Problem,
    ReadyResponse,
    SummarizeResponse,
)
from sk_core.http.openai_models import ChatCompletion, ChatCompletionRequest, ErrorBody, ModelList
from sk_core.http.rendering import PROBLEM_CONTENT_TYPE
from sk_core.http.routes import ROUTES, RouteSpec
from sk_core.http.sse import SSE_MEDIA_TYPE
from sk_core.usage import UsageResponse

if TYPE_CHECKING:
    from sk_core.composition import Service
    from sk_core.http.context import RequestContext

_REF = "#/components/schemas/{model}"

# Route name -> (request model source, 200 response model).
_RESPONSES: dict[str, type[BaseModel]] = {
    "summarize": SummarizeResponse,
    "chat": ChatResponse,
    "list_functions": FunctionList,
    "invoke_function": InvokeResponse,
    "health": HealthResponse,
    "ready": ReadyResponse,
    "chat_completions": ChatCompletion,
    "list_models": ModelList,
    "usage": UsageResponse,
}
_REQUEST_FUNCTIONS = {"summarize": ("text", "summarize"), "chat": ("chat", "chat")}
_REQUEST_MODELS: dict[str, type[BaseModel]] = {"chat_completions": ChatCompletionRequest}
_MODEL_ROUTES = {"summarize", "chat", "invoke_function", "chat_completions"}
_TENANT_ROUTES = _MODEL_ROUTES | {"list_functions", "list_models", "usage"}
_ADMIN_ROUTES = {"admin_tenants", "admin_tenant", "admin_tenant_csv"}
_STREAMS = {
    "summarize": "With `Accept: text/event-stream`: `delta` events (`{\"text\"}`), then one `done` "
    "event (usage, cost_usd, finish_reason, redactions) or one `error` event (problem+json).",
    "chat_completions": "With `stream: true`: OpenAI `chat.completion.chunk` events, the usage "
    "chunk when `stream_options.include_usage`, then `data: [DONE]`.",
}
_STREAMS["chat"] = _STREAMS["invoke_function"] = _STREAMS["summarize"]
# Non-JSON answers: (media types, description).
_OTHER_CONTENT = {
    "admin_tenant_csv": (("text/csv",), "The tenant's usage windows as CSV (USD and nano-USD columns)"),
    "dashboard": (("text/html",), "The dashboard page"),
    "dashboard_asset": (("text/javascript", "text/css"), "A script or stylesheet of the page"),
}
_PATH_PATTERNS = {
    "plugin": "^[A-Za-z0-9_-]+$",
    "function": "^[A-Za-z0-9_-]+$",
    "tenant_id": "^[a-z0-9][a-z0-9-]{1,62}$",
    "asset": "^[A-Za-z0-9._-]+$",
}
_NOT_FOUND = {
    "invoke_function": "No such function",
    "dashboard_asset": "No such file",
}
_ERRORS_WITH_BODY = {
    "400": "Malformed JSON, or the prompt was rejected by the injection guard (`prompt_rejected`)",
    "413": "Body over the size limit",
    "415": "Body is not application/json",
    "422": "Body failed validation; `errors` names the fields",
    "502": "The model provider failed",
    "503": "The model provider is rate limiting, or the service is not ready",
    "504": "The model did not answer within the deadline",
}


# Document memory (sk_core/memory): its routes' models, path parameters and statuses.
def _memory_routes() -> None:
    from sk_core import memory

    _RESPONSES.update(
        memory_ingest=memory.JobAccepted,
        memory_job=memory.JobStatus,
        memory_search=memory.SearchResponse,
        memory_ask=memory.AskResponse,
        memory_collections=memory.CollectionList,
    )
    _REQUEST_MODELS.update(
        memory_ingest=memory.IngestRequest, memory_search=memory.SearchRequest, memory_ask=memory.AskRequest
    )
    _TENANT_ROUTES.update(name for name, *_ in _MEMORY_ROUTES)
    _PATH_PATTERNS.update(
        collection=memory.COLLECTION_PATTERN,
        document_id=memory.DOCUMENT_ID_PATTERN,
        job_id=memory.JOB_ID_PATTERN,
    )
    _NOT_FOUND.update({name: text for name, text in _MEMORY_ROUTES})


_MEMORY_ROUTES = (
    ("memory_ingest", "No such collection name (malformed)"),
    ("memory_job", "No such job of this tenant"),
    ("memory_search", "No such collection of this tenant"),
    ("memory_ask", "No such collection of this tenant"),
    ("memory_delete_document", "No such document or collection of this tenant"),
    ("memory_delete_collection", "No such collection of this tenant"),
    ("memory_collections", "Not found"),
)
_SUCCESS_STATUS = {
    "memory_ingest": ("202", "Queued: poll the job named in Location"),
    "memory_delete_document": ("204", "Deleted"),
    "memory_delete_collection": ("204", "Deleted"),
}
_memory_routes()

def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}},
    }


def _openai_error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}},
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _document_model_route(operation: dict[str, Any], route_name: str) -> None:
    """A model route's extra request and answer headers: the response cache's
    (``sk_core.cache``) and model routing's (``sk_core.model._deployments``)."""
    parameters = operation.setdefault("parameters", [])
    if route_name != "chat_completions":  # there the request's ``model`` picks the chain
        parameters.append(
            {
                "name": "X-Model-Chain",
                "in": "header",
                "required": False,
                "description": "A configured model fallback chain to use instead of the function's "
                "(unknown: 400).",
                "schema": {"type": "string"},
            }
        )
    parameters.append(
        {
            "name": "Cache-Control",
            "in": "header",
            "required": False,
            "description": "For a function with the response cache on: `no-cache` forces a fresh "
            "answer (which is stored), `no-store` neither reads nor stores.",
            "schema": {"type": "string"},
        }
    )
    operation["responses"]["200"]["headers"] = {
        "X-Model-Deployment": {
            "description": "The deployment of the fallback chain that answered (its price was "
            "charged); absent on a cache hit.",
            "schema": {"type": "string"},
        },
        "X-Cache": {
            "description": "`hit` or `miss`, for a function with the response cache on.",
            "schema": {"type": "string", "enum": ["hit", "miss"]},
        },
        "Age": {
            "description": "On a hit: seconds since the cached answer was produced.",
            "schema": {"type": "integer", "minimum": 0},
        },
    }


def build_openapi(catalog: Catalog) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every route in ``ROUTES``."""
    models: list[tuple[type[BaseModel], Any]] = [(m, "serialization") for m in _RESPONSES.values()]
    models.append((Problem, "serialization"))
    models.append((ErrorBody, "serialization"))
    models.extend((model, "validation") for model in _REQUEST_MODELS.values())
    request_models = {
        route: catalog.get(*fn) for route, fn in _REQUEST_FUNCTIONS.items() if catalog.get(*fn) is not None
    }
    models.extend((spec.request_model, "validation") for spec in request_models.values() if spec)
    keys, components = models_json_schema(models, ref_template=_REF)

    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation = _operation(route, keys, request_models)
        if route.name in _MODEL_ROUTES:
            _document_model_route(operation, route.name)
        for method in route.methods:
            paths.setdefault(route.full_path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sk-functions",
            "version": __version__,
            "description": "Semantic Kernel prompt functions as HTTP APIs.",
        },
        "paths": paths,
        "components": {
            "schemas": components.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The same API key as a bearer token.",
                },
            },
        },
    }


def _operation(
    route: RouteSpec, keys: dict[Any, Any], request_models: dict[str, Any]
) -> dict[str, Any]:
    """One route's operation object; errors in the route's own shape."""
    error = _openai_error if route.errors == "openai" else _problem
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": [route.tag],
        "responses": {
            "200": _json(keys[(_RESPONSES.get(route.name, HealthResponse), "serialization")], "Success")
        },
    }
    if route.name in _TENANT_ROUTES:
        # The tenant's API key. (On Azure Functions the host also wants a function
        # key; API Management adds it from a named value, so clients never see it.)
        operation["security"] = [{"apiKey": []}, {"bearerAuth": []}]
        operation["responses"]["401"] = error("Missing, malformed, unknown or revoked API key")
        operation["responses"]["403"] = error(
            "The key may not call this function, or the tenant is disabled"
        )
        operation["responses"]["503"] = error("Usage limits or the model are unavailable")
    elif route.name in _ADMIN_ROUTES:
        # An operator key (``admin-key issue``), sent like a tenant key.
        operation["security"] = [{"apiKey": []}, {"bearerAuth": []}]
        operation["responses"]["200"] = _json({"type": "object"}, "Success")
        operation["responses"]["401"] = _problem("Missing, malformed, unknown or revoked admin key")
        operation["responses"]["403"] = _problem("A tenant key: only admin keys may call this")
        operation["responses"]["503"] = _problem("Storage is unavailable")
    else:
        operation["security"] = []
    if route.name in _OTHER_CONTENT:
        media_types, description = _OTHER_CONTENT[route.name]
        operation["responses"]["200"] = {
            "description": description,
            "content": {media_type: {"schema": {"type": "string"}} for media_type in media_types},
        }
    if route.name == "ready":
        operation["responses"]["503"] = _json(keys[(ReadyResponse, "serialization")], "Not ready")
    if route.name == "openapi":
        operation["responses"]["200"] = _json({"type": "object"}, "This document")
    if route.name in _MODEL_ROUTES:
        operation["responses"]["429"] = error(
            "A rate, token, concurrency or budget limit refused the request (see `code`, `Retry-After`)"
        )
        # The answer as it is generated: admitted (reserved, clamped) before the first
        # byte, so the status and RateLimit headers are final; failures after it are events.
        operation["responses"]["200"]["content"][SSE_MEDIA_TYPE] = {
            "schema": {"type": "string", "description": _STREAMS[route.name]}
        }
    if "POST" in route.methods:
        spec = request_models.get(route.name)
        own = _REQUEST_MODELS.get(route.name)
        schema: dict[str, Any] = (
            keys[(own, "validation")]
            if own is not None
            else keys[(spec.request_model, "validation")]
            if spec is not None
            else {
                "type": "object",
                "description": "The function's input variables (see GET /api/v1/functions), "
                "plus optional max_tokens.",
            }
        )
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        operation["responses"].update({code: error(text) for code, text in _ERRORS_WITH_BODY.items()})
    if route.name == "chat_completions":
        operation["responses"]["400"] = error(
            "Malformed JSON, an unsupported parameter (`unsupported_parameter`, named in `param`), "
            "or a prompt the injection guard rejected"
        )
        operation["responses"]["404"] = error("No such model, or this key may not use it")
    if route.name in _SUCCESS_STATUS:  # 202 Accepted, 204 No Content (document memory)
        status, description = _SUCCESS_STATUS[route.name]
        success = operation["responses"].pop("200")
        operation["responses"][status] = success if status != "204" else {"description": description}
    names = re.findall(r"\{(\w+)\}", route.path)
    if names:
        operation["parameters"] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": _PATH_PATTERNS[name]},
            }
            for name in names
        ]
        operation["responses"]["404"] = _problem(_NOT_FOUND.get(route.name, "No such tenant"))
    if "tenant_id" in names:
        operation["responses"]["400"] = _problem("Malformed tenant id")
    _document_host_refusals(operation, error)
    return operation


def _document_host_refusals(operation: dict[str, Any], error: Callable[[str], dict[str, Any]]) -> None:
    """The container host refuses a request its HTTP parser cannot read, or whose
    headers are too large, before any route runs (``sk_core.asgi``), in the error shape
    of the route the request named: any operation may answer them."""
    responses = operation["responses"]
    unparsable = "a request that is not valid HTTP (`malformed_http`, from the host before the route)"
    if "400" in responses:
        responses["400"]["description"] += f"; or {unparsable}"
    else:
        responses["400"] = error(unparsable[0].upper() + unparsable[1:])
    responses["431"] = error("Request line and headers over the host's limit (`headers_too_large`)")


async def openapi_document(request: Request, service: Service, context: RequestContext) -> Response:
    """``GET /api/openapi.json``."""
    return JSONResponse(build_openapi(service.catalog))
