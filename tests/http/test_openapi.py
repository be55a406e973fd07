"""The OpenAPI document: every route of the one table, every catalog function, one error shape."""

from __future__ import annotations

from sk_core.catalog import Catalog
from sk_core.http.openapi import build_openapi
from sk_core.http.rendering import PROBLEM_CONTENT_TYPE
from sk_core.http.routes import ROUTES


def test_every_route_and_method_is_documented() -> None:
    document = build_openapi(Catalog.load())
    assert document["openapi"].startswith("3.1")
    for route in ROUTES:
        item = document["paths"].get(route.full_path)
        assert item is not None, route.full_path
        for method in route.methods:
            assert method.lower() in item, (route.full_path, method)


def test_errors_are_documented_as_problem_json() -> None:
    document = build_openapi(Catalog.load())
    summarize = document["paths"]["/api/v1/summarize"]["post"]
    refused = summarize["responses"]["429"]["content"]
    assert PROBLEM_CONTENT_TYPE in refused


def test_the_summarize_body_publishes_its_inputs_but_not_internal_rules() -> None:
    text = str(build_openapi(Catalog.load()))
    assert "max_words" in text
    assert "x-sk-answer-tokens" not in text


def test_the_cache_and_routing_headers_are_documented_on_model_routes() -> None:
    document = build_openapi(Catalog.load())
    for path in ("/api/v1/summarize", "/api/v1/chat", "/api/v1/functions/{plugin}/{function}"):
        operation = document["paths"][path]["post"]
        headers = [p["name"] for p in operation["parameters"] if p["in"] == "header"]
        assert {"Cache-Control", "X-Model-Chain"} <= set(headers)
        assert set(operation["responses"]["200"]["headers"]) == {"X-Cache", "Age", "X-Model-Deployment"}
    # The OpenAI route picks its chain by the request's model, not a header.
    completions = document["paths"]["/api/v1/chat/completions"]["post"]
    assert "X-Model-Chain" not in [p["name"] for p in completions["parameters"] if p["in"] == "header"]
    assert "X-Model-Deployment" in completions["responses"]["200"]["headers"]
    assert "cached" in document["components"]["schemas"]["SummarizeResponse"]["properties"]
    assert "headers" not in document["paths"]["/api/health"]["get"]["responses"]["200"]


def test_the_openai_routes_document_openai_errors_and_every_model_route_its_stream() -> None:
    document = build_openapi(Catalog.load())
    completions = document["paths"]["/api/v1/chat/completions"]["post"]
    assert completions["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"
    }
    for status in ("400", "401", "404", "422", "429", "502"):
        content = completions["responses"][status]["content"]
        assert list(content) == ["application/json"], status
        assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    models = document["paths"]["/api/v1/models"]["get"]
    assert models["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")
    for path in ("/api/v1/summarize", "/api/v1/chat", "/api/v1/functions/{plugin}/{function}",
                 "/api/v1/chat/completions"):
        assert "text/event-stream" in document["paths"][path]["post"]["responses"]["200"]["content"], path
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    assert request["additionalProperties"] is False
    expected = {"model", "messages", "stream", "stream_options", "max_completion_tokens"}
    assert expected <= set(request["properties"])


def test_every_operation_documents_the_hosts_refusal_of_unparsable_requests() -> None:
    """Issue #23 (fuzz): the container host answers a request its HTTP parser refuses
    (400 ``malformed_http``) or whose headers are too large (431) before any route runs,
    for any path; every operation lists both, in its route's error shape."""
    document = build_openapi(Catalog.load())
    openai_paths = {route.full_path for route in ROUTES if route.errors == "openai"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            shape = "application/json" if path in openai_paths else PROBLEM_CONTENT_TYPE
            for status in ("400", "431"):
                response = operation["responses"].get(status)
                assert response is not None, (method, path, status)
                assert shape in response["content"], (method, path, status)
            assert "malformed_http" in operation["responses"]["400"]["description"], (method, path)
