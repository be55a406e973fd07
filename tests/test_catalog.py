"""The catalog: prompt files as function specs (no Semantic Kernel import)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sk_core.catalog import Catalog, RequestOptions, load_spec

_PROMPT = """\
name: echo
template: |
  <message role="user">{{$text}}</message>
input_variables:
  - name: text
    is_required: true
    json_schema: '{"type": "string"}'
  - name: limit
    is_required: false
    default: "10"
    json_schema: '%(limit_schema)s'
execution_settings:
%(settings)s
"""


def _write(tmp_path: Path, *, settings: str, limit_schema: str = '{"type": "integer"}') -> Path:
    folder = tmp_path / "demo"
    folder.mkdir(exist_ok=True)
    path = folder / "echo.yaml"
    path.write_text(_PROMPT % {"settings": settings, "limit_schema": limit_schema}, encoding="utf-8")
    return path


def test_the_chat_services_own_max_tokens_is_the_default_cap(tmp_path: Path) -> None:
    """``execution_settings.chat.max_tokens`` is honoured, as the kernel honours it."""
    path = _write(tmp_path, settings="  chat:\n    max_tokens: 77\n  default:\n    max_tokens: 500\n")
    assert load_spec(path, "demo").default_max_tokens == 77


def test_default_settings_apply_when_the_chat_service_has_none(tmp_path: Path) -> None:
    path = _write(tmp_path, settings="  default:\n    max_tokens: 123\n")
    assert load_spec(path, "demo").default_max_tokens == 123


def test_an_input_can_scale_the_default_cap(tmp_path: Path) -> None:
    """``x-sk-answer-tokens`` lowers the cap of a call that names none, never raises it."""
    schema = '{"type": "integer", "x-sk-answer-tokens": {"per": 3, "plus": 5}}'
    path = _write(tmp_path, settings="  default:\n    max_tokens: 100\n", limit_schema=schema)
    spec = load_spec(path, "demo")
    assert spec.default_max_tokens_for({"text": "x", "limit": 10}) == 35
    assert spec.default_max_tokens_for({"text": "x", "limit": 1000}) == 100
    # The rule is the prompt file's business: the public schema does not show it.
    public_limit = spec.public()["input_variables"][1]["schema"]
    assert "x-sk-answer-tokens" not in public_limit


@pytest.mark.parametrize(
    "schema",
    [
        '{"type": "string", "x-sk-answer-tokens": {"per": 2}}',
        '{"type": "integer", "x-sk-answer-tokens": {"per": 0}}',
        '{"type": "integer", "x-sk-answer-tokens": {"per": 2, "minus": 1}}',
    ],
)
def test_a_malformed_scaling_rule_is_refused_at_load(tmp_path: Path, schema: str) -> None:
    with pytest.raises(ValueError, match="x-sk-answer-tokens"):
        load_spec(_write(tmp_path, settings="  default:\n    max_tokens: 100\n", limit_schema=schema), "demo")


def test_summarize_keeps_its_word_based_default() -> None:
    """The shipped summarize function: twice the word limit plus 16, capped at its 512."""
    spec = Catalog.load().get("text", "summarize")
    assert spec is not None
    assert spec.default_max_tokens_for({"text": "x", "style": "paragraph", "max_words": 100}) == 216
    assert spec.default_max_tokens_for({"text": "x", "style": "paragraph", "max_words": 1000}) == 512


def test_max_tokens_is_a_request_option_not_an_argument(tmp_path: Path) -> None:
    """The request body carries the inputs plus ``max_tokens``; the prompt sees only its inputs."""
    schema = '{"type": "integer", "x-sk-answer-tokens": {"per": 3, "plus": 5}}'
    path = _write(tmp_path, settings="  default:\n    max_tokens: 100\n", limit_schema=schema)
    spec = load_spec(path, "demo")
    assert "max_tokens" not in spec.arguments_model.model_fields
    body = spec.request_model.model_validate({"text": "x", "limit": 10, "max_tokens": 7})
    arguments, options = spec.split_request(body)
    assert (arguments, options) == ({"text": "x", "limit": 10}, RequestOptions(max_tokens=7))
    assert spec.requested_max_tokens(arguments, options.max_tokens) == 7
    # None named: the function's default for these arguments.
    arguments, options = spec.split_request(spec.request_model.model_validate({"text": "x", "limit": 10}))
    assert options.max_tokens is None
    assert spec.requested_max_tokens(arguments, options.max_tokens) == 35


def test_an_input_may_not_take_a_request_options_name(tmp_path: Path) -> None:
    path = _write(tmp_path, settings="  default:\n    max_tokens: 100\n")
    renamed = path.read_text(encoding="utf-8").replace("name: limit", "name: max_tokens")
    path.write_text(renamed, encoding="utf-8")
    with pytest.raises(ValueError, match="request option"):
        load_spec(path, "demo")
