"""Which account the ingestion queue uses."""

from __future__ import annotations

import pytest

from sk_core.memory._queue import development_queue_connection_string, queue_connection_string

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
