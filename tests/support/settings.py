"""The service settings the suites run with, and Settings built from an env-style dict."""

from __future__ import annotations

from typing import Any

from sk_core.accounts import Limits
from sk_core.settings import Settings

# Short model timings keep failure tests fast while still exercising every retry path.
SERVICE_ENV = {
    "SKF_MODEL_PROVIDER": "openai_compatible",
    "SKF_MODEL_ID": "stub-model",
    "SKF_MODEL_TIMEOUT_SECONDS": "1",
    "SKF_MODEL_MAX_RETRIES": "2",
    "SKF_MODEL_DEADLINE_SECONDS": "4",
    # Tests script failures back to back; the retry budget (20 % of the last 10 s of
    # requests) would make how often one is retried depend on the tests before it.
    # Its own tests (tests/model/test_deployments.py) set it.
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
    # Many hosts run at once in the suite: /metrics on each one's API port, not on one
    # shared metrics port (tests/http/test_metrics_port.py covers the default).
    "SKF_METRICS_PORT": "0",
    # Document memory: jobs queued by other suites (the fuzzer's) stay queued instead of
    # costing the run embedding CPU; tests/memory/ turns the worker on where it is tested.
    "SKF_MEMORY_WORKER": "false",
}

# Generous limits: the contract suite is about behaviour, not about refusals.
CONTRACT_LIMITS = Limits(
    requests_per_minute=100_000,
    tokens_per_minute=100_000_000,
    max_concurrent=500,
    daily_budget_nano=10**15,
    monthly_budget_nano=10**15,
)


def make_settings(env: dict[str, str], **overrides: Any) -> Settings:
    """Settings from an env-style dict (keys with the SKF_ prefix) plus field overrides."""
    fields: dict[str, Any] = {key.removeprefix("SKF_").lower(): value for key, value in env.items()}
    fields.update(overrides)
    return Settings.model_validate(fields)
