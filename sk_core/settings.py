"""The one settings object, read from the environment once per worker.

Azure Functions hands both ``local.settings.json`` "Values" and portal app settings to
the worker as environment variables, and Kubernetes does the same through a ConfigMap,
so the environment is the only source. Every field here is listed, with its local
default, in ``local.settings.example.json`` and in the README's settings table.
"""

from __future__ import annotations

import functools
import json
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sk_core.catalog import CachePolicy
from sk_core.pricing import Price, PriceSpec, price_table


class Provider(StrEnum):
    """Where chat completions come from."""

    LOCAL = "local"
    OPENAI = "openai"
    AZURE_OPENAI = "azure_openai"
    OPENAI_COMPATIBLE = "openai_compatible"


class Environment(StrEnum):
    """``local`` tolerates placeholder secrets; ``production`` refuses to start with them."""

    LOCAL = "local"
    PRODUCTION = "production"


# Values people paste from samples; outside local mode they must fail fast at startup
# instead of failing as 401s from the provider on the first paid request.
_PLACEHOLDERS = frozenset({"", "changeme", "change-me", "your-key", "<your-key>", "placeholder", "xxx"})

DEFAULT_LOCAL_MODEL_URL = "http://127.0.0.1:8081/v1"
DEFAULT_LOCAL_MODEL_ID = "smollm2"
# The chain of every deployment when SKF_MODEL_CHAINS names none, and SKF_MODEL_CHAIN's default.
DEFAULT_CHAIN = "default"


def _env_name(info: ValidationInfo) -> str:
    return f"SKF_{(info.field_name or '').upper()}"


def _from_json(expected: type[dict[str, Any]] | type[list[Any]]) -> BeforeValidator:
    """Text to a JSON value of ``expected``'s kind (empty text: an empty one), before the
    field's own type validates it. A JSON-valued setting arrives as text from the
    environment and from local.settings.json, already parsed from code and tests."""
    kind = "object" if expected is dict else "list"

    def parse(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return expected()
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"{_env_name(info)} is not valid JSON") from None
        if not isinstance(value, expected):
            raise ValueError(f"{_env_name(info)} must be a JSON {kind}")
        return value

    return BeforeValidator(parse)


_T = TypeVar("_T")
# NoDecode: the settings source hands the raw text to ``_from_json`` (its own JSON
# decoding would fail on the empty default and word its errors without the variable).
JsonObject = Annotated[dict[str, _T], NoDecode, _from_json(dict)]
JsonList = Annotated[list[_T], NoDecode, _from_json(list)]


def _kinds(raw: str) -> tuple[str, ...]:
    return tuple(kind.strip() for kind in raw.split(",") if kind.strip())


# A comma-separated list inside a JSON-valued setting: "email,secret".
CommaList = Annotated[tuple[str, ...], BeforeValidator(lambda v: _kinds(v) if isinstance(v, str) else v)]


def _cache_policy(value: Any) -> Any:
    # No temperature is known here: an override turns a function on only with an
    # explicit true / "enabled": true.
    return value if isinstance(value, CachePolicy) else CachePolicy.parse(value, None, "SKF_CACHE_FUNCTIONS")


# A function's cache override: true, false or a mapping (the prompt file's cache block).
CacheOverride = Annotated[CachePolicy, BeforeValidator(_cache_policy)]


class DeploymentSpec(BaseModel):
    """One entry of ``SKF_MODEL_DEPLOYMENTS`` (sk_core/model/_deployments.py builds it)."""

    provider: Provider = Provider.OPENAI_COMPATIBLE
    model: str = Field(min_length=1)
    base_url: str | None = None
    endpoint: str = ""
    api_version: str = "2024-10-21"
    price: PriceSpec | None = None
    max_concurrency: Annotated[int, Field(strict=True, ge=1)] | None = None

    @model_validator(mode="after")
    def _check_endpoint(self) -> DeploymentSpec:
        if self.provider is Provider.AZURE_OPENAI and not self.endpoint:
            raise ValueError("azure_openai needs 'endpoint'")
        if self.provider is Provider.OPENAI_COMPATIBLE and not self.base_url:
            raise ValueError("openai_compatible needs 'base_url'")
        return self


