"""A Server-Sent Events reader written from the specification (HTML Living Standard,
"Parsing an event stream"), for clients that have nothing but httpx.

Not the server's framing read back by the server's own assumptions: lines may end in
CRLF, LF or CR (a CR at the end of one network read may be the first half of a CRLF);
a leading BOM is dropped; ``:`` lines are comments; a field without a colon has an
empty value; one space after the colon is removed; several ``data`` lines join with
``\\n``; an event is dispatched by a blank line, and one with no data is not; what is
left without its blank line when the stream ends is discarded. Bytes may be split
anywhere, inside a UTF-8 character too.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

__all__ = ["Event", "SSEParser", "aiter_events", "iter_events"]

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    """One dispatched event: its type (``message`` unless an ``event`` field named
    one), its data, and the last event id seen."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """Feed it bytes as they arrive; it returns the events they complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._started = False
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += self._decoder.decode(chunk)
        if not self._started and self._buffer:
            self._started = True
            self._buffer = self._buffer.removeprefix("\ufeff")
        events: list[Event] = []
        while (end := _LINE_END.search(self._buffer)) is not None:
            if end.group() == "\r" and end.end() == len(self._buffer):
                break  # the LF of a CRLF may be in the next read
            line, self._buffer = self._buffer[: end.start()], self._buffer[end.end() :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[Event]:
        """The end of the stream: a final CR still ends its line; an event without its
        blank line is discarded (the specification's rule)."""
        self._buffer += self._decoder.decode(b"", final=True)
        line, self._buffer = self._buffer, ""
        event = self._line(line[:-1]) if line.endswith("\r") else None
        return [event] if event is not None else []

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None  # "retry" and unknown fields change nothing a client reads here

    def _dispatch(self) -> Event | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Event(data="\n".join(data), event=event or "message", id=self._last_id)


def iter_events(chunks: Iterable[bytes]) -> Iterator[Event]:
    """The events of a byte stream (``httpx.Response.iter_bytes()``)."""
    parser = SSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()


async def aiter_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """The events of an async byte stream (``httpx.Response.aiter_bytes()``)."""
    parser = SSEParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
    for event in parser.close():
        yield event
