"""The pipeline's tool-using paths: a run of a function that calls tools (every model
round trip admitted and settled like a call, ``_StepGate``), and one model call over the
OpenAI-shaped messages a caller brings with its own tools. A mixin of ``Pipeline``: the
same collaborators, the same stages."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from sk_core import telemetry
from sk_core.model import Chain
from sk_core.pipeline._call import _Call, _charge_on_failure
from sk_core.pipeline._outcome import Outcome, rate_of
from sk_core.pricing import Usage
from sk_core.tools import ToolRun, prompt_bound

if TYPE_CHECKING:
    from sk_core.accounts import Principal
    from sk_core.catalog import FunctionSpec
    from sk_core.limits import Hold
    from sk_core.model import Completion, ModelRuntime
    from sk_core.tools import Verdict
    from sk_core.usage import AuditEntry

logger = logging.getLogger(__name__)
T = TypeVar("T")

if TYPE_CHECKING:
    from sk_core.pipeline._pipeline import Pipeline


class ToolRuns:
    """``Pipeline``'s tool-using entries (see the module). Each method runs on the
    ``Pipeline`` it is mixed into (``self: Pipeline``; mypy wants a self type above the
    class, hence the ignores), so its stages are the very same methods."""

    async def run_tools(  # type: ignore[misc]
        self: Pipeline,
        principal: Principal,
        spec: FunctionSpec,
        arguments: dict[str, Any],
        *,
        max_tokens: int | None,
        run_limits: Mapping[str, Any] | None = None,
        record: AuditEntry | None = None,
        chain: str | None = None,
        on_tool: Callable[[dict[str, Any]], None] | None = None,
    ) -> Outcome:
        """A function that may call tools: screened once, then every model round trip
        admitted and settled like a single call (``_StepGate``), the tools run between
        them (``sk_core.tools.ToolRun``). The answer is redacted like any other; the
        audit record carries the run's steps, tool calls and total charge, also when
        a step fails (the steps before it stay charged). ``on_tool`` hears of each tool
        call when it is done (its arguments redacted: they leave the process).
        ``run_limits`` are the caller's lower limits (validated by the request model)."""
        settings = spec.tools
        assert settings is not None
        limits = settings.limits.lowered(run_limits)
        route = self._routing.chain(chain or spec.model_chain)
        await self._screen(spec, arguments, record)
        gate = _StepGate(self, principal, spec, route)
        run = ToolRun(
            spec=spec,
            settings=settings,
            limits=limits,
            gate=gate,
            screen=self._tool_screen(spec.id),
            price=route.reservation_price,
            max_tokens=max_tokens or spec.default_max_tokens_for(arguments),
            chain=route,
            on_tool=None if on_tool is None else self._redacted_tool_events(spec.id, on_tool),
        )
        try:
            report = await run.execute(await self._runtime(), arguments)
        finally:
            if record is not None:
                done = run.report
                record.cost_nano = done.cost_nano + gate.failed_nano
                record.prompt_tokens, record.completion_tokens = done.prompt_tokens, done.completion_tokens
                record.steps, record.tool_calls = done.steps, len(done.tool_calls)
                record.run_stop = done.code or ""
        assert report.last is not None  # ToolRun raises unless a step was settled
        redaction = self._redactor(spec.id).redact(report.text)
        if record is not None:
            record.redactions = sum(redaction.counts.values())
        usage = Usage(
            prompt_tokens=report.prompt_tokens,
            completion_tokens=report.completion_tokens,
            total_tokens=report.prompt_tokens + report.completion_tokens,
        )
        return Outcome(
            completion=dataclasses.replace(report.last, usage=usage),
            text=redaction.text,
            redactions=dict(redaction.counts),
            cost_nano=report.cost_nano,
            rate=rate_of(report.hold),
            run=report,
        )

    async def complete_messages(  # type: ignore[misc]
        self: Pipeline,
        principal: Principal,
        spec: FunctionSpec,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]],
        tool_choice: Any,
        extra: Mapping[str, Any],
        max_tokens: int | None,
        options: Mapping[str, Any] | None = None,
        record: AuditEntry | None = None,
        chain: str | None = None,
    ) -> Outcome:
        """One model call over OpenAI-shaped ``messages`` that may carry the caller's own
        tools, tool calls and tool results (the OpenAI-compatible route): the
        function's own prompt (its system message) first, then the same stages as
        ``call``, never cached. The model's tool calls are returned, not run: the
        caller runs its tools. Every message's text is screened (a tool result is
        text the caller's tool fetched: indirect injection)."""
        route = self._routing.chain(chain or spec.model_chain)
        texts = [str(m["content"]) for m in messages if isinstance(m.get("content"), str) and m["content"]]
        await self._screen_texts(spec, texts, record)
        sent = [*await (await self._runtime()).render_messages(spec, {}), *messages]
        requested = max_tokens or spec.default_max_tokens
        step = _Call(principal, spec, {}, requested, record, route, options)
        hold = await self._reserve(step, prompt_tokens_bound=prompt_bound(sent, tools))
        started = time.perf_counter()
        completion = await self._invoke(
            spec, hold, record,
            lambda runtime: runtime.chat_step(
                spec, sent, tools=tools, tool_choice=tool_choice, max_tokens=hold.max_tokens,
                chain=route, options=options, extra=extra,
            ),
        )
        redactor = self._redactor(spec.id)
        redaction = redactor.redact(completion.text)
        counts = dict(redaction.counts)
        if completion.tool_calls:
            # The arguments leave the process too (the caller runs its tools with them).
            calls = []
            for call in completion.tool_calls:
                redacted = redactor.redact(call.arguments)
                for kind, count in redacted.counts.items():
                    counts[kind] = counts.get(kind, 0) + count
                calls.append(dataclasses.replace(call, arguments=redacted.text))
            completion = dataclasses.replace(completion, tool_calls=tuple(calls))
        return await self._settle_success(
            principal, spec, hold, completion, redaction.text, counts,
            time.perf_counter() - started, record, clamped=hold.max_tokens < requested,
        )

    def _redacted_tool_events(  # type: ignore[misc]
        self: Pipeline, function_id: str, on_tool: Callable[[dict[str, Any]], None]
    ) -> Callable[[dict[str, Any]], None]:
        redactor = self._redactor(function_id)

        def told(event: dict[str, Any]) -> None:
            on_tool({**event, "arguments": redactor.redact(event["arguments"]).text})

        return told

    def _tool_screen(self: Pipeline, function_id: str) -> Callable[[str], Awaitable[Verdict]]:  # type: ignore[misc]
        """The guard over tool results (indirect injection). A flagged result is withheld
        from the model under ``block`` and ``flag`` alike: ``flag`` lets a caller send
        their own suspicious text, but a tool's output is a third party's text, which
        the caller never saw; ``off`` screens nothing."""
        policy, guard = self._guard_policy(function_id), self._guard

        async def screen(text: str) -> Verdict:
            if policy == "off" or not text.strip():
                return "clean"
            with telemetry.tracer().start_as_current_span("guard", attributes={"sk.guard.source": "tool"}):
                detection = await guard.inspect([text])
            if not detection.flagged:
                return "clean"
            logger.warning(
                "tool result flagged for %s (%s): %s", function_id, policy, ",".join(detection.categories)
            )
            return "blocked"

        return screen


