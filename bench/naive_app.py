"""Naive baseline: what a first attempt at "SK prompt function behind HTTP" looks like.

    uvicorn bench.naive_app:app   # SKF_MODEL_BASE_URL and SKF_MODEL_ID from the environment

Deliberately unoptimised, as the comparison point for ``cold_start.py``: Semantic
Kernel and the OpenAI connector are imported at module top (so the process pays for
them before it listens), and every request reads the prompt YAML and builds a fresh
OpenAI client, chat service, ``Kernel`` and ``KernelFunction`` before invoking. No
argument validation, retries or error mapping: it is a yardstick, not a service.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import openai
from semantic_kernel import Kernel
from semantic_kernel.connectors.ai.open_ai import OpenAIChatCompletion
from semantic_kernel.functions import KernelArguments, KernelFunction, KernelFunctionFromPrompt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PROMPT = Path(__file__).resolve().parent.parent / "sk_core" / "prompts" / "text" / "summarize.yaml"


def build(base_url: str, model_id: str) -> tuple[Kernel, KernelFunction, openai.AsyncOpenAI]:
    """Everything a request needs, built from scratch (the per-request cost being measured)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="not-needed")
    kernel = Kernel()
    kernel.add_service(OpenAIChatCompletion(ai_model_id=model_id, async_client=client))
    function = KernelFunctionFromPrompt.from_yaml(PROMPT.read_text(encoding="utf-8"), plugin_name="text")
    kernel.add_function(plugin_name="text", function=function)
    return kernel, function, client


async def summarize(request: Request) -> JSONResponse:
    """Build the kernel, invoke summarize, answer the text (build time in ``Server-Timing``)."""
    body: dict[str, Any] = await request.json()
    started = time.perf_counter()
    kernel, function, client = build(os.environ["SKF_MODEL_BASE_URL"], os.environ["SKF_MODEL_ID"])
    build_ms = (time.perf_counter() - started) * 1000
    try:
        result = await kernel.invoke(
            function,
            KernelArguments(
                text=body["text"], style=body.get("style", "paragraph"), max_words=body.get("max_words", 100)
            ),
        )
    finally:
        # Even a naive app should not leak one connection pool per request.
        await client.close()
    timing = {"Server-Timing": f"build;dur={build_ms:.2f}"}
    return JSONResponse({"summary": str(result).strip()}, headers=timing)


async def health(request: Request) -> JSONResponse:
    """Liveness, for symmetry with the real service."""
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/api/v1/summarize", summarize, methods=["POST"]),
        Route("/api/health", health, methods=["GET"]),
    ]
)
