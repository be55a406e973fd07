"""Azure Functions host (Python v2 programming model): one native HTTP trigger per route.

Registration only: every trigger delegates to the handler named in ``sk_core.http.routes``.
Importing this module (what the Functions host does to index functions) must stay
cheap: it does not import Semantic Kernel or the OpenAI SDK, which load on the first
request that needs the model.

``azurefunctions-extensions-http-fastapi`` makes the worker pass a real Starlette/
FastAPI ``Request`` and accept a ``Response`` (it needs the app setting
``PYTHON_ENABLE_INIT_INDEXING=1``), so both hosts run the very same handlers.
"""

from sk_core import startup

# Before the heavy imports: the cyclic GC stays off until the kernel is built (why:
# sk_core/startup.py).
startup.begin()

from typing import TYPE_CHECKING

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from sk_core.http.routes import ROUTES, RouteSpec

if TYPE_CHECKING:
    from sk_core.composition import Service

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

_AUTH_LEVELS = {"function": func.AuthLevel.FUNCTION, "anonymous": func.AuthLevel.ANONYMOUS}


def _service() -> "Service":
    """The composition root's service, built on first use. Imported on the first
    request, not here: indexing must not load the composition root or the handlers."""
    from sk_core.composition import get_service

    return get_service()


def _register(route: RouteSpec) -> None:
    endpoint = route.bind(_service)  # the handler's imports load on the first call, not here

    # The worker reads this signature: ``req`` annotated with the extension's Request
    # type is what switches the trigger to the streaming HTTP (FastAPI) mode.
    async def trigger(req: Request) -> Response:
        return await endpoint(req)

    trigger.__name__ = trigger.__qualname__ = route.name
    decorated = app.route(
        route=route.path,
        methods=list(route.methods),
        auth_level=_AUTH_LEVELS[route.auth],
    )(trigger)
    app.function_name(name=route.name)(decorated)


for _route in ROUTES:
    _register(_route)


# A new instance added by scale-out: start-up work before it takes traffic (the tables,
# so its first request waits for none; issue 23). Instances started otherwise create a
# table on its first use instead.
@app.function_name(name="warmup")
@app.warm_up_trigger("warmup")
async def warmup(warmup: func.warmup.WarmUpContext) -> None:
    await _service().start()


# Every minute: charge (and flag) budget holds whose process died before settling.
@app.function_name(name="expire_holds")
@app.timer_trigger(schedule="0 */1 * * * *", arg_name="timer", run_on_startup=False, use_monitor=True)
async def expire_holds(timer: func.TimerRequest) -> None:
    from sk_core.composition import sweep_expired_holds

    await sweep_expired_holds(**_service().sweep_parts())


# Document memory: ingestion jobs from the queue, the same job code as the container
# host's worker (sk_core/memory/_worker.py). A raised error makes the host deliver the
# message again after host.json's visibilityTimeout, and after maxDequeueCount
# (SKF_MEMORY_MAX_ATTEMPTS, the same 5) move it to <queue>-poison.
@app.function_name(name="memory_ingest_worker")
@app.queue_trigger(arg_name="message", queue_name="%SKF_MEMORY_QUEUE_NAME%", connection="AzureWebJobsStorage")
async def memory_ingest_worker(message: func.QueueMessage) -> None:
    from sk_core.memory import handle_queue_message

    await handle_queue_message(_service(), message.get_body().decode("utf-8"), message.dequeue_count or 1)
