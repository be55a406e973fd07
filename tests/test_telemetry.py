"""Telemetry: the span tree of one request, metrics that match the response, trace
context continued from the caller, no prompt text or keys in logs, and a real OTLP
export to a receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from scripts.devservices import free_port, start_service
from sk_core.accounts import Limits, Tenant
from sk_core.composition import Service
from tests.support.hosts import FunctionsHost
from tests.support.metrics import metric_points
from tests.support.processes import run_fresh_python
from tests.support.stub_model import StubModel
from tests.support.telemetry import TelemetrySink

SUMMARIZE = "/api/v1/summarize"
PROMPT = "The quarterly report shows revenue grew nine percent in Lisbon."  # must never reach logs


@pytest.fixture(scope="module")
async def caller(functions_service: Service) -> tuple[str, str]:
    tenant_id = "otel-" + secrets.token_hex(3)
    await functions_service.tenants.create_tenant(
        Tenant(id=tenant_id, display_name="OTel", limits=Limits(daily_budget_nano=10**12))
    )
    return tenant_id, (await functions_service.tenants.issue_key(tenant_id)).secret


@pytest.fixture
def host(
    functions_app_functions: list[Any], functions_service: Service, caller: tuple[str, str]
) -> FunctionsHost:
    return FunctionsHost(functions_app_functions, {"x-api-key": caller[1]})


async def test_one_request_is_one_span_tree_continuing_the_callers_trace(
    host: FunctionsHost, stub: StubModel, telemetry_sink: TelemetrySink
) -> None:
    telemetry_sink.spans.clear()
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    stub.script({"content": "Revenue grew.", "prompt_tokens": 80, "completion_tokens": 4})
    response = await host.request(
        "POST",
        SUMMARIZE,
        json_body={"text": PROMPT},
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    assert response.status == 200, response.body
    assert response.headers["x-trace-id"] == trace_id
    spans = [
        s for s in telemetry_sink.spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id
    ]
    by_name = {s.name: s for s in spans}
    server = by_name[f"POST {SUMMARIZE}"]
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == parent_id  # continued, not a new trace
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == SUMMARIZE
    stages = ["authenticate", "validate", "admit", "invoke", "settle"]
    for stage in stages:
        parent = by_name[stage].parent
        assert parent is not None
        assert parent.span_id == server.context.span_id, stage
    ordered = sorted((by_name[s] for s in stages), key=lambda s: s.start_time or 0)
    assert [s.name for s in ordered] == stages
    # Semantic Kernel's own spans nest under our invoke span, with its gen_ai usage.
    sk_spans = [s for s in spans if s.name.startswith(("chat ", "execute_tool"))]
    assert sk_spans, [s.name for s in spans]
    invoke = by_name["invoke"]
    ids = {s.context.span_id: s for s in spans}

    def under_invoke(span: Any) -> bool:
        while span.parent is not None:
            if span.parent.span_id == invoke.context.span_id:
                return True
            span = ids.get(span.parent.span_id)
            if span is None:
                return False
        return False

    assert all(under_invoke(s) for s in sk_spans)
    chat = next(s for s in sk_spans if s.name.startswith("chat "))
    assert chat.attributes is not None
    assert chat.attributes["gen_ai.usage.input_tokens"] == 80
    assert chat.attributes["gen_ai.usage.output_tokens"] == 4


async def test_token_and_cost_metrics_equal_the_response(
    host: FunctionsHost, stub: StubModel, telemetry_sink: TelemetrySink, caller: tuple[str, str]
) -> None:
    tenant_id = caller[0]

    def totals() -> tuple[int, int, float, int]:
        tokens = [
            p
            for p in metric_points(telemetry_sink, "gen_ai.client.token.usage")
            if p.attributes.get("sk.tenant") == tenant_id
        ]
        inputs = sum(p.sum for p in tokens if p.attributes["gen_ai.token.type"] == "input")
        outputs = sum(p.sum for p in tokens if p.attributes["gen_ai.token.type"] == "output")
        cost = sum(
            p.value
            for p in metric_points(telemetry_sink, "sk.cost")
            if p.attributes.get("sk.tenant") == tenant_id
        )
        calls = sum(
            p.count
            for p in metric_points(telemetry_sink, "gen_ai.client.operation.duration")
            if p.attributes.get("sk.tenant") == tenant_id
        )
        return int(inputs), int(outputs), float(cost), int(calls)

    before = totals()
    stub.script(
        {"content": "A short answer.", "prompt_tokens": 321, "completion_tokens": 17, "model": "m-2025"}
    )
    response = await host.request("POST", SUMMARIZE, json_body={"text": "measure me"})
    assert response.status == 200, response.body
    body = response.json()
    after = totals()
    assert after[0] - before[0] == body["usage"]["prompt_tokens"] == 321
    assert after[1] - before[1] == body["usage"]["completion_tokens"] == 17
    assert after[2] - before[2] == pytest.approx(body["cost_usd"])
    assert after[3] - before[3] == 1
    points = [
        p
        for p in metric_points(telemetry_sink, "gen_ai.client.token.usage")
        if p.attributes.get("sk.tenant") == tenant_id
    ]
    point = next(p for p in points if p.attributes["gen_ai.response.model"] == "m-2025")
    assert point.attributes["sk.function"] == "text/summarize"


async def test_refusals_and_requests_are_counted_by_reason_route_and_status(
    host: FunctionsHost, telemetry_sink: TelemetrySink
) -> None:
    def refusals(reason: str) -> int:
        return int(
            sum(
                p.value
                for p in metric_points(telemetry_sink, "sk.refusals")
                if p.attributes["reason"] == reason
            )
        )

    def requests(status: int) -> int:
        return int(
            sum(
                p.count
                for p in metric_points(telemetry_sink, "http.server.request.duration")
                if p.attributes["http.route"] == SUMMARIZE
                and p.attributes["http.response.status_code"] == status
            )
        )

    auth, validation, unauthorized = refusals("auth"), refusals("validation"), requests(401)
    await host.request("POST", SUMMARIZE, json_body={"text": "x"}, headers={"x-api-key": None})
    await host.request("POST", SUMMARIZE, json_body={"text": ""})
    assert refusals("auth") == auth + 1
    assert refusals("validation") == validation + 1
    assert requests(401) == unauthorized + 1


async def test_logs_carry_trace_ids_and_no_prompt_text_or_keys(
    host: FunctionsHost,
    stub: StubModel,
    telemetry_sink: TelemetrySink,
    caller: tuple[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry_sink.logs.clear()
    stub.script({"status": 500}, {"status": 500}, {"status": 500})  # provider errors get logged
    with caplog.at_level("DEBUG"):
        response = await host.request("POST", SUMMARIZE, json_body={"text": PROMPT})
    assert response.status == 502
    exported = telemetry_sink.logs.get_finished_logs()
    assert exported, "warnings about the failed model call should be exported"
    texts = [str(r.log_record.body) + str(dict(r.log_record.attributes or {})) for r in exported]
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        assert PROMPT not in text
        assert caller[1] not in text
        assert "SECRET-PROVIDER-TEXT" not in text
    assert any(r.log_record.trace_id for r in exported)  # correlated with the request's trace


async def test_spans_carry_no_prompt_text_unless_sensitive_diagnostics_are_on(
    host: FunctionsHost, stub: StubModel, telemetry_sink: TelemetrySink
) -> None:
    telemetry_sink.spans.clear()
    response = await host.request("POST", SUMMARIZE, json_body={"text": PROMPT})
    assert response.status == 200
    for span in telemetry_sink.spans.get_finished_spans():
        recorded = str(dict(span.attributes or {})) + str([dict(e.attributes or {}) for e in span.events])
        assert PROMPT not in recorded, span.name


class _Receiver(BaseHTTPRequestHandler):
    bodies: dict[str, list[bytes]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.bodies.setdefault(self.path, []).append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def running_otlp_receiver() -> Iterator[tuple[int, dict[str, list[bytes]]]]:
    """A loopback OTLP/HTTP receiver: its port, and the bodies POSTed to each path."""
    bodies: dict[str, list[bytes]] = {}
    handler = type("Receiver", (_Receiver,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], bodies
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[int, dict[str, list[bytes]]]]:
    with running_otlp_receiver() as receiver:
        yield receiver


def exported_spans(bodies: dict[str, list[bytes]]) -> list[Any]:
    return [
        span
        for body in bodies.get("/v1/traces", [])
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]


async def test_container_host_exports_otlp_to_a_real_receiver(
    otlp_receiver: tuple[int, dict[str, list[bytes]]],
    service_env: dict[str, str],
    caller: tuple[str, str],
    stub: StubModel,
    tmp_path: Path,
) -> None:
    port, bodies = otlp_receiver
    env = {
        **service_env,
        "SKF_TELEMETRY_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
    }
    service_port = free_port()
    process = start_service(port=service_port, env=env, log=tmp_path / "service.log")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service_port}", timeout=60) as client:
            response = await client.post(
                SUMMARIZE, json={"text": "export me"}, headers={"x-api-key": caller[1]}
            )
            assert response.status_code == 200, response.text
            trace_id = response.headers["x-trace-id"]
            prometheus = await client.get("/metrics")
        deadline = time.monotonic() + 20
        spans: list[Any] = []
        metric_names: set[str] = set()
        while time.monotonic() < deadline:
            spans = exported_spans(bodies)
            metric_names = {
                metric.name
                for body in bodies.get("/v1/metrics", [])
                for rm in ExportMetricsServiceRequest.FromString(body).resource_metrics
                for sm in rm.scope_metrics
                for metric in sm.metrics
            }
            if (
                any(s.name == f"POST {SUMMARIZE}" for s in spans)
                and "gen_ai.client.token.usage" in metric_names
            ):
                break
            await asyncio.sleep(0.2)
    finally:
        process.stop()
    server_span = next(s for s in spans if s.name == f"POST {SUMMARIZE}")
    assert server_span.trace_id.hex() == trace_id
    assert {"authenticate", "admit", "invoke", "settle"} <= {
        s.name for s in spans if s.trace_id.hex() == trace_id
    }
    assert {"gen_ai.client.token.usage", "sk.cost", "http.server.request.duration"} <= metric_names
    assert prometheus.status_code == 200
    assert "gen_ai_client_token_usage" in prometheus.text


# --------------------------------------------------------------------------------------
# Setup that cannot complete, and the app under the real Functions worker
# --------------------------------------------------------------------------------------

_CAPTURE_TELEMETRY_LOGS = """
    import json, logging, os, sys
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logging.getLogger("sk_core.telemetry").addHandler(Keep())
"""


def test_a_failed_setup_is_logged_once_never_raises_and_is_retried() -> None:
    result = run_fresh_python(
        _CAPTURE_TELEMETRY_LOGS
        + """
    sys.modules["opentelemetry.sdk.trace"] = None  # as if the SDK could not be imported
    from opentelemetry import trace
    from sk_core import telemetry
    from sk_core.settings import Settings

    settings = Settings.model_validate({"telemetry_exporter": "none"})
    attempts = [telemetry.setup_telemetry(settings, host="test") for _ in range(3)]
    installed_after_failures = telemetry.installed()
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    del sys.modules["opentelemetry.sdk.trace"]
    retried = telemetry.setup_telemetry(settings, host="test")
    print(json.dumps({
        "attempts": attempts, "installed_after_failures": installed_after_failures,
        "errors": errors, "retried": retried, "installed": telemetry.installed(),
        "provider": type(trace.get_tracer_provider()).__name__,
    }))
    """
    )
    assert result["attempts"] == [False, False, False]
    assert result["installed_after_failures"] is False
    assert len(result["errors"]) == 1, result["errors"]
    assert "telemetry is off" in result["errors"][0]
    assert "opentelemetry.sdk.trace" in result["errors"][0]  # says what failed
    assert result["retried"] is True
    assert result["installed"] is True
    assert result["provider"] == "TracerProvider"  # the SDK's, not the API's no-op proxy


def test_otlp_grpc_that_cannot_load_falls_back_to_http_and_says_so_once(
    otlp_receiver: tuple[int, dict[str, list[bytes]]],
) -> None:
    port, bodies = otlp_receiver
    result = run_fresh_python(
        _CAPTURE_TELEMETRY_LOGS
        + f"""
    os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:{port}"
    # What the worker's old protobuf does to the gRPC exporter's import, by other means.
    sys.modules["opentelemetry.exporter.otlp.proto.grpc"] = None
    from opentelemetry import trace
    from sk_core import telemetry
    from sk_core.settings import Settings

    settings = Settings.model_validate({{"telemetry_exporter": "otlp"}})
    installed = telemetry.setup_telemetry(settings, host="test")
    telemetry.setup_telemetry(settings, host="test")
    with telemetry.tracer().start_as_current_span("fallback-probe"):
        pass
    trace.get_tracer_provider().force_flush()
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    print(json.dumps({{"installed": installed, "warnings": warnings}}))
    """
    )
    assert result["installed"] is True
    assert len(result["warnings"]) == 1, result["warnings"]
    warning = result["warnings"][0]
    assert "gRPC is unavailable" in warning
    assert f"http://127.0.0.1:{port}/v1/traces" in warning
    assert [s.name for s in exported_spans(bodies)] == ["fallback-probe"]


def test_the_http_twin_of_a_grpc_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from sk_core.telemetry import _http_twin_of_grpc_endpoint

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    for signal in ("traces", "metrics", "logs"):
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", raising=False)
    assert _http_twin_of_grpc_endpoint("traces") is None  # the exporter's own default
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    assert _http_twin_of_grpc_endpoint("traces") == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://otel.example.net:9000/")
    assert _http_twin_of_grpc_endpoint("metrics") == "https://otel.example.net:9000/v1/metrics"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "collector:4317")
    assert _http_twin_of_grpc_endpoint("logs") == "http://collector:4318/v1/logs"


@pytest.mark.parametrize(
    ("worker_runtime", "log_format", "lines"),
    [("", "json", 1), ("", "text", 1), ("python", "json", 0), ("python", "text", 0)],
)
def test_log_lines_go_to_stderr_in_the_chosen_format_except_under_the_functions_worker(
    worker_runtime: str, log_format: str, lines: int
) -> None:
    code = f"""
    import logging, os
    os.environ["FUNCTIONS_WORKER_RUNTIME"] = {worker_runtime!r}
    from sk_core import telemetry
    from sk_core.settings import Settings

    telemetry.setup_telemetry(
        Settings.model_validate({{"telemetry_exporter": "none", "log_format": {log_format!r}}}), host="test"
    )
    logging.getLogger("sk_core.test").warning("the marker line")
    print("stdout stays clean")
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=120,
    )
    assert out.stdout == "stdout stays clean\n"
    logged = [line for line in out.stderr.splitlines() if "the marker line" in line]
    assert len(logged) == lines
    if logged and log_format == "json":
        entry = json.loads(logged[0])
        assert (entry["level"], entry["logger"]) == ("WARNING", "sk_core.test")
    elif logged:
        assert " WARNING sk_core.test - the marker line" in logged[0]


