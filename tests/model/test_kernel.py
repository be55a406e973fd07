"""The cached kernel: one build per process, shared by concurrent first callers."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from sk_core.catalog import Catalog
from sk_core.model import RuntimeProvider
from sk_core.settings import Settings
from tests.support.settings import make_settings

RUNTIME: Any = object()  # stands for a built runtime where the build itself is not under test


async def test_fifty_simultaneous_first_requests_build_the_real_kernel_once(
    service_env: dict[str, str],
) -> None:
    from sk_core.model import build_runtime

    builds: list[int] = []

    def counting_builder(settings: Settings, catalog: Catalog, api_key: str | None) -> Any:
        builds.append(threading.get_ident())
        time.sleep(0.2)  # widen the race window: every caller arrives during the build
        return build_runtime(settings, catalog, api_key)

    provider = RuntimeProvider(
        settings=make_settings(service_env), catalog=Catalog.load(), builder=counting_builder
    )
    runtimes = await asyncio.gather(*(provider.get() for _ in range(50)))
    await provider.aclose()
    assert len(builds) == 1
    assert provider.build_count == 1
    assert len({id(r) for r in runtimes}) == 1
    assert set(runtimes[0].functions) == {spec.id for spec in Catalog.load()}


async def test_callers_on_other_threads_and_loops_share_the_build() -> None:
    started = threading.Event()

    def slow_builder(settings: Settings, catalog: Catalog, api_key: str | None) -> Any:
        started.set()
        time.sleep(0.3)
        return object()

    provider = RuntimeProvider(settings=Settings(), catalog=Catalog([]), builder=slow_builder)
    results: list[object] = []

    def other_loop() -> None:
        results.append(asyncio.run(provider.get()))

    threads = [threading.Thread(target=other_loop) for _ in range(8)]
    for thread in threads:
        thread.start()
    mine = await provider.get()
    for thread in threads:
        thread.join()
    assert provider.build_count == 1
    assert all(r is mine for r in results)


async def test_a_failed_build_is_not_cached() -> None:
    attempts: list[int] = []

    def flaky_builder(settings: Settings, catalog: Catalog, api_key: str | None) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first build fails")
        return RUNTIME

    provider = RuntimeProvider(settings=Settings(), catalog=Catalog([]), builder=flaky_builder)
    with pytest.raises(RuntimeError):
        await provider.get()
    built_after_failure = provider.is_built
    assert await provider.get() is RUNTIME
    assert (built_after_failure, provider.is_built) == (False, True)
    assert len(attempts) == 2


async def test_a_cancelled_waiter_does_not_cancel_the_shared_build() -> None:
    def slow_builder(settings: Settings, catalog: Catalog, api_key: str | None) -> Any:
        time.sleep(0.3)
        return RUNTIME

    provider = RuntimeProvider(settings=Settings(), catalog=Catalog([]), builder=slow_builder)
    impatient = asyncio.ensure_future(provider.get())
    await asyncio.sleep(0.05)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert await provider.get() is RUNTIME
    assert provider.build_count == 1


async def test_fifty_concurrent_first_requests_through_a_trigger_build_once(
    service_env: dict[str, str], functions_app_functions: list[Any], stub: Any, api_key: str
) -> None:
    from sk_core.composition import Service, get_service, set_service
    from tests.support.hosts import FunctionsHost

    previous = get_service()
    fresh = Service.create(make_settings(service_env))
    set_service(fresh)
    try:
        host = FunctionsHost(functions_app_functions, {"x-api-key": api_key})
        responses = await asyncio.gather(
            *(host.request("POST", "/api/v1/summarize", json_body={"text": f"text {i}"}) for i in range(50))
        )
    finally:
        set_service(previous)
        await fresh.aclose()
    assert [r.status for r in responses] == [200] * 50
    assert fresh.runtimes.build_count == 1
    assert stub.stats()["count"] == 50


async def test_a_rotated_model_key_rebuilds_the_client_and_retires_the_old_one(
    service_env: dict[str, str],
) -> None:
    from sk_core.model import build_runtime

    keys = {"current": ("key-one", "v1")}
    built_with: list[str | None] = []

    def builder(settings: Settings, catalog: Catalog, api_key: str | None) -> Any:
        built_with.append(api_key)
        return build_runtime(settings, catalog, api_key)

    async def key_provider() -> tuple[str | None, str]:
        return keys["current"]

    provider = RuntimeProvider(
        settings=make_settings(service_env),
        catalog=Catalog.load(),
        builder=builder,
        key_provider=key_provider,
    )
    first = await provider.get()
    assert await provider.get() is first  # same version: cached
    keys["current"] = ("key-two", "v2")  # rotated in the vault
    second = await provider.get()
    assert second is not first
    assert built_with == ["key-one", "key-two"]
    assert second.client.api_key == "key-two"
    assert not first.client.is_closed()  # in-flight requests may still be using it
    await provider.aclose()
    assert first.client.is_closed()
    assert second.client.is_closed()
