"""The chunk store: one Semantic Kernel vector collection, every tenant's chunks in it,
each record carrying its scope (``tenant/collection``), searched only within a scope.

The backend is a setting: the embedded SQLite collection (``_sqlite_store``) or Azure AI
Search through SK's own connector (one index for every tenant, the scope a filterable
field; SK turns the lambda filters into OData). Any failure of the backend becomes
``VectorStoreUnavailable`` (503 with Retry-After on the API; a retry for a job).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sk_core import telemetry
from sk_core.memory._records import VectorStoreUnavailable

if TYPE_CHECKING:
    from sk_core.settings import Settings

logger = logging.getLogger(__name__)
COLLECTION = "chunks"


@dataclass(frozen=True)
class Found:
    """One search result."""

    document_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, Any]


def definition(dimensions: int) -> Any:
    """The record model: key, scope and document (filterable), chunk data, the vector."""
    from semantic_kernel.data.vector import (
        DistanceFunction,
        VectorStoreCollectionDefinition,
        VectorStoreField,
    )

    return VectorStoreCollectionDefinition(
        fields=[
            VectorStoreField("key", name="key", type="str"),
            VectorStoreField("data", name="scope", type="str", is_indexed=True),
            VectorStoreField("data", name="document_id", type="str", is_indexed=True),
            VectorStoreField("data", name="chunk", type="int"),
            VectorStoreField("data", name="chunk_id", type="str"),
            VectorStoreField("data", name="text", type="str"),
            VectorStoreField("data", name="metadata", type="str"),
            VectorStoreField(
                "vector",
                name="vector",
                type="float",
                dimensions=dimensions,
                distance_function=DistanceFunction.COSINE_SIMILARITY,
            ),
        ]
    )


def _literal(value: str) -> str:
    # Filters are SK lambda source: values go in as Python literals, never spliced text.
    return repr(str(value))


class ChunkStore:
    """Upsert, search and delete chunks through an SK collection."""

    def __init__(self, collection: Any, *, system: str) -> None:
        self._collection = collection
        self._system = system  # db.system.name for spans
        self._ready = False

    async def _ensure(self) -> None:
        if not self._ready:
            await self._collection.ensure_collection_exists()
            self._ready = True

    def _span(self, operation: str) -> Any:
        return telemetry.tracer().start_as_current_span(
            f"{operation} {COLLECTION}",
            attributes={
                "db.system.name": self._system,
                "db.operation.name": operation,
                "db.collection.name": COLLECTION,
            },
        )

    async def ping(self) -> None:
        """Raise ``VectorStoreUnavailable`` unless the store answers."""
        try:
            await self._ensure()
            await self._collection.collection_exists()
        except Exception as exc:
            self._ready = False
            raise VectorStoreUnavailable(type(exc).__name__) from exc

    async def upsert(self, records: list[dict[str, Any]]) -> None:
        """Insert or replace chunk records (deterministic keys: a re-run overwrites)."""
        rows = [
            {
                **r,
                "metadata": json.dumps(r["metadata"], separators=(",", ":")),
                "vector": np.asarray(r["vector"]).tolist(),
            }
            for r in records
        ]
        with self._span("upsert"):
            try:
                await self._ensure()
                if rows:
                    await self._collection.upsert(rows)
            except Exception as exc:
                self._ready = False
                raise VectorStoreUnavailable(type(exc).__name__) from exc

    async def search(self, scope: str, vector: np.ndarray, top: int) -> list[Found]:
        """The ``top`` chunks of ``scope`` nearest ``vector``, best first."""
        with self._span("search") as span:
            try:
                await self._ensure()
                results = await self._collection.search(
                    vector=np.asarray(vector, dtype=np.float32).tolist(),
                    top=top,
                    filter=f"lambda r: r.scope == {_literal(scope)}",
                )
                found = [
                    Found(
                        document_id=r.record["document_id"],
                        chunk_id=r.record["chunk_id"],
                        text=r.record["text"],
                        score=round(float(r.score or 0.0), 6),
                        metadata=json.loads(r.record.get("metadata") or "{}"),
                    )
                    async for r in results.results
                    # The scope is also checked on what came back: isolation does not
                    # rest on the backend honouring the filter.
                    if r.record["scope"] == scope
                ]
            except Exception as exc:
                self._ready = False
                raise VectorStoreUnavailable(type(exc).__name__) from exc
            span.set_attribute("db.response.returned_rows", len(found))
        return found

    async def _delete(self, operation: Callable[[], Awaitable[Any]]) -> None:
        with self._span("delete"):
            try:
                await self._ensure()
                await operation()
            except Exception as exc:
                raise VectorStoreUnavailable(type(exc).__name__) from exc

    async def delete_keys(self, keys: list[str]) -> None:
        """Delete chunks by key."""
        if keys:
            await self._delete(lambda: self._collection.delete(keys))

    async def _delete_where(self, filter: str, keys: list[str]) -> None:
        # The embedded store deletes by filter (orphans included); SK's other collections
        # delete by key only: the keys the manifest knows.
        if hasattr(self._collection, "delete_where"):
            await self._delete(lambda: self._collection.delete_where(filter))
        else:
            await self.delete_keys(keys)

    async def delete_document(self, scope: str, document_id: str, keys: list[str]) -> None:
        """Delete every chunk of one document of a scope (``keys``: its chunks' keys)."""
        await self._delete_where(
            f"lambda r: r.scope == {_literal(scope)} and r.document_id == {_literal(document_id)}", keys
        )

    async def delete_scope(self, scope: str, keys: list[str]) -> None:
        """Delete every chunk of a scope, a tenant's collection (``keys``: its chunks' keys)."""
        await self._delete_where(f"lambda r: r.scope == {_literal(scope)}", keys)

    async def aclose(self) -> None:
        """Nothing to close for the embedded store (its connection is per process)."""


def make_chunk_store(settings: Settings, dimensions: int) -> ChunkStore:
    """The chunk store the settings select."""
    if settings.memory_store == "azure_ai_search":
        return ChunkStore(_azure_ai_search(settings, dimensions), system="azure_ai_search")
    from sk_core.memory._sqlite_store import SqliteCollection

    collection = SqliteCollection(
        definition=definition(dimensions), collection_name=COLLECTION, path=settings.memory_store_path
    )
    return ChunkStore(collection, system="sqlite")


def _azure_ai_search(settings: Settings, dimensions: int) -> Any:
    """SK's Azure AI Search collection over one index (key, or Entra ID when no key)."""
    from azure.core.credentials import AzureKeyCredential
    from semantic_kernel.connectors.azure_ai_search import AzureAISearchCollection

    key = settings.memory_search_key.get_secret_value()
    # SK 1.45 builds its index client from these keyword arguments (it ignores
    # ``search_credential`` there), so the credential goes in both ways.
    credentials: dict[str, Any]
    if key:
        credential: Any = AzureKeyCredential(key)
        credentials = {"azure_credentials": credential}
    else:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential()
        credentials = {"token_credentials": credential}
    return AzureAISearchCollection(
        record_type=dict,
        definition=definition(dimensions),
        collection_name=settings.memory_search_index,
        search_endpoint=settings.memory_search_endpoint,
        search_credential=credential,
        **credentials,
    )
