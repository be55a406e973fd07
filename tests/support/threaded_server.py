"""A Starlette app served by uvicorn on a background thread, for in-process stand-ins.

Restartable on the same port (a stopped server is a "down" dependency: connection
refused), so clients can reconnect after ``start()`` again.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette


class ThreadedServer:
    """Subclasses set ``app`` (and may add uvicorn options via ``server_options``)."""

    name = "stub"
    app: Starlette

    def __init__(self) -> None:
        self.port = 0  # chosen by the OS on first start, then reused so clients reconnect
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def server_options(self) -> dict[str, Any]:
        """Extra ``uvicorn.Config`` options (TLS, for example)."""
        return {}

    def start(self) -> None:
        """Serve (again, on the same port after a stop); returns once listening."""
        if self._thread is not None:
            return
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            **self.server_options(),
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name=self.name, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.01)
        if not self.port:
            self.port = server.servers[0].sockets[0].getsockname()[1]
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop listening: clients now get connection refused."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        # Until it has really stopped: a test that stops a dependency and then expects
        # refusals must not race a server still answering (a loaded machine took >10 s).
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            raise RuntimeError(f"{self.name} did not stop within 60 s")
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
