"""A tenant's collections: listed with their document counts, removed with their chunks
(the API and the admin CLI)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sk_core.memory._records import (
    CollectionInfo,
    chunk_key,
    scope_of,
)
from sk_core.memory._state import MemoryState, bounded_gather
from sk_core.memory._vectors import ChunkStore

if TYPE_CHECKING:
    pass



async def list_collections(state: MemoryState, tenant_id: str) -> list[CollectionInfo]:
    """A tenant's collections with their document counts (the API and the admin CLI)."""
    items = []
    for name, created in await state.collections(tenant_id):
        count = len(await state.documents(tenant_id, name))
        items.append(CollectionInfo(name=name, documents=count, created_at=created))
    return items


async def remove_collection(state: MemoryState, store: ChunkStore, tenant_id: str, collection: str) -> int:
    """Delete a collection's chunks, manifest and row (the API and the admin CLI);
    how many documents it held. The chunks go first: a failure leaves the rows, so
    the collection stays listed and the delete can be repeated."""
    documents = await state.documents(tenant_id, collection)
    keys = [key for d, chunks in documents.items() for key in chunk_keys(tenant_id, collection, d, chunks)]
    await store.delete_scope(scope_of(tenant_id, collection), keys)
    await bounded_gather([state.delete_document(tenant_id, collection, d) for d in documents])
    await state.delete_collection(tenant_id, collection)
    return len(documents)


def chunk_keys(tenant_id: str, collection: str, document_id: str, chunks: int) -> list[str]:
    return [chunk_key(tenant_id, collection, document_id, i) for i in range(chunks)]
