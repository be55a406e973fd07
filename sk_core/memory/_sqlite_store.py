# ruff: noqa: S608  (SQL text interpolates only our own table name and "?" placeholders;
# every value is a bound parameter)
"""An embedded, persistent vector store behind Semantic Kernel's collection API.

Semantic Kernel 1.45's embedded options did not fit (measured on this machine, 384-dim
vectors, README *Document memory*): Qdrant's local mode pickles each point into SQLite
(10,000 upserts in ~57 s) and evaluates payload filters in Python (search with a
tenant filter ~430 ms at 10,000 points), and it locks its folder to one process; the
in-memory collection does not persist. So this is a small SK connector of our own:
``SqliteCollection`` is a ``VectorStoreCollection`` + ``VectorSearch`` over one SQLite
table (stdlib, WAL, safe across the processes of one machine), searched exactly with
numpy over the rows of one scope, whose matrix is cached until a write changes it.

Filters are SK's lambda strings, restricted to ``r.<indexed field> == '<literal>'``
joined by ``and`` (or given as a list): they become SQL ``WHERE`` terms with bound
parameters, and a search must name the ``scope`` field (tenant isolation never rests on
a filter being remembered: an unscoped search is refused).
"""

from __future__ import annotations

import ast
import asyncio
import json
import sqlite3
import threading
from collections.abc import AsyncIterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from semantic_kernel.data.vector import (
    GetFilteredRecordOptions,
    SearchType,
    VectorSearch,
    VectorSearchOptions,
    VectorStoreCollection,
)
from semantic_kernel.exceptions import VectorStoreOperationException
from semantic_kernel.kernel_types import OneOrMany

SCORE_KEY = "_score"
SCOPE_FIELD = "scope"
DOCUMENT_FIELD = "document_id"
# Columns of their own (indexed, filterable); every other data field lives in ``payload``.
_COLUMNS = (SCOPE_FIELD, DOCUMENT_FIELD)


class _Database:
    """One SQLite connection per process and file, used from worker threads one at a time."""

    _open: ClassVar[dict[str, _Database]] = {}
    _open_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: calls come from asyncio.to_thread, serialised by the lock.
        self.connection = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")
        self.lock = threading.Lock()
        # scope -> (keys, matrix); dropped on our own writes to the scope, and all of it
        # when another process has committed (PRAGMA data_version moved).
        self.matrices: dict[tuple[str, str], tuple[list[str], np.ndarray]] = {}
        self.data_version = -1

    @classmethod
    def get(cls, path: str) -> _Database:
        with cls._open_lock:
            database = cls._open.get(path)
            if database is None:
                database = cls._open[path] = cls(path)
            return database

    @classmethod
    def forget(cls, path: str) -> None:
        with cls._open_lock:
            database = cls._open.pop(path, None)
        if database is not None:
            database.connection.close()

    def check_foreign_writes(self) -> None:
        version = int(self.connection.execute("PRAGMA data_version").fetchone()[0])
        if version != self.data_version:
            self.matrices.clear()
            self.data_version = version


def _where(terms: Sequence[tuple[str, str]]) -> tuple[str, list[str]]:
    sql = " AND ".join(f"{column} = ?" for column, _ in terms)
    return sql, [value for _, value in terms]


