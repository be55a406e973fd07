"""The admin CLI lists and purges a tenant's collections (another process on the same
tables and the same store file as the running service)."""

from __future__ import annotations

import json
import subprocess

from sk_core.composition import Service
from tests.memory.conftest import MemoryHost, new_tenant
from tests.memory.test_api import DOCS, ingest
from tests.support.processes import run_admin


def admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_admin(env, "--json", *args)


async def test_list_and_purge_a_tenants_collections(
    memory_host: MemoryHost, memory_admin: Service, memory_env: dict[str, str]
) -> None:
    tenant_id, key = await new_tenant(memory_admin, "mem-cli")
    await ingest(memory_host, key, "keep", DOCS[:1])
    await ingest(memory_host, key, "drop", DOCS)
    env = {**memory_env, "SKF_MEMORY_STORE_PATH": str(memory_host.store_path)}
    listed = admin(env, "memory", "list", tenant_id)
    assert listed.returncode == 0, listed.stderr
    assert {(c["name"], c["documents"]) for c in json.loads(listed.stdout)} == {("keep", 1), ("drop", 3)}
    purged = admin(env, "memory", "purge", tenant_id, "--collection", "drop")
    assert purged.returncode == 0, purged.stderr
    assert json.loads(purged.stdout) == {"tenant": tenant_id, "purged": {"drop": 3}}
    # The running service sees it at once: the collection is gone, the other intact.
    gone = await memory_host.call("POST", "/v1/collections/drop/search", key, {"query": "cats"})
    assert gone.status_code == 404
    kept = await memory_host.call("POST", "/v1/collections/keep/search", key, {"query": "cats"})
    assert [r["document_id"] for r in kept.json()["results"]] == ["pets"]
    assert admin(env, "memory", "list", "no-such-tenant").returncode == 1
    assert admin(env, "memory", "purge", tenant_id, "--collection", "Bad/Name").returncode == 2
