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
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import openai
from opentelemetry import trace
from semantic_kernel import Kernel
from semantic_kernel.contents import AuthorRole, ChatHistory, ChatMessageContent
from semantic_kernel.functions import KernelArguments, KernelFunctionFromPrompt

from sk_core.catalog import Catalog, ChatMessage, FunctionSpec
from sk_core.errors import (
    ApiError,
    ModelBadAnswer,
    ModelRateLimited,
    ModelTimeout,
    ModelUnreachable,
)
from sk_core.model._chat_service import ChatSettings, OpenAIChat
from sk_core.model._completion import Completion, ModelStream, ToolCall
from sk_core.model._deployments import BreakerState, Chain, Deployment, DeploymentHealth, RoutingTable
from sk_core.model._failures import _backoff, classify_failure
from sk_core.pricing import Usage
from sk_core.settings import Provider, Settings

if TYPE_CHECKING:
    from sk_core.tools import Toolbox

logger = logging.getLogger(__name__)

SERVICE_ID = "chat"
_AZURE_SCOPE = "https://cognitiveservices.azure.com/.default"
T = TypeVar("T")


def make_openai_client(settings: Settings, api_key: str | None, deployment: Deployment) -> openai.AsyncOpenAI:
    """A deployment's async client; one per worker (per key version), reused by every request.

    Every deployment shares the one model key (local and compatible servers ignore it;
    Azure OpenAI without a key uses Entra ID).
    """
    common: dict[str, Any] = {"timeout": settings.model_timeout_seconds, "max_retries": 0}
    key = api_key or None
    if deployment.provider == Provider.AZURE_OPENAI:
        if key:
            return openai.AsyncAzureOpenAI(
                azure_endpoint=deployment.azure_endpoint,
                api_version=deployment.api_version,
                api_key=key,
                **common,
            )
        # No key: Entra ID (managed identity in Azure, developer login locally).
        from azure.identity.aio import DefaultAzureCredential, get_bearer_token_provider

        return openai.AsyncAzureOpenAI(
            azure_endpoint=deployment.azure_endpoint,
            api_version=deployment.api_version,
            azure_ad_token_provider=get_bearer_token_provider(DefaultAzureCredential(), _AZURE_SCOPE),
            **common,
        )
    # Local servers ignore the key, but the SDK insists on one being set.
    return openai.AsyncOpenAI(base_url=deployment.base_url, api_key=key or "not-needed", **common)


