"""Which account the ingestion queue uses."""

from __future__ import annotations

import pytest

from sk_core.memory._queue import (
    development_queue_connection_string,
    queue_account_url,
    queue_connection_string,
)

CLOUD = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k;EndpointSuffix=core.windows.net"
TABLES_ONLY = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=k;TableEndpoint=http://127.0.0.1:1/a;"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", None),
        ("UseDevelopmentStorage=true", development_queue_connection_string()),
        (TABLES_ONLY, None),  # explicit endpoints without a queue: never the public cloud
        (
            TABLES_ONLY + "QueueEndpoint=http://127.0.0.1:2/a;",
            TABLES_ONLY + "QueueEndpoint=http://127.0.0.1:2/a;",
        ),
        # A real account: the SDK derives its queue endpoint.
        (CLOUD, CLOUD),
    ],
)
def test_queue_connection_string(raw: str, expected: str | None) -> None:
    assert queue_connection_string(raw) == expected


def test_a_managed_identity_account_uses_its_queue_endpoint() -> None:
    from sk_core.memory._wiring import make_queue
    from tests.support.settings import SERVICE_ENV, make_settings

    settings = make_settings(
        SERVICE_ENV,
        model_base_url="http://127.0.0.1:9/v1",
        storage_account_endpoint="https://acct.table.core.windows.net/",
        memory_queue_name="q-x",
    )
    queue = make_queue(settings)
    assert queue.configured
    client = queue._new_client("q-x")
    assert client.url == "https://acct.queue.core.windows.net/q-x"
    assert queue_account_url("https://acct.blob.core.windows.net") is None
