"""The one place secrets come from: Azure Key Vault in Azure, settings values locally.

Two sources implement :class:`SecretSource`:

* :class:`KeyVaultSecretSource` reads from Key Vault with the async ``SecretClient`` and
  ``DefaultAzureCredential`` (managed identity in Azure; set a client id for a
  user-assigned identity).
* :class:`EnvSecretSource` serves values already read from the environment /
  ``local.settings.json`` (local mode: no vault configured).

:class:`CachedSecrets` wraps either one and is what the rest of the service calls:

* a value is cached for ``ttl_seconds``; a hit costs no I/O;
* concurrent callers of a missing/expired value share one fetch (single flight);
* a hit inside the last ``refresh_ahead_seconds`` of the TTL returns the cached value and
  starts one background refresh, so busy workers never wait for the vault;
* if the vault cannot be reached, the last good value keeps being served (with a warning
  log and ``on_refresh_failure`` for the metric) until it is ``max_staleness_seconds``
  old; after that :class:`SecretUnavailable` is raised;
* a secret that the vault says does not exist (deleted, or never created) raises
  :class:`SecretMissing` at once, even if a value is cached: deleting a secret is how a
  leaked key is revoked, so serving the old value "for availability" would defeat it;
* :meth:`CachedSecrets.get_versioned` returns the Key Vault version id with the value,
  so a holder of a client built from a secret can see that it was rotated and rebuild.

Importing this module is cheap: the Azure SDKs are imported when a
:class:`KeyVaultSecretSource` is created, not at import.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets as _stdlib_secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.keyvault.secrets.aio import SecretClient

__all__ = [
    "API_KEY_PEPPER",
    "MODEL_API_KEY",
    "CachedSecrets",
    "EnvSecretSource",
    "KeyVaultSecretSource",
    "SecretError",
    "SecretMissing",
    "SecretSource",
    "SecretUnavailable",
]

logger = logging.getLogger(__name__)

#: Logical secret names, valid as Key Vault names (letters, digits, dashes) so the same
#: name works in both modes.
MODEL_API_KEY = "model-api-key"
API_KEY_PEPPER = "api-key-pepper"

# Key Vault's own rule for secret names; checking it here turns a typo into a clear
# SecretMissing instead of a 400/404 from a URL-quoted oddity.
_VAULT_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")


class SecretError(Exception):
    """Base class; ``str(exc)`` never contains a secret value and is safe for readiness."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class SecretMissing(SecretError):
    """The secret does not exist (or is empty): a configuration error, not a transient one."""

    def __init__(self, name: str, detail: str = "") -> None:
        where = f" ({detail})" if detail else ""
        super().__init__(name, f"secret {name!r} is not configured{where}")


