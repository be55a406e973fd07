"""Our SSE framing read back by a reader written from the specification."""

from __future__ import annotations

import pytest

from sk_core.http import sse
from tests.support.sse_client import Event, iter_events


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"text": "two\nlines\r\nand a CR\r"}, '{"text":"two\\nlines\\r\\nand a CR\\r"}'),  # escaped in JSON
        ("[DONE]", "[DONE]"),
        # Literal text with line ends: one data line each, or a reader loses the rest.
        ("first\nsecond\r\nthird\rfourth", "first\nsecond\nthird\nfourth"),
        ("", ""),
    ],
)
def test_an_event_reads_back_as_its_data(data: object, text: str) -> None:
    assert list(iter_events([sse.event(data)])) == [Event(data=text)]
    assert list(iter_events([sse.event(data, "delta")])) == [Event(data=text, event="delta")]