# The real Azure Functions Python worker, driven by the shared host stand-in (see its
# README). It lives beside the repository on CI and on our machines; elsewhere (or
# pointed at another copy with SKF_FUNCTIONS_HOST_DIR) these tests skip.
ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_HOST = Path(os.environ.get("SKF_FUNCTIONS_HOST_DIR") or ROOT.parent / "shared" / "functions-host")
needs_functions_host = pytest.mark.skipif(
    not (FUNCTIONS_HOST / "host_emulator.py").exists(),
    reason=f"the Functions host stand-in is not at {FUNCTIONS_HOST}",
)


@dataclass
class WorkerRun:
    summary: dict[str, Any]
    transcript: list[str]
    bodies: dict[str, list[bytes]]

    def worker_logs(self, needle: str) -> list[str]:
        """Lines the worker forwarded to the host over its gRPC log channel."""
        return [line for line in self.transcript if "[worker log " in line and needle in line]

    def stdout_json_lines(self) -> list[str]:
        """Lines the worker process wrote to stdout as our JSON log lines."""
        return [line for line in self.transcript if '[worker stdout] {"time"' in line]


@pytest.fixture(scope="module")
async def worker_run(
    functions_service: Service, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[WorkerRun]:
    """One run of the app under the real worker, with OTLP over gRPC asked for and JSON
    logs on: the two settings that went wrong there."""
    if not (FUNCTIONS_HOST / "host_emulator.py").exists():
        pytest.skip(f"the Functions host stand-in is not at {FUNCTIONS_HOST}")
    tenant_id = "worker-" + secrets.token_hex(3)
    await functions_service.tenants.create_tenant(
        Tenant(id=tenant_id, display_name="Worker", limits=Limits(daily_budget_nano=10**12))
    )
    key = (await functions_service.tenants.issue_key(tenant_id)).secret
    runs = tmp_path_factory.mktemp("functions-host")
    with running_otlp_receiver() as (port, bodies):
        values = {
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "PYTHON_ENABLE_INIT_INDEXING": "1",
            "AzureWebJobsStorage": service_env["SKF_STORAGE_CONNECTION_STRING"],
            **service_env,
            "SKF_LOG_FORMAT": "json",
            "SKF_TELEMETRY_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BLRP_SCHEDULE_DELAY": "100",
        }
        (runs / "settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": values}))
        summarize = {
            "method": "POST",
            "path": SUMMARIZE,
            "headers": {"x-api-key": key},
            "json": {"text": "export me from the worker"},
            "expect": 200,
        }
        # /api/ready is the first request to build the service (and set telemetry up):
        # no retry_for, so a 500 there fails the run.
        requests = ["GET /api/health 200", "GET /api/ready 200", json.dumps(summarize), "GET /api/ready 200"]
        command = [
            sys.executable,
            str(FUNCTIONS_HOST / "host_emulator.py"),
            *("--app-dir", str(ROOT), "--python", sys.executable, "--quiet"),
            *("--protos-dir", str(FUNCTIONS_HOST / "hostprotos")),
            *("--settings", str(runs / "settings.json")),
            *("--log-file", str(runs / "transcript.log"), "--json-out", str(runs / "summary.json")),
            *(arg for request in requests for arg in ("--request", request)),
        ]
        env = {**os.environ, "PYTHONPYCACHEPREFIX": str(runs / "pycache")}
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await asyncio.wait_for(process.wait(), timeout=300)
        yield WorkerRun(
            summary=json.loads((runs / "summary.json").read_text()),
            transcript=(runs / "transcript.log").read_text().splitlines(),
            bodies=bodies,
        )


