"""Streaming through the service vs. straight from the model, 16 streams at a time.

    PYTHONPATH=. .venv/bin/python bench/streaming.py [--rounds 8] [--concurrency 16]
        [--tree before=/path/to/other/checkout] [--stalls]

Two questions (issue #15):

1. **Time to first token** the service adds: the openai SDK streams a chat completion
   from ``/api/v1/chat/completions`` (the container host: auth, admission, the chat
   function's prompt, the provider stream, streaming redaction, SSE) and straight from
   the model (the stub); TTFT is the time from the request to the first chunk with
   text. Reported: p50 and p99 of each, and service minus direct.
2. **Streamed tokens per second** through the service ÷ direct: tokens (the usage the
   model reports) over the time from the first text chunk to the end of the stream.

The model is the stub (``tests/support/stub_model.py``) with a per-piece delay, so it
generates at a known pace like a real one (``--chunk-delay``, default 20 ms: 50 tokens/s
per stream) and costs no CPU. Rounds alternate direct and service so both see the same
machine load. Redaction is measured both ways: with the default kinds (a word is held
back until the blank after it arrives: the stub sends "word " pieces, so nothing waits
on the next piece) and with redaction off (``SKF_REDACTION=""``), in two service
processes started one after the other. Writes ``bench/results/streaming.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import openai

from bench._common import (
    backends,
    machine,
    markdown_table,
    ms,
    percentile,
    process_cpu_seconds,
    write_results,
)
from bench.load import start_tree
from scripts.devservices import ROOT

CONTENT = " ".join(["streaming", "keeps", "chat", "interfaces", "responsive", "for", "people"] * 9)[:400]
MESSAGES: Any = [{"role": "user", "content": "Tell me about streaming."}]


async def one_stream(client: openai.AsyncOpenAI, model: str) -> tuple[float, float, int]:
    """(TTFT, seconds from the first text to the end, completion tokens) of one stream."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}, max_tokens=256
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    ended = time.perf_counter()
    if first is None or tokens == 0:
        raise RuntimeError("a stream without text or usage")
    return first - started, ended - first, tokens


async def round_of(
    client: openai.AsyncOpenAI, model: str, concurrency: int
) -> list[tuple[float, float, int]]:
    return list(await asyncio.gather(*(one_stream(client, model) for _ in range(concurrency))))


def figures(samples: list[tuple[float, float, int]]) -> dict[str, Any]:
    ttft = [s[0] for s in samples]
    rates = [s[2] / s[1] for s in samples if s[1] > 0]
    return {
        "n": len(samples),
        "ttft_p50_ms": ms(percentile(ttft, 50)),
        "ttft_p99_ms": ms(percentile(ttft, 99)),
        "tokens_per_second_median": round(statistics.median(rates), 2),
    }


