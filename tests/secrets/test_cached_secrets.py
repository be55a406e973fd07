"""Secrets: the cache's timing rules, against the real SecretClient and a local HTTPS vault.

The vault is :mod:`tests.support.keyvault_stub` (no Key Vault emulator exists); the SDK runs
unmodified over TLS, including its challenge authentication and retry policies. Time
is a fake clock injected into ``CachedSecrets``, so TTLs of minutes cost nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from sk_core.secrets import (
    CachedSecrets,
    EnvSecretSource,
    KeyVaultSecretSource,
    SecretMissing,
    SecretSource,
    SecretUnavailable,
)
from tests.support.keyvault_stub import VAULT_SCOPE, KeyVaultStub, StaticTokenCredential

TTL = 300.0
REFRESH_AHEAD = 60.0
MAX_STALENESS = 3600.0


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait (up to 5 s) until ``predicate()`` holds: background refreshes run on their own.

    Polling, because some predicates read the stub's state, which lives on another thread.
    """
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met within 5 s")


@pytest.fixture(scope="module")
def kv_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyVaultStub]:
    """One HTTPS vault stand-in for the module."""
    with KeyVaultStub(tmp_path_factory.mktemp("keyvault")) as stub:
        yield stub


@pytest.fixture
def vault(kv_server: KeyVaultStub) -> Iterator[KeyVaultStub]:
    """The stand-in, empty and up at the start of each test."""
    kv_server.reset()
    kv_server.start()
    yield kv_server
    kv_server.start()  # a test that stopped it leaves it running for the next one


def make_source(vault: KeyVaultStub, credential: StaticTokenCredential | None = None) -> KeyVaultSecretSource:
    """The real SecretClient, trusting the stub's certificate, failing fast."""
    return KeyVaultSecretSource(
        vault.vault_url,
        credential=credential or StaticTokenCredential(vault.token),
        connection_verify=str(vault.cert_path),
        verify_challenge_resource=False,  # the challenge names vault.azure.net, we are 127.0.0.1
        retry_backoff_factor=0.01,
        timeout_seconds=2.0,
    )


@pytest.fixture
async def source(vault: KeyVaultStub) -> AsyncIterator[KeyVaultSecretSource]:
    """A Key Vault source pointed at the stub."""
    src = make_source(vault)
    yield src
    await src.aclose()


@pytest.fixture
def clock() -> FakeClock:
    """The time the caches see."""
    return FakeClock()


@pytest.fixture
async def cache(source: KeyVaultSecretSource, clock: FakeClock) -> AsyncIterator[CachedSecrets]:
    """Production timings on a fake clock."""
    cached = CachedSecrets(
        source,
        ttl_seconds=TTL,
        refresh_ahead_seconds=REFRESH_AHEAD,
        max_staleness_seconds=MAX_STALENESS,
        failure_retry_seconds=10.0,
        clock=clock,
    )
    yield cached
    await cached.aclose()


async def test_real_client_authenticates_through_the_challenge(vault: KeyVaultStub) -> None:
    version = vault.set_secret("model-api-key", "sk-1")
    credential = StaticTokenCredential(vault.token)
    source = make_source(vault, credential)
    try:
        assert await source.get_versioned("model-api-key") == ("sk-1", version)
    finally:
        await source.aclose()
    # The token was asked for the scope named in the vault's 401 challenge.
    assert credential.scopes == [VAULT_SCOPE]


async def test_cache_hit_reads_the_vault_once(
    vault: KeyVaultStub, cache: CachedSecrets, clock: FakeClock
) -> None:
    vault.set_secret("model-api-key", "sk-1")

    for _ in range(20):
        assert await cache.get("model-api-key") == "sk-1"
        clock.advance(10)  # 200 s in all: still before the refresh-ahead window

    assert vault.reads("model-api-key") == 1


async def test_concurrent_first_calls_share_one_fetch(vault: KeyVaultStub, cache: CachedSecrets) -> None:
    vault.set_secret("api-key-pepper", "pepper-1")

    values = await asyncio.gather(*(cache.get("api-key-pepper") for _ in range(50)))

    assert values == ["pepper-1"] * 50
    assert vault.reads("api-key-pepper") == 1


async def test_refresh_ahead_serves_cached_value_and_refreshes_in_background(
    vault: KeyVaultStub, cache: CachedSecrets, clock: FakeClock
) -> None:
    vault.set_secret("model-api-key", "old")
    assert await cache.get("model-api-key") == "old"
    new_version = vault.set_secret("model-api-key", "new")

    clock.advance(TTL - REFRESH_AHEAD + 1)
    # Inside the window: the caller gets the cached value without waiting for the vault.
    assert await cache.get("model-api-key") == "old"
    assert vault.reads("model-api-key") == 1
    # A second caller in the window does not start a second refresh.
    assert await cache.get("model-api-key") == "old"

    await eventually(lambda: vault.reads("model-api-key") == 2)
    await eventually(lambda: cache._entries["model-api-key"].version == new_version)
    assert await cache.get_versioned("model-api-key") == ("new", new_version)
    assert vault.reads("model-api-key") == 2


