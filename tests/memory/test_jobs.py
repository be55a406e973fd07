"""Ingestion jobs against Azurite's real queue and tables, in process: re-delivery,
poison messages, retries with backoff, and the Functions queue trigger's binding."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sk_core.composition import Service
from sk_core.memory import IngestRequest, Memory, backoff, make_memory, process_delivery
from tests.memory.conftest import new_tenant, unique_queue
from tests.support.settings import make_settings
from tests.support.telemetry import TelemetrySink

DOCS = {
    "documents": [
        {"id": "a", "text": "The library lends books for three weeks; renewals are free."},
        {"id": "b", "text": "Parking permits are renewed every January at the front desk."},
    ]
}


async def _memory(env: dict[str, str], tmp: Path, **overrides: Any) -> tuple[Service, Memory]:
    settings = make_settings(
        env,
        memory_store_path=str(overrides.pop("store_path", tmp / "vectors.db")),
        memory_queue_name=unique_queue(),
        memory_worker=False,
        **overrides,
    )
    service = Service.create(settings)
    return service, make_memory(service)


@pytest.fixture
async def memory(memory_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Memory]:
    service, memory = await _memory(memory_env, tmp_path, memory_max_attempts=3)
    yield memory
    await memory.aclose()
    await service.aclose()


async def _enqueue(memory: Memory, key: str, collection: str = "kb") -> str:
    principal = await memory.authenticate({"authorization": f"Bearer {key}"}, write=True)
    job = await memory.enqueue(principal, collection, IngestRequest.model_validate(DOCS))
    return job.job_id


async def _receive_one(memory: Memory) -> Any:
    for _ in range(50):
        found = await memory.queue.receive(limit=1, visibility_timeout=30)
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError("no message arrived")


class WorkerDied(Exception):
    """Stands for the process being killed at this point of a job."""


async def test_a_redelivered_message_changes_nothing_and_costs_nothing(
    memory: Memory, memory_admin: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant_id, key = await new_tenant(memory_admin, "jobs-redeliver")
    job_id = await _enqueue(memory, key)
    first = await _receive_one(memory)
    assert first.dequeue_count == 1
    # The worker embeds (and pays for) and stores every chunk, then dies before it
    # records success and deletes the message: the message comes back.
    save_job = memory.state.save_job

    async def dies_before_success(job: Any) -> Any:
        if job.status == "succeeded":
            raise WorkerDied
        return await save_job(job)

    monkeypatch.setattr(memory.state, "save_job", dies_before_success)
    with pytest.raises(WorkerDied):
        await memory.run_job(tenant_id, job_id, attempt=1, final=False)
    monkeypatch.setattr(memory.state, "save_job", save_job)
    running = await memory.state.job(tenant_id, job_id)
    assert running is not None
    assert running.status == "running"
    await memory.queue.delay(first, 0)
    again = await _receive_one(memory)
    assert again.id == first.id
    assert again.dequeue_count == 2
    assert await process_delivery(memory, again) == "done"
    job = await memory.state.job(tenant_id, job_id)
    assert job is not None
    assert (job.status, job.chunks, job.attempts) == ("succeeded", 2, 2)
    assert job.cost_nano == 0  # the second run found every embedding in the cache: not charged again
    query = (await memory.embedder.embed(["books"])).vectors[0]
    found = await memory.store.search(f"{tenant_id}/kb", query, 50)
    assert sorted(f.chunk_id for f in found) == ["a#0", "b#0"]  # the same keys, overwritten
    # A further delivery of a finished job is acknowledged without work.
    await memory.queue.send({"tenant": tenant_id, "job": job_id})
    assert await process_delivery(memory, await _receive_one(memory)) == "done"
    assert await memory.state.job(tenant_id, job_id) == job


@pytest.mark.parametrize(
    "message", [{"tenant": "t"}, {"tenant": "nobody-here", "job": "0" * 32}, {"tenant": 1, "job": []}]
)
async def test_a_message_no_retry_can_help_goes_to_the_poison_queue_at_once(
    memory: Memory, message: dict[str, Any]
) -> None:
    await memory.queue.send(message)
    delivery = await _receive_one(memory)
    assert await process_delivery(memory, delivery) == "done"  # handled: moved, not retried
    assert await memory.queue.receive(limit=1, visibility_timeout=1) == []
    poisoned = await memory.queue.peek_poison()
    assert delivery.content in poisoned


async def test_a_failing_job_is_retried_with_backoff_then_poisoned_and_failed(
    memory_env: dict[str, str], memory_admin: Service, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    service, memory = await _memory(
        memory_env, tmp_path, store_path=blocker / "vectors.db", memory_max_attempts=2
    )
    try:
        tenant_id, key = await new_tenant(memory_admin, "jobs-poison")
        job_id = await _enqueue(memory, key)
        first = await _receive_one(memory)
        assert await process_delivery(memory, first) == "retrying"
        job = await memory.state.job(tenant_id, job_id)
        assert job is not None
        assert (job.status, job.error, job.attempts) == ("queued", "vector_store_unavailable", 1)
        # Hidden for the backoff (5 s after the first delivery), then delivered again.
        assert await memory.queue.receive(limit=1, visibility_timeout=1) == []
        await asyncio.sleep(backoff(1) + 0.5)
        second = await _receive_one(memory)
        assert second.dequeue_count == 2
        assert await process_delivery(memory, second) == "poisoned"
        job = await memory.state.job(tenant_id, job_id)
        assert job is not None
        assert (job.status, job.error) == ("failed", "vector_store_unavailable")
        assert second.content in await memory.queue.peek_poison()
    finally:
        await memory.aclose()
        await service.aclose()


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff(30) == 300


def test_the_queue_trigger_is_bound_to_the_memory_queue(functions_app_functions: list[Any]) -> None:
    trigger = next(f for f in functions_app_functions if f.get_function_name() == "memory_ingest_worker")
    binding = trigger.get_trigger()
    assert binding.type == "queueTrigger"
    assert binding.queue_name == "%SKF_MEMORY_QUEUE_NAME%"
    assert binding.connection == "AzureWebJobsStorage"


async def test_a_job_leaves_embedding_and_store_spans_and_chunk_metrics(
    memory: Memory, memory_admin: Service, telemetry_sink: TelemetrySink
) -> None:
    tenant_id, key = await new_tenant(memory_admin, "jobs-telemetry")
    job_id = await _enqueue(memory, key)
    telemetry_sink.spans.clear()
    await memory.run_job(tenant_id, job_id, attempt=1, final=False)
    spans = {span.name: span for span in telemetry_sink.spans.get_finished_spans()}
    embed = spans["embeddings all-minilm-l6-v2"]
    assert embed.attributes is not None
    assert embed.attributes["gen_ai.operation.name"] == "embeddings"
    assert int(embed.attributes["gen_ai.usage.input_tokens"]) > 0  # type: ignore[arg-type]
    upsert = spans["upsert chunks"]
    assert upsert.attributes is not None
    assert (upsert.attributes["db.system.name"], upsert.attributes["db.operation.name"]) == (
        "sqlite",
        "upsert",
    )
    assert spans["memory.ingest"].attributes["sk.memory.job"] == job_id  # type: ignore[index]
    data = telemetry_sink.metrics.get_metrics_data()
    assert data is not None
    chunks = [
        point.value  # type: ignore[union-attr]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "sk.memory.chunks"
        for point in metric.data.data_points
        if point.attributes is not None and point.attributes.get("sk.tenant") == tenant_id
    ]
    assert chunks == [2]