class ModelRuntime:
    """The cached kernel: one chat service per deployment, one KernelFunction per catalog
    entry, and the process's view of each deployment's health (breakers, retry budget)."""

    def __init__(
        self,
        *,
        kernel: Kernel,
        chats: dict[str, OpenAIChat],
        functions: dict[str, KernelFunctionFromPrompt],
        defaults: dict[str, ChatSettings],
        settings: Settings,
        health: DeploymentHealth,
        toolbox: Toolbox | None = None,
    ) -> None:
        self.kernel = kernel
        self.toolbox = toolbox  # the plugins some prompt function may call (sk_core.tools)
        self.chats = chats
        self.clients = {name: chat.client for name, chat in chats.items()}
        self.client = next(iter(self.clients.values()))  # the default chain's first deployment
        self.functions = functions
        self._defaults = defaults
        self._settings = settings
        self.health = health

    @property
    def routing(self) -> RoutingTable:
        """The deployments and chains this runtime serves."""
        return self.health.table

    async def aclose(self) -> None:
        """Close every deployment client's connection pool."""
        for client in self.clients.values():
            await client.close()

    async def check_deployment(self, name: str, timeout: float) -> str | None:  # noqa: ASYNC109 (bounds a probe)
        """Readiness: list models, which costs nothing. Returns an error code, or None if OK."""
        try:
            async with asyncio.timeout(timeout):
                await self.clients[name].with_options(timeout=timeout).models.list()
        except TimeoutError:
            return ModelTimeout.code
        except Exception as exc:
            return classify_failure(exc)[0].code
        return None

    async def check_model(self, timeout: float) -> str | None:  # noqa: ASYNC109 (bounds a probe)
        """Readiness: every chain has a deployment that answers. One provider down takes
        no pod out of rotation while a chain can fall back. (Breakers are not consulted:
        an open one only says calls failed lately; a pod out of rotation does not help
        a chain with nowhere else to go.) Returns an error code, or None if OK."""
        names = list(self.clients)
        results = await asyncio.gather(*(self.check_deployment(n, timeout) for n in names))
        codes = dict(zip(names, results, strict=True))
        for name, code in codes.items():
            if code is not None:
                logger.warning("readiness: deployment %s: %s", name, code)
        for chain in self.routing.chains.values():
            if all(codes[d.name] is not None for d in chain.deployments):
                return codes[chain.deployments[0].name]
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
                converted[name] = survive_parsing(value) if isinstance(value, str) else value
        return KernelArguments(settings=settings, **converted)

    async def invoke(
        self,
        spec: FunctionSpec,
        values: dict[str, Any],
        *,
        max_tokens: int,
        options: Mapping[str, Any] | None = None,
        chain: Chain | None = None,
    ) -> Completion:
        """Invoke a catalog function along a fallback chain (None: the default chain),
        inside one deadline (``_routed``)."""
        function = self.functions[spec.id]
        settings = self._request_settings(spec, max_tokens, options)

        def attempt(deployment: Deployment) -> Awaitable[Any]:
            # SK picks the chat service registered under the settings' service id.
            routed = settings.model_copy(update={"service_id": deployment.name})
            return self.kernel.invoke(function, self._arguments(spec, values, routed))

        deadline = asyncio.get_running_loop().time() + self._settings.model_deadline_seconds
        route = chain or self.routing.chain(None)
        result, deployment, attempts = await self._routed(route, attempt, deadline)
        completion = _completion(result, fallback_model=deployment.model)
        return dataclasses.replace(
            completion, deployment=deployment.name, price=deployment.price, attempts=attempts
        )

    async def open_stream(
        self,
        spec: FunctionSpec,
        values: dict[str, Any],
        *,
        max_tokens: int,
        options: Mapping[str, Any] | None = None,
        chain: Chain | None = None,
    ) -> ModelStream:
        """Render the function's prompt and open a streamed completion of it along a
        fallback chain (None: the default chain).

        Fallback and retries (within the deadline) cover opening only, until a
        provider's response headers arrive: nothing has reached the caller yet, and the
        breaker judges the deployment by that. Once text flows, a failure ends the
        stream; the same deadline bounds the whole stream, so a hold is always settled
        before it could expire. The deployment's concurrency slot is held until the
        stream is closed.
        """
        settings = self._request_settings(spec, max_tokens, options)
        history = await self._history(spec, values, settings)
        deadline = asyncio.get_running_loop().time() + self._settings.model_deadline_seconds
        stream, deployment, attempts = await self._routed(
            chain or self.routing.chain(None),
            lambda deployment: self.chats[deployment.name].open_stream(history, settings),
            deadline,
            keep_slot=True,
        )
        return ModelStream(
            stream,
            deadline=deadline,
            deployment=deployment,
            attempts=attempts,
            release=lambda: self.health.free(deployment),
        )

    async def _history(
        self, spec: FunctionSpec, values: dict[str, Any], settings: ChatSettings, *, opening: bool = False
    ) -> ChatHistory:
        """The function's prompt rendered and parsed into messages, as ``kernel.invoke``
        does before calling the service (no prompt-rendering filters are registered).

        ``opening``: the prompt is only the start of a conversation (more messages
        follow). SK turns a lone system message into a user message (a prompt that is
        only a system message is meant as the user's); a marker message after it keeps
        the role, and is dropped again."""
        function = self.functions[spec.id]
        arguments = self._arguments(spec, values, settings)
        function.update_arguments_with_defaults(arguments)
        rendered = await function.prompt_template.render(self.kernel, arguments)
        if not opening:
            return ChatHistory.from_rendered_prompt(rendered)
        history = ChatHistory.from_rendered_prompt(rendered + '<message role="user">-</message>')
        history.messages.pop()
        return history

    async def render_messages(self, spec: FunctionSpec, values: dict[str, Any]) -> list[dict[str, Any]]:
        """The function's prompt as OpenAI-shaped messages: the start of a tool run, or
        of the caller's own messages (``values`` without the conversation)."""
        settings = self._request_settings(spec, 1, None)
        history = await self._history(spec, values, settings, opening=True)
        return [message.to_dict() for message in history.messages]

    async def chat_step(
        self,
        spec: FunctionSpec,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]],
        tool_choice: Any,
        max_tokens: int,
        chain: Chain | None = None,
        options: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Completion:
        """One model round trip with tools: ``messages`` so far, the tool definitions,
        along a fallback chain inside one deadline (``_routed``), as ``invoke``. A tool
        run's step, or an OpenAI-compatible request that brings its own tools
        (``options``: its sampling settings; ``extra``: ``parallel_tool_calls``,
        ``response_format``, passed as given)."""
        settings = self._request_settings(spec, max_tokens, options)
        extra = {**(extra or {}), **({"tools": tools, "tool_choice": tool_choice} if tools else {})}
        deadline = asyncio.get_running_loop().time() + self._settings.model_deadline_seconds
        response, deployment, attempts = await self._routed(
            chain or self.routing.chain(None),
            lambda deployment: self.chats[deployment.name].complete(messages, settings, **extra),
            deadline,
        )
        return _step_completion(response, deployment, attempts)

    async def _routed(
        self,
        chain: Chain,
        attempt_once: Callable[[Deployment], Awaitable[T]],
        deadline: float,
        *,
        keep_slot: bool = False,
    ) -> tuple[T, Deployment, int]:
        """``attempt_once`` along ``chain`` until one succeeds: (result, deployment, attempts).

        A failure another deployment may not share (429, 5xx, timeout, connection) moves
        on to the next deployment at once; on the last one, the call is retried with
        backoff (``Retry-After`` honoured while it fits in the deadline). Deployments
        whose breaker is open or that are at their concurrency cap are skipped, except
        that the breaker never skips the last one (a single deployment behaves as
        without breakers). Every attempt after the first takes a token from the retry
        budget. A 4xx about the request is final. ``keep_slot``: the successful
        deployment's concurrency slot stays taken (``DeploymentHealth.free`` gives it
        back).
        """
        loop = asyncio.get_running_loop()
        health = self.health
        health.retries.note_request()
        span = trace.get_current_span()
        attempts = retries_here = index = 0
        last: ApiError | None = None
        billable = False  # some attempt may have been run (and billed) by a provider
        while index < len(chain.deployments):
            deployment = chain.deployments[index]
            last_in_chain = index == len(chain.deployments) - 1
            if not health.acquire(deployment, last_resort=last_in_chain):
                _count_attempt(deployment.name, "skipped", health.state(deployment.name))
                index, retries_here = index + 1, 0
                continue
            if attempts > 0 and not health.retries.try_retry():
                health.release(deployment, ok=None)
                _count_attempt(deployment.name, "retry_budget_exhausted", health.state(deployment.name))
                break
            attempts += 1
            verdict: bool | None = None
            pause: float | None = None  # set: retry this deployment after this backoff
            try:
                async with asyncio.timeout_at(deadline):
                    result = await attempt_once(deployment)
                verdict = True
            except TimeoutError as exc:
                verdict = False
                _count_attempt(deployment.name, ModelTimeout.code, health.state(deployment.name))
                raise ModelTimeout("The model did not answer within the deadline.") from exc
            except Exception as exc:
                error, retryable, retry_after = classify_failure(exc)
                verdict = not retryable  # a 4xx about the request: the deployment works
                billable = billable or error.billable
                last = error
                _count_attempt(deployment.name, error.code, health.state(deployment.name))
                if not retryable:
                    error.billable = billable
                    raise error from exc
                remaining = deadline - loop.time()
                if not last_in_chain:
                    logger.warning("deployment %s failed (%s): falling back", deployment.name, error.code)
                    index, retries_here = index + 1, 0
                    continue
                delay = retry_after if retry_after is not None else _backoff(retries_here)
                if retries_here >= self._settings.model_max_retries or delay >= remaining:
                    if retry_after is not None and isinstance(error, ModelRateLimited):
                        error.retry_after = max(1, int(retry_after + 0.999))
                    break
                logger.warning(
                    "model call failed (%s), retry %d in %.2fs", error.code, retries_here + 1, delay
                )
                pause, retries_here = delay, retries_here + 1
            finally:
                health.release(deployment, ok=verdict, keep_slot=keep_slot and verdict is True)
            if pause is not None:  # slept with the slot given back: it is not in use
                await asyncio.sleep(pause)
                continue
            _count_attempt(deployment.name, "ok", health.state(deployment.name))
            span.set_attribute("sk.deployment", deployment.name)
            span.set_attribute("sk.model.attempts", attempts)
            return result, deployment, attempts
        span.set_attribute("sk.model.attempts", attempts)
        if last is None:
            # Nothing was sent: every deployment was open or full. Free, like a refusal.
            raise ModelUnreachable(f"No deployment of model chain {chain.name!r} is available now.")
        last.billable = billable
        raise last


