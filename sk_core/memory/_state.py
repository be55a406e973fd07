"""Memory's bookkeeping in Table Storage: jobs, their documents, the document
manifest, collections and the embedding cache.

Every partition is bounded or keyed for point reads (Azurite scans a partition to find
a row, DESIGN.md section 7): a job's documents are one partition per job, a
collection's manifest one per tenant and collection, the embedding cache 256
partitions per model. Job transitions are ETag-conditional, so two deliveries of one
message cannot both move a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import UpdateMode

from sk_core.storage import etag_of, get_or_none, int64, read_int, storage_errors

if TYPE_CHECKING:
    from sk_core.storage import TableStore

JOBS_TABLE = "memjobs"
JOB_DOCS_TABLE = "memjobdocs"
DOCUMENTS_TABLE = "memdocs"
COLLECTIONS_TABLE = "memcollections"
EMBEDDINGS_TABLE = "memembeddings"
# A string property holds at most 64 KiB (32K UTF-16 characters): texts are split.
_PART_CHARS = 30_000


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _safe_key(value: str) -> str:
    # Table keys refuse '/', '\\', '#', '?': model names may carry '/'.
    return "".join("_" if c in "/\\#?" or ord(c) < 32 else c for c in value)


T = TypeVar("T")
# Table round trips a group of documents sends at once (one account, one connection pool).
_PARALLEL = 16


async def bounded_gather(calls: list[Awaitable[T]]) -> list[T]:
    """Await ``calls`` at most ``_PARALLEL`` at a time, results in order."""
    gate = asyncio.Semaphore(_PARALLEL)

    async def one(call: Awaitable[T]) -> T:
        async with gate:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


def _cache_partition(tenant_id: str, model: str, text_hash: str) -> str:
    # 256 partitions per tenant and model: bounded, and a point read finds its row fast.
    return f"{tenant_id}|{_safe_key(model)}|{text_hash[:2]}"


@dataclass
class Job:
    """A stored ingestion job."""

    tenant_id: str
    job_id: str
    collection: str
    key_id: str
    status: str
    documents: int
    chunks: int = 0
    attempts: int = 0
    cost_nano: int = 0
    error: str | None = None
    etag: str = ""

    @classmethod
    def from_entity(cls, entity: Any) -> Job:
        return cls(
            tenant_id=entity["PartitionKey"],
            job_id=entity["RowKey"],
            collection=entity["collection"],
            key_id=entity.get("key_id", ""),
            status=entity["status"],
            documents=read_int(entity.get("documents")),
            chunks=read_int(entity.get("chunks")),
            attempts=read_int(entity.get("attempts")),
            cost_nano=read_int(entity.get("cost_nano")),
            error=entity.get("error") or None,
            etag=etag_of(entity),
        )

    def entity(self) -> dict[str, Any]:
        return {
            "PartitionKey": self.tenant_id,
            "RowKey": self.job_id,
            "collection": self.collection,
            "key_id": self.key_id,
            "status": self.status,
            "documents": self.documents,
            "chunks": self.chunks,
            "attempts": self.attempts,
            "cost_nano": int64(self.cost_nano),
            "error": self.error or "",
            "updated_at": _now(),
        }


@dataclass
class JobDocument:
    """One document waiting in a job."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


class JobConflict(Exception):
    """Another delivery moved the job first."""


