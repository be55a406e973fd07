"""LangChain's standard chat-model integration tests (``langchain-tests``'
``ChatModelIntegrationTests``) through ``ChatOpenAI`` against ``/api/v1``.

The suite runs in its own venv (``.venv-clients``, requirements-clients.txt: its pytest
plugins would change this suite's runs), as a pytest of its own over real HTTP on
loopback: the container host, Azurite, and the stub model in its protocol mode
(``tests.support.protocol_model``), which answers each request from its tools,
``tool_choice`` and ``response_format`` by fixed rules. What it proves is the wire
protocol through our endpoint (tools, ``tool_choice``, ``response_format``, message
``name``, streaming, usage metadata), not model quality.
"""

from __future__ import annotations

import asyncio
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scripts.devservices import free_port, start_service
from sk_core.accounts import Limits
from sk_core.composition import Service
from tests.http.test_openai_compat import MODEL, new_key
from tests.support.hosts import ContainerHost
from tests.support.stub_model import StubModel

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv-clients" / "bin" / "python"
SUITE = Path(__file__).resolve().parent / "standard"

# The tests the suite skips with our capability flags, each for a reason that is true of
# the endpoint (README, "Clients tested"). Any other skip fails this test.
EXPECTED_SKIPS = {
    # Only text content parts are accepted (a 422 names any other part).
    "test_pdf_inputs": "Model does not support PDF inputs.",
    "test_audio_inputs": "Model does not support audio inputs.",
    "test_image_inputs": "Model does not support image message.",
    "test_image_tool_message": "Model does not support image tool message.",
    "test_pdf_tool_message": "Model does not support PDF tool message.",
    # Anthropic's own block formats are not OpenAI's wire format.
    "test_anthropic_inputs": "Model does not explicitly support Anthropic inputs.",
    # A benchmark replayed from recorded cassettes: nothing of ours to record.
    "test_stream_time": "VCR not set up.",
}
# A second model to switch to (the model-override tests): a chain named after the model
# of its one deployment, so the answer's model is the name the client asked for.
MINI = "stub-model-mini"
PRICE = {"input": 1.0, "output": 2.0}  # conftest's stub-model price


@pytest.fixture(scope="module")
async def two_model_host(
    service_env: dict[str, str], api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ContainerHost]:
    """A container host whose /api/v1/models lists the configured model and MINI."""
    stub_url = service_env["SKF_MODEL_BASE_URL"]
    deployments = {
        "main": {"base_url": stub_url, "model": MODEL, "price": PRICE},
        "mini": {"base_url": stub_url, "model": MINI, "price": PRICE},
    }
    env = {
        **service_env,
        "SKF_MODEL_DEPLOYMENTS": json.dumps(deployments),
        "SKF_MODEL_CHAINS": json.dumps({"default": ["main"], MINI: ["mini"]}),
    }
    port = free_port()
    process = start_service(port=port, env=env, log=tmp_path_factory.mktemp("clients") / "service.log")
    host = ContainerHost(f"http://127.0.0.1:{port}", {"x-api-key": api_key})
    yield host
    await host.aclose()
    process.stop()


def _outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """Each test's outcome (passed, failed, error, skipped) and message, from JUnit XML."""
    outcomes: dict[str, tuple[str, str]] = {}
    # The report our own subprocess wrote.
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314
        name = case.get("name", "")
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = "failed" if kind == "failure" else kind
                message = found.get("message", "") or (found.text or "")
        outcomes[name] = (outcome, message)
    return outcomes


async def test_langchain_standard_chat_model_suite_passes_through_our_endpoint(
    two_model_host: ContainerHost, functions_service: Service, stub: StubModel, tmp_path: Path
) -> None:
    assert PYTHON.exists(), f"{PYTHON} is missing: run `make clients` (or `make test`)"
    # Generous limits: the suite makes about a hundred calls in a minute.
    _, key = await new_key(
        functions_service, Limits(requests_per_minute=10_000, tokens_per_minute=10**8, max_concurrent=50)
    )
    stub.set_default(protocol=True)
    report = tmp_path / "report.xml"
    env = {
        **os.environ,
        "SKF_CLIENTS_BASE_URL": f"{two_model_host.base_url}/api/v1",
        "SKF_CLIENTS_API_KEY": key,
        "SKF_CLIENTS_MODEL": MODEL,
        "SKF_CLIENTS_OTHER_MODEL": MINI,
        # A developer's proxy must not sit between the client and loopback.
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    env.pop("PYTHONPATH", None)
    process = await asyncio.create_subprocess_exec(
        str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-c", str(SUITE / "pytest.ini"), "--rootdir", str(SUITE), "--confcutdir", str(SUITE),
        f"--junitxml={report}", "-rfEsw", str(SUITE / "langchain_suite.py"),
        cwd=SUITE, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    finally:
        if process.returncode is None:  # timed out (or cancelled): not left running
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    assert report.exists(), text[-4000:]
    outcomes = _outcomes(report)
    counts = {
        kind: sum(1 for o, _ in outcomes.values() if o == kind)
        for kind in ("passed", "failed", "error", "skipped")
    }
    print(f"langchain-tests standard suite: {counts}")  # the README quotes these counts
    broken = {name: message for name, (o, message) in outcomes.items() if o in ("failed", "error")}
    assert not broken, "\n".join(f"{name}: {message[:500]}" for name, message in sorted(broken.items()))
    skipped = {name.split("[")[0]: message for name, (o, message) in outcomes.items() if o == "skipped"}
    unexpected = {n: m for n, m in skipped.items() if n not in EXPECTED_SKIPS or EXPECTED_SKIPS[n] not in m}
    assert not unexpected, unexpected
    assert set(skipped) == set(EXPECTED_SKIPS), set(EXPECTED_SKIPS) - set(skipped)
    assert counts == {"passed": 43, "failed": 0, "error": 0, "skipped": len(EXPECTED_SKIPS)}, text[-2000:]
    assert process.returncode == 0, text[-4000:]


def _pins(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
    pins = [line.split("#")[0].strip() for line in lines]
    return dict(pin.split("==", 1) for pin in pins if pin and not pin.startswith("-"))


def test_the_clients_venv_pins_exactly_what_the_main_venv_pins() -> None:
    """The suite's ChatOpenAI is the one our own LangChain tests use (same pins), and a
    fresh clone installs the versions counted in the README (no ranges)."""
    clients, dev = _pins("requirements-clients.txt"), _pins("requirements-dev.txt")
    assert all("=" not in v and "<" not in v and ">" not in v for v in clients.values()), clients
    shared = clients.keys() & dev.keys()
    assert {"langchain-openai", "langchain-core", "pytest", "pytest-asyncio"} <= shared
    assert {name: clients[name] for name in shared} == {name: dev[name] for name in shared}
    assert clients["langchain-tests"] == "1.1.9"  # README: Clients tested
