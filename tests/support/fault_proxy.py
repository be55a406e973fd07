"""A TCP fault proxy: real sockets between the service and a dependency, with faults.

Modes (switchable at any time; they apply to connections already open too, so a
client's pooled keep-alive connections see the fault as a real network would show it):

* ``pass``: bytes flow both ways.
* ``latency``: every chunk, either way, waits ``latency`` seconds first.
* ``blackhole``: bytes are read and dropped; nothing is forwarded and nothing answers
  (what a firewall that drops packets looks like: only the client's timeouts end it).
* ``reset``: open connections are reset (RST), new ones are accepted and reset at once.

A refused connection needs no proxy: point the client at a port nothing listens on.

The proxy runs its own event loop in a daemon thread, so synchronous tests, async tests
(whatever their loop) and the soak benchmark drive it the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Literal

Mode = Literal["pass", "latency", "blackhole", "reset"]


def _reset(writer: asyncio.StreamWriter) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """Listens on a loopback port and forwards to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = 0
        self.mode: Mode = "pass"
        self.latency = 0.0
        self.connections = 0  # accepted since start
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> FaultProxy:
        """Start listening (on a free port); returns self."""
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, self.host, 0), self._loop
        ).result(5)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        """Close every connection and the listener; stop the thread."""

        async def close() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def set(self, mode: Mode, latency: float = 0.0) -> None:
        """Switch the fault; ``reset`` also resets every open connection now."""
        self.latency = latency
        self.mode = mode
        if mode == "reset":

            async def reset_all() -> None:
                for writer in list(self._writers):
                    _reset(writer)

            asyncio.run_coroutine_threadsafe(reset_all(), self._loop).result(5)

    @property
    def address(self) -> str:
        """``host:port`` to put in a client's URL."""
        return f"{self.host}:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "reset":
            _reset(writer)
            return
        self._writers.add(writer)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                _reset(writer)  # upstream down: the client sees its connection reset
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                if self.mode == "blackhole":
                    continue  # swallowed: the other side waits for its timeout
                if self.mode == "latency" and self.latency > 0:
                    await asyncio.sleep(self.latency)
                if self.mode == "reset":
                    return
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()  # one side finished or failed: end the other, as a proxy does
