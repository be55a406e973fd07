"""Settings: typed, validated at startup, and documented where users look."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from sk_core.pricing import Price
from sk_core.settings import Provider, Settings

ROOT = Path(__file__).resolve().parent.parent


PROD = {"environment": "production", "api_key_pepper": "a-real-secret-pepper-value"}


def env_names() -> set[str]:
    return {f"SKF_{name.upper()}" for name in Settings.model_fields}


def test_local_defaults_point_at_the_embedded_model() -> None:
    settings = Settings()
    assert settings.model_provider is Provider.LOCAL
    assert settings.resolved_base_url == "http://127.0.0.1:8081/v1"
    assert settings.resolved_model_id == "smollm2"
    assert settings.max_body_bytes == 100 * 1024


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKF_MODEL_PROVIDER", "openai_compatible")
    monkeypatch.setenv("SKF_MODEL_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("SKF_MODEL_ID", "llama3")
    monkeypatch.setenv("SKF_MODEL_TIMEOUT_SECONDS", "12.5")
    monkeypatch.setenv("SKF_MODEL_PRICES", '{"llama3": {"input": 0, "output": 0}}')
    settings = Settings()
    assert settings.model_provider is Provider.OPENAI_COMPATIBLE
    assert settings.resolved_base_url == "http://127.0.0.1:11434/v1"
    assert settings.model_timeout_seconds == 12.5


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model_provider": "openai_compatible"}, "SKF_MODEL_BASE_URL is required"),
        ({"model_provider": "azure_openai", "model_id": "d"}, "SKF_AZURE_OPENAI_ENDPOINT is required"),
        ({"model_provider": "azure_openai", "azure_openai_endpoint": "https://x"}, "deployment name"),
        ({**PROD, "model_provider": "openai", "model_api_key": "changeme"}, "placeholder"),
        ({**PROD, "model_provider": "openai"}, "missing or a placeholder"),
        ({**PROD}, "not production"),
        ({"environment": "production", "model_provider": "openai", "model_api_key": "sk-real"}, "PEPPER"),
        (
            {"model_provider": "openai_compatible", "model_base_url": "http://x", "model_id": "unpriced"},
            "no price",
        ),
        ({"model_prices": '{"gpt-4o-mini": {"input": -1, "output": 1}}'}, "negative"),
        ({"model_prices": "[1, 2]"}, "JSON object"),
        ({"hold_lease_seconds": 30, "model_deadline_seconds": 60}, "LEASE"),
        ({"model_provider": "bedrock"}, "model_provider"),
        ({"max_body_bytes": 10}, "max_body_bytes"),
    ],
)
def test_invalid_configuration_fails_fast(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings.model_validate(fields)


def test_azure_openai_without_a_key_is_valid_in_production() -> None:
    # Entra ID (managed identity) is the production default for Azure OpenAI.
    settings = Settings.model_validate(
        {
            **PROD,
            "model_provider": "azure_openai",
            "azure_openai_endpoint": "https://res.openai.azure.com",
            "model_id": "gpt-4o-mini",
        }
    )
    assert settings.model_api_key.get_secret_value() == ""


def test_every_setting_is_in_local_settings_example() -> None:
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    assert env_names() <= set(values)
    # The example's values are the defaults (so copying it changes nothing but intent).
    parsed = Settings.model_validate(
        {k.removeprefix("SKF_").lower(): v for k, v in values.items() if k.startswith("SKF_")}
    )
    assert parsed.model_dump() == Settings().model_dump() | {"model_base_url": "http://127.0.0.1:8081/v1"}


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(SKF_[A-Z_]+)` \|", readme, flags=re.MULTILINE))
    assert documented == env_names()


def test_json_valued_settings_are_typed_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SKF_MODEL_DEPLOYMENTS",
        '{"east": {"base_url": "http://a/v1", "model": "gpt-4o", "max_concurrency": 2},'
        ' "west": {"provider": "azure_openai", "endpoint": "https://w", "model": "m",'
        ' "price": {"input": "0.5", "output": 1}}}',
    )
    monkeypatch.setenv("SKF_GUARD_POLICIES", '{"chat/chat": "block"}')
    monkeypatch.setenv("SKF_REDACTION_POLICIES", '{"text/translate": "email, secret"}')
    monkeypatch.setenv("SKF_GUARD_EXTRA_PATTERNS", '["wire the money"]')
    settings = Settings()
    east, west = settings.model_deployments["east"], settings.model_deployments["west"]
    assert east.provider is Provider.OPENAI_COMPATIBLE
    assert east.max_concurrency == 2
    assert west.provider is Provider.AZURE_OPENAI
    assert west.endpoint == "https://w"
    assert settings.deployment_price("east") == settings.prices["gpt-4o"]
    assert settings.deployment_price("west") == Price(Decimal("0.5"), Decimal(1))
    assert settings.chains == {"default": ["east", "west"]}  # no SKF_MODEL_CHAINS: one of all
    assert settings.guard_policy_for("chat/chat") == "block"
    assert settings.redaction_for("text/translate") == ("email", "secret")
    assert settings.guard_extra_patterns == ["wire the money"]
    # Empty is the default, from the environment as from local.settings.json.
    monkeypatch.setenv("SKF_MODEL_DEPLOYMENTS", "")
    assert Settings().model_deployments == {}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SKF_MODEL_DEPLOYMENTS", "{not json", "SKF_MODEL_DEPLOYMENTS is not valid JSON"),
        ("SKF_GUARD_EXTRA_PATTERNS", '{"a": 1}', "SKF_GUARD_EXTRA_PATTERNS must be a JSON list"),
        ("SKF_GUARD_POLICIES", '{"chat/chat": "maybe"}', "'block', 'flag' or 'off'"),
        ("SKF_MODEL_CHAINS", '{"default": []}', "at least 1 item"),
        (
            "SKF_MODEL_DEPLOYMENTS",
            '{"a": {"base_url": "http://a", "model": "gpt-4o", "max_concurrency": 0}}',
            "max_concurrency",
        ),
    ],
)
def test_a_bad_json_value_in_the_environment_fails_at_startup(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        Settings()