class SecretUnavailable(SecretError):
    """The source could not be asked (unreachable, refused our credential) and no cached
    value young enough to serve exists."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, f"secret {name!r} is unavailable: {reason}")
        self.reason = reason


class SecretSource(ABC):
    """Where secret values come from, uncached. Implementations raise only SecretError."""

    @abstractmethod
    async def get_versioned(self, name: str) -> tuple[str, str]:
        """``(value, version)``; the version changes whenever the value is rotated."""

    async def get(self, name: str) -> str:
        """The current value of ``name``."""
        value, _ = await self.get_versioned(name)
        return value

    async def aclose(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing
        """Release network resources."""


# A per-process key: env "versions" must not be a plain hash of the secret, which would
# let anyone who sees a version (logs, debugging) test guesses of a low-entropy value.
_VERSION_KEY = _stdlib_secrets.token_bytes(16)


def _local_version(value: str) -> str:
    return "local-" + hashlib.blake2b(value.encode(), key=_VERSION_KEY, digest_size=8).hexdigest()


class EnvSecretSource(SecretSource):
    """Local mode: values from settings / environment / ``local.settings.json``.

    ``values`` is read on every call, so passing a live mapping picks up changes. An
    empty value counts as missing: settings default secrets to ``""`` when unset.
    """

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = values

    async def get_versioned(self, name: str) -> tuple[str, str]:
        """The configured value and a keyed hash of it as the version."""
        value = self._values.get(name, "")
        if not value:
            raise SecretMissing(name, "not set in the local settings / environment")
        return value, _local_version(value)


class KeyVaultSecretSource(SecretSource):
    """Reads secrets from Azure Key Vault (``azure-keyvault-secrets``, async).

    ``credential`` defaults to ``DefaultAzureCredential`` (managed identity in Azure,
    developer logins locally); ``client_id`` selects a user-assigned managed identity.
    A credential passed in is the caller's to close; one built here is closed by
    :meth:`aclose`.

    The SDK defaults are tuned for batch jobs (10 tries with exponential backoff, a
    300 s read timeout); a secret fetch sits on a request path or a readiness probe, and
    the cache serves the last good value through outages, so fail fast instead.
    """

    def __init__(
        self,
        vault_url: str,
        *,
        credential: AsyncTokenCredential | None = None,
        client_id: str | None = None,
        connection_verify: str | bool | None = None,
        verify_challenge_resource: bool = True,
        retry_total: int = 2,
        retry_backoff_factor: float = 0.5,
        timeout_seconds: float = 5.0,
    ) -> None:
        from azure.keyvault.secrets.aio import SecretClient

        self.vault_url = vault_url
        self._owned_credential: AsyncTokenCredential | None = None
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            # Only pass the id when set: an explicit None would override AZURE_CLIENT_ID.
            identity: dict[str, Any] = {"managed_identity_client_id": client_id} if client_id else {}
            credential = self._owned_credential = DefaultAzureCredential(**identity)
        options: dict[str, Any] = {
            "retry_total": retry_total,
            "retry_backoff_factor": retry_backoff_factor,
            "connection_timeout": timeout_seconds,
            "read_timeout": timeout_seconds,
            # The SDK refuses a vault whose challenge names another resource domain than
            # the vault's (*.vault.azure.net); a local test vault on 127.0.0.1 must opt out.
            "verify_challenge_resource": verify_challenge_resource,
        }
        if connection_verify is not None:
            options["connection_verify"] = connection_verify
        self._client: SecretClient = SecretClient(vault_url, credential, **options)

    async def get_versioned(self, name: str) -> tuple[str, str]:
        """The latest enabled version's value and version id."""
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
        )

        if not _VAULT_NAME.match(name):
            raise SecretMissing(name, "not a valid Key Vault secret name")
        try:
            secret = await self._client.get_secret(name)
        except ResourceNotFoundError:
            raise SecretMissing(name, f"no such secret in {self.vault_url}") from None
        except ClientAuthenticationError as exc:
            # Raised both for a 401 from the vault and by the credential itself (no managed
            # identity, token endpoint down); only the former has a response.
            if exc.response is not None:
                reason = f"the vault refused our credential ({exc.response.status_code})"
            else:
                reason = f"could not get a token for the vault: {_first_line(exc.message)}"
            raise SecretUnavailable(name, reason) from exc
        except HttpResponseError as exc:
            status = exc.status_code
            if status in (401, 403):
                reason = f"the vault refused our credential ({status}); check its access policy / RBAC"
            else:
                reason = f"the vault answered {status}"
            raise SecretUnavailable(name, reason) from exc
        except AzureError as exc:  # ServiceRequestError / ServiceResponseError: network
            raise SecretUnavailable(name, f"the vault is unreachable ({type(exc).__name__})") from exc
        except ValueError as exc:  # the SDK's challenge checks (wrong vault URL domain)
            raise SecretUnavailable(name, _first_line(str(exc))) from exc
        value = secret.value
        if not value:
            raise SecretMissing(name, f"empty value in {self.vault_url}")
        return value, secret.properties.version or _local_version(value)

    async def aclose(self) -> None:
        """Close the client's sockets and, if we built it, the credential."""
        await self._client.close()
        if self._owned_credential is not None:
            await self._owned_credential.close()


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:limit]