@needs_functions_host
def test_under_the_worker_every_request_answers_with_otlp_grpc_asked_for(worker_run: WorkerRun) -> None:
    invocations = worker_run.summary["invocations"]
    assert [(i["request"], i.get("http_status")) for i in invocations] == [
        ("GET /api/health", 200),
        ("GET /api/ready", 200),
        (f"POST {SUMMARIZE}", 200),
        ("GET /api/ready", 200),
    ]
    assert worker_run.summary["ok"] is True, worker_run.summary.get("error")
    assert worker_run.summary["worker_error_logs"] == []


@needs_functions_host
def test_under_the_worker_telemetry_falls_back_to_http_and_exports(worker_run: WorkerRun) -> None:
    # Said once, through the worker's log channel, and nowhere else.
    fallback = [line for line in worker_run.transcript if "gRPC is unavailable" in line]
    assert len(fallback) == 1, fallback
    assert worker_run.worker_logs("gRPC is unavailable") == fallback
    assert "runtime_version" in fallback[0]  # the real cause: the worker's protobuf 4.25
    spans = exported_spans(worker_run.bodies)
    assert f"POST {SUMMARIZE}" in {s.name for s in spans}
    assert "invoke" in {s.name for s in spans}
    resources = [
        {a.key: a.value.string_value for a in rs.resource.attributes}
        for body in worker_run.bodies["/v1/traces"]
        for rs in ExportTraceServiceRequest.FromString(body).resource_spans
    ]
    assert all(r["sk.host"] == "functions" for r in resources)


