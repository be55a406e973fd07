"""Server-Sent Events: the framing, the media type, and the response that carries them.

A streamed answer is admitted (reserved, clamped) before its response starts, so its
status and RateLimit headers are final when the first byte goes out; what happens after
that (the text, the final accounting, a failure) is told in events.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse

SSE_MEDIA_TYPE = "text/event-stream"

# Proxies that buffer responses (nginx, and gateways that honour the same hint) would
# hold the events back until the answer is complete: tell them not to.
_NO_BUFFERING = {"X-Accel-Buffering": "no"}


def wants_event_stream(request: Request) -> bool:
    """Whether the client asked for the answer as Server-Sent Events (``Accept``)."""
    return any(
        part.split(";", 1)[0].strip().lower() == SSE_MEDIA_TYPE
        for part in request.headers.get("accept", "").split(",")
    )


def compact_json(data: object) -> str:
    """JSON without blanks (one ``data:`` line per event; smaller bodies)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


# What ends a line in an event stream (the SSE specification): any of the three.
_LINE_END = re.compile(r"\r\n|\r|\n")


def event(data: object, name: str | None = None) -> bytes:
    """One event: an optional ``event:`` line and one ``data:`` line of compact JSON
    (or the literal text given: one ``data:`` line per line of it, which a reader joins
    back with ``\\n``), then the blank line that ends it."""
    payload = data if isinstance(data, str) else compact_json(data)
    head = f"event: {name}\n" if name else ""
    lines = "".join(f"data: {line}\n" for line in _LINE_END.split(payload))
    return f"{head}{lines}\n".encode()


def event_stream(body: AsyncIterator[bytes], headers: dict[str, str]) -> StreamingResponse:
    """The streamed response for ``body``, a generator of encoded events."""
    return StreamingResponse(body, media_type=SSE_MEDIA_TYPE, headers={**headers, **_NO_BUFFERING})