async def test_rotation_is_picked_up_after_the_ttl(
    vault: KeyVaultStub, cache: CachedSecrets, clock: FakeClock
) -> None:
    first = vault.set_secret("model-api-key", "sk-1")
    assert await cache.get_versioned("model-api-key") == ("sk-1", first)
    second = vault.set_secret("model-api-key", "sk-2")

    clock.advance(TTL - REFRESH_AHEAD - 1)
    assert await cache.get_versioned("model-api-key") == ("sk-1", first)  # still fresh

    clock.advance(REFRESH_AHEAD + 2)  # expired: this caller waits for the new value
    assert await cache.get_versioned("model-api-key") == ("sk-2", second)
    assert vault.reads("model-api-key") == 2


async def test_vault_down_serves_stale_value_then_refuses_after_max_staleness(
    vault: KeyVaultStub, source: KeyVaultSecretSource, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    failures: list[str] = []
    cache = CachedSecrets(
        source,
        ttl_seconds=TTL,
        refresh_ahead_seconds=REFRESH_AHEAD,
        max_staleness_seconds=MAX_STALENESS,
        failure_retry_seconds=10.0,
        clock=clock,
        on_refresh_failure=failures.append,
    )
    try:
        vault.set_secret("model-api-key", "sk-live-value")
        assert await cache.get("model-api-key") == "sk-live-value"
        vault.stop()

        clock.advance(TTL + 1)
        with caplog.at_level(logging.WARNING, logger="sk_core.secrets._store"):
            assert await cache.get("model-api-key") == "sk-live-value"
        assert cache.refresh_failures == 1
        assert failures == ["model-api-key"]
        [record] = [r for r in caplog.records if r.name == "sk_core.secrets._store"]
        assert record.levelno == logging.WARNING
        assert "model-api-key" in record.getMessage()
        assert "unreachable" in record.getMessage()
        assert "sk-live-value" not in caplog.text

        # Degraded: callers get the stale value at once; the vault is retried only every
        # failure_retry_seconds, in the background.
        fetches = cache.fetches
        clock.advance(5)
        assert await cache.get("model-api-key") == "sk-live-value"
        assert cache.fetches == fetches
        clock.advance(10)
        assert await cache.get("model-api-key") == "sk-live-value"
        await eventually(lambda: cache.refresh_failures == 2)

        clock.advance(MAX_STALENESS)  # the last good value is now too old to serve
        with pytest.raises(SecretUnavailable, match="model-api-key") as refused:
            await cache.get("model-api-key")
        assert "unreachable" in str(refused.value)
        assert "sk-live-value" not in str(refused.value)

        vault.start()  # back: the next caller fetches and the cache is healthy again
        assert await cache.get("model-api-key") == "sk-live-value"
        failures_before = cache.refresh_failures
        clock.advance(1)
        assert await cache.get("model-api-key") == "sk-live-value"
        assert cache.refresh_failures == failures_before
    finally:
        await cache.aclose()


async def test_vault_error_without_a_cached_value_is_unavailable(
    vault: KeyVaultStub, cache: CachedSecrets
) -> None:
    vault.set_secret("model-api-key", "sk-1")
    vault.fail_with(503)

    with pytest.raises(SecretUnavailable, match=r"'model-api-key'.*answered 503"):
        await cache.get("model-api-key")
    assert cache.refresh_failures == 1

    vault.fail_with(None)
    assert await cache.get("model-api-key") == "sk-1"


async def test_missing_secret_is_a_clear_error_naming_it(vault: KeyVaultStub, cache: CachedSecrets) -> None:
    with pytest.raises(SecretMissing, match="'model-api-key' is not configured") as missing:
        await cache.get("model-api-key")
    assert missing.value.name == "model-api-key"
    assert vault.reads("model-api-key") == 1

    vault.set_secret("api-key-pepper", "pepper")
    problems = await cache.check(["api-key-pepper", "model-api-key"])
    assert len(problems) == 1
    assert "'model-api-key' is not configured" in problems[0]
    assert "pepper" not in problems[0].replace("api-key-pepper", "")


async def test_deleted_secret_is_not_served_stale(
    vault: KeyVaultStub, cache: CachedSecrets, clock: FakeClock
) -> None:
    vault.set_secret("model-api-key", "revoked-key")
    assert await cache.get("model-api-key") == "revoked-key"
    vault.delete_secret("model-api-key")

    clock.advance(TTL + 1)
    with pytest.raises(SecretMissing, match="model-api-key"):
        await cache.get("model-api-key")
    assert cache.refresh_failures == 0  # a deletion is an answer, not an outage


async def test_wrong_credential_is_refused_with_a_clear_reason(vault: KeyVaultStub, clock: FakeClock) -> None:
    vault.set_secret("model-api-key", "sk-1")
    source = make_source(vault, StaticTokenCredential("not-the-vault-token"))
    cache = CachedSecrets(source, clock=clock)
    try:
        with pytest.raises(SecretUnavailable, match=r"refused our credential \(401\)") as refused:
            await cache.get("model-api-key")
        assert refused.value.name == "model-api-key"
        assert vault.reads("model-api-key") == 0
    finally:
        await cache.aclose()


async def test_invalid_vault_name_is_missing_without_a_request(
    vault: KeyVaultStub, source: KeyVaultSecretSource
) -> None:
    with pytest.raises(SecretMissing, match="not a valid Key Vault secret name"):
        await source.get("SKF_MODEL_API_KEY")
    assert vault.reads("SKF_MODEL_API_KEY") == 0


class BlockingSource(SecretSource):
    """A source whose fetches wait for the test to release them."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.closed = False

    async def get_versioned(self, name: str) -> tuple[str, str]:
        self.calls += 1
        await self.release.wait()
        return f"value-{self.calls}", f"v{self.calls}"

    async def aclose(self) -> None:
        self.closed = True


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch() -> None:
    source = BlockingSource()
    cache = CachedSecrets(source)
    try:
        first = asyncio.create_task(cache.get("x"))
        second = asyncio.create_task(cache.get("x"))
        await asyncio.sleep(0)
        first.cancel()
        source.release.set()
        assert await second == "value-1"
        assert first.cancelled()
        assert source.calls == 1
    finally:
        await cache.aclose()


async def test_aclose_cancels_background_refreshes(clock: FakeClock) -> None:
    source = BlockingSource()
    cache = CachedSecrets(source, ttl_seconds=10, refresh_ahead_seconds=5, clock=clock)
    source.release.set()
    assert await cache.get("x") == "value-1"
    source.release.clear()
    clock.advance(6)
    assert await cache.get("x") == "value-1"  # starts a refresh that never finishes
    await asyncio.sleep(0)
    assert source.calls == 2

    await cache.aclose()

    assert source.closed
    assert not cache._inflight
    with pytest.raises(RuntimeError, match="closed"):
        await cache.get("x")


async def test_env_source_serves_local_values() -> None:
    values = {"model-api-key": "sk-local", "api-key-pepper": ""}
    source = EnvSecretSource(values)

    value, version = await source.get_versioned("model-api-key")
    assert value == "sk-local"
    assert "sk-local" not in version
    assert await source.get_versioned("model-api-key") == (value, version)  # stable
    with pytest.raises(SecretMissing, match="'api-key-pepper' is not configured"):
        await source.get("api-key-pepper")  # empty is unset
    with pytest.raises(SecretMissing, match="'other'"):
        await source.get("other")

    values["model-api-key"] = "sk-rotated"
    _, rotated = await source.get_versioned("model-api-key")
    assert rotated != version

    cache = CachedSecrets(source)
    assert await cache.check(["model-api-key"]) == []
    await cache.aclose()


async def test_default_credential_is_built_and_closed_by_the_source() -> None:
    from azure.identity.aio import DefaultAzureCredential

    source = KeyVaultSecretSource("https://example.vault.azure.net", client_id="11111111-2222")
    assert isinstance(source._owned_credential, DefaultAzureCredential)
    await source.aclose()  # no request was made: nothing to reach


@pytest.mark.parametrize(
    ("ttl", "ahead", "stale"),
    [(0, 0, 10), (10, 10, 10), (10, -1, 10), (10, 5, 9)],
)
def test_cache_timings_are_validated(ttl: float, ahead: float, stale: float) -> None:
    with pytest.raises(ValueError, match="seconds"):
        CachedSecrets(
            EnvSecretSource({}), ttl_seconds=ttl, refresh_ahead_seconds=ahead, max_staleness_seconds=stale
        )


async def test_a_finished_fetch_not_yet_cleaned_up_is_not_reused(
    vault: KeyVaultStub, source: KeyVaultSecretSource, clock: FakeClock
) -> None:
    """A background retry failed and served stale; its task is done, but its done-callback
    (which forgets it) has not run yet. A caller past the maximum staleness must not get
    that task's old answer: it needs a fetch of its own, which refuses (a flake in CI)."""
    cache = CachedSecrets(
        source, ttl_seconds=TTL, refresh_ahead_seconds=REFRESH_AHEAD, max_staleness_seconds=MAX_STALENESS,
        failure_retry_seconds=10.0, clock=clock,
    )  # fmt: skip
    try:
        vault.set_secret("model-api-key", "sk-live-value")
        assert await cache.get("model-api-key") == "sk-live-value"
        vault.stop()
        clock.advance(TTL + 1)
        finished = cache._fetch_task("model-api-key")
        assert (await finished).value == "sk-live-value"  # the stale fallback
        cache._inflight["model-api-key"] = finished  # as before its done-callback runs
        clock.advance(MAX_STALENESS)
        with pytest.raises(SecretUnavailable, match="model-api-key"):
            await cache.get("model-api-key")
    finally:
        await cache.aclose()
