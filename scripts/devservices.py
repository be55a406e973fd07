"""Start and stop the local helper processes: Azurite, the local model, the service.

Used by ``make run`` (``scripts/dev.py``), the test fixtures and the benchmarks, so the
way a helper is started, awaited and stopped is written once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Self

ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback only)
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class ManagedProcess:
    """A child process we started and must stop (its whole process group)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log_path = log
        self._log: IO[bytes] | None = open(log, "wb") if log else None  # noqa: SIM115 (lives with the process)
        self.process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            start_new_session=True,  # so stop() reaches grandchildren too
        )

    def wait_until(self, url: str, timeout: float) -> None:
        """Block until ``url`` answers 200; raise with the log's tail if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            if http_ok(url):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout}s: {self.log_tail()}")

    def wait_for_port(self, host: str, port: int, timeout: float) -> None:
        """Block until something accepts TCP connections on ``host:port``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on {host}:{port} within {timeout}s")

    def log_tail(self, size: int = 2000) -> str:
        """The end of the process's log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_bytes()[-size:].decode(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_azurite(
    *, port: int, log: Path | None = None, location: Path | None = None, service: str = "table"
) -> ManagedProcess:
    """Azurite's table (or ``service``) service on loopback (in memory unless ``location`` is given)."""
    entry = ROOT / "node_modules" / "azurite" / "dist" / "src" / service / "main.js"
    if not entry.exists():
        raise RuntimeError("Azurite is not installed: run `npm install` (make does this for you)")
    argv = [
        "node",
        str(entry),
        f"--{service}Host",
        "127.0.0.1",
        f"--{service}Port",
        str(port),
        "--skipApiVersionCheck",
        "--disableProductStyleUrl",
    ]
    argv += ["--location", str(location)] if location else ["--inMemoryPersistence"]
    proc = ManagedProcess("azurite" if service == "table" else f"azurite-{service}", argv, log=log)
    proc.wait_for_port("127.0.0.1", port, timeout=30)
    return proc


def start_azurite_queue(*, port: int, log: Path | None = None) -> ManagedProcess:
    """Azurite's queue service on loopback, in memory (document memory's ingestion queue)."""
    return start_azurite(port=port, log=log, service="queue")


def start_local_model(
    *, port: int, log: Path | None = None, alias: str = "smollm2", parallel: int = 2
) -> ManagedProcess:
    """The embedded SmolLM2 model behind llama.cpp's OpenAI-compatible server."""
    argv = [
        sys.executable,
        str(ROOT / "scripts" / "local_model.py"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--alias",
        alias,
        "--parallel",
        str(parallel),
    ]
    proc = ManagedProcess("local model", argv, log=log)
    proc.wait_until(f"http://127.0.0.1:{port}/health", timeout=120)
    return proc


# Idle time between requests on a kept-alive connection: longer than every client in
# front of us keeps one (ingress-nginx's upstream keep-alive 60 s, httpx's pool 5 s), so
# the client, never the server, closes an idle connection. The other way round, a request
# sent on a connection just as we close it meets a reset, never an answer (issue #23:
# httpx ReadError; nginx answers it with a 502). Idle connections count towards
# LIMIT_CONCURRENCY (uvicorn counts connections too).
KEEP_ALIVE_SECONDS = 75
# Requests in flight per worker before uvicorn answers 503 at once: a flood then costs a
# refusal, not unbounded memory. A ceiling well above per-tenant concurrency limits
# times a handful of busy tenants; not a measured peak (bench/ has the throughput).
LIMIT_CONCURRENCY = 512
# The container host's connection limits, the same in infra/container/Dockerfile's CMD
# (tests/integration/test_infra.py checks). Why these numbers: README, "Connection limits".
UVICORN_FLAGS = (
    "--http",
    "sk_core.asgi:BoundedHttpProtocol",
    "--timeout-keep-alive",
    str(KEEP_ALIVE_SECONDS),
    "--limit-concurrency",
    str(LIMIT_CONCURRENCY),
)


def service_argv(
    *,
    port: int,
    workers: int = 1,
    runner: Sequence[str] = ("-m", "uvicorn"),
    flags: Sequence[str] = UVICORN_FLAGS,
    app: str = "sk_core.asgi:app",
) -> list[str]:
    """The container host's command line on loopback (``runner``: what runs uvicorn's CLI;
    ``flags``: its connection limits, another checkout's for a benchmark; ``app``:
    ``sk_core.asgi:app`` or a wrapper of it such as the soak's tracemalloc one)."""
    return [
        sys.executable,
        *runner,
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
        "--no-server-header",  # do not advertise the server software
        # The container's connection limits (read deadlines, keep-alive, concurrency).
        *flags,
    ]


def start_service(
    *,
    port: int,
    env: Mapping[str, str],
    log: Path | None = None,
    workers: int = 1,
    app: str = "sk_core.asgi:app",
) -> ManagedProcess:
    """The container host (uvicorn serving ``app``: ``sk_core.asgi:app`` or a wrapper)."""
    argv = service_argv(port=port, workers=workers, app=app)
    proc = ManagedProcess("service", argv, env=env, log=log)
    proc.wait_until(f"http://127.0.0.1:{port}/api/health", timeout=60)
    return proc
