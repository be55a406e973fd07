"""LangChain's standard chat-model integration tests (``langchain-tests``) through
``ChatOpenAI`` against our OpenAI-compatible endpoint.

Not collected by the main suite (the name is not ``test_*.py``, and langchain-tests is
installed only in ``.venv-clients``): ``tests/clients/test_langchain_standard.py``
starts the real service (Azurite, the stub model in its protocol mode) and runs this
file in that venv with ``SKF_CLIENTS_BASE_URL``, ``SKF_CLIENTS_API_KEY`` and
``SKF_CLIENTS_MODEL`` set. Only HTTP crosses: nothing here imports sk_core.

The capability flags say what the endpoint supports, not what a particular model can do;
each ``False`` is something the endpoint refuses or does not have (README, "Clients tested").
"""

from __future__ import annotations

import os
from typing import Any

from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests


class TestChatOpenAIThroughOurEndpoint(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": os.environ["SKF_CLIENTS_MODEL"],
            "base_url": os.environ["SKF_CLIENTS_BASE_URL"],
            "api_key": os.environ["SKF_CLIENTS_API_KEY"],
            # A non-OpenAI base_url turns LangChain's usage-in-streams off by default;
            # the endpoint implements stream_options.include_usage, so ask for it.
            "stream_usage": True,
            # Each test sees the first answer: a retry would hide a refusal.
            "max_retries": 0,
            # A hung answer fails its test instead of the whole run.
            "timeout": 60,
        }

    # Another model of GET /api/v1/models (a chain of its own): `model` per call.
    @property
    def model_override_value(self) -> str:
        return os.environ["SKF_CLIENTS_OTHER_MODEL"]

    # What the endpoint implements (sk_core/http/openai_models.py: SUPPORTED).
    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def structured_output_kwargs(self) -> dict[str, Any]:
        # response_format json_schema, validated by the endpoint before the answer leaves.
        return {"method": "json_schema"}

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    # Content parts other than text are refused with a 422 (TextPart only).
    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    # Anthropic's block formats (tool_use, thinking, cache_control) are not OpenAI's wire.
    @property
    def supports_anthropic_inputs(self) -> bool:
        return False
