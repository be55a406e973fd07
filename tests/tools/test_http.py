"""Tool-using functions over HTTP, on both hosts: the catalog lists their tools, a run's
answer carries its steps, tool calls and cost, and bad run limits are a clear 422."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from sk_core.composition import Service
from tests.support.hosts import Host
from tests.support.stub_model import StubModel

ASK = "/api/v1/functions/assist/ask"


async def test_the_catalog_lists_each_functions_tools_and_run_limits(host: Host) -> None:
    response = await host.request("GET", "/api/v1/functions")
    assert response.status == 200
    functions = {f"{f['plugin']}/{f['name']}": f for f in response.json()["functions"]}
    ask = functions["assist/ask"]
    assert {"plugin": "calc", "name": "evaluate", "description": ask["tools"][0]["description"]} in ask[
        "tools"
    ]
    assert {t["plugin"] for t in ask["tools"]} == {"calc", "clock", "units"}
    assert ask["run_limits"] == {
        "max_steps": 4,
        "max_tool_calls": 8,
        "max_cost_usd": 0.02,
        "tool_timeout_seconds": 2.0,
        "max_result_chars": 2000,
    }
    assert "tools" not in functions["text/summarize"]


async def test_a_run_answers_with_its_steps_tool_calls_and_cost(host: Host, stub: StubModel) -> None:
    stub.script(
        {
            "tool_calls": [
                {"name": "units-convert", "arguments": {"value": 5, "from_unit": "mi", "to_unit": "km"}}
            ],
            "prompt_tokens": 200,
            "completion_tokens": 10,
        },
        {"content": "5 miles is 8.05 km.", "prompt_tokens": 230, "completion_tokens": 7},
    )
    response = await host.request("POST", ASK, json_body={"question": "How far is 5 miles in km?"})
    assert response.status == 200, response.body
    body = response.json()
    assert body["result"] == "5 miles is 8.05 km."
    cost = (200 + 230) * 1e-6 + (10 + 7) * 2e-6  # the stub's prices: $1 and $2 per million
    assert body["cost_usd"] == pytest.approx(cost)
    assert body["usage"]["prompt_tokens"] == 430
    run = body["run"]
    assert (run["status"], run["steps"], run["cost_usd"]) == ("completed", 2, pytest.approx(cost))
    assert "code" not in run  # absent, not null, when complete
    assert [(c["name"], c["outcome"]) for c in run["tool_calls"]] == [("units-convert", "ok")]
    assert float(response.headers["x-request-cost-usd"]) == pytest.approx(cost)


async def test_a_run_stopped_by_a_limit_answers_200_incomplete(
    host: Host, stub: StubModel, functions_service: Service
) -> None:
    stub.set_default(tool_calls=[{"name": "calc-evaluate", "arguments": {"expression": "1"}}])
    response = await host.request(
        "POST", ASK, json_body={"question": "Loop.", "run_limits": {"max_steps": 2}}
    )
    assert response.status == 200, response.body
    run = response.json()["run"]
    assert (run["status"], run["code"], run["steps"]) == ("incomplete", "max_steps", 2)
    assert stub.stats()["count"] == 2
    # The audit row of the call carries the run (written within a second by either host).
    trace = response.headers["x-trace-id"]
    row = await audit_row(functions_service, "contract", trace)
    assert (row["function"], row["steps"], row["tool_calls"], row["run_stop"]) == (
        "assist/ask",
        2,
        1,
        "max_steps",
    )
    assert row["cost_nano"] == round(response.json()["cost_usd"] * 1e9)


async def audit_row(service: Service, tenant_id: str, trace_id: str) -> dict[str, Any]:
    for _ in range(60):
        for row in await service.audit.recent(tenant_id, limit=50):
            if row.get("trace_id") == trace_id:
                return row
        await asyncio.sleep(0.1)
    raise AssertionError(f"no audit row for trace {trace_id}")


@pytest.mark.parametrize(
    "limits",
    [{"max_steps": 5}, {"max_cost_usd": 1}, {"tool_timeout_seconds": 0}, {"retries": 1}, {"max_steps": "2"}],
)
async def test_run_limits_above_the_functions_are_refused_and_nothing_is_sent(
    host: Host, stub: StubModel, limits: dict[str, object]
) -> None:
    response = await host.request("POST", ASK, json_body={"question": "q", "run_limits": limits})
    assert response.status == 422, response.body  # the service's validation status
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert problem["errors"][0]["field"].startswith("run_limits")
    assert stub.stats()["count"] == 0


def events(body: bytes) -> list[tuple[str, Any]]:
    """(event name, data) of each Server-Sent Event."""
    parsed = []
    for block in body.decode().strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        parsed.append((lines.get("event", "message"), json.loads(lines["data"])))
    return parsed


async def test_a_streamed_run_sends_tool_events_then_the_answer_and_its_accounting(
    host: Host, stub: StubModel
) -> None:
    stub.script(
        {
            "tool_calls": [
                {"name": "calc-evaluate", "arguments": {"expression": "6 * 7"}},
                {"name": "clock-weekday", "arguments": {"day": "someday"}},
            ],
            "prompt_tokens": 100,
            "completion_tokens": 10,
        },
        {"content": "42, and the day was not a date.", "prompt_tokens": 150, "completion_tokens": 9},
    )
    response = await host.request(
        "POST", ASK, json_body={"question": "6 * 7?"}, headers={"accept": "text/event-stream"}
    )
    assert response.status == 200, response.body
    assert response.headers["content-type"].startswith("text/event-stream")
    got = events(response.body)
    assert [name for name, _ in got] == ["tool", "tool", "delta", "done"]
    tools = sorted((e["name"], e["outcome"], e["arguments"]) for _, e in got[:2])
    assert tools == [
        ("calc-evaluate", "ok", '{"expression": "6 * 7"}'),
        ("clock-weekday", "error", '{"day": "someday"}'),
    ]
    assert all(e["duration_ms"] >= 0 for _, e in got[:2])
    assert got[2][1] == {"text": "42, and the day was not a date."}
    done = got[3][1]
    cost = (100 + 150) * 1e-6 + (10 + 9) * 2e-6
    assert done["cost_usd"] == pytest.approx(cost)
    assert done["usage"]["prompt_tokens"] == 250
    assert (done["run"]["status"], done["run"]["steps"]) == ("completed", 2)


async def test_a_streamed_run_refused_at_its_first_step_answers_with_the_status(
    host: Host, stub: StubModel
) -> None:
    stub.script({"status": 400})  # the provider rejects the request: no event was sent yet
    response = await host.request(
        "POST", ASK, json_body={"question": "q"}, headers={"accept": "text/event-stream"}
    )
    assert response.status == 502, response.body
    assert response.json()["code"] == "model_error"
