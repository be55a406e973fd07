"""End to end through the real embedded model: SmolLM2-135M behind llama.cpp's server.

The service runs as the container host (its own process, real HTTP) with the default
``local`` provider, exactly as ``make run`` starts it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.devservices import free_port, start_local_model, start_service
from sk_core.accounts import Tenant
from sk_core.composition import Service

pytestmark = pytest.mark.local_model


@pytest.fixture(scope="module")
async def local_key(functions_service: Service) -> str:
    """A tenant in the shared Azurite (same pepper as the service below)."""
    tenant_id = "local-" + secrets.token_hex(3)
    await functions_service.tenants.create_tenant(Tenant(id=tenant_id, display_name="Local model"))
    return (await functions_service.tenants.issue_key(tenant_id)).secret


@pytest.fixture(scope="module")
def local_service(tmp_path_factory: pytest.TempPathFactory, service_env: dict[str, str]) -> Iterator[str]:
    logs: Path = tmp_path_factory.mktemp("local-model")
    model_port, service_port = free_port(), free_port()
    model = start_local_model(port=model_port, log=logs / "model.log")
    try:
        service = start_service(
            port=service_port,
            env={
                "SKF_STORAGE_CONNECTION_STRING": service_env["SKF_STORAGE_CONNECTION_STRING"],
                "SKF_API_KEY_PEPPER": service_env["SKF_API_KEY_PEPPER"],
                "SKF_MODEL_PROVIDER": "local",
                "SKF_MODEL_ID": "",
                "SKF_MODEL_PRICES": "",
                "SKF_MODEL_BASE_URL": f"http://127.0.0.1:{model_port}/v1",
                "SKF_MODEL_TIMEOUT_SECONDS": "60",
            },
            log=logs / "service.log",
        )
        try:
            yield f"http://127.0.0.1:{service_port}"
        finally:
            service.stop()
    finally:
        model.stop()


def test_summarize_answers_from_the_local_model(local_service: str, local_key: str) -> None:
    text = (
        "The city council met on Tuesday to discuss the new bike lanes. After a long debate, "
        "the council voted to build three new lanes downtown, to be finished next summer."
    )
    response = httpx.post(
        f"{local_service}/api/v1/summarize",
        json={"text": text, "style": "tldr", "max_words": 20},
        headers={"x-api-key": local_key},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["summary"].strip()
    assert body["model"] == "smollm2"
    usage = body["usage"]
    # Real counts from llama.cpp's tokenizer: the prompt (system text + article) is far
    # more than a handful of tokens, and the answer respects the max_tokens we sent.
    assert usage["prompt_tokens"] > 60
    assert 0 < usage["completion_tokens"] <= 2 * 20 + 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_answers_from_the_local_model(local_service: str, local_key: str) -> None:
    response = httpx.post(
        f"{local_service}/api/v1/chat",
        json={"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 24},
        headers={"x-api-key": local_key},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"]["role"] == "assistant"
    assert body["message"]["content"].strip()
    assert 0 < body["usage"]["completion_tokens"] <= 24


def test_ready_reports_the_local_model(local_service: str) -> None:
    # The first probe of a fresh process may see the kernel still building (503).
    deadline = time.monotonic() + 60
    while True:
        response = httpx.get(f"{local_service}/api/ready", timeout=30)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        assert response.json()["checks"]["kernel"]["status"] == "starting"
        time.sleep(0.5)
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["model"]["status"] == "ok"


def test_the_openai_sdk_streams_from_the_local_model(local_service: str, local_key: str) -> None:
    # llama.cpp's server streams with stream_options.include_usage: its real token
    # counts reach the SDK's usage chunk through our endpoint.
    import openai

    client = openai.OpenAI(base_url=f"{local_service}/api/v1", api_key=local_key, max_retries=0, timeout=120)
    with (
        client,
        client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        ) as stream,
    ):
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens > 5
    assert 0 < usage.completion_tokens <= 24
    assert (chunks[-1].model_extra or {})["cost_usd"] == 0.0  # the local model is free
