"""Memory's request and response shapes, identifiers and errors (no I/O here)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sk_core.catalog import clean_text
from sk_core.errors import ApiError
from sk_core.pricing import Usage

# Scopes a tenant key needs: write (ingest, delete) and read (search, ask, list, jobs).
# A key with "*" has both.
WRITE_SCOPE = "memory:write"
READ_SCOPE = "memory:read"

# A collection name is part of our table keys and of the store's scope: a closed
# alphabet keeps both unambiguous (no '/', '|', '#', '?' or control characters).
COLLECTION_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
DOCUMENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
_CHUNK_NAMESPACE = uuid.UUID("5b1e4d0a-8f0e-4c59-9d3c-6a0f2f1b7e11")


# Texts as the catalog takes them: NFC, no control characters, no lone surrogates
# (which nothing downstream could encode again).
Text = Annotated[str, AfterValidator(clean_text)]
MetadataKey = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(clean_text)]
MetadataValue = Annotated[str, Field(max_length=1000), AfterValidator(clean_text)] | int | float | bool | None


class DocumentIn(BaseModel):
    """One document to ingest."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(
        pattern=DOCUMENT_ID_PATTERN, description="The caller's id; re-posting it replaces the document."
    )
    text: Text = Field(min_length=1, description="Plain text.")
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Flat key/value pairs returned with each of its chunks (at most 32).",
    )


class IngestRequest(BaseModel):
    """``POST /api/v1/collections/{collection}/documents``."""

    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn] = Field(min_length=1)


class JobAccepted(BaseModel):
    """The 202 answer to an ingestion."""

    job_id: str
    status: Literal["queued"] = "queued"


class JobStatus(BaseModel):
    """``GET /api/v1/jobs/{job_id}``."""

    job_id: str
    collection: str
    status: Literal["queued", "running", "succeeded", "failed"]
    documents: int
    chunks: int
    attempts: int = 0
    cost_usd: float = 0.0
    error: str | None = None


class SearchRequest(BaseModel):
    """``POST /api/v1/collections/{collection}/search``."""

    model_config = ConfigDict(extra="forbid")
    query: Text = Field(min_length=1, max_length=4000)
    top: int = Field(default=5, ge=1, le=50)


class SearchHit(BaseModel):
    """One chunk found, best first."""

    document_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    """The chunks nearest the query."""

    results: list[SearchHit]
    usage: Usage
    cost_usd: float


class AskRequest(BaseModel):
    """``POST /api/v1/collections/{collection}/ask``."""

    model_config = ConfigDict(extra="forbid")
    question: Text = Field(min_length=1, max_length=4000)
    top: int = Field(default=5, ge=1, le=20)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)


class Citation(BaseModel):
    """A chunk that was given to the model (screened and admitted into the prompt)."""

    document_id: str
    chunk_id: str
    score: float


class AskResponse(BaseModel):
    """The answer, its accounting and the chunks it was grounded on."""

    answer: str
    model: str
    usage: Usage = Field(description="The chat completion's tokens.")
    embedding_usage: Usage = Field(description="The question's embedding tokens.")
    finish_reason: str | None = None
    cost_usd: float = Field(description="Embedding plus chat, in USD.")
    redacted: int = 0
    citations: list[Citation]
    withheld: int = Field(default=0, description="Retrieved chunks the guard kept out of the prompt.")


class CollectionInfo(BaseModel):
    """One of the caller's collections."""

    name: str
    documents: int
    created_at: str


class CollectionList(BaseModel):
    """``GET /api/v1/collections``."""

    collections: list[CollectionInfo]


class VectorStoreUnavailable(ApiError):
    """The vector store did not answer: searches and answers wait, jobs retry."""

    status, code, title = 503, "vector_store_unavailable", "The vector store is unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__("The document store is unavailable; retry shortly.", retry_after=5)
        self.reason = reason


class EmbeddingsUnavailable(ApiError):
    """The embedding model did not answer."""

    status, code, title = 503, "embeddings_unavailable", "The embedding model is unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__("The embedding model is unavailable; retry shortly.", retry_after=5)
        self.reason = reason


class IngestQueueUnavailable(ApiError):
    """The ingestion queue could not take the job (nothing was stored or charged)."""

    status, code, title = 503, "ingest_queue_unavailable", "The ingestion queue is unavailable"

    def __init__(self, reason: str) -> None:
        super().__init__(
            "The ingestion queue is unavailable; nothing was queued. Retry shortly.", retry_after=5
        )
        self.reason = reason


def scope_of(tenant_id: str, collection: str) -> str:
    """The store's partition of one tenant's collection (tenant first: never shared)."""
    return f"{tenant_id}/{collection}"


def chunk_key(tenant_id: str, collection: str, document_id: str, index: int) -> str:
    """A chunk's key in the store: deterministic (a re-delivered job overwrites the same
    records) and different for every tenant, collection, document and position."""
    return uuid.uuid5(_CHUNK_NAMESPACE, f"{tenant_id}\x00{collection}\x00{document_id}\x00{index}").hex


def chunk_id(document_id: str, index: int) -> str:
    """The id a caller sees for a chunk (and a model cites)."""
    return f"{document_id}#{index}"


def content_hash(text: str) -> str:
    """SHA-256 of a text, hex (the embedding cache's key with the model)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
