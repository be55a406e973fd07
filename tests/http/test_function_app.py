"""The Functions host: cheap to index, and every route registered as the table says."""

from __future__ import annotations

import inspect
import json
from typing import Any

from sk_core.http.routes import ROUTES
from tests.support.hosts import make_request
from tests.support.processes import run_fresh_python


def test_importing_function_app_does_not_import_semantic_kernel() -> None:
    # A fresh interpreter: what the Functions host does when it indexes the app.
    # Nor the handlers: indexing reads the route table, the first call imports the rest.
    modules = ("semantic_kernel", "openai", "sk_core.http.handlers", "sk_core.composition", "function_app")
    result = run_fresh_python(
        f"import sys, json, function_app; print(json.dumps({{m: m in sys.modules for m in {modules!r}}}))"
    )
    assert result == {m: m == "function_app" for m in modules}


def test_every_route_names_a_handler_that_exists() -> None:
    for route in ROUTES:
        assert inspect.iscoroutinefunction(route.resolve_handler()), route.name


def http_functions(functions: list[Any]) -> list[Any]:
    return [f for f in functions if f.get_trigger().get_binding_name() == "httpTrigger"]


def test_every_route_is_a_trigger_with_route_methods_and_auth(functions_app_functions: list[Any]) -> None:
    by_name = {f.get_function_name(): f for f in http_functions(functions_app_functions)}
    assert set(by_name) == {r.name for r in ROUTES}
    for route in ROUTES:
        trigger = by_name[route.name].get_trigger()
        assert trigger.route == route.path
        assert sorted(str(m.value) for m in trigger.methods) == sorted(route.methods)
        expected = "FUNCTION" if route.auth == "function" else "ANONYMOUS"
        assert str(trigger.auth_level.value).upper() == expected
        binding = json.loads(by_name[route.name].get_function_json())["bindings"][0]
        assert binding["type"] == "httpTrigger"
        assert binding["authLevel"] == expected


def test_health_and_ready_are_anonymous_and_the_api_is_not() -> None:
    auth = {r.name: r.auth for r in ROUTES}
    assert auth["health"] == auth["ready"] == "anonymous"
    assert {name for name, level in auth.items() if level == "anonymous"} == {"health", "ready"}


def test_triggers_take_the_fastapi_extension_request_type(functions_app_functions: list[Any]) -> None:
    from azurefunctions.extensions.base import HttpV2FeatureChecker, RequestTrackerMeta

    # The worker switches a trigger to streaming HTTP when the extension is imported and
    # the trigger's parameter is annotated with the extension's request type.
    assert HttpV2FeatureChecker.http_v2_enabled()
    for function in http_functions(functions_app_functions):
        parameters = inspect.signature(function.get_user_function()).parameters
        assert list(parameters) == ["req"]
        assert RequestTrackerMeta.check_type(parameters["req"].annotation)


async def test_a_trigger_returns_a_starlette_response(functions_app_functions: list[Any]) -> None:
    health = next(f for f in functions_app_functions if f.get_function_name() == "health")
    response = await health.get_user_function()(make_request("GET", "/api/health", {}, b""))
    assert response.status_code == 200
    assert json.loads(response.body) == {"status": "ok"}


def test_the_hold_sweeper_is_a_timer_trigger_every_minute(functions_app_functions: list[Any]) -> None:
    [timer] = [f for f in functions_app_functions if f.get_trigger().get_binding_name() == "timerTrigger"]
    assert timer.get_function_name() == "expire_holds"
    assert timer.get_trigger().schedule == "0 */1 * * * *"
    assert inspect.iscoroutinefunction(timer.get_user_function())


async def test_the_warmup_trigger_prepares_the_tables(
    functions_app_functions: list[Any], functions_service: Any
) -> None:
    """Scale-out runs it before an instance takes traffic: afterwards the request path's
    tables cost no exchange on first use (issue 23, defect 3)."""
    import azure.functions as func

    [warmup] = [f for f in functions_app_functions if f.get_trigger().get_binding_name() == "warmupTrigger"]
    assert warmup.get_function_name() == "warmup"
    store = functions_service.store
    store._created.clear()  # as in a new instance: nothing known to exist yet
    await warmup.get_user_function()(func.warmup.WarmUpContext())
    before = store.round_trips
    for name in ("apikeys", "tenants", "usage", "audit"):
        await store.table(name)
    assert store.round_trips == before
