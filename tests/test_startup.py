"""The cold-start GC pause (sk_core/startup.py), each case in a fresh interpreter:
the pause is process state, and pytest's own process started long ago."""

from __future__ import annotations

from tests.support.processes import run_fresh_python


def test_importing_a_host_pauses_the_collector_until_the_kernel_is_built() -> None:
    result = run_fresh_python(
        """
        import asyncio, gc, json
        import function_app
        after_import = {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
        from sk_core.catalog import Catalog
        from sk_core.model import RuntimeProvider
        from sk_core.settings import Settings
        provider = RuntimeProvider(settings=Settings(), catalog=Catalog.load(), builder=lambda *a: object())
        asyncio.run(provider.get())
        print(json.dumps({
            "after_import": after_import,
            "after_build": {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count() > 0},
        }))
        """
    )
    assert result == {
        "after_import": {"enabled": False, "frozen": 0},
        "after_build": {"enabled": True, "frozen": True},
    }


def test_a_failed_build_also_ends_the_pause() -> None:
    result = run_fresh_python(
        """
        import asyncio, gc, json
        import sk_core.asgi
        from sk_core.catalog import Catalog
        from sk_core.model import RuntimeProvider
        from sk_core.settings import Settings
        def broken(*args):
            raise RuntimeError("no model")
        paused = not gc.isenabled()
        provider = RuntimeProvider(settings=Settings(), catalog=Catalog.load(), builder=broken)
        try:
            asyncio.run(provider.get())
        except RuntimeError:
            pass
        print(json.dumps({"paused_after_import": paused, "enabled_after_failure": gc.isenabled()}))
        """
    )
    assert result == {"paused_after_import": True, "enabled_after_failure": True}


def test_the_safety_timer_ends_a_pause_no_build_ends() -> None:
    result = run_fresh_python(
        """
        import gc, json, time
        from sk_core import startup
        startup.begin(safety_seconds=0.2)
        paused = startup.paused() and not gc.isenabled()
        deadline = time.monotonic() + 10
        while not gc.isenabled() and time.monotonic() < deadline:
            time.sleep(0.05)
        print(json.dumps({"paused": paused, "enabled": gc.isenabled(), "still_paused": startup.paused()}))
        """
    )
    assert result == {"paused": True, "enabled": True, "still_paused": False}


def test_the_pause_happens_once_and_never_overrides_someone_elses_choice() -> None:
    result = run_fresh_python(
        """
        import gc, json
        from sk_core import startup
        startup.begin(); startup.end()
        startup.begin()  # a second host module imported later: no second pause
        again = gc.isenabled()
        print(json.dumps({"enabled_after_second_begin": again}))
        """
    )
    assert result == {"enabled_after_second_begin": True}
    result = run_fresh_python(
        """
        import gc, json
        gc.disable()  # the application manages the collector itself
        from sk_core import startup
        startup.begin(); startup.end()
        print(json.dumps({"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}))
        """
    )
    assert result == {"enabled": False, "frozen": 0}
