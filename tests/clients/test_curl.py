"""curl, as a script written for OpenAI would call it: the real binary against the
container host, a chat completion whole and streamed (``-N``), read as a shell script
would (the JSON body; the raw event stream)."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

from sk_core.composition import Service
from tests.http.test_openai_compat import MODEL, new_key
from tests.support.hosts import ContainerHost
from tests.support.sse_client import iter_events
from tests.support.stub_model import StubModel

# `make test` apt-installs it when missing (Makefile, as for Chromium).
CURL = shutil.which("curl")


async def _curl(url: str, key: str, body: dict[str, Any]) -> bytes:
    assert CURL is not None, "curl is missing: `make test` installs it"
    process = await asyncio.create_subprocess_exec(
        CURL, "-sS", "-N", "--fail-with-body", "--noproxy", "*", url,
        "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json",
        "--data-binary", "@-",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(json.dumps(body).encode()), timeout=60)
    assert process.returncode == 0, (out, err)
    return out


async def test_curl_gets_a_chat_completion_whole_and_streamed(
    container_host: ContainerHost, functions_service: Service, stub: StubModel
) -> None:
    _, key = await new_key(functions_service)
    url = f"{container_host.base_url}/api/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello from a shell script."}]}
    whole = json.loads(await _curl(url, key, body))
    assert whole["object"] == "chat.completion"
    text = whole["choices"][0]["message"]["content"]
    assert text.startswith("Stub answer: ")

    raw = await _curl(url, key, {**body, "stream": True, "stream_options": {"include_usage": True}})
    events = [e.data for e in iter_events([raw])]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    pieces = [c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"]]
    assert "".join(pieces) == text
    assert chunks[-1]["usage"] == whole["usage"]
    assert stub.stats()["count"] == 2
