"""The kernel's own chat service and the deferred handlebars engine (cold start).

The import checks run in fresh interpreters: which modules a build loads is a property
of the process, and pytest's process has long imported everything.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from sk_core.catalog import Catalog, load_spec
from tests.support.processes import run_fresh_python
from tests.support.settings import make_settings
from tests.support.stub_model import StubModel

# What SK's own OpenAI connector package and handlebars engine would have loaded.
HEAVY = ("pymeta", "pybars._compiler", "semantic_kernel.connectors.ai.open_ai", "aiortc", "av")


def test_building_the_kernel_loads_neither_handlebars_nor_the_openai_connector_package() -> None:
    result = run_fresh_python(
        f"""
        import json, sys
        from sk_core.catalog import Catalog
        from sk_core.model._provider import _default_builder
        from sk_core.settings import Settings
        runtime = _default_builder(Settings(), Catalog.load(), None)
        import semantic_kernel.prompt_template.handlebars_prompt_template as hb
        print(json.dumps({{
            "functions": sorted(runtime.functions),
            "loaded": [m for m in {HEAVY!r} if m in sys.modules],
            "pybars_in_sys_modules": "pybars" in sys.modules,
            "compiler": hb.Compiler.__name__,
        }}))
        """
    )
    assert result["functions"] == sorted(spec.id for spec in Catalog.load())
    assert result["loaded"] == []
    # The placeholder lived only for SK's import: nobody else can pick it up.
    assert result["pybars_in_sys_modules"] is False
    assert result["compiler"] == "_DeferredCompiler"


def test_a_handlebars_prompt_still_renders_and_reports_syntax_errors() -> None:
    result = run_fresh_python(
        """
        import asyncio, json, sys
        from sk_core.model import import_semantic_kernel
        import_semantic_kernel()
        deferred = "pybars._compiler" not in sys.modules
        from semantic_kernel import Kernel
        from semantic_kernel.exceptions import HandlebarsTemplateSyntaxError
        from semantic_kernel.functions import KernelArguments, KernelFunctionFromPrompt
        good = KernelFunctionFromPrompt.from_yaml(
            "name: greet\\ntemplate_format: handlebars\\n"
            "template: 'Hello {{name}}, {{#if vip}}welcome back{{/if}}'\\n"
        )
        rendered = asyncio.run(
            good.prompt_template.render(Kernel(), KernelArguments(name="Ada", vip=True))
        )
        try:
            KernelFunctionFromPrompt.from_yaml(
                "name: broken\\ntemplate_format: handlebars\\ntemplate: 'Hello {{/if}}'\\n"
            )
            error = None
        except HandlebarsTemplateSyntaxError as exc:  # SK's mapping of the real PybarsError
            error = type(exc.__cause__).__module__
        import pybars
        print(json.dumps({
            "deferred": deferred, "rendered": rendered, "error": error,
            "real_pybars": hasattr(pybars, "_compiler"),
        }))
        """
    )
    assert result == {
        "deferred": True,
        "rendered": "Hello Ada, welcome back",
        "error": "pybars._compiler",
        "real_pybars": True,
    }


async def test_the_request_carries_the_prompt_files_settings_and_nothing_else(
    service_env: dict[str, str], stub: StubModel
) -> None:
    from sk_core.model import build_runtime

    settings = make_settings(service_env)
    catalog = Catalog.load()
    runtime = build_runtime(settings, catalog)
    try:
        stub.script({"content": "ok", "prompt_tokens": 5, "completion_tokens": 1, "finish_reason": "eos"})
        spec = catalog.get("text", "summarize")
        assert spec is not None
        completion = await runtime.invoke(
            spec, {"text": "Some text.", "style": "tldr", "max_words": 10}, max_tokens=40
        )
    finally:
        await runtime.aclose()
    sent = stub.requests()[-1]["json"]
    assert sent is not None
    assert sent["model"] == settings.resolved_model_id
    assert sent["temperature"] == 0.2  # from summarize.yaml's execution_settings
    assert sent["max_tokens"] == 40
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    assert not {"tools", "tool_choice", "n", "stream_options"} & set(sent)
    assert sent.get("stream") in (None, False)
    # A finish reason outside OpenAI's set does not fail an answer already charged.
    assert completion.text == "ok"
    assert completion.finish_reason is None


def _prompt(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "demo" / "f.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("name: f\ntemplate: 'Hi {{$x}}'\n" + body, encoding="utf-8")
    return path


def test_a_prompt_file_with_an_unsupported_execution_setting_is_refused(tmp_path: Path) -> None:
    path = _prompt(tmp_path, "execution_settings:\n  default:\n    temperature: 0.1\n    tools: []\n")
    with pytest.raises(ValueError, match=r"unsupported keys \['tools'\]"):
        load_spec(path, "demo")


def test_a_prompt_file_with_an_unknown_template_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="template_format"):
        load_spec(_prompt(tmp_path, "template_format: mustache\n"), "demo")


def test_an_out_of_range_setting_fails_the_kernel_build_not_each_request(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from sk_core.model import build_runtime
    from sk_core.settings import Settings

    _prompt(tmp_path, "execution_settings:\n  default:\n    temperature: 7\n")
    with pytest.raises(ValidationError, match="temperature"):
        build_runtime(Settings(), Catalog.load(tmp_path))


def test_the_catalogs_list_of_chat_settings_is_what_chat_settings_carries() -> None:
    # The catalog (which must not import SK) checks prompt files against CHAT_SETTINGS;
    # the chat service sends ChatSettings' fields. One list must not drift from the other.
    from semantic_kernel.connectors.ai.prompt_execution_settings import PromptExecutionSettings

    from sk_core.catalog import CHAT_SETTINGS
    from sk_core.model import REQUEST_SETTINGS, ChatSettings

    own = set(ChatSettings.model_fields) - set(PromptExecutionSettings.model_fields)
    assert own == set(CHAT_SETTINGS) | set(REQUEST_SETTINGS)
    assert not set(CHAT_SETTINGS) & set(REQUEST_SETTINGS)


@pytest.mark.parametrize("azure", [False, True], ids=["openai", "azure_openai"])
async def test_a_stream_is_sent_with_the_credential_and_path_of_its_provider(
    stub: StubModel, azure: bool
) -> None:
    """Streams go through the SDK's ``post`` (plain dict chunks, no typed models): the
    request must still carry the provider's credential, Azure's deployment path, the
    usage request, and the chunks must still give the text, model, usage and finish."""
    import openai
    from semantic_kernel.contents import ChatHistory

    from sk_core.model import ModelStream
    from sk_core.model._chat_service import ChatSettings, OpenAIChat
    from sk_core.model._deployments import Deployment
    from sk_core.pricing import Price

    client: openai.AsyncOpenAI = (
        openai.AsyncAzureOpenAI(azure_endpoint=stub.url, api_key="azure-key", api_version="2024-10-21",
                                max_retries=0)
        if azure
        else openai.AsyncOpenAI(base_url=stub.base_url, api_key="openai-key", max_retries=0)
    )
    chat = OpenAIChat(service_id="d", ai_model_id="dep-1", client=client)
    stub.script({"content": "one two three", "prompt_tokens": 7, "completion_tokens": 3, "model": "m-1"})
    history = ChatHistory()
    history.add_user_message("Hi")
    raw = await chat.open_stream(history, ChatSettings(max_tokens=9))
    price = Price(Decimal("0.15"), Decimal("0.6"))
    deployment = Deployment(name="d", provider="openai_compatible", model="dep-1", price=price)
    stream = ModelStream(raw, deadline=1e12, deployment=deployment)
    try:
        text = "".join([piece async for piece in stream])
    finally:
        await stream.aclose()
        await client.close()
    sent = stub.requests()[-1]
    if azure:
        assert sent["path"] == "/openai/deployments/dep-1/chat/completions"
        assert sent["headers"].get("api-key") == "azure-key"
    else:
        assert sent["path"] == "/v1/chat/completions"
        assert sent["headers"].get("authorization") == "Bearer openai-key"
    assert sent["json"]["stream"] is True
    assert sent["json"]["stream_options"] == {"include_usage": True}
    assert sent["json"]["max_tokens"] == 9
    completion = stream.completion(text)
    assert text == "one two three"
    usage = completion.usage
    assert (completion.model, usage.prompt_tokens, usage.completion_tokens) == ("m-1", 7, 3)
    assert completion.finish_reason == "stop"
