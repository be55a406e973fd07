"""Document memory: retrieval quality, ingestion throughput, search latency at scale.

    .venv/bin/python -m bench.memory                 # all three, writes bench/results/memory.json
    .venv/bin/python -m bench.memory --quality-only  # the evaluation set only (no Azurite)

1. **Quality**: the evaluation set ``bench/data/memory_eval.json`` (30 handbook-style
   documents in groups of near topics, 40 questions paraphrased from them, each naming
   the one document that answers it) ingested with the local embedder and the real
   chunker into the embedded store; recall@1, recall@5 and MRR by document.
2. **Ingestion**: ``--embed-chunks`` distinct chunks through the real job path in
   process (Azurite's tables and queue, the ledger, the embedding cache, the worker's
   ``drain``): chunks per second from enqueue to the job's success; then the same
   documents again: the embedding cache's hit rate and the job's cost.
3. **Search at scale**: the store filled to ``--chunks`` chunks in the tenant's
   collection (the embedded chunks plus copies of their vectors with a little noise,
   since exact search costs the same whatever the vectors say), then ``--queries``
   searches: the store alone and the whole ``Memory.search`` (question embedding,
   admission and settlement included), p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import write_results
from scripts.devservices import free_port, start_azurite, start_azurite_queue

EVAL_SET = Path(__file__).resolve().parent / "data" / "memory_eval.json"
TOPICS = (
    "invoice",
    "parking",
    "laptop",
    "canteen",
    "pension",
    "badge",
    "travel",
    "mentor",
    "vpn",
    "salary",
    "visitor",
    "shower",
    "bonus",
    "printer",
    "meeting room",
    "holiday",
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def quality() -> dict[str, Any]:
    """Recall@1, recall@5 and MRR of the evaluation set with the local embedder."""
    from sk_core.memory import LocalEmbedder, Tokenizer
    from sk_core.memory._chunking import chunk_text
    from sk_core.memory._sqlite_store import SqliteCollection
    from sk_core.memory._vectors import COLLECTION, ChunkStore, definition

    data = json.loads(EVAL_SET.read_text(encoding="utf-8"))
    embedder, tokenizer = LocalEmbedder(threads=2), Tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        store = ChunkStore(
            SqliteCollection(definition=definition(384), collection_name=COLLECTION, path=f"{tmp}/v.db"),
            system="sqlite",
        )
        records = []
        for document in data["documents"]:
            chunks = chunk_text(document["text"], tokenizer.spans, size=200, overlap=40)
            vectors = (await embedder.embed(chunks)).vectors
            for i, (text, vector) in enumerate(zip(chunks, vectors, strict=True)):
                records.append(
                    {
                        "key": f"{document['id']}-{i}",
                        "scope": "eval/handbook",
                        "document_id": document["id"],
                        "chunk": i,
                        "chunk_id": f"{document['id']}#{i}",
                        "text": text,
                        "metadata": {},
                        "vector": vector,
                    }
                )
        await store.upsert(records)
        ranks: list[int | None] = []
        misses = []
        for item in data["questions"]:
            query = (await embedder.embed([item["q"]])).vectors[0]
            found = await store.search("eval/handbook", query, 5)
            documents = list(dict.fromkeys(f.document_id for f in found))
            rank = documents.index(item["doc"]) + 1 if item["doc"] in documents else None
            ranks.append(rank)
            if rank != 1:
                misses.append({"question": item["q"], "expected": item["doc"], "got": documents[:3]})
    n = len(ranks)
    return {
        "documents": len(data["documents"]),
        "questions": n,
        "recall_at_1": sum(r == 1 for r in ranks) / n,
        "recall_at_5": sum(r is not None and r <= 5 for r in ranks) / n,
        "mrr": sum(1 / r for r in ranks if r) / n,
        "not_first": misses,
    }


def _synthetic_documents(count: int, salt: str) -> list[dict[str, str]]:
    """Distinct one-chunk documents (about 60-80 word pieces each)."""
    rng = np.random.default_rng(7)
    documents = []
    for i in range(count):
        a, b, c = (TOPICS[int(k)] for k in rng.integers(0, len(TOPICS), 3))
        documents.append(
            {
                "id": f"doc-{i}",
                "text": f"Note {i} ({salt}): the {a} procedure changed in week {i % 52 + 1}. "
                f"Ask the {b} team before room {i % 700} is used, and file the {c} form "
                f"within {i % 30 + 1} days; reference number {rng.integers(10**6, 10**7)}.",
            }
        )
    return documents


async def scale(embed_chunks: int, total_chunks: int, queries: int) -> dict[str, Any]:
    """Ingestion throughput, cache hit rate on re-ingest, search latency at ``total_chunks``."""
    from sk_core.accounts import Limits, Tenant
    from sk_core.composition import Service
    from sk_core.memory import IngestRequest, LocalEmbedder, drain, make_memory
    from sk_core.memory._queue import development_queue_connection_string
    from sk_core.memory._records import chunk_key
    from sk_core.settings import Settings
    from sk_core.storage import development_connection_string

    table_port, queue_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    azurite = start_azurite(port=table_port, log=tmp / "azurite.log")
    queue = start_azurite_queue(port=queue_port, log=tmp / "queue.log")
    try:
        queue_endpoint = development_queue_connection_string(queue_port).split(";")[3]
        settings = Settings.model_validate(
            {
                "storage_connection_string": f"{development_connection_string(table_port)}{queue_endpoint};",
                "memory_store_path": str(tmp / "vectors.db"),
                "memory_worker": False,
                "memory_max_documents": 1000,
                "max_body_bytes": 10 * 1024 * 1024,
            }
        )
        service = Service.create(settings)
        memory = make_memory(service)
        embedded_texts = 0
        assert isinstance(memory.embedder, LocalEmbedder)
        inner = memory.embedder.embed

        async def counting(texts: list[str]) -> Any:
            nonlocal embedded_texts
            embedded_texts += len(texts)
            return await inner(texts)

        memory.embedder.embed = counting  # type: ignore[method-assign]
        big = 10**15
        tenant = Tenant(
            id=f"bench-{uuid.uuid4().hex[:6]}",
            display_name="bench",
            limits=Limits(
                requests_per_minute=10**6,
                tokens_per_minute=10**9,
                max_concurrent=100,
                daily_budget_nano=big,
                monthly_budget_nano=big,
            ),
        )
        await service.tenants.create_tenant(tenant)
        key = (await service.tenants.issue_key(tenant.id, name="bench")).secret
        principal = await memory.authenticate({"authorization": f"Bearer {key}"}, write=True)
        documents = _synthetic_documents(embed_chunks, "bench")

        async def ingest_all() -> tuple[float, int]:
            started = time.perf_counter()
            jobs = []
            for start in range(0, len(documents), 500):
                batch = IngestRequest.model_validate({"documents": documents[start : start + 500]})
                jobs.append((await memory.enqueue(principal, "scale", batch)).job_id)
            chunks = 0
            while jobs:
                await drain(memory)
                for job_id in list(jobs):
                    job = await memory.state.job(tenant.id, job_id)
                    if job is not None and job.status in ("succeeded", "failed"):
                        assert job.status == "succeeded", job
                        chunks += job.chunks
                        jobs.remove(job_id)
            return time.perf_counter() - started, chunks

        seconds, chunks = await ingest_all()
        first_embedded = embedded_texts
        embedded_texts = 0
        again_seconds, again_chunks = await ingest_all()
        cache_hit_rate = 1 - embedded_texts / again_chunks

        # Fill to total_chunks: noisy copies of the real vectors in the same scope.
        scope = f"{tenant.id}/scale"
        real = await memory.store.search(scope, np.ones(384, dtype=np.float32), 1)
        assert real, "nothing ingested"
        collection = memory.store._collection
        stored = await collection.get(
            keys=[chunk_key(tenant.id, "scale", d["id"], 0) for d in documents], include_vectors=True
        )
        base = np.array([r["vector"] for r in stored], dtype=np.float32)
        rng = np.random.default_rng(11)
        filled = len(base)
        fill_started = time.perf_counter()
        while filled < total_chunks:
            count = min(2000, total_chunks - filled)
            picks = base[rng.integers(0, len(base), count)] + rng.normal(0, 0.02, (count, 384)).astype(
                np.float32
            )
            await memory.store.upsert(
                [
                    {
                        "key": uuid.uuid4().hex,
                        "scope": scope,
                        "document_id": f"filler-{filled + i}",
                        "chunk": 0,
                        "chunk_id": f"filler-{filled + i}#0",
                        "text": "filler",
                        "metadata": {},
                        "vector": vector,
                    }
                    for i, vector in enumerate(picks)
                ]
            )
            filled += count
        fill_seconds = time.perf_counter() - fill_started

        questions = [f"Which team do I ask about the {TOPICS[i % len(TOPICS)]} form?" for i in range(queries)]
        vectors = (await memory.embedder.embed(questions)).vectors
        await memory.store.search(scope, vectors[0], 5)  # the scope's matrix loads once
        store_ms = []
        for vector in vectors:
            started = time.perf_counter()
            await memory.store.search(scope, vector, 5)
            store_ms.append((time.perf_counter() - started) * 1000)
        from sk_core.memory import SearchRequest

        reader = await memory.authenticate({"authorization": f"Bearer {key}"}, write=False)
        full_ms = []
        for question in questions:
            started = time.perf_counter()
            await memory.search(reader, "scale", SearchRequest(query=question, top=5))
            full_ms.append((time.perf_counter() - started) * 1000)
        await memory.aclose()
        await service.aclose()
        return {
            "ingest": {
                "chunks": chunks,
                "embedded": first_embedded,
                "seconds": round(seconds, 2),
                "chunks_per_second": round(chunks / seconds, 1),
            },
            "reingest": {
                "chunks": again_chunks,
                "seconds": round(again_seconds, 2),
                "chunks_per_second": round(again_chunks / again_seconds, 1),
                "cache_hit_rate": cache_hit_rate,
            },
            "search": {
                "chunks_in_collection": filled,
                "fill_upserts_per_second": round((filled - len(base)) / max(fill_seconds, 1e-9), 1),
                "queries": queries,
                "store_p50_ms": round(_percentile(store_ms, 0.5), 2),
                "store_p95_ms": round(_percentile(store_ms, 0.95), 2),
                "memory_search_p50_ms": round(_percentile(full_ms, 0.5), 2),
                "memory_search_p95_ms": round(_percentile(full_ms, 0.95), 2),
                "memory_search_mean_ms": round(statistics.fmean(full_ms), 2),
            },
        }
    finally:
        queue.stop()
        azurite.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--embed-chunks", type=int, default=1000)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    result: dict[str, Any] = {"quality": asyncio.run(quality())}
    print(json.dumps(result["quality"], indent=2))
    if not args.quality_only:
        result["scale"] = asyncio.run(scale(args.embed_chunks, args.chunks, args.queries))
        print(json.dumps(result["scale"], indent=2))
        write_results("memory", result)


if __name__ == "__main__":
    main()