def _count_attempt(deployment: str, outcome: str, state: BreakerState) -> None:
    """Per-deployment attempts by outcome, with the breaker state (metrics, and the span)."""
    from sk_core.telemetry import instruments

    attributes = {"sk.deployment": deployment, "sk.outcome": outcome, "sk.breaker.state": str(state)}
    instruments().model_attempts.add(1, attributes)
    trace.get_current_span().add_event("model.attempt", attributes)


def _chat_history(messages: list[ChatMessage] | list[dict[str, Any]]) -> ChatHistory:
    history = ChatHistory()
    for message in messages:
        item = message if isinstance(message, ChatMessage) else ChatMessage.model_validate(message)
        history.add_message(
            ChatMessageContent(role=AuthorRole(item.role), content=survive_parsing(item.content))
        )
    return history


def survive_parsing(text: str) -> str:
    """``text`` prepared so that the provider receives exactly ``text``.

    SK renders a prompt (escaping variables: ``&`` becomes ``&amp;``), parses the
    ``<message>`` tags back as XML (one level of entities undone, line ends normalised)
    and then ``html.unescape``s each message's text: a second level. Unprepared,
    ``Ign&#111;re`` reached the model as ``Ignore`` (and the guard, which screens the
    caller's text, saw the encoded form) and ``a &lt; b`` as ``a < b``. One more level
    of ``&`` for the second unescape, and ``\r`` as a character reference, which XML's
    line-end normalisation leaves alone: the round trip is the identity (property-tested
    against the stub model in tests/safety/test_prompt_roundtrip.py).
    """
    if "&" not in text and "\r" not in text:
        return text
    return text.replace("&", "&amp;").replace("\r", "&#13;")


