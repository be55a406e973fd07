"""Fixtures that start real services: the stub model server, the container host.

Session-scoped and started once; every test gets a reset stub. The stub is a separate
OS process speaking the OpenAI HTTP API, so the service's real OpenAI client, Semantic
Kernel and retry code all run for real.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from scripts.devservices import free_port, start_azurite, start_service
from sk_core.accounts import Limits, Tenant
from sk_core.composition import Service, set_service
from sk_core.settings import Settings
from sk_core.storage import development_connection_string
from sk_core.telemetry import Exporters, setup_telemetry
from tests.support.hosts import ContainerHost, FunctionsHost, Host
from tests.support.stub_model import StubModel, StubModelProcess, start_stub_model

# Hypothesis profiles. `ci` (the default, also for `make test` by hand): derandomized, so
# every run draws the same examples and a red run reproduces (a fresh clone once failed 1
# run in 3 on a randomly drawn input); no example database, so a local .hypothesis/ does
# not change what runs; print_blob, so a failure prints the line to replay it. Inputs
# found this way are kept as explicit @example()s. `random`: many more, freshly random
# examples, with the database, for hunting by hand: HYPOTHESIS_PROFILE=random make pytest.
# Test modules must not set max_examples themselves, or the profiles cannot scale them.
_PROPERTY_DEFAULTS: dict[str, Any] = {
    "deadline": None,  # 2 shared cores: timing is not what the properties are about
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow],
}
hypothesis_settings.register_profile("ci", max_examples=200, derandomize=True, **_PROPERTY_DEFAULTS)
hypothesis_settings.register_profile("random", max_examples=2_000, derandomize=False, **_PROPERTY_DEFAULTS)
# Loaded here, before the test modules import: their settings(...) objects inherit from it.
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Short model timings keep failure tests fast while still exercising every retry path.
SERVICE_ENV = {
    "SKF_MODEL_PROVIDER": "openai_compatible",
    "SKF_MODEL_ID": "stub-model",
    "SKF_MODEL_TIMEOUT_SECONDS": "1",
    "SKF_MODEL_MAX_RETRIES": "2",
    "SKF_MODEL_DEADLINE_SECONDS": "4",
    # Tests script failures back to back; the retry budget (20 % of the last 10 s of
    # requests) would make how often one is retried depend on the tests before it.
    # Its own tests (test_routing.py) set it.
    "SKF_RETRY_BUDGET_RATIO": "10",
    "SKF_READY_TIMEOUT_SECONDS": "10",
    # Non-zero prices: budgets are only tested when requests cost something.
    "SKF_MODEL_PRICES": '{"stub-model": {"input": 1.0, "output": 2.0}}',
    "SKF_API_KEY_PEPPER": "test-pepper-0123456789",
    "SKF_HOLD_LEASE_SECONDS": "30",
    # Quota leases report and hand back quickly, so that tests reading stored usage
    # after traffic see it within a second.
    "SKF_LEASE_REPORT_SECONDS": "0.2",
    "SKF_LEASE_IDLE_SECONDS": "0.5",
    # Document memory: jobs queued by other suites (the fuzzer's) stay queued instead of
    # costing the run embedding CPU; tests/memory/ turns the worker on where it is tested.
    "SKF_MEMORY_WORKER": "false",
}


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Azurite's table and queue services for the whole run; yields the account's
    connection string (the queue is document memory's ingestion queue)."""
    port, queue_port = free_port(), free_port()
    logs = tmp_path_factory.mktemp("azurite")
    process = start_azurite(port=port, log=logs / "azurite.log")
    queue = start_azurite(port=queue_port, log=logs / "queue.log", service="queue")
    yield f"{development_connection_string(port)}QueueEndpoint=http://127.0.0.1:{queue_port}/devstoreaccount1;"
    queue.stop()
    process.stop()


@pytest.fixture(scope="session")
def stub_process() -> Iterator[StubModelProcess]:
    """One stub model server for the whole run."""
    process = start_stub_model()
    yield process
    process.stop()


@pytest.fixture
def stub(stub_process: StubModelProcess) -> StubModel:
    """The stub's control client, reset so each test starts from default behaviour."""
    stub_process.client.reset()
    return stub_process.client


@pytest.fixture(scope="session")
def service_env(stub_process: StubModelProcess, azurite: str) -> dict[str, str]:
    """Environment that points a service at the stub and at Azurite."""
    return {
        **SERVICE_ENV,
        "SKF_MODEL_BASE_URL": stub_process.base_url,
        "SKF_STORAGE_CONNECTION_STRING": azurite,
    }


