"""Semantic Kernel wiring and the one place a model is called.

Imported only by ``kernel.RuntimeProvider`` when the kernel is first built: this module
imports Semantic Kernel and the OpenAI SDK, which cost seconds.

Retries are ours, not the OpenAI SDK's (its client is built with ``max_retries=0``):
we need one deadline over all attempts, ``Retry-After`` honoured only while it fits in
that deadline, and provider failures mapped to our own error codes with the provider's
text kept out of the response.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
from semantic_kernel import Kernel
from semantic_kernel.contents import AuthorRole, ChatHistory, ChatMessageContent
from semantic_kernel.functions import KernelArguments, KernelFunctionFromPrompt

from sk_core.catalog import Catalog, ChatMessage, FunctionSpec
from sk_core.chat_service import ChatSettings, OpenAIChat
from sk_core.errors import ApiError, ModelError, ModelRateLimited, ModelTimeout, ModelUnavailable
from sk_core.schemas import Usage
from sk_core.settings import Provider, Settings

logger = logging.getLogger(__name__)

SERVICE_ID = "chat"
_AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
_BACKOFF_BASE_SECONDS = 0.25
_BACKOFF_CAP_SECONDS = 4.0
T = TypeVar("T")


@dataclass(frozen=True)
class Completion:
    """What a function invocation produced, with the provider's own accounting."""

    text: str
    model: str
    usage: Usage
    finish_reason: str | None


def make_openai_client(settings: Settings, api_key: str | None) -> openai.AsyncOpenAI:
    """The provider's async client; one per worker (per key version), reused by every request."""
    common: dict[str, Any] = {"timeout": settings.model_timeout_seconds, "max_retries": 0}
    key = api_key or None
    if settings.model_provider is Provider.AZURE_OPENAI:
        if key:
            return openai.AsyncAzureOpenAI(
                azure_endpoint=settings.azure_openai_endpoint,
                api_version=settings.azure_openai_api_version,
                api_key=key,
                **common,
            )
        # No key: Entra ID (managed identity in Azure, developer login locally).
        from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

        return openai.AsyncAzureOpenAI(
            azure_endpoint=settings.azure_openai_endpoint,
            api_version=settings.azure_openai_api_version,
            azure_ad_token_provider=get_bearer_token_provider(DefaultAzureCredential(), _AZURE_SCOPE),
            **common,
        )
    # Local servers ignore the key, but the SDK insists on one being set.
    return openai.AsyncOpenAI(base_url=settings.resolved_base_url, api_key=key or "not-needed", **common)