def _completion(result: Any, *, fallback_model: str) -> Completion:
    values = getattr(result, "value", None)
    message = values[0] if isinstance(values, list) and values else None
    if not isinstance(message, ChatMessageContent):
        raise ModelBadAnswer("The model returned no message.")
    usage = message.metadata.get("usage")
    prompt_tokens = getattr(usage, "prompt_tokens", None)
    completion_tokens = getattr(usage, "completion_tokens", None)
    if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
        # Cost accounting depends on reported usage; an answer without it is not trusted,
        # and it is charged its reservation (the provider has probably billed it).
        raise ModelBadAnswer("The model did not report token usage.")
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


def _step_completion(response: Any, deployment: Deployment, attempts: int) -> Completion:
    """A tool run step's answer: text and tool calls, with the usage it must report."""
    try:
        message = response.choices[0].message
        usage = response.usage
        prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        calls = tuple(
            ToolCall(
                id=str(call.id), name=str(call.function.name), arguments=str(call.function.arguments or "")
            )
            for call in message.tool_calls or ()
        )
        finish = response.choices[0].finish_reason
    except (AttributeError, IndexError, TypeError) as exc:
        raise ModelBadAnswer("The model provider returned an unusable answer.") from exc
    if not isinstance(prompt_tokens, int) or not isinstance(completion_tokens, int):
        raise ModelBadAnswer("The model did not report token usage.")
    return Completion(
        text=str(message.content or ""),
        model=str(getattr(response, "model", None) or deployment.model),
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
        finish_reason=str(finish) if finish else None,
        deployment=deployment.name,
        price=deployment.price,
        attempts=attempts,
        tool_calls=calls,
    )


