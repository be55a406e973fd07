"""Fixtures of the document-memory tests: a container host with the ingestion worker
on the suite's Azurite (tables and queue), and in-process services."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.devservices import free_port, start_service
from sk_core.accounts import Tenant
from sk_core.composition import Service
from tests.support.settings import CONTRACT_LIMITS, make_settings

# Embeddings cost something here, so that "ask charges both" can fail.
EMBEDDING_PRICE = {"all-minilm-l6-v2": {"input": 0.5, "output": 0}}


@pytest.fixture(scope="session")
def memory_env(service_env: dict[str, str]) -> dict[str, str]:
    """The suite's service environment (its Azurite has the queue) with the ingestion
    worker on and a priced embedding model."""
    import json

    prices = {**json.loads(service_env["SKF_MODEL_PRICES"]), **EMBEDDING_PRICE}
    return {**service_env, "SKF_MODEL_PRICES": json.dumps(prices), "SKF_MEMORY_WORKER": "true"}


def unique_queue() -> str:
    return f"mem-{uuid.uuid4().hex[:12]}"


async def new_tenant(service: Service, prefix: str, scopes: tuple[str, ...] = ("*",)) -> tuple[str, str]:
    """A fresh tenant with generous limits and a key; (tenant id, key)."""
    tenant_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    await service.tenants.create_tenant(Tenant(id=tenant_id, display_name=prefix, limits=CONTRACT_LIMITS))
    issued = await service.tenants.issue_key(tenant_id, name="memory-tests", scopes=scopes)
    return tenant_id, issued.secret


@pytest.fixture(scope="session")
async def memory_admin(memory_env: dict[str, str]) -> AsyncIterator[Service]:
    """An in-process service on the same storage: creates tenants and keys, reads usage."""
    service = Service.create(make_settings(memory_env))
    yield service
    await service.aclose()


class MemoryHost:
    """The container host with memory on: real HTTP on loopback."""

    def __init__(self, base_url: str, store_path: Path, queue: str) -> None:
        self.base_url = base_url
        self.store_path = store_path
        self.queue = queue
        self.client = httpx.AsyncClient(base_url=base_url, timeout=60)

    async def call(
        self, method: str, path: str, key: str, body: Any = None, **headers: str
    ) -> httpx.Response:
        return await self.client.request(
            method, f"/api{path}", json=body, headers={"authorization": f"Bearer {key}", **headers}
        )

    async def wait_job(self, location: str, key: str, timeout: float = 90) -> dict[str, Any]:  # noqa: ASYNC109
        """Poll a job until it is finished; its last status."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            answer = await self.client.get(location, headers={"authorization": f"Bearer {key}"})
            assert answer.status_code == 200, answer.text
            status: dict[str, Any] = answer.json()
            if status["status"] in ("succeeded", "failed"):
                return status
            assert asyncio.get_running_loop().time() < deadline, status
            await asyncio.sleep(0.2)


def start_memory_host(
    env: dict[str, str], tmp: Path, *, store_path: Path | None = None, **extra: str
) -> tuple[Any, MemoryHost]:
    port = free_port()
    queue = unique_queue()
    path = store_path or tmp / "vectors.db"
    process = start_service(
        port=port,
        env={**env, "SKF_MEMORY_STORE_PATH": str(path), "SKF_MEMORY_QUEUE_NAME": queue, **extra},
        log=tmp / "service.log",
    )
    return process, MemoryHost(f"http://127.0.0.1:{port}", path, queue)


@pytest.fixture(scope="session")
async def memory_host(
    memory_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[MemoryHost]:
    """uvicorn serving sk_core.asgi:app with its ingestion worker polling the queue."""
    process, host = start_memory_host(memory_env, tmp_path_factory.mktemp("memory-host"))
    yield host
    await host.client.aclose()
    process.stop()
