"""Document memory: tenant collections in a vector store, ingestion as queued jobs,
answers with citations (issue 24).

- ``_records``: request/response shapes, scopes, identifiers, errors.
- ``_chunking``: token windows with overlap.
- ``_embedder``: all-MiniLM-L6-v2 in process (ONNX) or the provider's embeddings.
- ``_sqlite_store``: the embedded, persistent Semantic Kernel vector collection.
- ``_vectors``: the chunk store over an SK collection (scope-filtered).
- ``_state``: jobs, documents, collections and the embedding cache in Table Storage.
- ``_queue``: the Azure Storage ingestion queue.
- ``_service``: ``Memory``, the use cases; ``_worker``: the queue consumer of both hosts;
  ``_wiring``: building it from the service context.
"""

from sk_core.memory._embedder import LOCAL_DIMENSIONS, LOCAL_MODEL, Embedded, LocalEmbedder, Tokenizer
from sk_core.memory._jobs import PoisonMessage, RetryLater
from sk_core.memory._queue import IngestQueue, QueueUnavailable, development_queue_connection_string
from sk_core.memory._records import (
    COLLECTION_PATTERN,
    DOCUMENT_ID_PATTERN,
    JOB_ID_PATTERN,
    READ_SCOPE,
    WRITE_SCOPE,
    AskRequest,
    AskResponse,
    CollectionList,
    IngestRequest,
    JobAccepted,
    JobStatus,
    SearchRequest,
    SearchResponse,
    VectorStoreUnavailable,
)
from sk_core.memory._service import Memory
from sk_core.memory._wiring import (
    handle_queue_message,
    make_memory,
    memory_for,
    purge_collections,
    start_worker,
    tenant_collections,
)
from sk_core.memory._worker import backoff, drain, handle_message, process_delivery

__all__ = [
    "COLLECTION_PATTERN",
    "DOCUMENT_ID_PATTERN",
    "JOB_ID_PATTERN",
    "LOCAL_DIMENSIONS",
    "LOCAL_MODEL",
    "READ_SCOPE",
    "WRITE_SCOPE",
    "AskRequest",
    "AskResponse",
    "CollectionList",
    "Embedded",
    "IngestQueue",
    "IngestRequest",
    "JobAccepted",
    "JobStatus",
    "LocalEmbedder",
    "Memory",
    "PoisonMessage",
    "QueueUnavailable",
    "RetryLater",
    "SearchRequest",
    "SearchResponse",
    "Tokenizer",
    "VectorStoreUnavailable",
    "backoff",
    "development_queue_connection_string",
    "drain",
    "handle_message",
    "handle_queue_message",
    "make_memory",
    "memory_for",
    "process_delivery",
    "purge_collections",
    "start_worker",
    "tenant_collections",
]
