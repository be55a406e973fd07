"""Body limits are enforced while reading: an oversized body is not read to its end."""

from __future__ import annotations

import json

import pytest

from sk_core.errors import MalformedJson, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from sk_core.http.request_body import read_json_body, validate_body
from tests.support.hosts import make_request

LIMIT = 100 * 1024


async def test_chunked_body_over_the_limit_stops_reading_at_the_limit() -> None:
    consumed: list[int] = []
    body = b"[" + b"1," * (5 * 1024 * 1024) + b"1]"  # ~10 MB, no Content-Length
    request = make_request(
        "POST", "/x", {"content-type": "application/json"}, body, chunk_size=16 * 1024, consumed=consumed
    )
    with pytest.raises(PayloadTooLarge):
        await read_json_body(request, max_bytes=LIMIT)
    assert sum(consumed) <= LIMIT + 16 * 1024
    assert sum(consumed) < len(body) / 50


async def test_declared_length_over_the_limit_reads_nothing() -> None:
    consumed: list[int] = []
    headers = {"content-type": "application/json", "content-length": str(50 * 1024 * 1024)}
    request = make_request("POST", "/x", headers, b"{}", consumed=consumed)
    with pytest.raises(PayloadTooLarge):
        await read_json_body(request, max_bytes=LIMIT)
    assert consumed == []


async def test_body_at_the_limit_is_accepted() -> None:
    payload = json.dumps({"text": "a" * (LIMIT - 20)}).encode()
    payload += b" " * (LIMIT - len(payload))
    request = make_request("POST", "/x", {"content-type": "application/json"}, payload)
    assert (await read_json_body(request, max_bytes=LIMIT))["text"].startswith("a")


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/vnd.api+json", True),
        ("text/plain", False),
        ("", False),
        ("multipart/form-data; boundary=x", False),
    ],
)
async def test_content_types(content_type: str, accepted: bool) -> None:
    request = make_request("POST", "/x", {"content-type": content_type}, b"{}")
    if accepted:
        assert await read_json_body(request, max_bytes=LIMIT) == {}
    else:
        with pytest.raises(UnsupportedMediaType):
            await read_json_body(request, max_bytes=LIMIT)


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe", b"{'a': 1}", b"NaN-ish"])
async def test_malformed_bodies(body: bytes) -> None:
    request = make_request("POST", "/x", {"content-type": "application/json"}, body)
    with pytest.raises(MalformedJson):
        await read_json_body(request, max_bytes=LIMIT)


def test_non_object_json_is_a_validation_error() -> None:
    from sk_core.catalog import Catalog

    spec = Catalog.load().get("text", "summarize")
    assert spec is not None
    with pytest.raises(ValidationFailed) as caught:
        validate_body(spec.arguments_model, ["text"])
    assert caught.value.errors == [{"field": "(body)", "message": "expected a JSON object"}]


async def test_invalid_content_length_is_400() -> None:
    request = make_request("POST", "/x", {"content-type": "application/json", "content-length": "abc"}, b"{}")
    with pytest.raises(MalformedJson):
        await read_json_body(request, max_bytes=LIMIT)
