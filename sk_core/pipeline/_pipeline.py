"""The call stages (``Pipeline``) and a streamed call (``StreamedCall``); the package's
face (``sk_core.pipeline``) says what the use case is."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from sk_core import telemetry
from sk_core.cache import Directive
from sk_core.errors import BadRequest, ServiceUnavailable, StorageUnavailable
from sk_core.model import Deployment, RoutingTable
from sk_core.pipeline._call import _Call, _charge_on_failure
from sk_core.pipeline._deadline import fail_closed
from sk_core.pipeline._outcome import Outcome, rate_of
from sk_core.pipeline._streamed import StreamedCall
from sk_core.pipeline._tool_runs import ToolRuns
from sk_core.pricing import Price, usd

if TYPE_CHECKING:
    from sk_core.accounts import Authenticator, Principal, Tenant
    from sk_core.cache import CachedAnswer, ResponseCache, Slot, Tier
    from sk_core.catalog import FunctionSpec
    from sk_core.limits import Hold, Ledger
    from sk_core.model import Completion, ModelRuntime, RuntimeProvider
    from sk_core.safety import Redactor
    from sk_core.safety.guard import Guard, Policy
    from sk_core.usage import AuditEntry, BudgetGauges

logger = logging.getLogger(__name__)
T = TypeVar("T")




class Pipeline(ToolRuns):
    """The call stages, wired to their collaborators once per process."""

    def __init__(
        self,
        *,
        auth: Authenticator,
        guard: Guard,
        guard_policy: Callable[[str], Policy],
        ledger: Ledger,
        runtimes: RuntimeProvider,
        redactor: Callable[[str], Redactor],
        price: Price,
        model_id: str,
        cache: ResponseCache | None = None,
        routing: RoutingTable | None = None,
        storage_deadline_seconds: float = 2.0,
        storage_silence: Callable[[], float] = lambda: math.inf,
        budget_gauges: BudgetGauges | None = None,
    ) -> None:
        self._auth = auth
        self._guard = guard
        self._guard_policy = guard_policy
        self._ledger = ledger
        self._runtimes = runtimes
        self._redactor = redactor
        self._model_id = model_id
        self._cache = cache
        self._routing = routing or RoutingTable.single(
            Deployment(name="default", provider="", model=model_id, price=price)
        )
        self._storage_deadline = storage_deadline_seconds
        self._storage_silence = storage_silence  # seconds storage has kept us waiting
        self._budget_gauges = budget_gauges
        # Settlements still running after their answer went out (strong references).
        self._settling: set[asyncio.Task[int]] = set()

    def _fail_closed(self) -> contextlib.AbstractAsyncContextManager[None]:
        return fail_closed(self._storage_deadline, self._storage_silence)

    async def authenticate(
        self, headers: Mapping[str, str], function_id: str | None, record: AuditEntry | None = None
    ) -> Principal:
        """The caller, allowed to call ``function_id`` (any function when None).

        From here on the audit record names the caller, also when a later stage (the
        body's validation included) refuses the call.
        """
        if function_id is not None:
            # A model call follows: Semantic Kernel imports while we authenticate.
            self._runtimes.warm()
        async with self._fail_closed():
            with telemetry.tracer().start_as_current_span("authenticate"):
                principal = await self._auth.authenticate(headers, function_id)
        if record is not None:
            record.tenant_id, record.key_id, record.function = (
                principal.tenant.id,
                principal.key.key_id,
                function_id,
            )
        return principal

    async def call(
        self,
        principal: Principal,
        spec: FunctionSpec,
        arguments: dict[str, Any],
        *,
        max_tokens: int | None,
        options: Mapping[str, Any] | None = None,
        record: AuditEntry | None = None,
        cache_mode: Directive = Directive.DEFAULT,
        chain: str | None = None,
        run_limits: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Screen → cache → admit (reserve, clamp) → invoke → settle → record, a span each.

        ``max_tokens`` is the caller's answer cap (None: the function's default).
        ``options`` are the caller's sampling settings (temperature, stop...), already
        validated; they override the prompt file's, never the admitted answer cap.
        ``cache_mode`` is what the caller asks of the response cache (its
        ``Cache-Control``, parsed). ``chain`` names the model fallback chain (None: the
        one the prompt file names, else the configured default). The reservation is
        priced at the dearest deployment the call may reach; the settlement at the one
        that answered. ``run_limits`` lowers a tool-using function's run limits.
        """
        if spec.tools is not None:  # a tool run: several model calls, never cached
            return await self.run_tools(
                principal, spec, arguments, max_tokens=max_tokens, run_limits=run_limits,
                record=record, chain=chain,
            )
        call = self._plan(principal, spec, arguments, max_tokens, options, record, chain)
        flagged = await self._screen(spec, arguments, record)
        return await self._cached(call, flagged, cache_mode)

    def _plan(
        self,
        principal: Principal,
        spec: FunctionSpec,
        arguments: dict[str, Any],
        max_tokens: int | None,
        options: Mapping[str, Any] | None,
        record: AuditEntry | None,
        chain: str | None,
    ) -> _Call:
        """The call the later stages see: its answer cap and its fallback chain (an
        unknown chain is refused here, before anything is screened or reserved)."""
        route = self._routing.chain(chain or spec.model_chain)
        requested = spec.requested_max_tokens(arguments, max_tokens)
        return _Call(principal, spec, arguments, requested, record, route, options)

    async def _admitted(self, call: _Call) -> Outcome:
        """Admit → invoke → settle: the call past screening and the cache."""
        spec, arguments, options, route = call.spec, call.arguments, call.options, call.chain
        hold = await self._reserve(call)
        started = time.perf_counter()
        completion = await self._invoke(
            spec, hold, call.record,
            lambda runtime: runtime.invoke(
                spec, arguments, max_tokens=hold.max_tokens, options=options, chain=route
            ),
        )
        redaction = self._redactor(spec.id).redact(completion.text)
        return await self._settle_success(
            call.principal, spec, hold, completion, redaction.text, dict(redaction.counts),
            time.perf_counter() - started, call.record, clamped=hold.max_tokens < call.requested,
        )

    async def stream(
        self,
        principal: Principal,
        spec: FunctionSpec,
        arguments: dict[str, Any],
        *,
        max_tokens: int | None,
        options: Mapping[str, Any] | None = None,
        record: AuditEntry | None = None,
        chain: str | None = None,
    ) -> StreamedCall:
        """The same call, answered as it is generated: the same stages, in two parts.

        Before the first byte (awaiting this): screen → admit (reserve, clamp) → open
        the provider's stream; a refusal or a provider that fails to answer raises here,
        so the caller can still answer with a plain error. Then iterating the returned
        ``StreamedCall`` yields redacted text and, after the last piece, settles from
        the usage the provider reported and records, like ``call``. The fallback chain
        applies to opening the stream (``ModelRuntime.open_stream``).
        """
        if spec.tools is not None:
            # Its streamed form is run_tools with on_tool (tool events, then the answer).
            raise BadRequest("A function that calls tools streams tool events, not text deltas.")
        call = self._plan(principal, spec, arguments, max_tokens, options, record, chain)
        await self._screen(spec, arguments, record)
        hold = await self._reserve(call)
        started = time.perf_counter()
        model_stream = await self._invoke(
            spec, hold, record,
            lambda runtime: runtime.open_stream(
                spec, arguments, max_tokens=hold.max_tokens, options=options, chain=call.chain
            ),
        )
        return StreamedCall(
            self, principal, spec, hold, model_stream, self._redactor(spec.id).stream(), started, record
        )

    async def _reserve(self, call: _Call, prompt_tokens_bound: int | None = None) -> Hold:
        """Reserve the worst case (the chain's dearest prices) and clamp the answer cap
        to what it can pay (screened before). ``prompt_tokens_bound``: a tool run's step
        (its messages so far), else the function's prompt with ``arguments``."""
        if prompt_tokens_bound is None:
            prompt_tokens_bound = call.spec.prompt_token_bound(call.arguments)
        async with self._fail_closed():
            with telemetry.tracer().start_as_current_span("admit") as span:
                try:
                    hold = await self._ledger.admit(
                        call.principal.tenant,
                        price=call.chain.reservation_price,
                        prompt_tokens_bound=prompt_tokens_bound,
                        requested_max_tokens=call.requested,
                        function=call.spec.id,
                        key_id=call.principal.key.key_id,
                    )
                finally:
                    # Refused tenants too (they are at 100 %); after the decision, so that
                    # a gauge's read never competes with it (issue 23, defect 3).
                    if self._budget_gauges is not None:
                        self._budget_gauges.note(call.principal.tenant, self._ledger)
                span.set_attribute("sk.max_tokens", hold.max_tokens)
                span.set_attribute("sk.hold_usd", usd(hold.amount_nano))
        return hold

    async def _invoke(
        self,
        spec: FunctionSpec,
        hold: Hold,
        record: AuditEntry | None,
        model_call: Callable[[ModelRuntime], Awaitable[T]],
    ) -> T:
        """``model_call`` on the runtime, in the ``invoke`` span; a failure settles the hold."""
        try:
            with telemetry.tracer().start_as_current_span("invoke", attributes={"sk.function": spec.id}):
                return await model_call(await self._runtime())
        except BaseException as failure:
            await self._settle_failure(hold, failure, record)
            raise

    async def _settle_failure(
        self, hold: Hold, failure: BaseException, record: AuditEntry | None, *, did_work: bool = False
    ) -> None:
        """A call that failed: free when no provider can have done the work (refused
        before, a refused connection, an error answer), else (a timeout, a broken
        connection, a 2xx without a usable answer, a client gone mid-call, or
        ``did_work``) charged its reservation."""
        charge = hold.amount_nano if did_work else _charge_on_failure(failure, hold)
        if record is not None:
            # Before awaiting: a cancelled caller (client gone) may not see the result.
            record.cost_nano = charge
        with telemetry.tracer().start_as_current_span("settle"):
            charged = await self._settle_bounded(hold, charge, 0, 0)
        if record is not None:
            record.cost_nano = charged

    async def _settle_success(
        self,
        principal: Principal,
        spec: FunctionSpec,
        hold: Hold,
        completion: Completion,
        text: str,
        redactions: dict[str, int],
        duration: float,
        record: AuditEntry | None,
        *,
        clamped: bool = False,
    ) -> Outcome:
        """Settle at the reported usage's price (the deployment that answered), record
        metrics and audit; the outcome."""
        usage = completion.usage
        price = completion.price or self._routing.chain(None).reservation_price
        cost = price.cost_nano(usage.prompt_tokens, usage.completion_tokens)
        with telemetry.tracer().start_as_current_span("settle") as span:
            charged = await self._settle_bounded(hold, cost, usage.prompt_tokens, usage.completion_tokens)
            span.set_attribute("sk.cost_usd", usd(charged))
        self._record(principal.tenant.id, spec.id, completion, duration, charged)
        if record is not None:
            record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            record.cost_nano = charged
            record.redactions = sum(redactions.values())
        return Outcome(
            completion=completion,
            text=text,
            redactions=redactions,
            cost_nano=charged,
            rate=rate_of(hold),
            clamped=clamped,
        )

    async def _cached(self, call: _Call, flagged: bool, mode: Directive) -> Outcome:
        """The cache stage (``sk_core.cache``), between screening and admission.

        A hit is answered here: counted against requests per minute only, never charged.
        A miss is admitted, invoked and settled as usual, and its answer stored unless
        the guard flagged the prompt, the budget clamped ``max_tokens`` (a shorter
        answer than the key promises) or the caller said ``no-store``. Failures raise
        and so are never stored.
        """
        cache, spec, record = self._cache, call.spec, call.record
        # A caller's own sampling settings (the OpenAI-compatible route) are not part of
        # the key: such calls are never served from, or stored in, the cache.
        if cache is None or not cache.policy(spec).enabled or call.options:
            return await self._admitted(call)
        tenant = call.principal.tenant
        with telemetry.tracer().start_as_current_span("cache") as span:
            # Keyed by the chain's models: an answer from another chain's deployments
            # (another model) is not this call's answer. One model: its id, as before.
            models = "+".join(d.model for d in call.chain.deployments)
            slot = cache.slot(tenant.id, spec, models, call.arguments, call.requested)
            if flagged or mode is Directive.NO_STORE:
                found: tuple[CachedAnswer, Tier] | Outcome = await self._admitted(call)
            else:
                found = await cache.fetch(slot, mode, lambda: self._stored(cache, slot, call))
            result, tier = ("miss", "") if isinstance(found, Outcome) else ("hit", found[1])
            span.set_attribute("sk.cache.result", result)
            dimensions = {"result": result, "sk.function": spec.id, **({"tier": tier} if tier else {})}
            telemetry.instruments().cache_requests.add(1, dimensions)
            if record is not None:
                record.cache = result
            if isinstance(found, Outcome):
                return dataclasses.replace(found, cache="miss")
            return await self._hit(cache, tenant, spec, found[0], record)

    async def _stored(self, cache: ResponseCache, slot: Slot, call: _Call) -> Outcome:
        """A miss: the admitted call, its answer (already redacted) kept in ``slot``."""
        outcome = await self._admitted(call)
        if not outcome.clamped:
            completion = outcome.completion
            await cache.put(
                slot,
                cache.answer(
                    slot,
                    text=outcome.text,
                    model=completion.model,
                    finish_reason=completion.finish_reason,
                    usage=completion.usage,
                    cost_nano=outcome.cost_nano,
                    redactions=outcome.redactions,
                ),
            )
        return outcome

    async def _hit(
        self,
        cache: ResponseCache,
        tenant: Tenant,
        spec: FunctionSpec,
        answer: CachedAnswer,
        record: AuditEntry | None,
    ) -> Outcome:
        """A cached answer: one request of the minute counted, nothing charged."""
        async with self._fail_closed():
            rate = await self._ledger.count_request(tenant)
        telemetry.instruments().cost_saved.add(
            usd(answer.cost_nano), {"sk.tenant": tenant.id, "sk.function": spec.id}
        )
        if record is not None:
            record.redactions = sum(answer.redactions.values())
        return Outcome(
            completion=answer,
            text=answer.text,
            redactions=dict(answer.redactions),
            cost_nano=0,
            rate=rate,
            cache="hit",
            age=answer.age(cache.now()),
        )

    # -- tool runs (sk_core.tools) -------------------------------------------------

    async def _screen(self, spec: FunctionSpec, arguments: dict[str, Any], record: AuditEntry | None) -> bool:
        """Prompt-injection screening, before admission: a rejected prompt is neither
        charged nor counted. True: flagged (and answered under the ``flag`` policy)."""
        return await self._screen_texts(spec, spec.user_texts(arguments), record)

    async def _screen_texts(self, spec: FunctionSpec, texts: list[str], record: AuditEntry | None) -> bool:
        from sk_core.safety.guard import screen

        with telemetry.tracer().start_as_current_span("guard") as span:
            screening = await screen(self._guard, self._guard_policy(spec.id), spec.id, texts)
            if screening is None:
                return False
            span.set_attribute("sk.guard.flagged", screening.flagged)
            if record is not None:
                record.guard = screening.summary
            screening.enforce()
            return bool(screening.flagged)

    async def _runtime(self) -> ModelRuntime:
        try:
            return await self._runtimes.get()
        except Exception:
            # The cause (bad settings, missing package) is logged by the runtime provider.
            raise ServiceUnavailable("The model runtime could not be initialised.") from None

    async def _settle_bounded(
        self, hold: Hold, cost_nano: int, prompt_tokens: int, completion_tokens: int
    ) -> int:
        """Settle, but let the answer wait for it at most the storage deadline (the same
        bound as admission's storage calls).

        Leased holds settle in memory (at once). An exact-path hold is settled by a task
        of its own: a cancellation (the client gone) does not stop it, so the hold does
        not sit until it expires and block a concurrency slot; and if storage is slow or
        cut, the answer goes out naming the cost the settlement records, while the
        settlement finishes in the background, bounded by the storage client's own
        timeouts. If it fails, the hold expires and is charged its reservation instead
        (logged; flagged in the ledger's audit rows).
        """
        settling = self._settle_quietly(hold, cost_nano, prompt_tokens, completion_tokens)
        if hold.lease is not None:  # in memory: nothing to wait for
            return await asyncio.shield(settling)
        task = asyncio.get_running_loop().create_task(settling)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        done, _ = await asyncio.shield(asyncio.wait({task}, timeout=self._storage_deadline))
        if task in done:
            return task.result()
        logger.warning("settlement of %s is slow; answering without waiting for it", hold.request_id)
        return cost_nano

    async def _settle_quietly(
        self, hold: Hold, cost_nano: int, prompt_tokens: int, completion_tokens: int
    ) -> int:
        """Settle; if storage fails now, the hold expires and is charged its reservation.

        A failure may also hide a settlement that landed (its answer was lost): then the
        usage was charged. Either way the reservation is what the caller is told and
        the audit row records, the most it can have been charged.
        """
        try:
            settlement = await self._ledger.settle(
                hold, cost_nano=cost_nano, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except StorageUnavailable as exc:
            logger.error(
                "settlement of %s unconfirmed (%s): unless it landed, the hold expires "
                "and is charged %d nano-USD",
                hold.request_id,
                exc.reason,
                hold.amount_nano,
            )
            return hold.amount_nano
        return settlement.cost_nano

    def _dimensions(self, tenant_id: str, function_id: str, response_model: str) -> dict[str, str]:
        return {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": self._model_id,
            "gen_ai.response.model": response_model,
            "sk.tenant": tenant_id,
            "sk.function": function_id,
        }

    def _record(
        self, tenant_id: str, function_id: str, completion: Completion, duration: float, cost_nano: int
    ) -> None:
        """gen_ai token and duration metrics plus our cost counter, with the same dimensions."""
        meters = telemetry.instruments()
        dimensions = self._dimensions(tenant_id, function_id, completion.model)
        usage = completion.usage
        meters.token_usage.record(usage.prompt_tokens, {**dimensions, "gen_ai.token.type": "input"})
        meters.token_usage.record(usage.completion_tokens, {**dimensions, "gen_ai.token.type": "output"})
        meters.operation_duration.record(duration, dimensions)
        meters.cost.add(usd(cost_nano), dimensions)
