"""The fault suite: what a caller sees, and what is charged, when a dependency misbehaves.

Real parts only: the stub model process (scripted faults: 429, 500, hang, a connection
broken mid-answer, malformed JSON, no usage), a real TCP fault proxy (latency, black
hole, reset) between the service and the model and between the service and Azurite,
a port nothing listens on (refused), and the real pipeline, ledger and SK runtime.

For every fault: the status and code, how many attempts reached the model, a time bound
(generous: CI runs on two loaded cores) and the ledger delta, which must be exactly what
the pipeline said it charged (no lost and no double charge). The README's fault table
("Faults and what they cost") is this file in prose.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from scripts.devservices import free_port, start_azurite
from sk_core.accounts import Principal, Tenant
from sk_core.composition import Service
from sk_core.errors import ApiError
from sk_core.limits import Ledger, window_keys
from sk_core.model import BreakerState, DeploymentHealth, RoutingTable
from sk_core.settings import Settings
from sk_core.storage import development_connection_string
from sk_core.usage import AuditEntry
from tests.support.fault_proxy import FaultProxy
from tests.support.metrics import metric_points
from tests.support.settings import CONTRACT_LIMITS, make_settings
from tests.support.stub_model import StubModel, StubModelProcess
from tests.support.telemetry import TelemetrySink

if TYPE_CHECKING:
    # Not at import: Semantic Kernel must first be imported after the session's telemetry
    # fixture turned its diagnostics on (tests/conftest.py), or SK never emits chat spans.
    from sk_core.model import ModelRuntime


def make_health(settings: Settings, table: RoutingTable) -> DeploymentHealth:
    from sk_core.model import make_health

    return make_health(settings, table)

ARGS = {"text": "Some text to summarize, for the fault suite.", "style": "tldr", "max_words": 20}
STUB_PRICE = {"input": 1.0, "output": 2.0}  # conftest's stub-model price
PRICEY = {"input": 3.0, "output": 6.0}


def _port_of(connection_string: str) -> int:
    endpoint = next(p for p in connection_string.split(";") if p.startswith("TableEndpoint="))
    return int(endpoint.rsplit(":", 1)[1].split("/", 1)[0])


@pytest.fixture(scope="module")
def model_proxy(stub_process: StubModelProcess) -> Iterator[FaultProxy]:
    proxy = FaultProxy(stub_process.host, stub_process.port).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def storage_proxy(azurite: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", _port_of(azurite)).start()
    yield proxy
    proxy.stop()


def fault_settings(
    service_env: dict[str, str], model_proxy: FaultProxy, stub_process: StubModelProcess, **overrides: Any
) -> Settings:
    """Three deployments on the stub: through the proxy, refused, and a dearer one."""
    deployments = {
        "proxied": {
            "base_url": f"http://{model_proxy.address}/v1",
            "model": "stub-model",
            "price": STUB_PRICE,
        },
        "refused": {
            "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "model": "stub-model",
            "price": STUB_PRICE,
        },
        "pricey": {"base_url": stub_process.base_url, "model": "stub-pricey", "price": PRICEY},
    }
    chains = {
        "default": ["proxied"],
        "refused": ["refused"],
        "fallback": ["refused", "pricey"],
        "two": ["proxied", "pricey"],
    }
    fields: dict[str, Any] = {
        "model_deployments": json.dumps(deployments),
        "model_chains": json.dumps(chains),
        "storage_table_prefix": "fault",  # its own tables: the sweeps below move the clock
        "retry_budget_ratio": 10,  # the budget has its own test; here every retry may run
        "leases": False,
        **overrides,
    }
    return make_settings(service_env, **fields)


@dataclass
class Faulty:
    service: Service
    principal: Principal
    key: str


async def _faulty(settings: Settings) -> Faulty:
    service = Service.create(settings)
    tenant = Tenant(id="fault" + secrets.token_hex(4), display_name="Faults", limits=CONTRACT_LIMITS)
    await service.tenants.create_tenant(tenant)
    key = (await service.tenants.issue_key(tenant.id)).secret
    principal = await service.pipeline.authenticate({"x-api-key": key}, "text/summarize")
    await service.runtimes.get()
    return Faulty(service, principal, key)


@pytest.fixture(scope="module")
async def faulty(
    service_env: dict[str, str],
    model_proxy: FaultProxy,
    storage_proxy: FaultProxy,
    stub_process: StubModelProcess,
) -> AsyncIterator[Faulty]:
    """A service on the exact ledger path (every admission and settlement a transaction),
    whose storage goes through ``storage_proxy``."""
    settings = fault_settings(
        service_env,
        model_proxy,
        stub_process,
        storage_connection_string=development_connection_string(storage_proxy.port),
    )
    context = await _faulty(settings)
    yield context
    storage_proxy.set("pass")
    await context.service.aclose()


@pytest.fixture(autouse=True)
async def healthy(
    model_proxy: FaultProxy, storage_proxy: FaultProxy, stub: StubModel, faulty: Faulty
) -> AsyncIterator[None]:
    model_proxy.set("pass")
    storage_proxy.set("pass")
    yield
    model_proxy.set("pass")
    storage_proxy.set("pass")
    # A ledger batch stuck on a black hole gives up after the storage client's timeouts
    # (3 tries of 2 s); until then the tenant's admissions queue behind it (and fail
    # closed). The next test starts once it has.
    ledger = faulty.service.ledger
    for _ in range(100):
        if not ledger._committers and not faulty.service.pipeline._settling:
            break
        await asyncio.sleep(0.1)


def fresh_health(service: Service, **overrides: Any) -> DeploymentHealth:
    """New breakers and retry budget, so one test's failures do not open another's circuit."""
    runtime = _runtime(service)
    settings = service.settings.model_copy(update=overrides) if overrides else service.settings
    runtime.health = make_health(settings, service.routing)
    return runtime.health


def _runtime(service: Service) -> ModelRuntime:
    assert service.runtimes.is_built
    future = service.runtimes._future  # built above: the fixture awaited it
    assert future is not None
    return future.result()


@dataclass
class Result:
    status: int
    code: str | None
    seconds: float
    attempts: int  # requests that reached the stub model
    charged: int  # what the pipeline said it charged
    deployment: str | None = None


async def call(context: Faulty, stub: StubModel, *, chain: str | None = None) -> Result:
    service = context.service
    spec = service.catalog.get("text", "summarize")
    assert spec is not None
    before = stub.stats()["count"]
    record = AuditEntry(route="fault")
    started = time.perf_counter()
    try:
        principal = await service.pipeline.authenticate({"x-api-key": context.key}, spec.id, record)
        outcome = await service.pipeline.call(
            principal, spec, dict(ARGS), max_tokens=None, record=record, chain=chain
        )
    except ApiError as error:
        seconds = time.perf_counter() - started
        return Result(
            error.status, error.code, seconds, stub.stats()["count"] - before, record.cost_nano or 0
        )
    seconds = time.perf_counter() - started
    return Result(
        200, None, seconds, stub.stats()["count"] - before, outcome.cost_nano, outcome.deployment
    )


def reservation(service: Service, chain: str = "default") -> int:
    """What admission holds for one call of ``ARGS`` (generous limits: nothing clamped)."""
    spec = service.catalog.get("text", "summarize")
    assert spec is not None
    price = service.routing.chain(chain).reservation_price
    return price.cost_nano(spec.prompt_token_bound(ARGS), spec.default_max_tokens_for(ARGS))


async def settled(context: Faulty) -> tuple[int, int]:
    """(spent, held) of the tenant today, after every hold past its lease was charged."""
    service = context.service
    # The settlements the pipeline left running in the background land first.
    await asyncio.gather(*service.pipeline._settling, return_exceptions=True)
    later = Ledger(
        store=service.store,
        lease_seconds=service.settings.hold_lease_seconds,
        min_answer_tokens=1,
        clock=lambda: datetime.now(UTC) + timedelta(hours=1),
    )
    await later.expire_holds()
    usage = await service.ledger.usage(context.principal.tenant.id, window_keys(datetime.now(UTC))[0])
    return usage["spent_nano"], usage["held_nano"]


# ------------------------------------------------------------------ model faults

# (stub behaviour, status, code, attempts, charged: "free" | "reservation", max seconds)
STUB_FAULTS = [
    ({"status": 429, "headers": {"retry-after": "1"}}, 503, "model_rate_limited", 3, "free", 4.5),
    ({"status": 500}, 502, "model_error", 3, "free", 4.5),
    ({"delay": 30}, 504, "model_timeout", 3, "reservation", 6.0),
    ({"drop": True}, 502, "model_unavailable", 3, "reservation", 4.5),
    ({"raw": '{"id": "x", "choices": [ {"mess'}, 502, "model_error", 1, "reservation", 2.5),
    (
        {
            "body": {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "stub-model",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
                ],
            }
        },
        502,
        "model_error",
        1,
        "reservation",
        2.5,
    ),
    ({"status": 400}, 502, "model_error", 1, "free", 2.5),
]


@pytest.mark.parametrize(
    ("behaviour", "status", "code", "attempts", "charge", "bound"),
    STUB_FAULTS,
    ids=["429-retry-after", "500", "hang", "broken-connection", "malformed-json", "no-usage", "400"],
)
async def test_a_model_fault_has_its_answer_attempts_and_charge(
    faulty: Faulty,
    stub: StubModel,
    behaviour: dict[str, Any],
    status: int,
    code: str,
    attempts: int,
    charge: str,
    bound: float,
) -> None:
    fresh_health(faulty.service)
    stub.set_default(**behaviour)
    before = await settled(faulty)
    result = await call(faulty, stub)
    assert (result.status, result.code) == (status, code)
    assert result.attempts == attempts
    assert result.seconds < bound
    expected = reservation(faulty.service) if charge == "reservation" else 0
    assert result.charged == expected
    spent, held = await settled(faulty)
    assert (spent - before[0], held) == (expected, 0)


async def test_a_refused_connection_is_free_and_fast(faulty: Faulty, stub: StubModel) -> None:
    fresh_health(faulty.service)
    before = await settled(faulty)
    result = await call(faulty, stub, chain="refused")
    assert (result.status, result.code, result.attempts, result.charged) == (502, "model_unavailable", 0, 0)
    assert result.seconds < 3.0  # three connects refused at once, with short backoff between
    spent, held = await settled(faulty)
    assert (spent - before[0], held) == (0, 0)


@pytest.mark.parametrize(
    ("mode", "latency", "status", "code", "charge", "bound"),
    [
        ("latency", 0.3, 200, None, "usage", 4.0),
        ("blackhole", 0.0, 504, "model_timeout", "reservation", 6.0),
        ("reset", 0.0, 502, "model_unavailable", "reservation", 4.5),
    ],
)
async def test_a_network_fault_toward_the_model(
    faulty: Faulty,
    stub: StubModel,
    model_proxy: FaultProxy,
    mode: Any,
    latency: float,
    status: int,
    code: str | None,
    charge: str,
    bound: float,
) -> None:
    fresh_health(faulty.service)
    stub.set_default(content="Fine.", prompt_tokens=30, completion_tokens=2)
    before = await settled(faulty)
    model_proxy.set(mode, latency)
    result = await call(faulty, stub)
    model_proxy.set("pass")
    assert (result.status, result.code) == (status, code)
    assert result.seconds < bound
    if mode == "blackhole":
        assert result.attempts == 0  # nothing got through
    if charge == "usage":
        assert result.charged == faulty.service.routing.chain(None).reservation_price.cost_nano(
            30, 2
        )
        assert result.deployment == "proxied"
    elif mode == "reset":
        # A reset can land after the request was sent (a broken connection: charged) or
        # while connecting (a connect failure: nothing was sent, free); the OS decides.
        assert result.charged in (0, reservation(faulty.service))
    else:
        assert result.charged == reservation(faulty.service)
    spent, held = await settled(faulty)
    assert (spent - before[0], held) == (result.charged, 0)


# ------------------------------------------------------------------ routing


async def test_the_chain_falls_back_and_charges_the_deployment_that_answered(
    faulty: Faulty, stub: StubModel
) -> None:
    fresh_health(faulty.service)
    stub.set_default(content="From the dearer one.", prompt_tokens=40, completion_tokens=4)
    before = await settled(faulty)
    result = await call(faulty, stub, chain="fallback")
    assert (result.status, result.deployment, result.attempts) == (200, "pricey", 1)
    assert result.charged == faulty.service.routing.deployments["pricey"].price.cost_nano(40, 4)
    assert stub.requests()[-1]["json"]["model"] == "stub-pricey"
    spent, held = await settled(faulty)
    assert (spent - before[0], held) == (result.charged, 0)


async def test_a_content_error_is_not_tried_on_the_next_deployment(faulty: Faulty, stub: StubModel) -> None:
    fresh_health(faulty.service)
    stub.set_default(status=400)
    result = await call(faulty, stub, chain="fallback")
    # refused (no request sent) -> pricey answers 400: final, no retry.
    assert (result.status, result.code, result.attempts, result.charged) == (502, "model_error", 1, 0)


async def test_a_5xx_falls_back_to_the_next_deployment_inside_the_deadline(
    faulty: Faulty, stub: StubModel, model_proxy: FaultProxy
) -> None:
    # proxied answers 500 -> pricey answers: one chain, two providers, one request.
    routing = faulty.service.routing
    fresh_health(faulty.service)
    before = await settled(faulty)
    stub.script({"status": 500}, {"content": "ok", "prompt_tokens": 10, "completion_tokens": 1})
    result = await call(faulty, stub, chain="two")
    assert (result.status, result.deployment, result.attempts) == (200, "pricey", 2)
    assert result.seconds < 2.0  # no backoff between deployments
    # Reserved at the dearer price, settled at the one that answered.
    assert result.charged == routing.deployments["pricey"].price.cost_nano(10, 1)
    assert routing.chain("two").reservation_price == routing.deployments["pricey"].price
    spent, held = await settled(faulty)
    assert (spent - before[0], held) == (result.charged, 0)


def breaker_gauge(sink: TelemetrySink) -> dict[str, int]:
    """``sk.model.breaker.state`` by deployment, as a collection reads it now."""
    return {p.attributes["sk.deployment"]: p.value for p in metric_points(sink, "sk.model.breaker.state")}


async def test_the_breaker_opens_skips_and_probes_after_its_cooldown(
    faulty: Faulty, stub: StubModel, telemetry_sink: TelemetrySink
) -> None:
    health = fresh_health(faulty.service, breaker_failures=2, breaker_cooldown_seconds=0.5)
    assert breaker_gauge(telemetry_sink) == {"proxied": 0, "refused": 0, "pricey": 0}
    stub.set_default(content="ok", prompt_tokens=10, completion_tokens=1)
    for _ in range(2):
        assert (await call(faulty, stub, chain="fallback")).deployment == "pricey"
    assert health.state("refused") is BreakerState.OPEN
    assert breaker_gauge(telemetry_sink) == {"proxied": 0, "refused": 2, "pricey": 0}
    skipped = await call(faulty, stub, chain="fallback")
    assert (skipped.status, skipped.deployment) == (200, "pricey")
    assert health.inflight["refused"] == 0
    await asyncio.sleep(0.6)
    assert breaker_gauge(telemetry_sink)["refused"] == 1  # half-open, read without moving it
    assert health.breakers["refused"]._state is BreakerState.OPEN
    assert health.state("refused") is BreakerState.HALF_OPEN
    await call(faulty, stub, chain="fallback")  # the probe: refused again
    assert health.state("refused") is BreakerState.OPEN


async def test_readiness_holds_while_every_chain_has_a_reachable_deployment(faulty: Faulty) -> None:
    service = faulty.service
    runtime = _runtime(service)
    routing = service.routing
    saved = runtime.health
    try:
        runtime.health = make_health(
            service.settings,
            RoutingTable(routing.deployments, {"fallback": routing.chains["fallback"]}, "fallback"),
        )
        assert await runtime.check_model(2.0) is None  # refused is down, pricey answers
        runtime.health = make_health(
            service.settings,
            RoutingTable(routing.deployments, {"refused": routing.chains["refused"]}, "refused"),
        )
        assert await runtime.check_model(2.0) == "model_unavailable"
    finally:
        runtime.health = saved


# ------------------------------------------------------------------ storage faults


async def test_silent_storage_fails_closed_within_the_bound_for_queued_requests_too(
    faulty: Faulty, stub: StubModel, storage_proxy: FaultProxy
) -> None:
    before = await settled(faulty)
    storage_proxy.set("blackhole")
    # Two requests of one tenant: the second queues behind the first's batch.
    results = await asyncio.gather(call(faulty, stub), call(faulty, stub))
    storage_proxy.set("pass")
    for result in results:
        assert (result.status, result.code, result.attempts) == (503, "limits_unavailable", 0)
        assert result.seconds < 3.5  # the 2 s bound, plus a loaded machine's slack
    spent, held = await settled(faulty)
    assert (spent - before[0], held) == (0, 0)


async def test_reset_storage_fails_closed_at_once(
    faulty: Faulty, stub: StubModel, storage_proxy: FaultProxy
) -> None:
    storage_proxy.set("reset")
    result = await call(faulty, stub)
    storage_proxy.set("pass")
    assert (result.status, result.code, result.attempts) == (503, "limits_unavailable", 0)
    assert result.seconds < 3.0


async def test_the_answer_does_not_wait_for_a_failing_settlement(
    faulty: Faulty, stub: StubModel, storage_proxy: FaultProxy
) -> None:
    before = await settled(faulty)
    stub.set_default(content="Slow but fine.", prompt_tokens=30, completion_tokens=3, delay=0.8)
    task = asyncio.create_task(call(faulty, stub))
    await asyncio.sleep(0.4)  # admitted, the model is working
    storage_proxy.set("blackhole")
    result = await task
    assert (result.status, result.attempts) == (200, 1)
    assert result.seconds < 0.8 + 2.0 + 1.5  # the model, the settle wait, slack
    # Storage stays cut until the background settlement has given up: the hold is then
    # charged its reservation when it expires (the guarantee), never released.
    await asyncio.gather(*faulty.service.pipeline._settling, return_exceptions=True)
    storage_proxy.set("pass")
    spent, held = await settled(faulty)
    assert (spent - before[0], held) == (reservation(faulty.service), 0)


async def test_leases_fail_closed_within_the_bound(
    service_env: dict[str, str],
    model_proxy: FaultProxy,
    storage_proxy: FaultProxy,
    stub_process: StubModelProcess,
    stub: StubModel,
) -> None:
    settings = fault_settings(
        service_env,
        model_proxy,
        stub_process,
        leases=True,
        storage_connection_string=development_connection_string(storage_proxy.port),
    )
    context = await _faulty(settings)
    try:
        storage_proxy.set("blackhole")
        results = await asyncio.gather(call(context, stub), call(context, stub))
        storage_proxy.set("pass")
        for result in results:
            assert (result.status, result.code, result.attempts) == (503, "limits_unavailable", 0)
            assert result.seconds < 3.5
        # The sync stuck on the black hole gives up after the storage client's read
        # timeout; from then on the tenant is served again.
        statuses = []
        for _ in range(10):
            statuses.append((await call(context, stub)).status)
            if statuses[-1] == 200:
                break
            await asyncio.sleep(0.5)
        assert statuses[-1] == 200, statuses
        assert set(statuses) <= {200, 503}, statuses
    finally:
        storage_proxy.set("pass")
        await context.service.aclose()


async def test_tables_are_recreated_after_storage_lost_its_data(
    service_env: dict[str, str],
    model_proxy: FaultProxy,
    stub_process: StubModelProcess,
    stub: StubModel,
    tmp_path: Any,
) -> None:
    port = free_port()
    azurite = start_azurite(port=port, log=tmp_path / "azurite.log")
    settings = fault_settings(
        service_env, model_proxy, stub_process, storage_connection_string=development_connection_string(port)
    )
    context = await _faulty(settings)
    await context.service.start()  # the tables prepared at start-up, then lost
    try:
        assert (await call(context, stub)).status == 200
        azurite.stop()  # in memory: every table and row is gone
        azurite = start_azurite(port=port, log=tmp_path / "azurite2.log")
        # The operator re-creates the tenant from another process (the admin CLI).
        admin = await _faulty(settings)
        context.key = admin.key
        await admin.service.aclose()
        statuses = [(await call(context, stub)).status for _ in range(3)]
        assert statuses[-1] == 200, statuses  # recovered without a restart
        assert set(statuses) <= {200, 503}, statuses  # never a 500
    finally:
        await context.service.aclose()
        azurite.stop()


async def test_audit_rows_written_while_storage_is_down_arrive_when_it_is_back(
    faulty: Faulty, storage_proxy: FaultProxy
) -> None:
    audit = faulty.service.audit
    tenant = faulty.principal.tenant.id
    before = len(await audit.recent(tenant, limit=1000))
    storage_proxy.set("reset")
    for _ in range(3):
        audit.record(AuditEntry(route="fault", status=200, tenant_id=tenant))
    await asyncio.sleep(1.5)  # at least one flush failed
    storage_proxy.set("pass")
    for _ in range(50):
        if len(await audit.recent(tenant, limit=1000)) == before + 3:
            break
        await asyncio.sleep(0.2)
    assert len(await audit.recent(tenant, limit=1000)) == before + 3
    assert audit.lost == 0


# ------------------------------------------------------------------ streamed calls


async def test_a_stream_falls_back_on_open_and_holds_its_deployment_slot_until_closed(
    faulty: Faulty, stub: StubModel
) -> None:
    # proxied answers 500 before any text -> pricey streams: one chain, one request.
    service = faulty.service
    health = fresh_health(service)
    routing = service.routing
    before = await settled(faulty)
    stub.script(
        {"status": 500},
        {"content": "Streamed from the dearer one.", "prompt_tokens": 20, "completion_tokens": 5},
    )
    spec = service.catalog.get("text", "summarize")
    assert spec is not None
    call = await service.pipeline.stream(faulty.principal, spec, dict(ARGS), max_tokens=None, chain="two")
    assert call.deployment == "pricey"
    assert health.inflight == {"proxied": 0, "refused": 0, "pricey": 1}  # taken while it streams
    text = "".join([piece async for piece in call])
    assert text == "Streamed from the dearer one."
    assert health.inflight["pricey"] == 0
    outcome = call.outcome
    assert outcome is not None
    assert (outcome.deployment, outcome.completion.model) == ("pricey", "stub-pricey")
    assert outcome.cost_nano == routing.deployments["pricey"].price.cost_nano(20, 5)
    assert [r["json"]["model"] for r in stub.requests()[-2:]] == ["stub-model", "stub-pricey"]
    spent, held = await settled(faulty)
    assert (spent - before[0], held) == (outcome.cost_nano, 0)


async def test_a_stream_whose_every_deployment_is_refused_is_free(faulty: Faulty, stub: StubModel) -> None:
    service = faulty.service
    fresh_health(service)
    before = await settled(faulty)
    spec = service.catalog.get("text", "summarize")
    assert spec is not None
    record = AuditEntry(route="fault")
    with pytest.raises(ApiError) as caught:
        await service.pipeline.stream(
            faulty.principal, spec, dict(ARGS), max_tokens=None, chain="refused", record=record
        )
    assert (caught.value.status, caught.value.code, record.cost_nano) == (502, "model_unavailable", 0)
    spent, held = await settled(faulty)
    assert (spent - before[0], held) == (0, 0)


async def test_the_openai_model_field_names_the_configured_model_or_a_chain(faulty: Faulty) -> None:
    from sk_core.http.openai_compat import _models

    models = _models(faulty.service)
    # The configured model id keeps meaning the chat function's chain; chains by name.
    assert models == {
        faulty.service.settings.resolved_model_id: None,
        "default": "default",
        "refused": "refused",
        "fallback": "fallback",
        "two": "two",
    }


async def test_a_stream_that_stalls_after_it_opened_is_charged_its_reservation(
    faulty: Faulty, stub: StubModel
) -> None:
    service = faulty.service
    fresh_health(service)
    before = await settled(faulty)
    # The provider's stream opens (its first chunk, the role, comes at once), then stalls
    # between words longer than a read may wait (1 s in these settings).
    stub.script({"content": "one two three four five six", "chunk_delay": 1.5})
    spec = service.catalog.get("text", "summarize")
    assert spec is not None
    record = AuditEntry(route="fault")
    call = await service.pipeline.stream(faulty.principal, spec, dict(ARGS), max_tokens=None, record=record)
    pieces: list[str] = []

    async def consume() -> None:
        async for piece in call:
            pieces.append(piece)

    started = time.perf_counter()
    with pytest.raises(ApiError) as caught:
        await consume()
    assert caught.value.code in ("model_timeout", "model_unavailable")
    assert time.perf_counter() - started < 6.0
    assert record.cost_nano == reservation(service)
    assert _runtime(service).health.inflight["proxied"] == 0  # the slot came back
    spent, held = await settled(faulty)
    assert (spent - before[0], held) == (reservation(service), 0)
