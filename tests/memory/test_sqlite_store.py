"""The embedded vector store through Semantic Kernel's collection API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from semantic_kernel.exceptions import VectorStoreOperationException

from sk_core.memory._sqlite_store import SqliteCollection, _Database
from sk_core.memory._vectors import COLLECTION, ChunkStore, definition


def _record(key: str, scope: str, document: str, vector: list[float]) -> dict[str, object]:
    return {
        "key": key,
        "scope": scope,
        "document_id": document,
        "chunk": 0,
        "chunk_id": f"{document}#0",
        "text": f"text of {document}",
        "metadata": "{}",
        "vector": vector,
    }


def _collection(path: Path) -> SqliteCollection:
    return SqliteCollection(definition=definition(3), collection_name=COLLECTION, path=str(path))


async def test_search_is_exact_within_one_scope_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    collection = _collection(path)
    await collection.ensure_collection_exists()
    await collection.upsert(
        [
            _record("1", "t1/c", "near", [1, 0, 0]),
            _record("2", "t1/c", "far", [0, 1, 0]),
            _record("3", "t2/c", "other-tenant", [1, 0, 0]),
        ]
    )
    results = await collection.search(vector=[0.9, 0.1, 0], top=5, filter="lambda r: r.scope == 't1/c'")
    found = [(r.record["document_id"], round(r.score or 0, 3)) async for r in results.results]
    assert found == [("near", 0.994), ("far", 0.11)]
    # Another process (here: a fresh connection) sees the same data.
    _Database.forget(str(path))
    again = _collection(path)
    results = await again.search(vector=[1, 0, 0], top=5, filter="lambda r: r.scope == 't2/c'")
    assert [r.record["document_id"] async for r in results.results] == ["other-tenant"]


async def test_a_search_without_exactly_one_scope_is_refused(tmp_path: Path) -> None:
    collection = _collection(tmp_path / "v.db")
    await collection.ensure_collection_exists()
    for bad in (
        None,
        "lambda r: r.document_id == 'x'",
        "lambda r: r.scope != 'x'",
        "lambda r: r.text == 'x'",
    ):
        with pytest.raises(VectorStoreOperationException):
            await collection.search(vector=[1, 0, 0], top=1, filter=bad)


async def test_chunk_store_deletes_by_document_and_scope_and_reports_an_unopenable_store(
    tmp_path: Path,
) -> None:
    store = ChunkStore(_collection(tmp_path / "v.db"), system="sqlite")
    records = [{**_record(k, "t/c", d, [1, 0, 0]), "metadata": {"n": k}} for k, d in (("1", "x"), ("2", "y"))]
    await store.upsert(records)
    await store.delete_document("t/c", "x", [])  # by filter: the keys are for stores without one
    found = await store.search("t/c", np.array([1, 0, 0], dtype=np.float32), 5)
    assert [(f.document_id, f.metadata) for f in found] == [("y", {"n": "2"})]
    await store.delete_scope("t/c", [])
    assert await store.search("t/c", np.array([1, 0, 0], dtype=np.float32), 5) == []
    blocker = tmp_path / "file"
    blocker.write_text("")
    broken = ChunkStore(_collection(blocker / "v.db"), system="sqlite")
    from sk_core.memory import VectorStoreUnavailable

    with pytest.raises(VectorStoreUnavailable):
        await broken.ping()
