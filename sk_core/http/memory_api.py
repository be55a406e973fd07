"""HTTP handlers of the document memory (``sk_core.memory``): parse, call, render.

Routes (``sk_core.http.routes``): ingest (202 + Location of the job), job status,
search, ask (JSON, or Server-Sent Events with ``Accept: text/event-stream``), delete a
document, delete a collection, list collections. Write routes need the
``memory:write`` scope, the others ``memory:read`` (a ``*`` key has both).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from sk_core.errors import NotFound
from sk_core.http import sse
from sk_core.http.api_models import DependencyStatus, StreamDone
from sk_core.http.rendering import json_response
from sk_core.http.request_body import read_json_body, validate_body
from sk_core.http.sse import event_stream, wants_event_stream
from sk_core.http.streams import stream_headers, text_events
from sk_core.memory import (
    COLLECTION_PATTERN,
    DOCUMENT_ID_PATTERN,
    JOB_ID_PATTERN,
    AskRequest,
    IngestRequest,
    JobAccepted,
    Memory,
    SearchRequest,
    VectorStoreUnavailable,
    memory_for,
)
from sk_core.pricing import usd

if TYPE_CHECKING:
    from sk_core.accounts import Principal
    from sk_core.composition import Service
    from sk_core.http.context import RequestContext

BodyT = TypeVar("BodyT", bound=BaseModel)
_COLLECTION = re.compile(COLLECTION_PATTERN)
_DOCUMENT = re.compile(DOCUMENT_ID_PATTERN)
_JOB = re.compile(JOB_ID_PATTERN)


def _path(request: Request, name: str, pattern: re.Pattern[str], what: str) -> str:
    value = str(request.path_params.get(name, ""))
    if not pattern.match(value):
        # A malformed name cannot exist: 404 like any unknown one.
        raise NotFound(f"No such {what}.")
    return value


async def _caller(request: Request, memory: Memory, context: RequestContext, *, write: bool) -> Principal:
    principal = await memory.authenticate(request.headers, write=write, record=context.audit)
    context.principal = principal  # the span, refusal metrics and audit row name its tenant
    return principal


async def _collection_call(
    request: Request, service: Service, context: RequestContext, model: type[BodyT], *, write: bool
) -> tuple[Memory, Principal, str, BodyT]:
    """The memory, the caller, the collection named in the path and the validated body."""
    memory = memory_for(service)
    principal = await _caller(request, memory, context, write=write)
    collection = _path(request, "collection", _COLLECTION, "collection")
    body = validate_body(model, await read_json_body(request, max_bytes=service.settings.max_body_bytes))
    return memory, principal, collection, body


async def ingest(request: Request, service: Service, context: RequestContext) -> Response:
    """Queue documents for ingestion: 202, ``Location: /api/v1/jobs/{job_id}``."""
    memory, principal, collection, body = await _collection_call(
        request, service, context, IngestRequest, write=True
    )
    job = await memory.enqueue(principal, collection, body)
    return json_response(
        JobAccepted(job_id=job.job_id), status_code=202, headers={"Location": f"/api/v1/jobs/{job.job_id}"}
    )


async def job_status(request: Request, service: Service, context: RequestContext) -> Response:
    """An ingestion job of the caller's tenant."""
    memory = memory_for(service)
    principal = await _caller(request, memory, context, write=False)
    job_id = _path(request, "job_id", _JOB, "job")
    return json_response(await memory.job_status(principal, job_id))


async def search(request: Request, service: Service, context: RequestContext) -> Response:
    """The chunks nearest a query, best first."""
    memory, principal, collection, query = await _collection_call(
        request, service, context, SearchRequest, write=False
    )
    result = await memory.search(principal, collection, query)
    return json_response(result, headers={"X-Request-Cost-USD": f"{result.cost_usd:.9f}"})


async def ask(request: Request, service: Service, context: RequestContext) -> Response:
    """A grounded answer with citations (streams with ``Accept: text/event-stream``)."""
    memory, principal, collection, body = await _collection_call(
        request, service, context, AskRequest, write=False
    )
    record = context.audit
    if not wants_event_stream(request):
        answer = await memory.ask(principal, collection, body, record=record)
        return json_response(answer, headers={"X-Request-Cost-USD": f"{answer.cost_usd:.9f}"})
    given, withheld, embedded, embed_cost = await memory.retrieve_for_answer(principal, collection, body)
    call = await memory.open_answer_stream(principal, given, body.question, body.max_tokens, record)
    citations = [{"document_id": f.document_id, "chunk_id": f.chunk_id, "score": f.score} for f in given]

    async def events() -> AsyncIterator[bytes]:
        # The citations first (known before the model says anything), then the text,
        # then the accounting with the embedding's cost included.
        yield sse.event({"citations": citations, "withheld": withheld}, "citations")
        async for event in text_events(context, call):
            yield event
        if call.outcome is None:  # failed after the first byte: told in an error event
            return
        if record is not None:  # the audit row carries both charges, as for a JSON answer
            record.cost_nano += embed_cost
        done = StreamDone(**call.outcome.fields()).model_dump()
        done["cost_usd"] = usd(call.outcome.cost_nano + embed_cost)
        done["embedding_usage"] = {
            "prompt_tokens": embedded.tokens,
            "completion_tokens": 0,
            "total_tokens": embedded.tokens,
        }
        yield sse.event(done, "done")

    return event_stream(events(), stream_headers(call))


async def delete_document(request: Request, service: Service, context: RequestContext) -> Response:
    """Remove one document (all its chunks)."""
    memory = memory_for(service)
    principal = await _caller(request, memory, context, write=True)
    collection = _path(request, "collection", _COLLECTION, "collection")
    document_id = _path(request, "document_id", _DOCUMENT, "document")
    await memory.delete_document(principal, collection, document_id)
    return Response(status_code=204)


async def delete_collection(request: Request, service: Service, context: RequestContext) -> Response:
    """Remove a whole collection."""
    memory = memory_for(service)
    principal = await _caller(request, memory, context, write=True)
    collection = _path(request, "collection", _COLLECTION, "collection")
    await memory.delete_collection(principal.tenant.id, collection)
    return Response(status_code=204)


async def list_collections(request: Request, service: Service, context: RequestContext) -> Response:
    """The caller's collections."""
    memory = memory_for(service)
    principal = await _caller(request, memory, context, write=False)
    return json_response(await memory.collections(principal.tenant.id))


async def ready_checks(service: Service, timeout: float) -> dict[str, DependencyStatus]:  # noqa: ASYNC109
    """Readiness of the memory's vector store (``/api/ready``'s ``vector_store``)."""
    try:
        memory = memory_for(service)
        async with asyncio.timeout(timeout):
            await memory.store.ping()
    except (TimeoutError, VectorStoreUnavailable):
        return {"vector_store": DependencyStatus(status="error", code="vector_store_unavailable")}
    except Exception:
        return {"vector_store": DependencyStatus(status="error", code="memory_misconfigured")}
    return {"vector_store": DependencyStatus(status="ok")}
