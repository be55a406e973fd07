"""Child process for ``cold_start.py``: what a fresh Functions worker pays.

    python bench/probe_functions.py import      # time ``import function_app``
    python bench/probe_functions.py first-call  # spawn -> first 200 from summarize
    python bench/probe_functions.py runtime-import  # after function_app: import SK wiring
    python bench/probe_functions.py import-split    # the Functions SDK + FastAPI extension
                                                    # alone, then function_app on top

``BENCH_NO_GC_PAUSE=1`` turns off the hosts' cold-start GC pause (sk_core/startup.py)
in ``first-call``, to measure what the pause is worth.

Prints one JSON line. Module-level imports are stdlib only and few, so nothing the
service would import is preloaded before the timer starts. ``first-call`` reads the
parent's ``time.time()`` at spawn from ``BENCH_SPAWN_WALL`` (wall clock, because the
two processes share no monotonic reference we can rely on), the model settings from
the ``SKF_*`` environment, exactly as a Functions worker would, and an API key from
``BENCH_API_KEY`` when the service authenticates callers.
"""

import os
import sys
import time

# Taken before anything else runs so "spawn -> main" is interpreter start-up only.
MAIN_WALL = time.time()


def probe_import() -> dict[str, object]:
    """Time ``import function_app`` and check it left Semantic Kernel unloaded."""
    started = time.perf_counter()
    import function_app  # noqa: F401 (the import is what is measured)

    elapsed = time.perf_counter() - started
    return {
        "import_s": elapsed,
        "semantic_kernel_loaded": "semantic_kernel" in sys.modules,
        "openai_loaded": "openai" in sys.modules,
        "modules_loaded": len(sys.modules),
    }


def probe_runtime_import() -> dict[str, object]:
    """Time ``import sk_core.model._runtime`` (SK + OpenAI SDK) on top of ``function_app``.

    This is the import the first model-backed request pays, in either host.
    """
    import function_app  # noqa: F401 (already paid by the worker before the first request)

    started = time.perf_counter()
    from sk_core.model import import_semantic_kernel

    import_semantic_kernel()  # as the kernel builder does: handlebars deferred
    import sk_core.model._runtime  # noqa: F401 (the import is what is measured)

    return {"import_s": time.perf_counter() - started, "modules_loaded": len(sys.modules)}


def probe_import_split() -> dict[str, object]:
    """``import function_app`` split into what the required SDKs cost alone and what we add.

    ``azure.functions`` and ``azurefunctions.extensions.http.fastapi`` (which imports
    FastAPI and uvicorn) are what any app on the FastAPI HTTP extension imports to be
    indexed: the floor under the import time, whatever the app does.
    """
    started = time.perf_counter()
    from sk_core import startup

    startup.begin()  # as function_app's first statement does, so both parts run alike
    import azure.functions  # noqa: F401
    import azurefunctions.extensions.http.fastapi  # noqa: F401

    sdk = time.perf_counter()
    import function_app  # noqa: F401

    return {"sdk_s": sdk - started, "ours_s": time.perf_counter() - sdk}


def probe_first_call() -> dict[str, object]:
    """Import, index, and invoke the summarize trigger once, as a cold worker would."""
    spawn_wall = float(os.environ["BENCH_SPAWN_WALL"])
    started = time.perf_counter()
    if os.environ.get("BENCH_NO_GC_PAUSE") == "1":
        from sk_core import startup

        startup.end()  # marks the pause done before the host module can begin it
    import function_app

    imported = time.perf_counter()
    # get_functions() is the worker's indexing step; it may be called once per process.
    functions = function_app.app.get_functions()
    summarize = next(f for f in functions if f.get_function_name() == "summarize")
    indexed = time.perf_counter()

    import asyncio
    import json

    from tests.support.hosts import make_request

    body = json.dumps(
        {"text": "Cold start probe: summarize this short text.", "style": "tldr", "max_words": 20}
    ).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    if os.environ.get("BENCH_API_KEY"):  # services with auth: a key the parent provisioned
        headers["x-api-key"] = os.environ["BENCH_API_KEY"]
    request = make_request("POST", "/api/v1/summarize", headers, body)
    response = asyncio.run(summarize.get_user_function()(request))
    done_wall = time.time()
    done = time.perf_counter()
    if response.status_code != 200:
        raise SystemExit(f"summarize answered {response.status_code}: {bytes(response.body)[:500]!r}")
    return {
        "total_s": done_wall - spawn_wall,
        "spawn_to_main_s": MAIN_WALL - spawn_wall,
        "import_s": imported - started,
        "index_s": indexed - imported,
        "first_invoke_s": done - indexed,
        "semantic_kernel_loaded": "semantic_kernel" in sys.modules,
        "gc_pause": os.environ.get("BENCH_NO_GC_PAUSE") != "1",
    }


def main() -> None:
    """Run the probe named on the command line and print its JSON result."""
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "import":
        result = probe_import()
    elif mode == "first-call":
        result = probe_first_call()
    elif mode == "runtime-import":
        result = probe_runtime_import()
    elif mode == "import-split":
        result = probe_import_split()
    else:
        raise SystemExit("usage: probe_functions.py import|first-call|runtime-import|import-split")
    import json  # after the measurement: the service imports json itself

    print(json.dumps(result))


if __name__ == "__main__":
    main()