class Settings(BaseSettings):
    """Service configuration. Environment variable names are the field names with ``SKF_``."""

    model_config = SettingsConfigDict(
        env_prefix="SKF_", case_sensitive=False, extra="ignore", populate_by_name=True
    )

    environment: Environment = Environment.LOCAL

    model_provider: Provider = Provider.LOCAL
    model_id: str = Field(
        default="",
        description="Model name (OpenAI, compatible servers) or deployment name (Azure OpenAI). "
        "Empty picks the provider default.",
    )
    model_base_url: str = Field(
        default="", description="Base URL for openai_compatible (required) and local (optional)."
    )
    model_api_key: SecretStr = SecretStr("")
    azure_openai_endpoint: str = ""
    azure_openai_api_version: str = "2024-10-21"

    model_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    model_max_retries: int = Field(default=2, ge=0, le=10)
    model_deadline_seconds: float = Field(default=60.0, gt=0, le=900)

    # Routing (sk_core/model/_deployments.py). Empty deployments: one deployment from SKF_MODEL_*.
    model_deployments: JsonObject[DeploymentSpec] = Field(
        default_factory=dict,
        description='JSON: {"name": {"provider", "model", "base_url" | "endpoint", "price"?, '
        '"max_concurrency"?}}; empty: the single SKF_MODEL_* deployment.',
    )
    model_chains: JsonObject[Annotated[list[str], Field(min_length=1)]] = Field(
        default_factory=dict,
        description='JSON: {"chain": ["deployment", ...]}; empty: one chain of every deployment.',
    )
    model_chain: str = Field(default=DEFAULT_CHAIN, description="The chain a call uses unless it picks one.")
    breaker_failures: int = Field(default=5, ge=1, le=1000)
    breaker_cooldown_seconds: float = Field(default=5.0, gt=0, le=600)
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=10)
    storage_deadline_seconds: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="Longest a request waits on Table Storage before failing closed.",
    )

    # Container host only (sk_core/asgi.py, BoundedHttpProtocol): slow or silent clients.
    http_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    http_max_header_bytes: int = Field(
        default=32_768,
        ge=1024,
        le=1_048_576,
        description="Container host: most bytes of request line and headers (431 beyond).",
    )
    http_request_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)

    max_body_bytes: int = Field(default=100 * 1024, ge=1024, le=10 * 1024 * 1024)
    ready_timeout_seconds: float = Field(default=2.0, gt=0, le=30)

    storage_connection_string: SecretStr = Field(
        default=SecretStr("UseDevelopmentStorage=true"),
        validation_alias=AliasChoices("SKF_STORAGE_CONNECTION_STRING", "AzureWebJobsStorage"),
        description="Table Storage connection string; falls back to the Functions AzureWebJobsStorage.",
    )
    storage_account_endpoint: str = Field(
        default="",
        description="https://<account>.table.core.windows.net; wins over the connection string "
        "and authenticates with DefaultAzureCredential (managed identity).",
    )
    storage_table_prefix: str = Field(default="skf", pattern=r"^[A-Za-z][A-Za-z0-9]{0,20}$")
    storage_retries: int = Field(default=2, ge=0, le=10)

    api_key_pepper: SecretStr = SecretStr("local-development-pepper")
    auth_cache_seconds: float = Field(default=30.0, ge=0, le=300)
    model_prices: JsonObject[PriceSpec] = Field(
        default_factory=dict,
        description='JSON overrides of USD per million tokens: {"model": {"input": x, "output": y}}',
    )
    min_answer_tokens: int = Field(default=16, ge=1, le=1024)
    hold_lease_seconds: float = Field(default=300.0, ge=5, le=86400)
    sweep_interval_seconds: float = Field(default=60.0, ge=1, le=3600)
    budget_gauge_tenants: int = Field(
        default=50,
        ge=0,
        le=10_000,
        description="Tenants (most recently active) whose budgets this process exports as the "
        "sk.budget.* gauges; bounds their series (0: none).",
    )
    budget_gauge_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How old a tenant's budget gauge may get while it has traffic.",
    )
    leases: bool = Field(
        default=True,
        description="Quota leases: admit and settle in memory against leased slices (false: every "
        "admission and settlement is its own storage transaction).",
    )
    lease_allocator: bool = Field(
        default=True,
        description="Leases granted by one allocator per tenant (a process holding its alloc row): "
        "no row has two writers on the request path (false: processes share pool rows; "
        "SKF_LEASE_POOL_* apply).",
    )
    lease_report_seconds: float = Field(default=2.0, gt=0, le=60)
    lease_idle_seconds: float = Field(default=3.0, gt=0, le=600)
    lease_horizon_seconds: float = Field(default=4.0, gt=0, le=600)
    lease_share: float = Field(default=0.5, gt=0, le=1)
    lease_ttl_seconds: float = Field(
        default=30.0,
        ge=5,
        le=3600,
        description="A lease not renewed this long (its process died) is charged in full and its "
        "slots released by the sweep.",
    )
    lease_pool_threshold: int = Field(
        default=24,
        ge=0,
        le=100_000,
        description="A tenant with more lease holders than this splits its pool into sub-pools "
        "(rows of its partition that holders sync with; issue 23).",
    )
    lease_pool_holders: int = Field(default=4, ge=1, le=1024, description="Lease holders per sub-pool.")
    lease_max_pools: int = Field(
        default=8, ge=0, le=64, description="Sub-pools per tenant at most (0: never split the pool)."
    )
    audit_retention_days: float = Field(default=30.0, gt=0, le=3650)
    audit_shards: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Audit partitions per tenant and hour: one per ~2,000 calls/s of one tenant "
        "(Table Storage's per-partition target). Raise it at any time; never lower it.",
    )

    key_vault_url: str = Field(
        default="",
        description="https://<vault>.vault.azure.net: read secrets from Key Vault instead of settings.",
    )
    key_vault_client_id: str = Field(default="", description="Client id of a user-assigned managed identity.")
    model_api_key_secret_name: str = "model-api-key"  # noqa: S105 (a name, not a secret)
    api_key_pepper_secret_name: str = "api-key-pepper"  # noqa: S105 (a name, not a secret)
    secret_cache_seconds: float = Field(default=300.0, ge=1, le=86400)
    secret_refresh_ahead_seconds: float = Field(default=60.0, ge=0, le=86400)
    secret_max_staleness_seconds: float = Field(default=3600.0, ge=1, le=7 * 86400)
    secret_retry_seconds: float = Field(default=10.0, ge=0.1, le=3600)

    guard_policy: Literal["block", "flag", "off"] = Field(
        default="flag", description="Prompt-injection policy for every function unless overridden."
    )
    guard_policies: JsonObject[Literal["block", "flag", "off"]] = Field(
        default_factory=dict,
        description='Per-function overrides as JSON: {"chat/chat": "block", "text/translate": "off"}',
    )
    guard_extra_patterns: JsonList[str] = Field(
        default_factory=list, description="JSON list of extra regexes flagged as injection."
    )
    guard_fail_closed: bool = Field(
        default=False, description="Refuse (503) when Prompt Shields is configured but unreachable."
    )
    content_safety_endpoint: str = Field(
        default="", description="Azure AI Content Safety endpoint: also screen prompts with Prompt Shields."
    )
    content_safety_key: SecretStr = SecretStr("")
    redaction: str = Field(
        default="prompt_echo,link,email,phone,payment_card,iban,secret",
        description="Kinds redacted from model output (comma-separated; empty: none).",
    )
    redaction_policies: JsonObject[CommaList] = Field(
        default_factory=dict, description='Per-function overrides as JSON: {"text/translate": "email,secret"}'
    )
    redaction_link_hosts: JsonObject[CommaList] = Field(
        default_factory=dict,
        description='Hosts whose links and images may stay in a function\'s output, as JSON: '
        '{"chat/chat": "docs.example.com,*.contoso.com"}; a function not listed: none.',
    )
    redaction_echo_words: int = Field(
        default=8, ge=3, le=1000, description="Template words in a row an answer may repeat before redaction."
    )

    # The JSON-valued settings above are typed fields: parsed and validated once, when the
    # settings are read (a bad value fails at startup); requests read the parsed values.
    @functools.cached_property
    def _default_redaction(self) -> tuple[str, ...]:
        return _kinds(self.redaction)

    def guard_policy_for(self, function_id: str) -> Literal["block", "flag", "off"]:
        """The injection policy of one function."""
        return self.guard_policies.get(function_id, self.guard_policy)

    def redaction_for(self, function_id: str) -> tuple[str, ...]:
        """The kinds redacted from one function's output."""
        return self.redaction_policies.get(function_id, self._default_redaction)

    def required_secrets(self) -> list[str]:
        """Secrets without which the service cannot serve (readiness checks them)."""
        names = [self.api_key_pepper_secret_name]
        if self.model_provider is Provider.OPENAI:
            names.append(self.model_api_key_secret_name)
        return names

    def link_hosts_for(self, function_id: str) -> tuple[str, ...]:
        """The hosts one function's output may link to (SKF_REDACTION_LINK_HOSTS)."""
        return self.redaction_link_hosts.get(function_id, ())

    cache: bool = Field(
        default=True,
        description="Response cache for the functions whose prompt file opts in (false: none is cached).",
    )
    cache_ttl_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=30 * 86400,
        description="How long a cached answer lives, unless its function says.",
    )
    cache_memory_bytes: int = Field(
        default=64 * 1024 * 1024, ge=0, description="Bound of each process's in-memory cache (0: Table only)."
    )
    cache_memory_seconds: float = Field(
        default=60.0, gt=0, le=86400, description="How long a process keeps an answer in memory: a purge "
        "reaches every instance within it."
    )
    cache_functions: JsonObject[CacheOverride] = Field(
        default_factory=dict,
        description='Per-function overrides of the prompt files\' cache blocks, as JSON: '
        '{"text/summarize": {"enabled": true, "ttl_seconds": 600}}',
    )

    def cache_override_for(self, function_id: str) -> CachePolicy | None:
        """SKF_CACHE_FUNCTIONS' policy for one function, replacing its prompt file's."""
        return self.cache_functions.get(function_id)

    cors_allowed_origins: str = Field(
        default="", description="Comma-separated origins allowed to call from browsers (no '*'); empty: none."
    )

    @property
    def cors_origins(self) -> list[str]:
        """The CORS allow-list."""
        return [o.strip().rstrip("/") for o in self.cors_allowed_origins.split(",") if o.strip()]

    telemetry_exporter: Literal["auto", "azure_monitor", "otlp", "console", "none"] = "auto"
    prometheus_metrics: bool = Field(default=True, description="Container host: serve /metrics.")
    metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Container host: the port of its own listener serving /metrics (every tenant's "
        "usage and spend: keep it off the ingress); 0: /metrics on the API port, unauthenticated.",
    )
    log_format: Literal["json", "text"] = "json"
    genai_diagnostics: bool = Field(
        default=True, description="Semantic Kernel's gen_ai spans (no prompt text)."
    )
    genai_sensitive_diagnostics: bool = Field(
        default=False,
        description="Also record prompt and completion text in SK's spans. Off unless you mean it.",
    )

    # Document memory (sk_core/memory): store, embedder, ingestion queue, limits.
    memory_store: Literal["sqlite", "azure_ai_search"] = Field(
        default="sqlite", description="Vector store: the embedded SQLite store, or Azure AI Search."
    )
    memory_store_path: str = Field(
        default=".run/memory/vectors.db",
        description="The embedded vector store's database file (created on first use).",
    )
    memory_search_endpoint: str = Field(
        default="", description="https://<service>.search.windows.net (memory_store=azure_ai_search)."
    )
    memory_search_index: str = Field(default="skf-memory", pattern=r"^[a-z0-9][a-z0-9-]{1,127}$")
    memory_search_key: SecretStr = Field(
        default=SecretStr(""), description="Azure AI Search admin key; empty: Entra ID (managed identity)."
    )
    memory_embedder: Literal["local", "openai", "azure_openai"] = Field(
        default="local",
        description="Embeddings: all-MiniLM-L6-v2 in process (local) or the provider's model.",
    )
    memory_embedding_model: str = Field(
        default="", description="Embedding model or deployment; empty: the embedder's default."
    )
    memory_queue_connection_string: SecretStr = Field(
        default=SecretStr(""),
        description="Storage account of the ingestion queue; empty: the storage connection string "
        "(the queue trigger listens on AzureWebJobsStorage: keep them one account).",
    )
    memory_queue_name: str = Field(default="skf-memory-ingest", pattern=r"^[a-z0-9][a-z0-9-]{2,56}$")
    memory_worker: bool = Field(
        default=True,
        description="Container host: run the ingestion worker (the Functions host uses its trigger).",
    )
    memory_max_attempts: int = Field(
        default=5, ge=1, le=20, description="Deliveries of a job message before it goes to <queue>-poison."
    )
    memory_chunk_tokens: int = Field(default=200, ge=16, le=510)
    memory_chunk_overlap_tokens: int = Field(default=40, ge=0, le=255)
    memory_max_document_chars: int = Field(default=100_000, ge=100, le=1_000_000)
    memory_max_documents: int = Field(default=100, ge=1, le=1000)

    @functools.cached_property
    def prices(self) -> dict[str, Price]:
        """The price table: defaults overlaid with ``SKF_MODEL_PRICES``."""
        return price_table(self.model_prices)

    @property
    def price(self) -> Price:
        """The price of the configured model (validated to exist at startup)."""
        return self.prices[self.resolved_model_id]

    def deployment_price(self, name: str) -> Price:
        """The price of one of ``SKF_MODEL_DEPLOYMENTS``: its own, else its model's."""
        spec = self.model_deployments[name]
        return spec.price.price if spec.price is not None else self.prices[spec.model]

    @property
    def chains(self) -> dict[str, list[str]]:
        """The fallback chains by name: ``SKF_MODEL_CHAINS``, else one chain of every
        deployment (``default``); without deployments, empty (the single model's)."""
        if self.model_chains or not self.model_deployments:
            return self.model_chains
        return {DEFAULT_CHAIN: list(self.model_deployments)}

    @property
    def resolved_model_id(self) -> str:
        """The model/deployment id after provider defaults are applied."""
        if self.model_id:
            return self.model_id
        if self.model_provider is Provider.LOCAL:
            return DEFAULT_LOCAL_MODEL_ID
        return "gpt-4o-mini"

    @property
    def resolved_base_url(self) -> str | None:
        """Base URL the OpenAI client talks to (None: the SDK's default for the provider)."""
        if self.model_provider is Provider.LOCAL:
            return self.model_base_url or DEFAULT_LOCAL_MODEL_URL
        return self.model_base_url or None

    @model_validator(mode="after")
    def _check_provider(self) -> Settings:
        provider = self.model_provider
        if provider is Provider.OPENAI_COMPATIBLE and not self.model_base_url:
            raise ValueError("SKF_MODEL_BASE_URL is required when SKF_MODEL_PROVIDER=openai_compatible")
        if provider is Provider.AZURE_OPENAI:
            if not self.azure_openai_endpoint:
                raise ValueError("SKF_AZURE_OPENAI_ENDPOINT is required when SKF_MODEL_PROVIDER=azure_openai")
            if not self.model_id:
                raise ValueError("SKF_MODEL_ID (the deployment name) is required for azure_openai")
        if self.resolved_model_id not in self.prices:
            # A model without a price cannot be budgeted: refuse to start, not to charge 0.
            raise ValueError(f"no price for model {self.resolved_model_id!r}: add it to SKF_MODEL_PRICES")
        self._check_routing()
        if "*" in self.cors_origins:
            raise ValueError("SKF_CORS_ALLOWED_ORIGINS must list origins; '*' is not allowed")
        if self.secret_refresh_ahead_seconds >= self.secret_cache_seconds:
            raise ValueError("SKF_SECRET_REFRESH_AHEAD_SECONDS must be shorter than SKF_SECRET_CACHE_SECONDS")
        if self.secret_max_staleness_seconds < self.secret_cache_seconds:
            raise ValueError("SKF_SECRET_MAX_STALENESS_SECONDS must be at least SKF_SECRET_CACHE_SECONDS")
        if self.lease_ttl_seconds < 4 * self.lease_report_seconds:
            raise ValueError("SKF_LEASE_TTL_SECONDS must be at least 4 x SKF_LEASE_REPORT_SECONDS")
        if self.memory_store == "azure_ai_search" and not self.memory_search_endpoint:
            raise ValueError("SKF_MEMORY_SEARCH_ENDPOINT is required when SKF_MEMORY_STORE=azure_ai_search")
        if self.hold_lease_seconds <= self.model_deadline_seconds:
            raise ValueError("SKF_HOLD_LEASE_SECONDS must be longer than SKF_MODEL_DEADLINE_SECONDS")
        # With a vault, secrets are checked when fetched (readiness), not here.
        if self.environment is Environment.PRODUCTION and not self.key_vault_url:
            pepper = self.api_key_pepper.get_secret_value()
            if pepper in _PLACEHOLDERS or pepper == "local-development-pepper" or len(pepper) < 16:
                raise ValueError("SKF_API_KEY_PEPPER must be a real secret (16+ chars) in production")
        if self.environment is Environment.PRODUCTION:
            key = self.model_api_key.get_secret_value().strip().lower()
            # Azure OpenAI may use Entra ID instead of a key; the others need a real key.
            if provider is Provider.OPENAI and not self.key_vault_url and key in _PLACEHOLDERS:
                raise ValueError("SKF_MODEL_API_KEY is missing or a placeholder")
            if provider is Provider.AZURE_OPENAI and not self.key_vault_url and key and key in _PLACEHOLDERS:
                raise ValueError("SKF_MODEL_API_KEY is a placeholder (leave it empty to use Entra ID)")
            if provider is Provider.LOCAL:
                raise ValueError("SKF_MODEL_PROVIDER=local is for development, not production")
        return self

    def _check_routing(self) -> None:
        """What no single deployment or chain can check alone: prices, members, the default."""
        if not self.model_deployments:
            return
        for name, spec in self.model_deployments.items():
            if spec.price is None and spec.model not in self.prices:
                # A deployment without a price cannot be budgeted: refuse to start, not to charge 0.
                raise ValueError(
                    f"SKF_MODEL_DEPLOYMENTS[{name!r}]: no price for model {spec.model!r} "
                    "(add 'price' or SKF_MODEL_PRICES)"
                )
        for name, members in self.chains.items():
            missing = [m for m in members if m not in self.model_deployments]
            if missing:
                raise ValueError(f"SKF_MODEL_CHAINS[{name!r}] names unknown deployments {missing}")
        default = self.model_chain or DEFAULT_CHAIN
        if default not in self.chains:
            raise ValueError(f"SKF_MODEL_CHAIN {default!r} is not a chain of SKF_MODEL_CHAINS")


@functools.cache
def get_settings() -> Settings:
    """Read the environment once per process; tests call ``get_settings.cache_clear()``."""
    return Settings()
