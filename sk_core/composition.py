"""The composition root: the one place that builds the parts and wires them together.

``Service.create`` reads the settings and makes every collaborator (storage, secrets,
tenants, the runtime provider, the guard, the ledger) and the ``Pipeline`` over them;
the ``make_*`` factories below are the only constructors of configured parts, shared
with the admin CLI and scripts. No behaviour lives here.

Both hosts call the same handlers, and neither host has a place to hang state that the
other shares (a Functions trigger has no Starlette ``app.state``), so the service is
built once per process, on the first request (``get_service``), and handed on from
there: the hosts bind each route to it (``RouteSpec.bind``), and the route's endpoint
passes it to the boundary and the handler as an argument. Nothing under
``sk_core.http`` looks it up. Tests install their own with ``set_service``. Storage
modules are imported here, on first use, not at module import: ``function_app.py``
indexing stays free of the Azure SDKs (and does not import this module at all).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import TYPE_CHECKING, TypedDict

from sk_core import telemetry
from sk_core.catalog import Catalog
from sk_core.errors import StorageUnavailable
from sk_core.model import KeyProvider, RoutingTable, RuntimeProvider
from sk_core.pipeline import Pipeline
from sk_core.settings import Provider, Settings, get_settings
from sk_core.usage import BudgetGauges

if TYPE_CHECKING:
    from sk_core.accounts import Authenticator, TenantStore
    from sk_core.cache import ResponseCache
    from sk_core.limits import Ledger
    from sk_core.safety import Redactor
    from sk_core.safety.guard import Guard
    from sk_core.secrets import CachedSecrets
    from sk_core.storage import TableStore
    from sk_core.usage import AuditLog


class SweepParts(TypedDict):
    """The parts the maintenance sweep works on (``sweep_expired_holds``)."""

    ledger: Ledger
    audit: AuditLog
    budget_gauges: BudgetGauges
    cache: ResponseCache | None


class Service:
    """Everything a request handler needs, created once per worker process."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        runtimes: RuntimeProvider,
        store: TableStore,
        tenants: TenantStore,
        auth: Authenticator,
        ledger: Ledger,
        secrets: CachedSecrets,
        audit: AuditLog,
        guard: Guard,
        pipeline: Pipeline | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.runtimes = runtimes
        self.store = store
        self.tenants = tenants
        self.auth = auth
        self.ledger = ledger
        self.secrets = secrets
        self.audit = audit
        self.guard = guard
        self.cache = cache
        self.budget_gauges = BudgetGauges(
            max_tenants=settings.budget_gauge_tenants, refresh_seconds=settings.budget_gauge_seconds
        )
        telemetry.report_budgets(self.budget_gauges.observations)
        # Deployments and fallback chains, built once from the typed settings.
        self.routing = RoutingTable.from_settings(settings)
        self.pipeline = pipeline or Pipeline(
            auth=auth,
            guard=guard,
            guard_policy=settings.guard_policy_for,
            ledger=ledger,
            runtimes=runtimes,
            redactor=Redactors(settings, catalog),
            price=settings.price,
            model_id=settings.resolved_model_id,
            routing=self.routing,
            storage_deadline_seconds=settings.storage_deadline_seconds,
            storage_silence=store.silence,
            cache=cache,
            budget_gauges=self.budget_gauges,
        )

    async def start(self) -> None:
        """What a host does before it takes traffic (the container host's lifespan, the
        Functions host's warmup trigger): ``prepare_tables``, so that no request waits
        for a table creation (issue 23, defect 3). Storage out of reach is logged, not
        raised: the host starts anyway, readiness says what is wrong (and prepares them
        once storage answers), and a table is otherwise created on its first use."""
        try:
            await self.prepare_tables()
        except StorageUnavailable as exc:
            logger.error(
                "startup: storage tables not prepared (%s); creating them on first use",
                exc.reason, exc_info=exc.__cause__,
            )

    async def prepare_tables(self) -> None:
        """Make sure the tables the request path uses exist: one listing, plus a creation
        for each missing one (``TableStore.prepare``). Raises ``StorageUnavailable``."""
        from sk_core.accounts import TABLES
        from sk_core.cache import CACHE_TABLE
        from sk_core.limits import USAGE_TABLE
        from sk_core.usage import AUDIT_TABLE

        tables = [*TABLES, USAGE_TABLE, AUDIT_TABLE, *([CACHE_TABLE] if self.cache is not None else [])]
        await self.store.prepare(tables)

    def sweep_parts(self) -> SweepParts:
        """What ``sweep_expired_holds`` works on, as its keyword arguments."""
        return SweepParts(
            ledger=self.ledger, audit=self.audit, budget_gauges=self.budget_gauges, cache=self.cache
        )

    async def aclose(self) -> None:
        """Release network resources (called on host shutdown)."""
        await self.auth.aclose()
        await self.audit.aclose()
        await self.guard.aclose()
        await self.ledger.aclose()  # leases hand back and report before storage closes
        await self.runtimes.aclose()
        await self.store.aclose()
        await self.secrets.aclose()

    @classmethod
    def create(cls, settings: Settings | None = None, *, secrets: CachedSecrets | None = None) -> Service:
        """Build the context from settings (default: the environment); ``secrets`` overrides
        the secret source the settings select (tests point it at a vault stand-in)."""
        from sk_core.accounts import Authenticator
        from sk_core.limits import Ledger
        from sk_core.limits.lease_state import LeaseSettings
        from sk_core.telemetry import setup_telemetry
        from sk_core.usage import AuditLog

        settings = settings or get_settings()
        # Once per process (a no-op if a host or a test installed providers already).
        setup_telemetry(
            settings, host="functions" if os.environ.get("FUNCTIONS_WORKER_RUNTIME") else "container"
        )
        catalog = Catalog.load()
        store = make_store(settings)
        secrets = secrets or make_secrets(settings)
        tenants = make_tenant_store(settings, store, secrets)
        return cls(
            settings=settings,
            catalog=catalog,
            runtimes=RuntimeProvider(
                settings=settings, catalog=catalog, key_provider=make_key_provider(settings, secrets)
            ),
            secrets=secrets,
            audit=AuditLog(
                store=store, retention_days=settings.audit_retention_days, shards=settings.audit_shards
            ),
            guard=make_guard(settings),
            cache=make_cache(settings, store) if settings.cache else None,
            store=store,
            tenants=tenants,
            auth=Authenticator(tenants=tenants, ttl_seconds=settings.auth_cache_seconds),
            ledger=Ledger(
                store=store,
                lease_seconds=settings.hold_lease_seconds,
                min_answer_tokens=settings.min_answer_tokens,
                leases=LeaseSettings(
                    report_seconds=settings.lease_report_seconds,
                    idle_seconds=settings.lease_idle_seconds,
                    horizon_seconds=settings.lease_horizon_seconds,
                    share=settings.lease_share,
                    ttl_seconds=settings.lease_ttl_seconds,
                    pool_threshold=settings.lease_pool_threshold,
                    pool_holders=settings.lease_pool_holders,
                    max_pools=settings.lease_max_pools,
                    allocated=settings.lease_allocator,
                )
                if settings.leases
                else None,
            ),
        )


