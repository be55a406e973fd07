"""``make run``: start Azurite and the local model, then serve the API on 127.0.0.1.

Ctrl-C (or SIGTERM) stops the service and every helper this script started. Ports
come from the environment: PORT (service, 8000), LOCAL_MODEL_PORT (8081),
AZURITE_TABLE_PORT (10002). With SKF_MODEL_PROVIDER set to anything but ``local`` the
local model is not started.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.devservices import ROOT, ManagedProcess, start_azurite, start_local_model, start_service


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Run until interrupted; returns the exit code."""
    port = int(os.environ.get("PORT", "8000"))
    model_port = int(os.environ.get("LOCAL_MODEL_PORT", "8081"))
    table_port = int(os.environ.get("AZURITE_TABLE_PORT", "10002"))
    provider = os.environ.get("SKF_MODEL_PROVIDER", "local")
    wanted = [port, table_port] + ([model_port] if provider == "local" else [])
    busy = [p for p in wanted if _port_in_use(p)]
    if busy:
        print(
            f"port(s) {busy} already in use on 127.0.0.1; stop what holds them or set PORT / "
            "LOCAL_MODEL_PORT / AZURITE_TABLE_PORT",
            file=sys.stderr,
        )
        return 2

    logs = ROOT / ".run"
    logs.mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, _stop)
    started: list[ManagedProcess] = []
    env = {"AzureWebJobsStorage": os.environ.get("AzureWebJobsStorage", "UseDevelopmentStorage=true")}  # noqa: SIM112 (the Functions name)
    try:
        t0 = time.perf_counter()
        started.append(start_azurite(port=table_port, log=logs / "azurite.log"))
        print(f"azurite (tables) on 127.0.0.1:{table_port}  [log .run/azurite.log]")
        if provider == "local":
            started.append(start_local_model(port=model_port, log=logs / "local-model.log"))
            env["SKF_MODEL_BASE_URL"] = os.environ.get(
                "SKF_MODEL_BASE_URL", f"http://127.0.0.1:{model_port}/v1"
            )
            print(f"local model (SmolLM2-135M) on 127.0.0.1:{model_port}  [log .run/local-model.log]")
        service = start_service(port=port, env=env, log=logs / "service.log")
        started.append(service)
        base = f"http://127.0.0.1:{port}"
        print(
            f"\nsk-functions is up in {time.perf_counter() - t0:.1f}s: {base}/api  [log .run/service.log]\n"
        )
        print("Try it:")
        print(f"  curl -s {base}/api/v1/summarize -H 'Content-Type: application/json' \\")
        print(
            '    -d \'{"text": "Azure Functions runs event-driven code without managing servers. '
            'It scales out on demand.", "style": "tldr", "max_words": 20}\''
        )
        print(f"  curl -s {base}/api/v1/functions")
        print(f"  curl -s {base}/api/ready\n")
        print("Ctrl-C stops the service and the helpers.")
        while service.process.poll() is None:
            time.sleep(0.5)
        print(f"service exited with {service.process.returncode}: {service.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    except RuntimeError as exc:
        print(f"could not start: {exc}", file=sys.stderr)
        return 1
    finally:
        for process in reversed(started):
            process.stop()


def _sigint(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGINT, _sigint)
    sys.exit(main())