class ModelRuntime:
    """The cached kernel with its chat service and one KernelFunction per catalog entry."""

    def __init__(
        self,
        *,
        kernel: Kernel,
        chat: OpenAIChat,
        client: openai.AsyncOpenAI,
        functions: dict[str, KernelFunctionFromPrompt],
        defaults: dict[str, ChatSettings],
        settings: Settings,
    ) -> None:
        self.kernel = kernel
        self.chat = chat
        self.client = client
        self.functions = functions
        self._defaults = defaults
        self._settings = settings

    async def aclose(self) -> None:
        """Close the provider client's connection pool."""
        await self.client.close()

    async def check_model(self, timeout: float) -> str | None:  # noqa: ASYNC109 (bounds a probe)
        """Readiness: list models, which costs nothing. Returns an error code, or None if OK."""
        try:
            async with asyncio.timeout(timeout):
                await self.client.with_options(timeout=timeout).models.list()
        except TimeoutError:
            return ModelTimeout.code
        except Exception as exc:
            return classify_failure(exc)[0].code
        return None

    def _request_settings(
        self, spec: FunctionSpec, max_tokens: int, options: Mapping[str, Any] | None
    ) -> ChatSettings:
        # The prompt file's settings, then the caller's sampling options (validated by
        # the request's schema), then the admitted answer cap, which nothing overrides.
        settings = self._defaults[spec.id].model_copy(update=dict(options or {}))
        settings.max_tokens = max_tokens
        return settings

    def _arguments(
        self, spec: FunctionSpec, values: dict[str, Any], settings: ChatSettings
    ) -> KernelArguments:
        converted: dict[str, Any] = {}
        for name, value in values.items():
            spec_input = next((i for i in spec.inputs if i.name == name), None)
            if spec_input is not None and spec_input.is_chat_history:
                converted[name] = _chat_history(value)
            else:
                converted[name] = value
        return KernelArguments(settings=settings, **converted)

    async def invoke(
        self,
        spec: FunctionSpec,
        values: dict[str, Any],
        *,
        max_tokens: int,
        options: Mapping[str, Any] | None = None,
    ) -> Completion:
        """Invoke a catalog function with bounded retries inside one deadline."""
        function = self.functions[spec.id]
        arguments = self._arguments(spec, values, self._request_settings(spec, max_tokens, options))
        deadline = asyncio.get_running_loop().time() + self._settings.model_deadline_seconds
        result = await self._retrying(lambda: self.kernel.invoke(function, arguments), deadline)
        return _completion(result, fallback_model=self._settings.resolved_model_id)

    async def open_stream(
        self,
        spec: FunctionSpec,
        values: dict[str, Any],
        *,
        max_tokens: int,
        options: Mapping[str, Any] | None = None,
    ) -> ModelStream:
        """Render the function's prompt and open a streamed completion of it.

        Retries (within the deadline) cover opening only, until the provider's response
        headers arrive: nothing has reached the caller yet. Once text flows, a failure
        ends the stream; the same deadline bounds the whole stream, so a hold is always
        settled before it could expire.
        """
        function = self.functions[spec.id]
        settings = self._request_settings(spec, max_tokens, options)
        arguments = self._arguments(spec, values, settings)
        # What kernel.invoke does before calling the service (no prompt-rendering
        # filters are registered on this kernel).
        function.update_arguments_with_defaults(arguments)
        rendered = await function.prompt_template.render(self.kernel, arguments)
        history = ChatHistory.from_rendered_prompt(rendered)
        deadline = asyncio.get_running_loop().time() + self._settings.model_deadline_seconds
        stream = await self._retrying(lambda: self.chat.open_stream(history, settings), deadline)
        return ModelStream(stream, deadline=deadline, fallback_model=self._settings.resolved_model_id)

    async def _retrying(self, attempt_once: Callable[[], Awaitable[T]], deadline: float) -> T:
        """``attempt_once`` until it succeeds, a failure is final, or the deadline is near."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    return await attempt_once()
            except TimeoutError as exc:
                raise ModelTimeout("The model did not answer within the deadline.") from exc
            except Exception as exc:
                error, retryable, retry_after = classify_failure(exc)
                remaining = deadline - loop.time()
                delay = retry_after if retry_after is not None else _backoff(attempt)
                if not retryable or attempt >= self._settings.model_max_retries or delay >= remaining:
                    if retry_after is not None and isinstance(error, ModelRateLimited):
                        error.retry_after = max(1, int(retry_after + 0.999))
                    raise error from exc
                logger.warning("model call failed (%s), retry %d in %.2fs", error.code, attempt + 1, delay)
                await asyncio.sleep(delay)
                attempt += 1


class ModelStream:
    """A provider's streamed completion: text deltas, then the accounting of the whole.

    Iterate for the text; afterwards :meth:`completion` gives the model, usage and
    finish reason the stream reported (usage arrives on its last chunk). ``aclose``
    closes the provider's HTTP response at once (the provider stops generating).
    """

    def __init__(self, stream: Any, *, deadline: float, fallback_model: str) -> None:
        self._stream = stream
        self._deadline = deadline
        self.model = fallback_model
        self.usage: Usage | None = None
        self.finish_reason: str | None = None

    async def __aiter__(self) -> AsyncIterator[str]:
        chunks = self._stream.__aiter__()
        while True:
            try:
                async with asyncio.timeout_at(self._deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise ModelTimeout("The model did not finish within the deadline.") from exc
            except ApiError:
                raise
            except Exception as exc:
                # Mid-stream nothing is retried: part of the answer is already out.
                raise classify_failure(exc)[0] from exc
            self.model = getattr(chunk, "model", None) or self.model
            usage = getattr(chunk, "usage", None)
            if usage is not None:
                self.usage = Usage(
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    total_tokens=usage.prompt_tokens + usage.completion_tokens,
                )
            # Azure sends chunks without choices (content-filter results); usage too.
            for choice in chunk.choices or ():
                if choice.finish_reason:
                    self.finish_reason = str(choice.finish_reason)
                if choice.delta is not None and choice.delta.content:
                    yield choice.delta.content

    def completion(self, text: str) -> Completion:
        """What the finished stream produced; refused without reported usage, as every call."""
        if self.usage is None:
            raise ModelError("The model did not report token usage.")
        return Completion(text=text, model=self.model, usage=self.usage, finish_reason=self.finish_reason)

    async def aclose(self) -> None:
        """Close the provider's response (idempotent)."""
        await self._stream.close()