class SqliteCollection(VectorStoreCollection[str, dict], VectorSearch[str, dict]):  # type: ignore[type-arg]
    """A Semantic Kernel collection stored in one table of a SQLite file."""

    path: str
    supported_key_types: ClassVar[set[str] | None] = {"str"}
    supported_search_types: ClassVar[set[SearchType]] = {SearchType.VECTOR}

    def __init__(self, *, path: str, **kwargs: Any) -> None:
        super().__init__(record_type=dict, path=path, **kwargs)  # type: ignore[call-arg]

    # -- plumbing -------------------------------------------------------------------
    @property
    def _table(self) -> str:
        # The name is ours (settings), never a caller's: still, quote it.
        return '"' + self.collection_name.replace('"', "") + '"'

    def _vector_field(self) -> Any:
        field = self.definition.try_get_vector_field(None)
        if field is None:
            raise VectorStoreOperationException("the collection has no vector field")
        return field

    async def _run(self, work: Any, *args: Any) -> Any:
        def call() -> Any:
            database = _Database.get(self.path)
            with database.lock:
                database.check_foreign_writes()
                return work(database, *args)

        return await asyncio.to_thread(call)

    # -- collection -----------------------------------------------------------------
    async def ensure_collection_exists(self, **kwargs: Any) -> None:
        """Create the table and its indexes when missing."""

        def create(database: _Database) -> None:
            c = database.connection
            c.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} (key TEXT PRIMARY KEY, scope TEXT NOT NULL, "
                "document_id TEXT NOT NULL, payload TEXT NOT NULL, vector BLOB NOT NULL)"
            )
            name = self.collection_name.replace('"', "")
            c.execute(f'CREATE INDEX IF NOT EXISTS "{name}_scope" ON {self._table} (scope, document_id)')

        await self._run(create)

    async def collection_exists(self, **kwargs: Any) -> bool:
        """True when the table exists."""

        def exists(database: _Database) -> bool:
            row = database.connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (self.collection_name,)
            ).fetchone()
            return row is not None

        return bool(await self._run(exists))

    async def ensure_collection_deleted(self, **kwargs: Any) -> None:
        """Drop the table."""

        def drop(database: _Database) -> None:
            database.connection.execute(f"DROP TABLE IF EXISTS {self._table}")
            database.matrices.clear()

        await self._run(drop)

    # -- records --------------------------------------------------------------------
    def _serialize_dicts_to_store_models(
        self, records: Sequence[dict[str, Any]], **kwargs: Any
    ) -> Sequence[Any]:
        return records

    def _deserialize_store_models_to_dicts(
        self, records: Sequence[Any], **kwargs: Any
    ) -> Sequence[dict[str, Any]]:
        return records

    async def _inner_upsert(self, records: Sequence[Any], **kwargs: Any) -> Sequence[str]:
        field = self._vector_field()
        vector_name = field.storage_name or field.name
        rows = []
        for record in records:
            vector = np.asarray(record[vector_name], dtype=np.float32)
            if vector.shape != (field.dimensions,):
                raise VectorStoreOperationException(
                    f"vector of {vector.shape} for {field.dimensions} dimensions"
                )
            payload = {
                k: v for k, v in record.items() if k not in (self._key_field_name, vector_name, *_COLUMNS)
            }
            rows.append(
                (
                    record[self._key_field_name],
                    record[SCOPE_FIELD],
                    record[DOCUMENT_FIELD],
                    json.dumps(payload, separators=(",", ":")),
                    vector.tobytes(),
                )
            )

        def write(database: _Database) -> None:
            with database.connection:  # one transaction
                database.connection.execute("BEGIN")
                database.connection.executemany(
                    f"INSERT OR REPLACE INTO {self._table} VALUES (?, ?, ?, ?, ?)", rows
                )
            for _, scope, *_rest in rows:
                database.matrices.pop((self.collection_name, scope), None)
            database.data_version = int(database.connection.execute("PRAGMA data_version").fetchone()[0])

        await self._run(write)
        return [row[0] for row in rows]

    def _to_record(
        self, key: str, scope: str, document_id: str, payload: str, vector: bytes | None
    ) -> dict[str, Any]:
        record: dict[str, Any] = {self._key_field_name: key, SCOPE_FIELD: scope, DOCUMENT_FIELD: document_id}
        record.update(json.loads(payload))
        if vector is not None:
            field = self._vector_field()
            record[field.storage_name or field.name] = np.frombuffer(vector, dtype=np.float32).tolist()
        return record

    async def _inner_get(
        self,
        keys: Sequence[str] | None = None,
        options: GetFilteredRecordOptions | None = None,
        **kwargs: Any,
    ) -> OneOrMany[dict[str, Any]] | None:
        if not keys:
            return None
        include_vectors = bool(kwargs.get("include_vectors"))
        marks = ",".join("?" * len(keys))

        def read(database: _Database) -> list[dict[str, Any]]:
            rows = database.connection.execute(
                f"SELECT key, scope, document_id, payload, vector FROM {self._table} WHERE key IN ({marks})",
                list(keys),
            ).fetchall()
            return [self._to_record(k, s, d, p, v if include_vectors else None) for k, s, d, p, v in rows]

        found: list[dict[str, Any]] = await self._run(read)
        return found

    async def _inner_delete(self, keys: Sequence[str], **kwargs: Any) -> None:
        marks = ",".join("?" * len(keys))

        def delete(database: _Database) -> None:
            with database.connection:
                database.connection.execute("BEGIN")
                scopes = database.connection.execute(
                    f"SELECT DISTINCT scope FROM {self._table} WHERE key IN ({marks})", list(keys)
                ).fetchall()
                database.connection.execute(f"DELETE FROM {self._table} WHERE key IN ({marks})", list(keys))
            for (scope,) in scopes:
                database.matrices.pop((self.collection_name, scope), None)
            database.data_version = int(database.connection.execute("PRAGMA data_version").fetchone()[0])

        await self._run(delete)

    async def delete_where(self, filter: str | list[str]) -> int:
        """Delete every record the filter matches (a whole scope or document); how many."""
        terms = self._terms(filter)
        sql, params = _where(terms)

        def delete(database: _Database) -> int:
            with database.connection:
                database.connection.execute("BEGIN")
                cursor = database.connection.execute(f"DELETE FROM {self._table} WHERE {sql}", params)
            database.matrices.clear()
            database.data_version = int(database.connection.execute("PRAGMA data_version").fetchone()[0])
            return int(cursor.rowcount)

        count: int = await self._run(delete)
        return count

    # -- search ---------------------------------------------------------------------
    def _lambda_parser(self, node: ast.AST) -> Any:
        """``r.field == 'literal'`` terms joined by ``and``, as (column, value) pairs."""
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
            return [term for value in node.values for term in self._lambda_parser(value)]
        if (
            isinstance(node, ast.Compare)
            and len(node.ops) == 1
            and isinstance(node.ops[0], ast.Eq)
            and isinstance(node.left, ast.Attribute)
            and node.left.attr in _COLUMNS
            and isinstance(node.comparators[0], ast.Constant)
            and isinstance(node.comparators[0].value, str)
        ):
            return [(node.left.attr, node.comparators[0].value)]
        raise VectorStoreOperationException(
            f"filters may only compare {', '.join(_COLUMNS)} with a string (r.field == 'value')"
        )

    def _terms(self, filter: Any) -> list[tuple[str, str]]:
        built = self._build_filter(filter)
        groups = built if isinstance(built, list) and built and isinstance(built[0], list) else [built]
        return [term for group in groups for term in (group or [])]

    async def _inner_search(
        self,
        search_type: SearchType,
        options: VectorSearchOptions,
        values: Any | None = None,
        vector: Sequence[float | int] | None = None,
        **kwargs: Any,
    ) -> Any:
        from semantic_kernel.data._shared import KernelSearchResults

        if vector is None:
            raise VectorStoreOperationException("this store searches by vector only")
        terms = self._terms(options.filter)
        scopes = {value for column, value in terms if column == SCOPE_FIELD}
        if len(scopes) != 1:
            raise VectorStoreOperationException("a search must filter on exactly one scope")
        scope = scopes.pop()
        extra = [(c, v) for c, v in terms if c != SCOPE_FIELD]
        query = np.asarray(vector, dtype=np.float32)
        query /= max(float(np.linalg.norm(query)), 1e-12)
        top, skip = options.top, options.skip

        def search(database: _Database) -> list[dict[str, Any]]:
            cache_key = (self.collection_name, scope)
            cached = database.matrices.get(cache_key) if not extra else None
            if cached is None:
                sql, params = _where([(SCOPE_FIELD, scope), *extra])
                rows = database.connection.execute(
                    f"SELECT key, vector FROM {self._table} WHERE {sql}", params
                ).fetchall()
                keys = [row[0] for row in rows]
                matrix = (
                    np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), -1)
                    if rows
                    else np.zeros((0, query.shape[0]), dtype=np.float32)
                )
                norms = np.linalg.norm(matrix, axis=1, keepdims=True)
                matrix = matrix / np.maximum(norms, 1e-12)
                cached = (keys, matrix)
                if not extra:
                    database.matrices[cache_key] = cached
            keys, matrix = cached
            if not keys:
                return []
            # Not ``matrix @ query``: BLAS gemv starts its thread pool, which on a busy
            # 2-core machine turned a 1 ms search into 40 ms (measured); einsum stays on this thread.
            scores = np.einsum("ij,j->i", matrix, query)
            wanted = min(len(keys), top + skip)
            best = np.argpartition(-scores, wanted - 1)[:wanted]
            best = best[np.argsort(-scores[best], kind="stable")][skip:]
            chosen = {keys[i]: float(scores[i]) for i in best}
            marks = ",".join("?" * len(chosen))
            rows = database.connection.execute(
                f"SELECT key, scope, document_id, payload FROM {self._table} WHERE key IN ({marks})",
                list(chosen),
            ).fetchall()
            records = {k: self._to_record(k, s, d, p, None) for k, s, d, p in rows}
            return [{**records[k], SCORE_KEY: s} for k, s in chosen.items() if k in records]

        found: list[dict[str, Any]] = await self._run(search)

        async def results() -> AsyncIterable[dict[str, Any]]:
            for record in found:
                yield record

        return KernelSearchResults(results=self._get_vector_search_results_from_results(results(), options))

    def _get_record_from_result(self, result: Any) -> Any:
        return {k: v for k, v in result.items() if k != SCORE_KEY}

    def _get_score_from_result(self, result: Any) -> float | None:
        score = result.get(SCORE_KEY)
        return None if score is None else float(score)