async def measure(stub_url: str, services: dict[str, tuple[str, int, str]], rounds: int,
                  concurrency: int) -> dict[str, Any]:
    """Rounds of direct streams and of each service's, alternating (the services' order
    rotating), so background load lands on all of them."""
    direct = openai.AsyncOpenAI(base_url=stub_url, api_key="none", max_retries=0, timeout=60)
    clients = {name: openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)
               for name, (url, _, key) in services.items()}
    cpu = dict.fromkeys(clients, 0.0)  # the service process's CPU seconds over its rounds
    try:
        for client in clients.values():  # warm: kernel, leases, connections
            await round_of(client, "stub-model", concurrency)
        await round_of(direct, "stub-model", concurrency)
        straight: list[tuple[float, float, int]] = []
        through: dict[str, list[tuple[float, float, int]]] = {name: [] for name in clients}
        names = list(clients)
        for round_ in range(rounds):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                straight += await round_of(direct, "stub-model", concurrency)
                before = process_cpu_seconds(services[name][1])
                through[name] += await round_of(clients[name], "stub-model", concurrency)
                cpu[name] += process_cpu_seconds(services[name][1]) - before
        d = figures(straight)
        results = {}
        for name, samples in through.items():
            s = figures(samples)
            results[name] = {
                "direct": d,
                "service": s,
                "ttft_added_p50_ms": round(s["ttft_p50_ms"] - d["ttft_p50_ms"], 2),
                "ttft_added_p99_ms": round(s["ttft_p99_ms"] - d["ttft_p99_ms"], 2),
                "tokens_per_second_ratio": round(
                    s["tokens_per_second_median"] / d["tokens_per_second_median"], 3),
                # The steadier figure on a shared machine: what one stream costs the service.
                "service_cpu_ms_per_stream": ms(cpu[name] / len(samples)),
            }
        return results
    finally:
        await direct.close()
        for client in clients.values():
            await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--chunk-delay", type=float, default=0.02)
    parser.add_argument("--words", type=int, default=0,
                        help="answers of this many words (default: all); 1 isolates a stream's setup")
    parser.add_argument("--tree", action="append", default=[],
                        help="label=PATH: also stream through that checkout's service (e.g. the base commit)")
    parser.add_argument("--stalls", action="store_true", help="run the services under bench/_stallwatch.py")
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn workers per service (the image runs 2); the CPU column counts the "
                             "first process only")  # fmt: skip
    parser.add_argument("--name", default="streaming", help="results file: bench/results/<name>.json")
    args = parser.parse_args()
    logs = Path(os.environ.get("BENCH_LOGS", ".run/bench"))
    logs.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    results: dict[str, Any] = {}
    with backends(logs) as backing:
        content = " ".join(CONTENT.split()[: args.words]) if args.words else CONTENT
        backing.stub.client.set_default(delay=0, content=content, chunk_delay=args.chunk_delay)
        trees = [("service", ROOT)] + [(label, Path(path).resolve())
                                       for label, path in (t.split("=", 1) for t in args.tree)]
        # A tenant per tree: on one tenant the first service started would hold its
        # allocator for both (an A/A run put it 6.8 ms of CPU a stream behind).
        first = backing.headers.get("x-api-key", "none")
        keys = {label: backing.tenant_key(f"bench-{n}") if n else first for n, (label, _) in enumerate(trees)}
        for label, extra in (("redaction_on", {}), ("redaction_off", {"SKF_REDACTION": ""})):
            started = []
            try:
                for tree_label, tree in trees:
                    log = logs / f"streaming-{tree_label}-{label}.log"
                    process, url = start_tree(tree, {**backing.env, **extra}, log, stalls=args.stalls,
                                              workers=args.workers)  # fmt: skip
                    started.append((tree_label, process, url))
                services = {name: (url, process.process.pid, keys[name]) for name, process, url in started}
                stub_url = backing.stub.base_url
                measured = asyncio.run(measure(stub_url, services, args.rounds, args.concurrency))
            finally:
                for _, process, _ in started:
                    process.stop()
            for tree_label, figures_ in measured.items():
                results[label if len(trees) == 1 else f"{tree_label}, {label}"] = figures_
    rows = [
        [
            label,
            r["direct"]["ttft_p50_ms"], r["service"]["ttft_p50_ms"], r["ttft_added_p50_ms"],
            r["direct"]["ttft_p99_ms"], r["service"]["ttft_p99_ms"], r["ttft_added_p99_ms"],
            r["tokens_per_second_ratio"], r["service_cpu_ms_per_stream"],
        ]
        for label, r in results.items()
    ]
    print(
        markdown_table(
            ["service", "TTFT p50 direct", "via service", "added", "TTFT p99 direct", "via service", "added",
             "tokens/s ratio", "service CPU ms/stream"],
            rows,
        )
    )
    path = write_results(
        args.name,
        {
            "config": {
                "rounds": args.rounds, "concurrency": args.concurrency, "chunk_delay_s": args.chunk_delay,
                "words": args.words or len(CONTENT.split()), "workers": args.workers,
            },
            "results": results,
            "machine": machine(),
            "load_average": {"start": load_start, "end": os.getloadavg()},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
