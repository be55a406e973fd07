"""The tool run: model round trips, each admitted and settled, with tools run between them.

::

    render the prompt → [admit → model step → settle → run its tool calls]* → answer

The loop is ours rather than Semantic Kernel's auto function invocation: every round
trip has to pass the tenant's limits before it starts (``StepGate.admit``, the same
reserve/settle as a single call) and the run has to stop cleanly between two steps, which
is a plain ``for`` loop here and a filter setting ``context.terminate`` inside SK's.

Outcomes (``RunReport.status`` / ``code``), documented in the README:

* ``completed``: the model answered without asking for more tools.
* ``incomplete`` + ``max_steps``: the model still asked for tools on the last step it
  was allowed (that step is sent with ``tool_choice: none``, so an obedient model
  answers instead). ``max_tool_calls``: it asked for more calls after the run's cap.
  ``run_cost_limit``: the next step's worst case no longer fits in the run's ceiling.
  A tenant limit refusing a later step (``budget_exceeded``, ``rate_limited``...):
  that code. The answer is whatever text the last step produced (often empty) and the
  charge is exactly the steps made.
* A refusal of the first step, or a model failure at any step, raises as a single call
  does (the steps before it stay charged; the audit row says what).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sk_core import telemetry
from sk_core.errors import ApiError, LimitExceeded

if TYPE_CHECKING:
    from sk_core.catalog import FunctionSpec
    from sk_core.model import Completion, ModelRuntime, ToolCall
    from sk_core.pricing import Price
    from sk_core.tools._kernel import Toolbox
    from sk_core.tools._settings import RunLimits, ToolSettings

# Bytes bound tokens (README, "Hard cost ceiling"); these allowances cover what a chat
# template wraps around them: a message's role markers, a tool call's id and markup,
# and the block of instructions some templates put around the tool definitions.
_FIXED_TOKENS = 16  # the assistant turn's opener
_PER_MESSAGE_TOKENS = 8
_PER_CALL_TOKENS = 16
_TOOLS_FIXED_TOKENS = 256
_PER_TOOL_TOKENS = 16
_TRUNCATED = "\n[truncated]"
_WITHHELD = "[withheld: the tool's output was flagged as a possible prompt injection]"

logger = logging.getLogger(__name__)

Outcome = Literal["ok", "error", "timeout", "withheld", "refused"]
Verdict = Literal["clean", "blocked"]


class ToolError(Exception):
    """A tool failed in a way its message may tell the model (bad arguments, a refusal)."""


class RunStopped(ApiError):
    """The run's own cost ceiling cannot pay for its first step (nothing was charged)."""

    status, code, title = 400, "run_cost_limit", "Run cost limit too low"


class StepGate(Protocol):
    """One model round trip under the tenant's limits (the pipeline implements it)."""

    async def admit(self, prompt_tokens_bound: int, max_tokens: int) -> Any:
        """Reserve the step's worst case; a hold with the admitted ``max_tokens``.
        Raises ``LimitExceeded`` when the tenant's limits refuse it."""

    async def call(
        self, hold: Any, model_call: Callable[[ModelRuntime], Awaitable[Completion]]
    ) -> Completion:
        """The model call; a failure settles ``hold`` (charged as a failed call) and raises."""

    async def settle(self, hold: Any, completion: Completion) -> int:
        """Settle at the reported usage; the nano-USD charged."""


@dataclass(frozen=True)
class ToolCallReport:
    """One tool execution, as the response and the audit show it."""

    name: str
    outcome: Outcome
    duration_ms: float

    def public(self) -> dict[str, Any]:
        """The response's ``run.tool_calls`` item."""
        return {"name": self.name, "outcome": self.outcome, "duration_ms": round(self.duration_ms, 1)}


@dataclass
class RunReport:
    """What a run did and cost."""

    status: Literal["completed", "incomplete"] = "completed"
    code: str | None = None  # why an incomplete run stopped
    steps: int = 0
    cost_nano: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[ToolCallReport] = field(default_factory=list)
    text: str = ""
    last: Completion | None = None  # the last settled step's answer
    hold: Any = None  # the last admitted step's hold (its rate-limit window)

    def public(self) -> dict[str, Any]:
        """The response's ``run`` member."""
        return {
            "status": self.status,
            "code": self.code,
            "steps": self.steps,
            "tool_calls": [call.public() for call in self.tool_calls],
        }

    def stop(self, code: str) -> None:
        self.status, self.code = "incomplete", code


