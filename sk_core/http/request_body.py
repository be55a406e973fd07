"""Reading and validating request bodies: size first, then media type, JSON, schema."""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from sk_core.errors import MalformedJson, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

ModelT = TypeVar("ModelT", bound=BaseModel)

# Our bodies are at most 3 levels deep (object → messages → message); 32 leaves room
# without letting a client make us walk a pathological structure.
MAX_JSON_DEPTH = 32


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def read_json_body(request: Request, *, max_bytes: int) -> Any:
    """The parsed JSON body; refuses oversized bodies without reading past the limit."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise MalformedJson("Content-Length is not a number.") from None
        if declared_size > max_bytes:
            raise PayloadTooLarge(f"The body is larger than the limit of {max_bytes} bytes.")
    if not _is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType("Send the body as application/json.")
    body = bytearray()
    # Chunked uploads carry no Content-Length: count while reading, stop at the limit.
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"The body is larger than the limit of {max_bytes} bytes.")
    if not body:
        raise MalformedJson("The request body is empty; send a JSON object.")
    try:
        # Strict UTF-8 (RFC 8259): json.loads(bytes) would also guess UTF-16/32 and let
        # surrogate byte sequences through, which nothing downstream can encode again.
        text = bytes(body).decode("utf-8")
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedJson(f"The body is not valid JSON (at byte {getattr(exc, 'pos', 0)}).") from None
    except (RecursionError, ValueError):
        # RecursionError: nesting deeper than the parser's stack; ValueError: e.g. an
        # integer literal longer than Python's digit limit.
        raise MalformedJson(
            "The body is not valid JSON: nested too deeply, or a number out of range "
            "(NaN and Infinity are not JSON)."
        ) from None
    if _depth(data) > MAX_JSON_DEPTH:
        raise MalformedJson(f"The body is nested deeper than {MAX_JSON_DEPTH} levels.")
    return data


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259), though Python's parser accepts them.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError("number out of range")
    return number


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


# The names pydantic gives a union's members in an error's location ("content.str",
# "content.list[TextPart][0]"): our types, not the client's fields, so left out.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "bytes", "none"})


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        if isinstance(part, str) and (not part.isidentifier() or part in _TYPE_TAGS):
            continue
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(body)"


def validate_body(model: type[ModelT], data: Any) -> ModelT:
    """Validate parsed JSON against ``model``; a 422 names every invalid field."""
    if not isinstance(data, dict):
        raise ValidationFailed(
            "The body must be a JSON object.",
            errors=[{"field": "(body)", "message": "expected a JSON object"}],
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"field": _field_path(tuple(err["loc"])), "message": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        names = ", ".join(sorted({e["field"] for e in errors}))
        raise ValidationFailed(f"Invalid fields: {names}.", errors=errors) from None