class Redactors:
    """One output redactor per function, built on first use: the function's redaction
    kinds, the hosts its answers may link to, and its template, which an answer must not
    echo (kind ``prompt_echo``)."""

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self._settings = settings
        self._catalog = catalog
        self._built: dict[str, Redactor] = {}

    def __call__(self, function_id: str) -> Redactor:
        redactor = self._built.get(function_id)
        if redactor is None:
            # Imported on first use: its patterns compile at import, after the first answer.
            from sk_core.safety import Redactor

            plugin, _, name = function_id.partition("/")
            spec = self._catalog.get(plugin, name)
            settings = self._settings
            redactor = self._built[function_id] = Redactor(
                settings.redaction_for(function_id),
                link_hosts=settings.link_hosts_for(function_id),
                template=spec.template if spec is not None else "",
                echo_words=settings.redaction_echo_words,
            )
        return redactor


def make_store(settings: Settings) -> TableStore:
    """The Table Storage client the settings describe."""
    from sk_core.storage import TableStore

    return TableStore(
        connection_string=""
        if settings.storage_account_endpoint
        else settings.storage_connection_string.get_secret_value(),
        endpoint=settings.storage_account_endpoint,
        table_prefix=settings.storage_table_prefix,
        retries=settings.storage_retries,
        timeout_seconds=settings.storage_deadline_seconds,
    )


def make_cache(settings: Settings, store: TableStore) -> ResponseCache:
    """The response cache over ``store`` (the admin CLI purges through the same one)."""
    from sk_core.cache import ResponseCache

    return ResponseCache(
        store=store,
        ttl_seconds=settings.cache_ttl_seconds,
        memory_bytes=settings.cache_memory_bytes,
        memory_seconds=settings.cache_memory_seconds,
        # A waiter for an identical call in flight waits no longer than that call may take.
        wait_seconds=settings.model_deadline_seconds,
        overrides=settings.cache_override_for,
        redaction=lambda function_id: redaction_policy(settings, function_id),
    )


def redaction_policy(settings: Settings, function_id: str) -> str:
    """The id of one function's redaction policy (a response cache key component)."""
    from sk_core.safety import policy_id  # with the redactor, on the first answer

    return policy_id(
        settings.redaction_for(function_id),
        link_hosts=settings.link_hosts_for(function_id),
        echo_words=settings.redaction_echo_words,
    )