@needs_functions_host
def test_under_the_worker_log_lines_go_through_its_channel_once(worker_run: WorkerRun) -> None:
    assert worker_run.stdout_json_lines() == []
    # The app's own lines still reach the host, through the worker's channel.
    assert worker_run.worker_logs("sk_core.")


def test_every_worker_process_reports_its_own_service_instance_id() -> None:
    """Several uvicorn workers or Functions worker processes push cumulative counters: each
    needs its own ``service.instance.id`` or the collector sees one series jump between
    them. A configured id (OTEL_RESOURCE_ATTRIBUTES) stays recognisable as the prefix."""
    code = """
        import os
        from sk_core.telemetry import _resource
        print(_resource("container").attributes["service.instance.id"], os.getpid())
    """

    def instance_and_pid(env: dict[str, str]) -> list[str]:
        run = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.split()

    env = {**os.environ, "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=api,deployment.environment.name=t"}
    (first, pid1), (second, pid2) = instance_and_pid(env), instance_and_pid(env)
    assert first != second
    assert first == f"api-{pid1}"
    assert second == f"api-{pid2}"
    bare = {k: v for k, v in os.environ.items() if k != "OTEL_RESOURCE_ATTRIBUTES"}
    instance, pid = instance_and_pid(bare)
    assert instance == f"{socket.gethostname()}-{pid}"


