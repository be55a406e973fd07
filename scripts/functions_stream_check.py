"""Under the real Functions Python worker: does a streamed answer's first event leave
before the model has finished?

    PYTHONPATH=. .venv/bin/python scripts/functions_stream_check.py [--chunk-delay 0.25]

``../shared/functions-host/host_emulator.py`` (or ``SKF_FUNCTIONS_HOST_DIR``) runs the
app under the real worker and forwards each HTTP request to the worker's HTTP-streams
endpoint, as the Functions host does; it reads the answer whole. This script runs it in
process with one change: its HTTP client reads the answer as a stream and notes when
each piece arrives. The model is the stub (``tests/support/stub_model.py``) generating
one word every ``--chunk-delay`` seconds; storage is Azurite. Prints the arrival times
and exits 0 only if the stream had several events and the first arrived before the
model could have finished.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from scripts.devservices import ROOT, free_port, start_azurite
from sk_core.storage import development_connection_string
from tests.support.stub_model import start_stub_model

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
ARRIVALS: list[list[tuple[float, int]]] = []


class TimedClient(httpx.Client):
    """``httpx.Client`` whose ``request`` reads the body as a stream, noting arrivals."""

    def request(self, method: str, url: Any, **kwargs: Any) -> httpx.Response:
        started = time.monotonic()
        arrivals: list[tuple[float, int]] = []
        chunks: list[bytes] = []
        with self.stream(method, url, **kwargs) as response:
            for chunk in response.iter_raw():
                arrivals.append((time.monotonic() - started, len(chunk)))
                chunks.append(chunk)
        ARRIVALS.append(arrivals)
        return httpx.Response(response.status_code, headers=response.headers, content=b"".join(chunks))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunk-delay", type=float, default=0.25)
    args = parser.parse_args()
    # Beside the clone (../shared), or beside a worktree's parent folder.
    candidates = [ROOT.parent / "shared" / "functions-host", ROOT.parent.parent / "shared" / "functions-host"]
    default = next((c for c in candidates if (c / "host_emulator.py").exists()), candidates[0])
    host_dir = Path(os.environ.get("SKF_FUNCTIONS_HOST_DIR", default))
    spec = importlib.util.spec_from_file_location("host_emulator", host_dir / "host_emulator.py")
    assert spec is not None
    assert spec.loader is not None
    emulator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(emulator)
    httpx.Client = TimedClient  # type: ignore[misc]  # what invoke_http's forward() uses

    runs = Path(tempfile.mkdtemp(prefix="functions-stream-"))
    stub = start_stub_model()
    port = free_port()
    azurite = start_azurite(port=port, log=runs / "azurite.log")
    try:
        stub.client.set_default(content=" ".join(WORDS), chunk_delay=args.chunk_delay)
        storage = development_connection_string(port)
        python = str(ROOT / ".venv" / "bin" / "python")
        key = subprocess.run(
            [
                python, str(host_dir / "issue_key.py"), str(ROOT), python,
                f"SKF_STORAGE_CONNECTION_STRING={storage}",
            ],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        settings = {
            "SKF_STORAGE_CONNECTION_STRING": storage,
            "SKF_MODEL_PROVIDER": "openai_compatible",
            "SKF_MODEL_BASE_URL": stub.base_url,
            "SKF_MODEL_ID": "stub-model",
            "SKF_MODEL_PRICES": json.dumps({"stub-model": {"input": 1.0, "output": 2.0}}),
        }
        body = {"text": "Streaming under the real worker.", "style": "tldr", "max_words": 20}
        headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
        chat = {"model": "stub-model", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
        requests = [
            {"method": "GET", "path": "/api/ready", "expect": 200, "retry_for": 60},
            {"method": "POST", "path": "/api/v1/summarize", "headers": headers, "json": body, "expect": 200},
            {
                "method": "POST", "path": "/api/v1/chat/completions", "headers": headers, "expect": 200,
                "json": chat,
            },
        ]
        argv = [
            "--app-dir", str(ROOT), "--python", python, "--protos-dir", str(host_dir / "hostprotos"),
            "--quiet",
            "--log-file", str(runs / "host.log"), "--json-out", str(runs / "summary.json"),
        ]
        for name, value in settings.items():
            argv += ["--set", f"{name}={value}"]
        for request in requests:
            argv += ["--request", json.dumps(request)]
        status = emulator.main(argv)
    finally:
        azurite.stop()
        stub.stop()
    model_seconds = args.chunk_delay * len(WORDS)
    ok = status == 0
    for name, arrivals in zip(("summarize", "chat/completions"), ARRIVALS[-2:], strict=True):
        times = [round(t, 3) for t, _ in arrivals]
        print(f"{name}: {len(arrivals)} pieces; first at {times[0]} s, last at {times[-1]} s; "
              f"the model took >= {model_seconds:.2f} s; arrivals {times}")
        ok = ok and len(arrivals) > 3 and times[0] < model_seconds / 2 and times[-1] >= model_seconds * 0.9
    print("transcripts:", runs)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
