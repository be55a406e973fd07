"""Table Storage: clients, the one Azure-error translation, and entity helpers."""

from __future__ import annotations

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
    "update_op",
]