def test_the_tracer_is_asked_of_the_provider_once_and_follows_a_new_one() -> None:
    """``trace.get_tracer`` builds an instrumentation scope and takes the provider's lock
    at every call (about 8 us; some eight spans before a stream's first byte): ours is
    asked for once per provider, and never outlives the provider it came from, so spans
    made before and after ``setup_telemetry`` all reach the SDK."""
    result = run_fresh_python(
        """
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from sk_core import telemetry
        early = telemetry.tracer()
        provider, exported = TracerProvider(), InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exported))
        asked = []
        get_tracer = provider.get_tracer
        provider.get_tracer = lambda *a, **k: asked.append(a) or get_tracer(*a, **k)
        trace.set_tracer_provider(provider)
        late = [telemetry.tracer() for _ in range(10)]
        with early.start_as_current_span("early"), late[-1].start_as_current_span("late"):
            pass
        print(json.dumps({
            "asked": len(asked),
            "one_tracer": len({id(t) for t in late}),
            "late_is_sdk": type(late[0]).__module__.startswith("opentelemetry.sdk"),
            "spans": sorted(span.name for span in exported.get_finished_spans()),
        }))
        """
    )
    # Asked twice: once for ours, once by the early (proxy) tracer at its first span.
    assert result == {"asked": 2, "one_tracer": 1, "late_is_sdk": True, "spans": ["early", "late"]}
