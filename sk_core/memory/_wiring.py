"""Memory's parts, built once per process from the service context's collaborators."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING

from sk_core.memory._collections import list_collections, remove_collection
from sk_core.memory._embedder import Tokenizer, make_embedder
from sk_core.memory._queue import IngestQueue, queue_account_url, queue_connection_string
from sk_core.memory._records import CollectionInfo
from sk_core.memory._service import Memory
from sk_core.memory._state import MemoryState
from sk_core.memory._vectors import ChunkStore, make_chunk_store

if TYPE_CHECKING:
    from sk_core.composition import Service
    from sk_core.settings import Settings
    from sk_core.storage import TableStore

logger = logging.getLogger(__name__)
_built: weakref.WeakKeyDictionary[Service, Memory] = weakref.WeakKeyDictionary()


def make_memory(service: Service) -> Memory:
    """A ``Memory`` over ``service``'s storage, ledger, tenants, guard and pipeline."""
    settings = service.settings
    embedder = make_embedder(settings)
    catalog = service.catalog

    def answer_spec() -> object:
        spec = catalog.get("chat", "chat")
        if spec is None:
            raise RuntimeError("the catalog has no chat/chat function, which ask answers with")
        return spec

    return Memory(
        settings=settings,
        state=MemoryState(service.store),
        queue=make_queue(settings),
        store=make_chunk_store(settings, embedder.dimensions),
        embedder=embedder,
        tokenizer=Tokenizer(),
        ledger=service.ledger,
        tenants=service.tenants,
        guard=service.guard,
        pipeline=service.pipeline,
        answer_spec=answer_spec,  # type: ignore[arg-type]
    )


def make_queue(settings: Settings) -> IngestQueue:
    """The ingestion queue: its own connection string, else the storage account's (its
    connection string, or with a managed-identity endpoint the same account's queue
    endpoint, as the Functions host reaches AzureWebJobsStorage__accountName)."""
    own = settings.memory_queue_connection_string.get_secret_value()
    if not own and settings.storage_account_endpoint:
        account_url = queue_account_url(settings.storage_account_endpoint)
        return IngestQueue(None, settings.memory_queue_name, account_url=account_url)
    raw = own or settings.storage_connection_string.get_secret_value()
    return IngestQueue(queue_connection_string(raw), settings.memory_queue_name)


def memory_for(service: Service) -> Memory:
    """The process's ``Memory`` for ``service`` (built on first use)."""
    memory = _built.get(service)
    if memory is None:
        memory = _built[service] = make_memory(service)
    return memory


async def handle_queue_message(service: Service, content: str, dequeue_count: int) -> None:
    """The Functions queue trigger's body (see ``_worker.handle_message``)."""
    from sk_core.memory._worker import handle_message

    await handle_message(memory_for(service), content, dequeue_count)


def start_worker(service: Service) -> asyncio.Task[None] | None:
    """The container host's ingestion worker, or None when it is off or has no queue."""
    from sk_core.memory._worker import run_worker

    if not service.settings.memory_worker:
        return None
    try:
        memory = memory_for(service)
    except Exception:
        # The API routes answer what is wrong; the rest of the service keeps serving.
        logger.exception("document memory could not be set up; its ingestion worker is not running")
        return None
    if not memory.queue.configured:
        logger.info("no ingestion queue configured: the memory worker is not running")
        return None
    return asyncio.get_running_loop().create_task(run_worker(memory))


def _admin_parts(settings: Settings, table_store: TableStore) -> tuple[MemoryState, ChunkStore]:
    from sk_core.memory._embedder import LOCAL_DIMENSIONS

    # Deleting by scope and listing never embed: the dimensions only shape the record model.
    return MemoryState(table_store), make_chunk_store(settings, LOCAL_DIMENSIONS)


async def tenant_collections(
    settings: Settings, table_store: TableStore, tenant_id: str
) -> list[CollectionInfo]:
    """A tenant's collections (the admin CLI)."""
    state, _ = _admin_parts(settings, table_store)
    return await list_collections(state, tenant_id)


async def purge_collections(
    settings: Settings, table_store: TableStore, tenant_id: str, collection: str | None = None
) -> dict[str, int]:
    """Delete one or every collection of a tenant (the admin CLI); documents per collection."""
    state, store = _admin_parts(settings, table_store)
    names = [collection] if collection else [c.name for c in await list_collections(state, tenant_id)]
    return {name: await remove_collection(state, store, tenant_id, name) for name in names}
