"""The Azure AI Search backend through SK's connector: built from the settings, scoped
searches as OData filters, an unreachable service reported as the store being down.
(No emulator exists: this checks our side up to the wire, not the service.)"""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from scripts.devservices import free_port
from sk_core.memory import VectorStoreUnavailable
from sk_core.memory._vectors import make_chunk_store
from tests.support.settings import SERVICE_ENV, make_settings

BASE = {**SERVICE_ENV, "SKF_MODEL_BASE_URL": "http://127.0.0.1:9/v1"}


def test_azure_ai_search_needs_an_endpoint() -> None:
    with pytest.raises(ValidationError, match="SKF_MEMORY_SEARCH_ENDPOINT"):
        make_settings(BASE, memory_store="azure_ai_search")


async def test_azure_ai_search_scopes_by_odata_and_an_unreachable_service_is_unavailable() -> None:
    settings = make_settings(
        BASE,
        memory_store="azure_ai_search",
        memory_search_endpoint=f"https://127.0.0.1:{free_port()}",
        memory_search_key="test-key",
        memory_search_index="skf-memory-test",
    )
    store = make_chunk_store(settings, 384)
    collection = store._collection
    assert collection.collection_name == "skf-memory-test"
    # The filters our store sends, as SK translates them: quoted, escaped, ANDed.
    assert collection._build_filter("lambda r: r.scope == 'acme/handbook'") == "scope eq 'acme/handbook'"
    assert collection._build_filter('lambda r: r.scope == "o\'hara/x"') == "scope eq 'o''hara/x'"
    # No filter-delete in SK's connector: documents are deleted by the manifest's keys.
    assert not hasattr(collection, "delete_where")
    with pytest.raises(VectorStoreUnavailable):
        await store.search("acme/handbook", np.ones(384, dtype=np.float32), 5)
    with pytest.raises(VectorStoreUnavailable):
        await store.delete_document("acme/handbook", "doc", ["k1", "k2"])