def _chat_history(messages: list[ChatMessage] | list[dict[str, Any]]) -> ChatHistory:
    history = ChatHistory()
    for message in messages:
        item = message if isinstance(message, ChatMessage) else ChatMessage.model_validate(message)
        history.add_message(ChatMessageContent(role=AuthorRole(item.role), content=item.content))
    return history


def _completion(result: Any, *, fallback_model: str) -> Completion:
    values = getattr(result, "value", None)
    message = values[0] if isinstance(values, list) and values else None
    if not isinstance(message, ChatMessageContent):
        raise ModelError("The model returned no message.")
    usage = message.metadata.get("usage")
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
        # Cost accounting depends on reported usage; an answer without it is not trusted.
        raise ModelError("The model did not report token usage.")
    inner = message.inner_content
    model = getattr(inner, "model", None) or message.ai_model_id or fallback_model
    finish = message.finish_reason
    return Completion(
        text=str(message.content or ""),
        model=str(model),
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        finish_reason=str(finish.value) if finish is not None else None,
    )


def _provider_exception(exc: BaseException) -> openai.OpenAIError | None:
    # SK wraps the SDK's exception (ServiceResponseException, KernelInvokeException...);
    # the status and headers we need are on the original one.
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, openai.OpenAIError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _retry_after_seconds(headers: Any) -> float | None:
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


def classify_failure(exc: BaseException) -> tuple[ApiError, bool, float | None]:
    """Map a failed invoke to (client-facing error, retryable?, provider's Retry-After)."""
    provider = _provider_exception(exc)
    if isinstance(provider, openai.APITimeoutError):
        return ModelTimeout("The model did not answer in time."), True, None
    if isinstance(provider, openai.APIConnectionError):
        return ModelUnavailable("The model endpoint could not be reached."), True, None
    if isinstance(provider, openai.APIStatusError):
        status = provider.status_code
        retry_after = _retry_after_seconds(provider.response.headers)
        logger.warning("model provider answered HTTP %d", status)
        if status == 429:
            return ModelRateLimited("The model provider is rate limiting; retry later."), True, retry_after
        if status == 408:
            return ModelTimeout("The model did not answer in time."), True, retry_after
        if status >= 500:
            return ModelError("The model provider failed."), True, retry_after
        return ModelError(f"The model provider rejected the request (HTTP {status})."), False, None
    if isinstance(exc, ApiError):
        return exc, False, None
    logger.error("model invocation failed", exc_info=exc)
    return ModelError("The model invocation failed."), False, None


def _backoff(attempt: int) -> float:
    # Full jitter: spreads retries of many workers hit by the same provider hiccup.
    return random.uniform(0, min(_BACKOFF_CAP_SECONDS, _BACKOFF_BASE_SECONDS * 2**attempt))


def build_runtime(settings: Settings, catalog: Catalog, api_key: str | None = None) -> ModelRuntime:
    """Build the kernel: one chat service registered by id, one function per prompt file."""
    client = make_openai_client(settings, api_key)
    kernel = Kernel()
    # For Azure OpenAI the model id is the deployment name, which the Azure client puts
    # in the URL path; the same chat service serves every provider.
    service = OpenAIChat(service_id=SERVICE_ID, ai_model_id=settings.resolved_model_id, client=client)
    kernel.add_service(service)
    functions: dict[str, KernelFunctionFromPrompt] = {}
    defaults: dict[str, ChatSettings] = {}
    for spec in catalog:
        function = KernelFunctionFromPrompt.from_yaml(spec.yaml_text, plugin_name=spec.plugin)
        kernel.add_function(plugin_name=spec.plugin, function=function)
        functions[spec.id] = function
        # The prompt file's settings, converted once: an out-of-range value
        # (temperature: 7) fails this build, visibly in /api/ready, rather than every
        # request; each request copies them and sets its own max_tokens.
        prompt = function.prompt_execution_settings
        base = prompt.get(SERVICE_ID) or prompt.get("default")
        chat = ChatSettings.from_prompt_execution_settings(base) if base else ChatSettings()
        chat.service_id = SERVICE_ID
        defaults[spec.id] = chat
    return ModelRuntime(
        kernel=kernel, chat=service, client=client, functions=functions, defaults=defaults, settings=settings
    )
