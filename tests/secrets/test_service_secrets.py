"""The service on Key Vault: the model key and the pepper come from the vault (the
HTTPS stand-in, real SecretClient), a rotated model key reaches the provider without a
restart, and a missing secret is a readiness error that names it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from sk_core.accounts import Tenant
from sk_core.composition import Service, get_service, set_service
from sk_core.secrets import CachedSecrets, KeyVaultSecretSource
from tests.support.hosts import FunctionsHost
from tests.support.keyvault_stub import KeyVaultStub, StaticTokenCredential
from tests.support.settings import make_settings
from tests.support.stub_model import StubModel


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyVaultStub]:
    with KeyVaultStub(tmp_path_factory.mktemp("vault")) as stub:
        yield stub


@pytest.fixture
async def vault_service(vault: KeyVaultStub, service_env: dict[str, str]) -> AsyncIterator[Service]:
    vault.reset()
    vault.set_secret("model-api-key", "key-one")
    vault.set_secret("api-key-pepper", "pepper-from-the-vault-0123")
    # Entra ID cannot run here: a fixed-token credential stands in for managed identity.
    source = KeyVaultSecretSource(
        vault.vault_url,
        credential=StaticTokenCredential(vault.token),
        connection_verify=str(vault.cert_path),
        verify_challenge_resource=False,
        retry_backoff_factor=0.01,
        timeout_seconds=2.0,
    )
    secrets = CachedSecrets(source, ttl_seconds=1.0, refresh_ahead_seconds=0.0, max_staleness_seconds=60)
    settings = make_settings(
        service_env, key_vault_url=vault.vault_url, secret_cache_seconds=1, secret_refresh_ahead_seconds=0
    )
    service = Service.create(settings, secrets=secrets)
    previous = get_service()
    set_service(service)
    yield service
    set_service(previous)
    await service.aclose()


async def test_model_key_comes_from_the_vault_and_rotation_needs_no_restart(
    vault_service: Service, vault: KeyVaultStub, functions_app_functions: list[Any], stub: StubModel
) -> None:
    await vault_service.tenants.create_tenant(Tenant(id="vault-tenant", display_name="V"))
    issued = await vault_service.tenants.issue_key("vault-tenant")
    host = FunctionsHost(functions_app_functions, {"x-api-key": issued.secret})
    first = await host.request("POST", "/api/v1/summarize", json_body={"text": "one"})
    assert first.status == 200, first.body
    assert stub.requests()[-1]["headers"]["authorization"] == "Bearer key-one"
    vault.set_secret("model-api-key", "key-two")  # rotated in the vault
    await asyncio.sleep(1.2)  # past the cache TTL
    second = await host.request("POST", "/api/v1/summarize", json_body={"text": "two"})
    assert second.status == 200, second.body
    assert stub.requests()[-1]["headers"]["authorization"] == "Bearer key-two"
    assert vault_service.runtimes.build_count == 2
    # The pepper came from the vault too: the key verifies against it, not the settings'.
    assert await vault_service.tenants.pepper() == "pepper-from-the-vault-0123"


async def test_a_missing_secret_is_a_readiness_error_naming_it(
    vault_service: Service,
    vault: KeyVaultStub,
    functions_app_functions: list[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    vault.delete_secret("api-key-pepper")
    host = FunctionsHost(functions_app_functions)
    with caplog.at_level("ERROR", logger="sk_core.http.handlers"):
        response = await host.request("GET", "/api/ready")
    assert response.status == 503
    assert response.json()["checks"]["secrets"] == {"status": "error", "code": "secret_unavailable"}
    # The name is in the operator's log, not in the anonymous probe's answer.
    assert any("api-key-pepper" in r.getMessage() for r in caplog.records)
    assert "api-key-pepper" not in response.body.decode()
    assert "pepper-from-the-vault" not in response.body.decode()