def build_runtime(settings: Settings, catalog: Catalog, api_key: str | None = None) -> ModelRuntime:
    """Build the kernel: one chat service per deployment (registered under its name),
    one function per prompt file."""
    table = RoutingTable.from_settings(settings)
    kernel = Kernel()
    chats: dict[str, OpenAIChat] = {}
    for deployment in table.deployments.values():
        # For Azure OpenAI the model id is the deployment name, which the Azure client
        # puts in the URL path; the same chat service serves every provider.
        chat = chats[deployment.name] = OpenAIChat(
            service_id=deployment.name,
            ai_model_id=deployment.model,
            client=make_openai_client(settings, api_key, deployment),
        )
        kernel.add_service(chat)
    first = table.chain(None).deployments[0].name
    functions: dict[str, KernelFunctionFromPrompt] = {}
    defaults: dict[str, ChatSettings] = {}
    for spec in catalog:
        if spec.model_chain is not None and spec.model_chain not in table.chains:
            # Fails the build, visibly in /api/ready, rather than every call of the function.
            raise ValueError(f"{spec.id}: model_chain {spec.model_chain!r} is not configured")
        function = KernelFunctionFromPrompt.from_yaml(spec.yaml_text, plugin_name=spec.plugin)
        kernel.add_function(plugin_name=spec.plugin, function=function)
        functions[spec.id] = function
        # The prompt file's settings, converted once: an out-of-range value
        # (temperature: 7) fails this build, visibly in /api/ready, rather than every
        # request; each request copies them and sets its deployment and max_tokens.
        prompt = function.prompt_execution_settings
        base = prompt.get(SERVICE_ID) or prompt.get("default")
        chat_settings = ChatSettings.from_prompt_execution_settings(base) if base else ChatSettings()
        chat_settings.service_id = first
        defaults[spec.id] = chat_settings
    return ModelRuntime(
        kernel=kernel,
        chats=chats,
        functions=functions,
        defaults=defaults,
        settings=settings,
        health=make_health(settings, table),
        toolbox=_toolbox(kernel, catalog),
    )


def _toolbox(kernel: Kernel, catalog: Catalog) -> Toolbox | None:
    """The plugins the catalog's functions may call, in the kernel; None when none may
    (no plugin module is imported then)."""
    if not any(getattr(spec, "tools", None) is not None for spec in catalog):
        return None
    from sk_core.tools import load_toolbox

    return load_toolbox(kernel, catalog)


def make_health(settings: Settings, table: RoutingTable) -> DeploymentHealth:
    """Breakers and the retry budget; breaker transitions are counted and logged."""

    def changed(name: str, old: BreakerState, new: BreakerState) -> None:
        from sk_core.telemetry import instruments

        logger.warning("circuit breaker of deployment %s: %s -> %s", name, old, new)
        instruments().breaker_transitions.add(1, {"sk.deployment": name, "sk.breaker.state": str(new)})

    from sk_core.telemetry import report_breakers

    health = DeploymentHealth(
        table,
        failures=settings.breaker_failures,
        cooldown=settings.breaker_cooldown_seconds,
        retry_ratio=settings.retry_budget_ratio,
        on_change=changed,
    )
    report_breakers(health.states)  # the sk.model.breaker.state gauge
    return health
