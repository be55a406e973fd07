"""``make run``: start Azurite and the local model, then serve the API on 127.0.0.1.

Ctrl-C (or SIGTERM) stops the service and every helper this script started. Ports
come from the environment: PORT (service, 8000), LOCAL_MODEL_PORT (8081),
AZURITE_TABLE_PORT (10002), AZURITE_QUEUE_PORT (10001). With SKF_MODEL_PROVIDER set to
anything but ``local`` the local model is not started.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.devservices import (
    ROOT,
    ManagedProcess,
    start_azurite,
    start_azurite_queue,
    start_local_model,
    start_service,
)
from sk_core.storage import development_connection_string


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _provision_dev_key(connection_string: str) -> str:
    """A ``dev`` tenant (default limits) and a fresh key for it, in the local Azurite."""
    from pydantic import SecretStr

    from sk_core.accounts import Tenant
    from sk_core.composition import make_store, make_tenant_store
    from sk_core.settings import Settings

    settings = Settings(storage_connection_string=SecretStr(connection_string))
    store = make_store(settings)
    try:
        tenants = make_tenant_store(settings, store)
        if await tenants.get_tenant("dev") is None:
            await tenants.create_tenant(Tenant(id="dev", display_name="Local development"))
        return (await tenants.issue_key("dev", name="make-run")).secret
    finally:
        await store.aclose()


def _stop(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Run until interrupted; returns the exit code."""
    port = int(os.environ.get("PORT", "8000"))
    model_port = int(os.environ.get("LOCAL_MODEL_PORT", "8081"))
    table_port = int(os.environ.get("AZURITE_TABLE_PORT", "10002"))
    queue_port = int(os.environ.get("AZURITE_QUEUE_PORT", "10001"))  # document memory's ingestion queue
    provider = os.environ.get("SKF_MODEL_PROVIDER", "local")
    wanted = [port, table_port, queue_port] + ([model_port] if provider == "local" else [])
    busy = [p for p in wanted if _port_in_use(p)]
    if busy:
        print(
            f"port(s) {busy} already in use on 127.0.0.1; stop what holds them or set PORT / "
            "LOCAL_MODEL_PORT / AZURITE_TABLE_PORT / AZURITE_QUEUE_PORT",
            file=sys.stderr,
        )
        return 2

    logs = ROOT / ".run"
    logs.mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, _stop)
    started: list[ManagedProcess] = []
    # One account, tables and the ingestion queue (document memory), as in Azure.
    storage = (
        f"{development_connection_string(table_port)}"
        f"QueueEndpoint=http://127.0.0.1:{queue_port}/devstoreaccount1;"
    )
    env = {"SKF_STORAGE_CONNECTION_STRING": os.environ.get("SKF_STORAGE_CONNECTION_STRING", storage)}
    try:
        t0 = time.perf_counter()
        started.append(start_azurite(port=table_port, log=logs / "azurite.log"))
        print(f"azurite (tables) on 127.0.0.1:{table_port}  [log .run/azurite.log]")
        started.append(start_azurite_queue(port=queue_port, log=logs / "azurite-queue.log"))
        print(f"azurite (queue) on 127.0.0.1:{queue_port}  [log .run/azurite-queue.log]")
        key = asyncio.run(_provision_dev_key(env["SKF_STORAGE_CONNECTION_STRING"]))
        if provider == "local":
            started.append(start_local_model(port=model_port, log=logs / "local-model.log"))
            env["SKF_MODEL_BASE_URL"] = os.environ.get(
                "SKF_MODEL_BASE_URL", f"http://127.0.0.1:{model_port}/v1"
            )
            print(f"local model (SmolLM2-135M) on 127.0.0.1:{model_port}  [log .run/local-model.log]")
        service = start_service(port=port, env=env, log=logs / "service.log")
        started.append(service)
        base = f"http://127.0.0.1:{port}"
        # Readiness builds the kernel: wait for it so the first curl answers at full speed.
        service.wait_until(f"{base}/api/ready", timeout=120)
        print(
            f"\nsk-functions is up in {time.perf_counter() - t0:.1f}s: {base}/api  [log .run/service.log]\n"
        )
        print(f"API key of the 'dev' tenant (make run issues a new one each start):\n  {key}\n")
        print("Try it:")
        print(f"  curl -s {base}/api/v1/summarize -H 'Content-Type: application/json' \\")
        print(f"    -H 'X-API-Key: {key}' \\")
        print(
            '    -d \'{"text": "Azure Functions runs event-driven code without managing servers. '
            'It scales out on demand.", "style": "tldr", "max_words": 20}\''
        )
        print(f"  curl -s {base}/api/v1/functions -H 'X-API-Key: {key}'")
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