def _message_bytes(message: dict[str, Any]) -> int:
    content = message.get("content") or ""
    text = content if isinstance(content, str) else json.dumps(content)
    total = len(f"{text}{message.get('name') or ''}{message.get('tool_call_id') or ''}".encode())
    total += _PER_MESSAGE_TOKENS
    for call in message.get("tool_calls") or ():
        function = call["function"]
        total += len(f"{call['id']}{function['name']}{function['arguments']}".encode()) + _PER_CALL_TOKENS
    return total


def prompt_bound(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> int:
    """An upper bound on the prompt tokens of ``messages`` sent with ``tools``: UTF-8
    bytes, plus allowances for the chat template's markup (``_run.py``'s constants)."""
    total = _FIXED_TOKENS + sum(_message_bytes(message) for message in messages)
    if tools:
        total += len(json.dumps(tools).encode()) + _TOOLS_FIXED_TOKENS + _PER_TOOL_TOKENS * len(tools)
    return total


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - len(_TRUNCATED))] + _TRUNCATED


class ToolRun:
    """One run of a tool-using prompt function (construct per request)."""

    def __init__(
        self,
        *,
        spec: FunctionSpec,
        settings: ToolSettings,
        limits: RunLimits,
        gate: StepGate,
        screen: Callable[[str], Awaitable[Verdict]],
        price: Price,
        max_tokens: int,
        chain: Any = None,
        on_tool: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._spec = spec
        self._settings = settings
        self._limits = limits
        self._gate = gate
        self._screen = screen
        self._price = price  # the chain's reservation price: what the run's ceiling is checked at
        self._max_tokens = max_tokens
        self._chain = chain  # the model fallback chain every step uses (None: the default)
        # Told of every tool call once it is done (a streamed answer's ``tool`` events).
        self._on_tool = on_tool
        self.report = RunReport()

    async def execute(self, runtime: ModelRuntime, arguments: dict[str, Any]) -> RunReport:
        """Run to an answer or a limit; the report (also ``self.report`` if this raises)."""
        toolbox = runtime.toolbox
        if toolbox is None:  # the kernel loads a toolbox whenever a function has tools
            raise RuntimeError("the kernel was built without its plugins")
        spec, limits, report = self._spec, self._limits, self._report_dimensions()
        names = self._settings.names
        offered = names if self._settings.choice != "none" and limits.max_tool_calls > 0 else ()
        tools = toolbox.definitions(offered)
        messages = await runtime.render_messages(spec, arguments)
        bound = spec.prompt_token_bound(arguments)
        if offered:
            bound += (
                toolbox.definitions_bytes(offered) + _TOOLS_FIXED_TOKENS + _PER_TOOL_TOKENS * len(offered)
            )
        run = self.report
        for step in range(1, limits.max_steps + 1):
            calls_left = limits.max_tool_calls - len(run.tool_calls)
            choice = self._choice(step, calls_left)
            max_tokens = self._affordable(bound)
            if max_tokens < 1:
                if step == 1:
                    raise RunStopped("The run's cost ceiling cannot pay for the prompt and an answer.")
                run.stop("run_cost_limit")
                break
            try:
                hold = await self._gate.admit(bound, max_tokens)
            except LimitExceeded as refusal:
                if step == 1:
                    raise  # nothing done yet: refused like a single call
                run.stop(refusal.code)
                break
            run.hold = hold
            completion = await self._gate.call(hold, self._step(messages, tools, choice, hold.max_tokens))
            run.cost_nano += await self._gate.settle(hold, completion)
            run.steps += 1
            run.last, run.text = completion, completion.text
            run.prompt_tokens += completion.usage.prompt_tokens
            run.completion_tokens += completion.usage.completion_tokens
            telemetry.instruments().tool_steps.add(1, report)
            if not completion.tool_calls:
                return run  # the answer
            if step == limits.max_steps:
                run.stop("max_steps")
                break
            if choice == "none" or not offered:
                # Asked for tools it was told it may not call now: the caps are reached.
                run.stop("max_tool_calls")
                break
            assistant = self._assistant_message(completion)
            messages.append(assistant)
            bound += _message_bytes(assistant)
            for result in await self._execute_all(toolbox, completion.tool_calls, calls_left):
                messages.append(result)
                bound += _message_bytes(result)
        return run

    def _step(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], choice: str, max_tokens: int
    ) -> Callable[[ModelRuntime], Awaitable[Completion]]:
        """The step's model call on the runtime the gate hands it (messages as of now)."""
        sent = list(messages)

        def call(runtime: ModelRuntime) -> Awaitable[Completion]:
            return runtime.chat_step(
                self._spec, sent, tools=tools, tool_choice=choice, max_tokens=max_tokens, chain=self._chain
            )

        return call

    def _choice(self, step: int, calls_left: int) -> str:
        """``tool_choice`` of this step: none on the last step or with no calls left
        (an obedient model answers), required only on the first when the file says so."""
        if step == self._limits.max_steps or calls_left <= 0 or self._settings.choice == "none":
            return "none"
        return "required" if self._settings.choice == "required" and step == 1 else "auto"

    def _affordable(self, bound: int) -> int:
        """The step's answer cap, lowered to what the run's cost ceiling still pays for."""
        ceiling = self._limits.max_cost_nano
        if ceiling is None:
            return self._max_tokens
        fits = self._price.max_output_tokens(ceiling - self.report.cost_nano, bound)
        return min(self._max_tokens, fits)

    def _report_dimensions(self) -> dict[str, str]:
        return {"sk.function": self._spec.id}

    @staticmethod
    def _assistant_message(completion: Completion) -> dict[str, Any]:
        return {
            "role": "assistant",
            "content": completion.text or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in completion.tool_calls
            ],
        }

    async def _execute_all(
        self, toolbox: Toolbox, calls: tuple[ToolCall, ...], calls_left: int
    ) -> list[dict[str, Any]]:
        """The step's calls, concurrently; those past the run's cap are refused (the
        model is told so). One ``tool`` message per call, in the model's order."""
        allowed, refused = calls[:calls_left], calls[calls_left:]
        done = await asyncio.gather(*(self._execute(toolbox, call) for call in allowed))
        refusal = "error: not run, the run's tool-call limit is reached; answer with what you have"
        done += [(refusal, self._count(call.name, "refused", 0.0)) for call in refused]
        # Reported in the model's order, whichever finished first.
        self.report.tool_calls.extend(report for _, report in done)
        return [
            {"role": "tool", "tool_call_id": call.id, "content": text}
            for call, (text, _) in zip(calls, done, strict=True)
        ]

    async def _execute(self, toolbox: Toolbox, call: ToolCall) -> tuple[str, ToolCallReport]:
        """One tool call in its ``execute_tool`` span: the text the model reads next.

        Never raises for the tool's sake: an unknown tool, bad arguments, an error or a
        timeout become an ``error: ...`` message to the model. The result is cut to
        ``max_result_chars`` and screened by the guard (a blocked one is withheld).
        """
        limits = self._limits
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.type": "function",
            "sk.function": self._spec.id,
        }
        started = time.perf_counter()
        outcome: Outcome = "error"
        with telemetry.tracer().start_as_current_span(
            f"execute_tool {call.name}", attributes=attributes
        ) as span:
            try:
                text = await self._run_tool(toolbox, call, limits.tool_timeout_seconds)
                outcome = "ok"
            except TimeoutError:
                outcome, text = (
                    "timeout",
                    f"error: the tool did not finish within {limits.tool_timeout_seconds:g}s",
                )
            except _ToolRefused as refused:
                text = f"error: {refused}"
            text = _cap(text, limits.max_result_chars)
            verdict = await self._screen(text)
            if verdict == "blocked":
                outcome, text = "withheld", _WITHHELD
            span.set_attribute("sk.tool.outcome", outcome)
            span.set_attribute("sk.guard.flagged", verdict != "clean")
        duration_ms = (time.perf_counter() - started) * 1000
        report = self._count(call.name, outcome, duration_ms)
        if self._on_tool is not None:
            self._on_tool(
                {
                    "id": call.id,
                    "name": call.name,
                    "arguments": call.arguments,
                    "outcome": outcome,
                    "duration_ms": round(duration_ms, 1),
                }
            )
        return text, report

    async def _run_tool(self, toolbox: Toolbox, call: ToolCall, timeout: float) -> str:  # noqa: ASYNC109
        if call.name not in self._settings.names or call.name not in toolbox:
            raise _ToolRefused(f"there is no tool named {call.name!r}")
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            raise _ToolRefused("the arguments are not valid JSON") from None
        if not isinstance(arguments, dict):
            raise _ToolRefused("the arguments must be a JSON object")
        try:
            async with asyncio.timeout(timeout):
                return await toolbox.invoke(call.name, arguments)
        except ToolError as exc:
            raise _ToolRefused(str(exc)) from exc
        except TimeoutError:
            raise
        except Exception as exc:
            # A bug in a plugin: logged with its traceback, the model told only that it failed.
            logger.error("tool %s failed", call.name, exc_info=exc)
            raise _ToolRefused("the tool failed") from exc

    def _count(self, name: str, outcome: Outcome, duration_ms: float) -> ToolCallReport:
        telemetry.instruments().tool_calls.add(
            1, {"gen_ai.tool.name": name, "sk.tool.outcome": outcome, "sk.function": self._spec.id}
        )
        return ToolCallReport(name, outcome, duration_ms)


class _ToolRefused(Exception):
    """A tool call that did not produce a result; the message is for the model."""
