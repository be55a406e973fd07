"""Tool runs: what a two-step run costs over the two model calls it is made of.

    PYTHONPATH=. .venv/bin/python bench/tool_run.py [--runs 300] [--rounds 3]

In one process, against the stub model (delay 0) and Azurite, sequentially:

* **run**: ``Pipeline.call`` of ``assist/ask`` (a tool-using function): screen, then two
  steps each admitted (quota lease), invoked and settled, with one ``calc-evaluate``
  tool call between them (its span, timeout, result cap and guard screen);
* **direct**: the same two model requests (the same messages, tools and settings)
  straight through the OpenAI SDK client the kernel uses, nothing else;
* **single**: ``Pipeline.call`` of ``text/summarize`` (one admitted, settled call), to
  put the per-step figure next to what one plain call adds.

Paths alternate in rounds (the order rotated) after a warm-up. Reports p50/p99 per path,
the run's p50 over direct's, and the p50 added per step ((run - direct) / 2). Writes
``bench/results/tool_run.json``. A 2-core machine shared with the stub and Azurite:
relative figures, not capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench._common import backends, machine, markdown_table, ms, percentile, settings_from_env, write_results

QUESTION = "What is 17.5 * 3? Use the calculator."
TOOL_STEP = {
    "tool_calls": [{"name": "calc-evaluate", "arguments": {"expression": "17.5 * 3"}}],
    "prompt_tokens": 420,
    "completion_tokens": 12,
}
ANSWER_STEP = {"content": "17.5 x 3 is 52.5.", "prompt_tokens": 450, "completion_tokens": 8}


async def _measure(
    runs: int, rounds: int, env: dict[str, str], headers: dict[str, str], stub: Any
) -> dict[str, Any]:
    from sk_core.composition import Service

    service = Service.create(settings_from_env(env))
    try:
        ask = service.catalog.get("assist", "ask")
        summarize = service.catalog.get("text", "summarize")
        assert ask is not None
        assert summarize is not None
        assert ask.tools is not None
        principal = await service.pipeline.authenticate(headers, None)
        runtime = await service.runtimes.get()
        assert runtime.toolbox is not None
        client = runtime.client
        model = runtime.routing.chain(None).deployments[0].model
        tools = runtime.toolbox.definitions(ask.tools.names)
        first = await runtime.render_messages(ask, {"question": QUESTION})
        assistant = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "calc-evaluate", "arguments": '{"expression": "17.5 * 3"}'},
                }
            ],
        }
        second = [*first, assistant, {"role": "tool", "tool_call_id": "call_1", "content": "52.5"}]

        async def run() -> None:
            outcome = await service.pipeline.call(
                principal, ask, {"question": QUESTION, "run_limits": None}, max_tokens=None
            )
            assert outcome.run is not None
            assert outcome.run.steps == 2, outcome.run

        async def direct() -> None:
            for messages, choice in ((first, "auto"), (second, "auto")):
                await client.chat.completions.create(
                    model=model,
                    messages=messages,
                    tools=tools,
                    tool_choice=choice,
                    max_tokens=256,
                    temperature=0,
                )

        async def single() -> None:
            await service.pipeline.call(
                principal, summarize, {"text": QUESTION, "style": "tldr", "max_words": 20}, max_tokens=None
            )

        paths: dict[str, Callable[[], Awaitable[None]]] = {"run": run, "direct": direct, "single": single}
        answers = {
            "run": [TOOL_STEP, ANSWER_STEP],
            "direct": [TOOL_STEP, ANSWER_STEP],
            "single": [ANSWER_STEP],
        }
        samples: dict[str, list[float]] = {name: [] for name in paths}

        async def batch(name: str, count: int, keep: bool) -> None:
            # The stub's answers for the whole batch are queued first (a blocking control
            # call, outside the timing); the paths run one at a time, so they pair up.
            stub.script(*(answers[name] * count))
            for _ in range(count):
                started = time.perf_counter()
                await paths[name]()
                if keep:
                    samples[name].append(time.perf_counter() - started)

        for name in paths:  # warm-up: kernel, leases, connection pools
            await batch(name, 20, keep=False)
        order = list(paths)
        for index in range(rounds):
            for name in order[index % len(order) :] + order[: index % len(order)]:
                await batch(name, runs // rounds, keep=True)
        return {name: _stats(values) for name, values in samples.items()}
    finally:
        await service.aclose()


def _stats(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": ms(percentile(values, 50)),
        "p99_ms": ms(percentile(values, 99)),
        "mean_ms": ms(statistics.fmean(values)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=300, help="samples per path")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs, backends(Path(logs)) as be:
        results = asyncio.run(_measure(args.runs, args.rounds, be.env, be.headers, be.stub.client))
    run, direct, single = results["run"], results["direct"], results["single"]
    derived = {
        "run_over_direct_p50_ms": round(run["p50_ms"] - direct["p50_ms"], 2),
        "added_per_step_p50_ms": round((run["p50_ms"] - direct["p50_ms"]) / 2, 2),
        "run_over_direct_ratio": round(run["p50_ms"] / direct["p50_ms"], 2),
        # What one plain admitted call adds over one direct request, for comparison.
        "single_over_one_direct_p50_ms": round(single["p50_ms"] - direct["p50_ms"] / 2, 2),
    }
    write_results("tool_run", {"machine": machine(), "paths": results, "derived": derived})
    print(
        markdown_table(
            ["path", "p50 ms", "p99 ms", "mean ms"],
            [[name, r["p50_ms"], r["p99_ms"], r["mean_ms"]] for name, r in results.items()],
        )
    )
    print(derived)


if __name__ == "__main__":
    main()