# Generous limits: the contract suite is about behaviour, not about refusals.
CONTRACT_LIMITS = Limits(
    requests_per_minute=100_000,
    tokens_per_minute=100_000_000,
    max_concurrent=500,
    daily_budget_nano=10**15,
    monthly_budget_nano=10**15,
)


@pytest.fixture(scope="session")
async def api_key(functions_service: Service) -> str:
    """A key of a tenant with generous limits (the contract suite's caller)."""
    await functions_service.tenants.create_tenant(
        Tenant(id="contract", display_name="Contract", limits=CONTRACT_LIMITS)
    )
    issued = await functions_service.tenants.issue_key("contract", name="contract-suite")
    return issued.secret


def run_fresh_python(code: str) -> dict[str, Any]:
    """Run ``code`` in a new interpreter at the repo root; its last stdout line is JSON.

    For properties of a whole process (which modules an import loads, the GC state),
    which pytest's own long-lived process cannot show.
    """
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True, text=True, check=True, timeout=120,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def make_settings(env: dict[str, str], **overrides: Any) -> Settings:
    """Settings from an env-style dict (keys with the SKF_ prefix) plus field overrides."""
    fields: dict[str, Any] = {key.removeprefix("SKF_").lower(): value for key, value in env.items()}
    fields.update(overrides)
    return Settings.model_validate(fields)


@pytest.fixture(scope="session")
def functions_app_functions() -> list[Any]:
    """The Functions app's indexed functions (``get_functions`` may be called only once)."""
    import function_app

    return list(function_app.app.get_functions())


@dataclass
class TelemetrySink:
    """In-memory OpenTelemetry exporters installed for the whole test process."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: InMemoryLogRecordExporter


@pytest.fixture(scope="session", autouse=True)
def telemetry_sink(service_env: dict[str, str]) -> TelemetrySink:
    """Installed first (autouse): the process's providers can be set only once, and
    Semantic Kernel reads its diagnostics switch when it is first imported."""
    sink = TelemetrySink(InMemorySpanExporter(), InMemoryMetricReader(), InMemoryLogRecordExporter())  # type: ignore[no-untyped-call]
    setup_telemetry(
        make_settings(service_env),
        host="test",
        exporters=Exporters(
            spans=[sink.spans], metric_readers=[sink.metrics], logs=[sink.logs], synchronous=True
        ),
    )
    return sink


@pytest.fixture(scope="session")
async def functions_service(
    service_env: dict[str, str], telemetry_sink: TelemetrySink
) -> AsyncIterator[Service]:
    """The in-process service context the Functions triggers use."""
    service = Service.create(make_settings(service_env))
    set_service(service)
    yield service
    set_service(None)
    await service.aclose()


@pytest.fixture(scope="session")
def functions_host(
    functions_app_functions: list[Any], functions_service: Service, api_key: str
) -> FunctionsHost:
    """The Functions host, driven by awaiting registered triggers."""
    return FunctionsHost(functions_app_functions, {"authorization": f"Bearer {api_key}"})


@pytest.fixture(scope="session")
async def container_host(
    service_env: dict[str, str], api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ContainerHost]:
    """The container host: uvicorn in its own process, real HTTP on loopback."""
    port = free_port()
    log: Path = tmp_path_factory.mktemp("service") / "service.log"
    process = start_service(port=port, env=service_env, log=log)
    host = ContainerHost(f"http://127.0.0.1:{port}", {"x-api-key": api_key})
    yield host
    await host.aclose()
    process.stop()


@pytest.fixture(params=["container", "functions"])
def host(request: pytest.FixtureRequest, stub: StubModel) -> Host:
    """Each contract test runs once per host."""
    fixture = "container_host" if request.param == "container" else "functions_host"
    value: Host = request.getfixturevalue(fixture)
    return value


async def inside_one_minute(seconds: float) -> None:
    """Wait, if need be, so that the next ``seconds`` fall inside one calendar minute:
    requests per minute are counted in calendar minutes, so a test that expects a 429
    from its third call must not have its calls straddle a minute's end."""
    now = datetime.now(UTC)
    if now.second + now.microsecond / 1e6 > 60 - seconds - 1:
        await asyncio.sleep(61 - now.second - now.microsecond / 1e6)
