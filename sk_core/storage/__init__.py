"""Table Storage: clients, the one Azure-error translation, entity helpers, and an in-memory account."""

from __future__ import annotations

from sk_core.storage._batch import submit_bulk
from sk_core.storage._memory import MemoryAccount, MemoryTableStore, Operation
from sk_core.storage._tables import (
    Conflict,
    TableStore,
    delete_op,
    development_connection_string,
    etag_of,
    get_or_none,
    int64,
    query_partition,
    read_int,
    storage_errors,
    submit,
    update_op,
)

__all__ = [
    "Conflict",
    "MemoryAccount",
    "MemoryTableStore",
    "Operation",
    "TableStore",
    "delete_op",
    "development_connection_string",
    "etag_of",
    "get_or_none",
    "int64",
    "query_partition",
    "read_int",
    "storage_errors",
    "submit",
    "submit_bulk",
    "update_op",
]