def make_guard(settings: Settings) -> Guard:
    """The prompt-injection guard: local patterns, plus Prompt Shields when configured."""
    from sk_core.safety.guard import Guard, InjectionDetector, PromptShieldsClient

    shields = (
        PromptShieldsClient(
            settings.content_safety_endpoint, settings.content_safety_key.get_secret_value() or None
        )
        if settings.content_safety_endpoint
        else None
    )
    return Guard(
        InjectionDetector(extra_patterns=settings.guard_extra_patterns),
        shields=shields,
        fail_closed=settings.guard_fail_closed,
    )


def make_secrets(settings: Settings) -> CachedSecrets:
    """Key Vault when a vault URL is configured, else the settings' own values; cached."""
    from sk_core.secrets import CachedSecrets, EnvSecretSource, KeyVaultSecretSource, SecretSource
    from sk_core.telemetry import instruments

    source: SecretSource
    if settings.key_vault_url:
        source = KeyVaultSecretSource(settings.key_vault_url, client_id=settings.key_vault_client_id or None)
    else:
        source = EnvSecretSource(
            {
                settings.model_api_key_secret_name: settings.model_api_key.get_secret_value(),
                settings.api_key_pepper_secret_name: settings.api_key_pepper.get_secret_value(),
            }
        )
    return CachedSecrets(
        source,
        ttl_seconds=settings.secret_cache_seconds,
        refresh_ahead_seconds=settings.secret_refresh_ahead_seconds,
        max_staleness_seconds=settings.secret_max_staleness_seconds,
        failure_retry_seconds=settings.secret_retry_seconds,
        on_refresh_failure=lambda name: instruments().secret_refresh_failures.add(1, {"secret": name}),
    )


def make_tenant_store(
    settings: Settings, store: TableStore, secrets: CachedSecrets | None = None
) -> TenantStore:
    """Tenants and keys over ``store``; keys are hashed with the pepper read from ``secrets``
    (default: a one-shot reader of the configured source, for the CLI and scripts)."""
    from sk_core.accounts import TenantStore
    from sk_core.secrets import OneShotSecrets

    reader = secrets if secrets is not None else OneShotSecrets(lambda: make_secrets(settings))
    return TenantStore(store=store, secrets=reader, pepper_name=settings.api_key_pepper_secret_name)


def make_key_provider(settings: Settings, secrets: CachedSecrets) -> KeyProvider:
    """How the kernel gets the model key: none (local), required (openai) or optional."""
    from sk_core.secrets import SecretMissing

    name = settings.model_api_key_secret_name
    provider = settings.model_provider

    async def key() -> tuple[str | None, str]:
        if provider is Provider.LOCAL:
            return None, ""
        try:
            return await secrets.get_versioned(name)
        except SecretMissing:
            if provider is Provider.OPENAI:
                raise
            return None, ""  # keyless: Entra ID (Azure OpenAI) or an open local server

    return key


logger = logging.getLogger(__name__)
_lock = threading.Lock()
_service: Service | None = None


def get_service() -> Service:
    """The process's service, built on the first call (cold start: not at import).
    Only the hosts call this, to bind routes and run the sweep."""
    global _service
    if _service is None:
        with _lock:
            if _service is None:
                _service = Service.create()
    return _service


def set_service(service: Service | None) -> None:
    """Replace the process's context (tests, or a host that builds its own)."""
    global _service
    with _lock:
        _service = service


# Scheduled work shared by both hosts: charging expired holds, purging old audit rows and
# expired response-cache entries. The Functions host runs ``sweep_expired_holds`` from a
# timer trigger; the container host runs ``sweep_periodically`` as a background task.
# Several instances sweeping at once is safe: each hold is charged by an ETag-conditional
# transaction, so exactly one sweeper wins and the others find it gone.
async def sweep_expired_holds(
    *, ledger: Ledger, audit: AuditLog, budget_gauges: BudgetGauges, cache: ResponseCache | None
) -> int:
    """Charge and flag every expired hold once, purge old audit rows and expired cache
    entries, refresh the budget gauges; returns how many holds were charged."""
    try:
        charged = await ledger.expire_holds()
    except StorageUnavailable as exc:
        logger.warning("hold sweep skipped: %s", exc.reason)
        return 0
    await audit.purge()
    await budget_gauges.refresh_all(ledger)
    if cache is not None:
        try:
            await cache.purge_expired()
        except StorageUnavailable as exc:
            logger.warning("cache sweep skipped: %s", exc.reason)
    if charged:
        logger.warning("charged %d expired holds at their reserved amount (flagged for audit)", charged)
    return charged


async def sweep_periodically(service: Service, interval_seconds: float) -> None:
    """Sweep ``service`` forever (until cancelled at shutdown)."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await sweep_expired_holds(**service.sweep_parts())
        except Exception:
            logger.exception("hold sweep failed; retrying next interval")
