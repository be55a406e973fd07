"""The SSE reader the httpx-only client tests use, against the specification's rules
(HTML Living Standard, "Parsing an event stream"), fed in every possible split."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.sse_client import Event, aiter_events, iter_events

# One stream holding every rule: a BOM, comments, CRLF / CR / LF line ends, multi-line
# data, "data" without a colon (an empty line of data), no space after the colon, two
# spaces (only one removed), an event type and an id, a retry field and an unknown one,
# an event with no data (not dispatched), a non-ASCII text, and a last event without its
# blank line (discarded).
STREAM = (
    "\ufeff: a comment\r\n"
    "data: first\r\n"
    "data: second\r\n"
    "\r\n"
    'event: delta\rdata:{"x": 1}\rid: 7\r\r'
    "data\n"
    "data:  two spaces\n"
    "retry: 1000\n"
    "unknown: field\n"
    "\n"
    "event: empty\n"
    "\n"
    "data: olá 𝄞 [DONE]\n"
    "\n"
    "data: never finished\n"
).encode()

EXPECTED = [
    Event(data="first\nsecond"),
    Event(data='{"x": 1}', event="delta", id="7"),
    Event(data="\n two spaces", id="7"),
    Event(data="olá 𝄞 [DONE]", id="7"),
]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, len(STREAM)])
def test_the_reader_follows_the_specification_however_the_bytes_are_split(size: int) -> None:
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert list(iter_events(pieces)) == EXPECTED


def test_a_crlf_split_between_two_reads_is_one_line_end() -> None:
    # Split right after every CR: a CR ending a read must wait for the next one.
    pieces = STREAM.replace(b"\r", b"\r\x00").split(b"\x00")
    assert list(iter_events(pieces)) == EXPECTED
    # A final CR ends its line, here the blank line that dispatches.
    assert list(iter_events([b"data: x\n", b"\r"])) == [Event(data="x")]


def test_the_async_reader_reads_the_same() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(len(STREAM)):
            yield STREAM[i : i + 1]

    async def read() -> list[Event]:
        return [event async for event in aiter_events(chunks())]

    assert asyncio.run(read()) == EXPECTED
