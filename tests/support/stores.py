"""Table stores for tests of the code above storage: in memory, or on real Azurite.

A fixture parametrized with ``STORE_BACKENDS`` runs each of its tests twice: on the
in-memory account (a unit test: no service, what ``make unit`` runs) and on Azurite (an
integration test). The memory store answers as Azurite does on the operations the code
uses (property-tested in tests/storage/test_memory.py), so the logic is tested without a
service, and the Azurite run still shows it on the real SDK and wire.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from sk_core.storage import MemoryAccount, MemoryTableStore, TableStore

STORE_BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("azurite", id="azurite", marks=pytest.mark.integration),
]


@asynccontextmanager
async def open_stores(
    request: pytest.FixtureRequest, prefix: str, count: int = 1
) -> AsyncIterator[list[TableStore]]:
    """``count`` stores on one account (several stores are several processes), closed after."""
    prefix += secrets.token_hex(4)  # a fresh set of tables for every test
    if request.param == "memory":
        account = MemoryAccount()
        made: list[TableStore] = [MemoryTableStore(account, table_prefix=prefix) for _ in range(count)]
    else:
        # Asked for here, not in the signature: only the Azurite run starts Azurite.
        azurite: str = request.getfixturevalue("azurite")
        made = [TableStore(connection_string=azurite, table_prefix=prefix) for _ in range(count)]
    try:
        yield made
    finally:
        for store in made:
            await store.aclose()
