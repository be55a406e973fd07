"""Fixtures that start real services: Azurite, the stub model server, the hosts.

Session-scoped, started once and only when a test asks for them (a test of prices
starts nothing); every test gets a reset stub. The stub is a separate OS process
speaking the OpenAI HTTP API, so the service's real OpenAI client, Semantic Kernel and
retry code all run for real. Helpers live in tests/support/, not here.

Every test is marked ``unit`` or ``integration`` at collection (``make unit`` runs the
first alone): integration is what is under tests/integration/, is marked so, or asks,
directly or through its fixtures, for a service (``SERVICE_FIXTURES``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from scripts.devservices import free_port, start_azurite, start_service
from sk_core.accounts import Tenant
from sk_core.composition import Service, set_service
from sk_core.storage import development_connection_string
from sk_core.telemetry import Exporters, setup_telemetry
from tests.support.hosts import ContainerHost, FunctionsHost, Host
from tests.support.settings import CONTRACT_LIMITS, SERVICE_ENV, make_settings
from tests.support.stub_model import StubModel, StubModelProcess, start_stub_model
from tests.support.telemetry import TelemetrySink

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
# Semantic Kernel reads its diagnostics switch once, when it is first imported; the
# telemetry fixture sets it as the service does, but some test modules (tools, memory)
# import SK at collection, before any fixture runs: without this the whole run would
# have no `chat` spans, and which run that is would depend on the collection order.
os.environ.setdefault("SEMANTICKERNEL_EXPERIMENTAL_GENAI_ENABLE_OTEL_DIAGNOSTICS", "true")


def _no_services_in_a_unit_run(what: str) -> None:
    # `make unit` promises no service: a test that reaches one without saying so (a
    # fixture asked for by name at run time) fails here instead of starting it.
    if os.environ.get("SKF_TESTS_UNIT_ONLY"):
        pytest.fail(f"a unit run asked for {what}: mark the test integration or request it as a fixture")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Azurite's table and queue services for the whole run; yields the account's
    connection string (the queue is document memory's ingestion queue)."""
    _no_services_in_a_unit_run("Azurite")
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
    _no_services_in_a_unit_run("the stub model")
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


@pytest.fixture(scope="session")
async def api_key(functions_service: Service) -> str:
    """A key of a tenant with generous limits (the contract suite's caller)."""
    await functions_service.tenants.create_tenant(
        Tenant(id="contract", display_name="Contract", limits=CONTRACT_LIMITS)
    )
    issued = await functions_service.tenants.issue_key("contract", name="contract-suite")
    return issued.secret


@pytest.fixture(scope="session")
def functions_app_functions() -> list[Any]:
    """The Functions app's indexed functions (``get_functions`` may be called only once)."""
    import function_app

    return list(function_app.app.get_functions())


@pytest.fixture(scope="session", autouse=True)
def telemetry_sink() -> TelemetrySink:
    """Installed first (autouse): the process's providers can be set only once, and
    Semantic Kernel reads its diagnostics switch when it is first imported. It needs
    no service: the model URL only satisfies validation, telemetry never calls it."""
    sink = TelemetrySink(InMemorySpanExporter(), InMemoryMetricReader(), InMemoryLogRecordExporter())  # type: ignore[no-untyped-call]
    setup_telemetry(
        make_settings(SERVICE_ENV, model_base_url="http://127.0.0.1:9/v1"),
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


# What starts a service: a test whose fixture closure holds one of these is integration.
SERVICE_FIXTURES = frozenset({"azurite", "stub_process"})
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        integration = (
            INTEGRATION_DIR in Path(str(item.path)).parents
            or item.get_closest_marker("integration") is not None
            or item.get_closest_marker("local_model") is not None
            or not SERVICE_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
        )
        item.add_marker(pytest.mark.integration if integration else pytest.mark.unit)