@dataclass(eq=False)
class _StepGate:
    """One model round trip of a tool run through the pipeline's own stages: admission
    (leases, RPM, TPM, concurrency, budget), the ``invoke`` span with its failure
    settlement, and settlement at the reported usage (with its metrics)."""

    pipeline: Pipeline
    principal: Principal
    spec: FunctionSpec
    route: Chain
    failed_nano: int = 0  # charged for steps that failed (the run raised)
    _started: float = 0.0  # the current step's model call (the duration metric)

    async def admit(self, prompt_tokens_bound: int, max_tokens: int) -> Hold:
        step = _Call(self.principal, self.spec, {}, max_tokens, None, self.route)
        return await self.pipeline._reserve(step, prompt_tokens_bound=prompt_tokens_bound)

    async def call(
        self, hold: Hold, model_call: Callable[[ModelRuntime], Awaitable[Completion]]
    ) -> Completion:
        self._started = time.perf_counter()
        try:
            return await self.pipeline._invoke(self.spec, hold, None, model_call)
        except BaseException as failure:
            self.failed_nano += _charge_on_failure(failure, hold)
            raise

    async def settle(self, hold: Hold, completion: Completion) -> int:
        settled = await self.pipeline._settle_success(
            self.principal, self.spec, hold, completion, "", {}, time.perf_counter() - self._started, None
        )
        return settled.cost_nano