class MemoryState:
    """The tables, over the service's ``TableStore``."""

    def __init__(self, store: TableStore) -> None:
        self._store = store

    # -- jobs -------------------------------------------------------------------------
    async def create_job(self, job: Job, documents: list[JobDocument]) -> None:
        """The job's documents first, then the job row (a message names only a job that exists)."""
        docs = await self._store.table(JOB_DOCS_TABLE)
        with storage_errors("cannot store the job's documents"):
            for index, document in enumerate(documents):
                text = document.text
                parts = {
                    f"t{n}": text[i : i + _PART_CHARS] for n, i in enumerate(range(0, len(text), _PART_CHARS))
                }
                await docs.upsert_entity(
                    {
                        "PartitionKey": job.job_id,
                        "RowKey": f"{index:05d}",
                        "document_id": document.id,
                        "metadata": json.dumps(document.metadata, separators=(",", ":")),
                        "parts": len(parts),
                        **parts,
                    }
                )
        jobs = await self._store.table(JOBS_TABLE)
        with storage_errors("cannot store the job"):
            await jobs.create_entity(job.entity())

    async def job(self, tenant_id: str, job_id: str) -> Job | None:
        """The tenant's job, or None (another tenant's job is simply not in its partition)."""
        entity = await get_or_none(await self._store.table(JOBS_TABLE), tenant_id, job_id)
        return None if entity is None else Job.from_entity(entity)

    async def save_job(self, job: Job) -> Job:
        """Replace the job row if nobody moved it since it was read; raises ``JobConflict``."""
        jobs = await self._store.table(JOBS_TABLE)
        with storage_errors("cannot update the job"):
            try:
                meta = await jobs.update_entity(
                    job.entity(),
                    mode=UpdateMode.REPLACE,
                    etag=job.etag,
                    match_condition=MatchConditions.IfNotModified,
                )
            except (ResourceModifiedError, ResourceNotFoundError) as exc:
                raise JobConflict(job.job_id) from exc
        job.etag = str(meta["etag"])
        return job

    async def job_documents(self, job_id: str) -> list[JobDocument]:
        """The documents of a job, in the order they were posted."""
        docs = await self._store.table(JOB_DOCS_TABLE)
        found: list[JobDocument] = []
        with storage_errors("cannot read the job's documents"):
            async for entity in docs.query_entities("PartitionKey eq @pk", parameters={"pk": job_id}):
                text = "".join(entity.get(f"t{n}", "") for n in range(read_int(entity.get("parts"))))
                found.append(
                    JobDocument(entity["document_id"], text, json.loads(entity.get("metadata") or "{}"))
                )
        return found

    async def drop_job_documents(self, job_id: str) -> None:
        """A finished job's texts are not kept (the store has the chunks)."""
        docs = await self._store.table(JOB_DOCS_TABLE)
        with storage_errors("cannot delete the job's documents"):
            async for entity in docs.query_entities(
                "PartitionKey eq @pk", parameters={"pk": job_id}, select=["PartitionKey", "RowKey"]
            ):
                with contextlib.suppress(ResourceNotFoundError):
                    await docs.delete_entity(entity["PartitionKey"], entity["RowKey"])

    # -- documents and collections ----------------------------------------------------
    @staticmethod
    def _collection_partition(tenant_id: str, collection: str) -> str:
        return f"{tenant_id}|{collection}"

    async def document(self, tenant_id: str, collection: str, document_id: str) -> dict[str, Any] | None:
        """The manifest row of a stored document (its chunk count), or None."""
        table = await self._store.table(DOCUMENTS_TABLE)
        entity = await get_or_none(table, self._collection_partition(tenant_id, collection), document_id)
        return None if entity is None else dict(entity)

    async def put_document(
        self, tenant_id: str, collection: str, document_id: str, *, chunks: int, text_hash: str, job_id: str
    ) -> None:
        """Record what the store holds for a document (idempotent)."""
        table = await self._store.table(DOCUMENTS_TABLE)
        with storage_errors("cannot record the document"):
            await table.upsert_entity(
                {
                    "PartitionKey": self._collection_partition(tenant_id, collection),
                    "RowKey": document_id,
                    "chunks": chunks,
                    "text_hash": text_hash,
                    "job_id": job_id,
                    "updated_at": _now(),
                },
                mode=UpdateMode.REPLACE,
            )

    async def delete_document(self, tenant_id: str, collection: str, document_id: str) -> None:
        table = await self._store.table(DOCUMENTS_TABLE)
        with storage_errors("cannot delete the document"), contextlib.suppress(ResourceNotFoundError):
            await table.delete_entity(self._collection_partition(tenant_id, collection), document_id)

    async def documents(self, tenant_id: str, collection: str) -> dict[str, int]:
        """A collection's documents: id -> how many chunks it has in the store."""
        table = await self._store.table(DOCUMENTS_TABLE)
        found: dict[str, int] = {}
        with storage_errors("cannot list documents"):
            async for entity in table.query_entities(
                "PartitionKey eq @pk",
                parameters={"pk": self._collection_partition(tenant_id, collection)},
                select=["RowKey", "chunks"],
            ):
                found[entity["RowKey"]] = read_int(entity.get("chunks"))
        return found

    async def ensure_collection(self, tenant_id: str, collection: str) -> None:
        table = await self._store.table(COLLECTIONS_TABLE)
        with storage_errors("cannot record the collection"), contextlib.suppress(ResourceExistsError):
            await table.create_entity({"PartitionKey": tenant_id, "RowKey": collection, "created_at": _now()})

    async def collection_exists(self, tenant_id: str, collection: str) -> bool:
        table = await self._store.table(COLLECTIONS_TABLE)
        return await get_or_none(table, tenant_id, collection) is not None

    async def collections(self, tenant_id: str) -> list[tuple[str, str]]:
        """(name, created_at) of the tenant's collections."""
        table = await self._store.table(COLLECTIONS_TABLE)
        found: list[tuple[str, str]] = []
        with storage_errors("cannot list collections"):
            async for entity in table.query_entities("PartitionKey eq @pk", parameters={"pk": tenant_id}):
                found.append((entity["RowKey"], entity.get("created_at", "")))
        return found

    async def delete_collection(self, tenant_id: str, collection: str) -> None:
        table = await self._store.table(COLLECTIONS_TABLE)
        with storage_errors("cannot delete the collection"), contextlib.suppress(ResourceNotFoundError):
            await table.delete_entity(tenant_id, collection)

    # -- embedding cache --------------------------------------------------------------
    # Per tenant, not shared: a shared cache would tell a tenant (by a zero cost) that
    # another tenant had ingested exactly this text.
    async def cached_vectors(self, tenant_id: str, model: str, hashes: list[str]) -> dict[str, np.ndarray]:
        """The cached embeddings among ``hashes`` (point reads; a miss is simply absent)."""
        table = await self._store.table(EMBEDDINGS_TABLE)
        unique = list(dict.fromkeys(hashes))
        entities = await bounded_gather(
            [get_or_none(table, _cache_partition(tenant_id, model, h), h) for h in unique]
        )
        return {
            h: np.frombuffer(bytes(entity["v"]), dtype=np.float32)
            for h, entity in zip(unique, entities, strict=True)
            if entity is not None
        }

    async def cache_vectors(self, tenant_id: str, model: str, vectors: dict[str, np.ndarray]) -> None:
        """Keep embeddings by model and content hash (upserts: the same text, the same vector)."""
        table = await self._store.table(EMBEDDINGS_TABLE)
        with storage_errors("cannot write the embedding cache"):
            await bounded_gather(
                [
                    table.upsert_entity(
                        {
                            "PartitionKey": _cache_partition(tenant_id, model, text_hash),
                            "RowKey": text_hash,
                            "v": np.asarray(vector, dtype=np.float32).tobytes(),
                            "at": int(time.time()),
                        }
                    )
                    for text_hash, vector in vectors.items()
                ]
            )
