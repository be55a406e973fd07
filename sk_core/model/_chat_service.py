"""The kernel's chat service: an SK ``ChatCompletionClientBase`` over the OpenAI SDK client.

Why not SK's own ``OpenAIChatCompletion``: importing anything from
``semantic_kernel.connectors.ai.open_ai`` runs that package's ``__init__``, which loads
every OpenAI-family connector (realtime with aiortc/av, audio, images, embeddings,
Azure assistants): about 1 s of a cold start on this machine, for features no prompt
function here uses. This class does the one thing we need (a non-streaming chat
completion) through the same ``openai.AsyncOpenAI``/``AsyncAzureOpenAI`` client,
returns the same ``ChatMessageContent`` shape (usage in ``metadata["usage"]``, the SDK
response as ``inner_content``) and keeps SK's gen_ai tracing decorator, so kernels,
prompt functions, filters and telemetry behave as with SK's connector.

Streaming goes around SK's streaming API on purpose (:meth:`OpenAIChat.open_stream`):
the caller must hold the provider's stream itself, to close it the moment its client
goes away and to read the usage chunk it always asks for (``model_runtime.ModelStream``).

Tool calling is not SK's auto-invocation here: :meth:`OpenAIChat.complete` passes
``tools`` through and the run loop in ``sk_core.tools`` admits each round trip itself.
Not supported, on purpose: ``n > 1``. Execution settings outside
:data:`CHAT_SETTINGS` are refused when the catalog loads, rather than silently dropped
at request time.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import openai
from pydantic import Field
from semantic_kernel.connectors.ai.chat_completion_client_base import ChatCompletionClientBase
from semantic_kernel.connectors.ai.completion_usage import CompletionUsage
from semantic_kernel.connectors.ai.prompt_execution_settings import PromptExecutionSettings
from semantic_kernel.contents import AuthorRole, ChatHistory, ChatMessageContent
from semantic_kernel.contents.text_content import TextContent
from semantic_kernel.contents.utils.finish_reason import FinishReason
from semantic_kernel.utils.telemetry.model_diagnostics.decorators import trace_chat_completion

from sk_core.catalog import CHAT_SETTINGS

# Settings a request may set but a prompt file may not.
REQUEST_SETTINGS = ("user",)


class UnusableAnswer(Exception):
    """The provider answered 2xx with something that is not a usable chat completion."""


class ChatSettings(PromptExecutionSettings):
    """The chat-completion parameters a prompt file may set (names as in the OpenAI API)."""

    # Set per request from the reservation; a prompt file's value is the default cap.
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    # The caller's end-user id (OpenAI's abuse monitoring): set per request, never by a
    # prompt file, so it is one of REQUEST_SETTINGS, not of CHAT_SETTINGS.
    user: str | None = None

    def request_options(self) -> dict[str, Any]:
        """The settings as keyword arguments of ``chat.completions.create``."""
        names = (*CHAT_SETTINGS, *REQUEST_SETTINGS)
        return {name: value for name in names if (value := getattr(self, name)) is not None}


class OpenAIChat(ChatCompletionClientBase):
    """Chat completions from any OpenAI-API endpoint (OpenAI, Azure OpenAI, local servers)."""

    # The gen_ai.system value SK's own OpenAI connectors report, Azure included.
    MODEL_PROVIDER_NAME: ClassVar[str] = "openai"

    client: Any = Field(exclude=True)

    def get_prompt_execution_settings_class(self) -> type[PromptExecutionSettings]:
        """SK converts a prompt file's generic settings into this class before calling us."""
        return ChatSettings

    def service_url(self) -> str | None:
        """The endpoint, for SK's ``server.address`` span attribute."""
        return str(self.client.base_url)

    async def open_stream(self, chat_history: ChatHistory, settings: ChatSettings) -> Any:
        """Start a streamed completion; returns the SDK's ``AsyncStream`` of chunks, each
        the provider's JSON object as a dict.

        Usage is always asked for (``stream_options.include_usage``): the last chunk
        carries it, and streamed calls are settled from it exactly as other calls.

        The SDK's ``post`` with ``cast_to=object`` rather than ``chat.completions.create``:
        the SDK still builds and sends the request (auth, retries off, Azure's deployment
        path), decodes the events, raises a chunk carrying ``error`` as ``APIError`` and
        closes the response, but it neither transforms the parameters through their typed
        schema nor builds a pydantic model of every chunk. Those were most of the
        service's CPU per streamed token (a chunk's model about 190 us here, its JSON 8 us)
        and, before the first byte, about half of what a stream's setup costs: at 16
        streams starting together, every stream waits for the setups ahead of it
        (issue #23, bench/README.md).
        """
        body = {
            "model": self.ai_model_id,
            "messages": [message.to_dict() for message in chat_history.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            **settings.request_options(),
        }
        return await self.client.post(
            "/chat/completions",
            body=body,
            cast_to=object,
            stream=True,
            stream_cls=openai.AsyncStream[object],
            options={"security": {"bearer_auth": True}},
        )

    async def complete(self, messages: list[dict[str, Any]], settings: ChatSettings, **extra: Any) -> Any:
        """One non-streamed completion of OpenAI-shaped ``messages``; the SDK's response.

        ``extra``: members SK's settings do not carry (``tools``, ``tool_choice``: the
        tool run loop in ``sk_core.tools``). Errors propagate as the SDK raised them:
        ``classify_failure`` reads their status and Retry-After and maps them to
        client-safe problems.
        """
        try:
            return await self.client.chat.completions.create(
                model=self.ai_model_id, messages=messages, stream=False, **settings.request_options(), **extra
            )
        except (json.JSONDecodeError, openai.APIResponseValidationError) as exc:
            # A 2xx whose body is not JSON (or not a completion): answered, probably billed.
            raise UnusableAnswer("the provider's answer is not a chat completion") from exc

    @trace_chat_completion(MODEL_PROVIDER_NAME)
    async def _inner_get_chat_message_contents(
        self, chat_history: ChatHistory, settings: PromptExecutionSettings
    ) -> list[ChatMessageContent]:
        if not isinstance(settings, ChatSettings):
            settings = ChatSettings.from_prompt_execution_settings(settings)
        assert isinstance(settings, ChatSettings)  # for mypy: the branch above guarantees it
        response = await self.complete([message.to_dict() for message in chat_history.messages], settings)
        try:
            return self._contents(response)
        except (AttributeError, TypeError, ValueError) as exc:
            # Parsed, but not shaped like a completion (the SDK does not validate).
            raise UnusableAnswer("the provider's answer is not a chat completion") from exc

    def _contents(self, response: Any) -> list[ChatMessageContent]:
        usage = CompletionUsage.from_openai(response.usage) if response.usage is not None else None
        contents = []
        for choice in response.choices:
            text = choice.message.content or getattr(choice.message, "refusal", None)
            contents.append(
                ChatMessageContent(
                    role=AuthorRole(choice.message.role),
                    items=[TextContent(text=text)] if text else [],
                    inner_content=response,
                    ai_model_id=self.ai_model_id,
                    finish_reason=_finish_reason(choice.finish_reason),
                    metadata={
                        "id": response.id,
                        "created": response.created,
                        "system_fingerprint": response.system_fingerprint,
                        "usage": usage,
                    },
                )
            )
        return contents


def _finish_reason(value: str | None) -> FinishReason | None:
    # Local servers may report values outside OpenAI's set; an unknown reason is not
    # worth failing an answer the caller has already been charged for.
    try:
        return FinishReason(value) if value else None
    except ValueError:
        return None