@dataclass(frozen=True)
class _Entry:
    value: str
    version: str
    fetched_at: float  # clock time of the last successful fetch
    failed_at: float | None = None  # clock time of the last failed refresh since then


class CachedSecrets:
    """TTL cache with single-flight fetches, refresh-ahead and bounded stale serving.

    ``clock`` is injectable (monotonic seconds) so tests can move time. Timings:

    * age < ``ttl - refresh_ahead``: cached value, no I/O;
    * age < ``ttl``: cached value, and one background refresh is started;
    * age >= ``ttl``: the caller waits for the (shared) fetch;
    * fetch fails and age < ``max_staleness``: the cached value is served, a warning is
      logged, ``refresh_failures`` is incremented and ``on_refresh_failure(name)`` is
      called; for ``failure_retry_seconds`` afterwards callers get the stale value without
      waiting, then a background refresh is tried again (callers never queue behind a
      dead vault while a usable value exists);
    * age >= ``max_staleness``: callers wait for a fetch; if it fails, SecretUnavailable.

    ``refresh_failures`` and ``on_refresh_failure`` count every failed fetch (vault
    unreachable / refusing), whether or not a stale value could be served. A deletion
    (SecretMissing) is an answer, not a failure, and is not counted.

    Not thread-safe: create and use one instance per event loop (per worker).
    """

    def __init__(
        self,
        source: SecretSource,
        *,
        ttl_seconds: float = 300.0,
        refresh_ahead_seconds: float = 60.0,
        max_staleness_seconds: float = 3600.0,
        failure_retry_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_refresh_failure: Callable[[str], None] | None = None,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        if not 0 <= refresh_ahead_seconds < ttl_seconds:
            raise ValueError("refresh_ahead_seconds must be >= 0 and shorter than ttl_seconds")
        if max_staleness_seconds < ttl_seconds:
            raise ValueError("max_staleness_seconds must be at least ttl_seconds")
        if failure_retry_seconds < 0:
            raise ValueError("failure_retry_seconds must be >= 0")
        self.source = source
        self.ttl_seconds = ttl_seconds
        self.refresh_ahead_seconds = refresh_ahead_seconds
        self.max_staleness_seconds = max_staleness_seconds
        self.failure_retry_seconds = failure_retry_seconds
        self._clock = clock
        self._on_refresh_failure = on_refresh_failure
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[_Entry]] = {}
        self._closed = False
        self.refresh_failures = 0
        self.fetches = 0

    async def get(self, name: str) -> str:
        """The value of ``name``; raises SecretMissing or SecretUnavailable."""
        value, _ = await self.get_versioned(name)
        return value

    async def get_versioned(self, name: str) -> tuple[str, str]:
        """``(value, version)``: compare versions to notice a rotation."""
        if self._closed:
            raise RuntimeError("CachedSecrets is closed")
        entry = self._entries.get(name)
        if entry is not None:
            now = self._clock()
            age = now - entry.fetched_at
            if age < self.ttl_seconds - self.refresh_ahead_seconds:
                return entry.value, entry.version
            if entry.failed_at is not None and age < self.max_staleness_seconds:
                # Degraded: the vault failed recently. Serve stale; retry in the background.
                if now - entry.failed_at >= self.failure_retry_seconds:
                    self._fetch_task(name)
                return entry.value, entry.version
            if age < self.ttl_seconds:
                self._fetch_task(name)  # refresh ahead; the caller does not wait
                return entry.value, entry.version
        # Absent, expired, or too stale to serve: wait for the shared fetch. shield(): a
        # caller being cancelled (client went away) must not cancel everyone's fetch.
        fresh = await asyncio.shield(self._fetch_task(name))
        return fresh.value, fresh.version

    async def check(self, names: Iterable[str]) -> list[str]:
        """Readiness: fetch every name (through the cache); the problems, safe to show."""
        results = await asyncio.gather(*(self.get(name) for name in names), return_exceptions=True)
        problems: list[str] = []
        for result in results:
            if isinstance(result, SecretError):
                problems.append(str(result))
            elif isinstance(result, BaseException):
                raise result
        return problems

    def _fetch_task(self, name: str) -> asyncio.Task[_Entry]:
        """The in-flight fetch of ``name``, started if there is none (single flight)."""
        task = self._inflight.get(name)
        # A finished fetch whose done-callback has not run yet is not in flight: its
        # answer may be a stale fallback decided before the value became too old.
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._fetch(name), name=f"secret-fetch:{name}")
            self._inflight[name] = task
            task.add_done_callback(lambda done: self._fetch_done(name, done))
        return task

    def _fetch_done(self, name: str, task: asyncio.Task[_Entry]) -> None:
        if self._inflight.get(name) is task:
            del self._inflight[name]
        # A background refresh has no awaiter: retrieve its exception so asyncio does not
        # log "exception was never retrieved". SecretErrors were logged/counted in _fetch;
        # anything else is a bug that must not vanish silently.
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, SecretError):
            logger.error("fetching secret %r failed unexpectedly", name, exc_info=exc)

    async def _fetch(self, name: str) -> _Entry:
        """Ask the source once; on failure fall back to a cached value young enough."""
        self.fetches += 1
        try:
            value, version = await self.source.get_versioned(name)
        except SecretMissing:
            # Deleted or never created: never serve a cached copy (revocation must work).
            self._entries.pop(name, None)
            raise
        except SecretUnavailable as exc:
            return self._fall_back(name, exc)
        entry = _Entry(value=value, version=version, fetched_at=self._clock())
        previous = self._entries.get(name)
        if previous is not None and previous.version != version:
            logger.info("secret %r rotated (new version %s)", name, version)
        elif previous is not None and previous.failed_at is not None:
            logger.info("secret %r: vault reachable again", name)
        self._entries[name] = entry
        return entry

    def _fall_back(self, name: str, exc: SecretUnavailable) -> _Entry:
        self.refresh_failures += 1
        if self._on_refresh_failure is not None:
            try:
                self._on_refresh_failure(name)
            except Exception:  # a broken metric hook must not take secrets down with it
                logger.exception("on_refresh_failure hook failed")
        now = self._clock()
        entry = self._entries.get(name)
        if entry is None or now - entry.fetched_at >= self.max_staleness_seconds:
            logger.warning("%s; no cached value young enough to serve", exc)
            raise exc
        age = now - entry.fetched_at
        logger.warning(
            "%s; serving the value fetched %.0f s ago (max staleness %.0f s)",
            exc,
            age,
            self.max_staleness_seconds,
        )
        entry = _Entry(entry.value, entry.version, entry.fetched_at, failed_at=now)
        self._entries[name] = entry
        return entry

    async def aclose(self) -> None:
        """Cancel background refreshes and close the source."""
        self._closed = True
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        # Await them so none is destroyed while pending; their errors are already handled.
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.source.aclose()


class SecretReader(Protocol):
    """Anything that reads a secret by name (``CachedSecrets``, ``OneShotSecrets``)."""

    async def get(self, name: str) -> str:
        """The secret's current value; raises ``SecretMissing`` when it does not exist."""
        ...


class OneShotSecrets:
    """A secret reader for short-lived commands (admin CLI, scripts): each read opens the
    configured source, reads and closes it, so no client outlives the command."""

    def __init__(self, open_source: Callable[[], CachedSecrets]) -> None:
        self._open = open_source

    async def get(self, name: str) -> str:
        """Read ``name`` once from a freshly opened source."""
        source = self._open()
        try:
            return await source.get(name)
        finally:
            await source.aclose()
