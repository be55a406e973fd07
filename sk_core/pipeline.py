"""The one use case every entry shares: a prompt function call under hard limits.

    authenticate → screen → admit → invoke → settle → record

It takes plain values (headers as a mapping, a principal, a function spec, validated
arguments, the requested answer cap) and returns an ``Outcome``; it knows nothing of
HTTP. The handlers parse a request, call it and render what it returns, so a second
entry (another wire format, a streamed answer) is another thin adapter over the same
stages, and the whole flow can be tested and benchmarked without a web request.

What a call did is written into an ``AuditEntry`` as it goes (a plain record the
caller owns), so that a call that fails half-way still leaves its tenant, guard
verdict and charge behind for the audit row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sk_core import telemetry
from sk_core.errors import (
    ApiError,
    LimitsUnavailable,
    RateState,
    ServiceUnavailable,
    StorageUnavailable,
)
from sk_core.pricing import Price, usd
from sk_core.routing import Deployment, RoutingTable

if TYPE_CHECKING:
    from sk_core.audit import AuditEntry
    from sk_core.auth import Authenticator, Principal
    from sk_core.catalog import FunctionSpec
    from sk_core.guard import Guard, Policy
    from sk_core.kernel import RuntimeProvider
    from sk_core.limits import Hold, Ledger
    from sk_core.model_runtime import Completion, ModelRuntime
    from sk_core.redaction import Redactor

logger = logging.getLogger(__name__)


# Failures after which the provider may still have done (and billed) the work keep
# their reserved charge: ``ApiError.billable`` (a timeout, a connection broken after
# sending, a 2xx without a usable answer); anything not an ApiError (a cancelled call)
# too. A refused connection, a 4xx/5xx/429 answer or a refusal before the call is free.
def _charge_on_failure(failure: BaseException, hold: Hold) -> int:
    return hold.amount_nano if not isinstance(failure, ApiError) or failure.billable else 0


@dataclass(frozen=True)
class Outcome:
    """What a successful call produced and cost."""

    completion: Completion
    text: str  # the answer after output redaction
    redactions: dict[str, int]
    cost_nano: int
    rate: RateState  # the requests-per-minute window after this admission

    def fields(self) -> dict[str, Any]:
        """The members every function response carries besides its answer."""
        completion = self.completion
        return {
            "model": completion.model,
            "usage": completion.usage,
            "finish_reason": completion.finish_reason,
            "cost_usd": usd(self.cost_nano),
            "redacted": sum(self.redactions.values()),
            "redactions": self.redactions,
        }


# However busy storage is (ETag contention near a limit), a decision waits no longer.
_MAX_DECISION_SECONDS = 10.0


@contextlib.asynccontextmanager
async def fail_closed(bound: float, silence: Callable[[], float] = lambda: math.inf) -> AsyncIterator[None]:
    """Storage trouble while deciding whether to serve: admit nothing (503).

    Decided once storage has been silent for ``bound`` seconds (``silence()``: seconds
    since it last answered anything, a 412 included), which a black-holed endpoint or a
    batch or lease sync stuck ahead of this request reach ``bound`` after they start;
    a store that answers but is contended (many processes near one limit) is waited
    for, up to ``_MAX_DECISION_SECONDS``.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(None) as deadline:
            watchdog: asyncio.TimerHandle

            def check() -> None:
                nonlocal watchdog
                quiet = silence()
                if quiet >= bound or loop.time() - started >= _MAX_DECISION_SECONDS - bound:
                    deadline.reschedule(loop.time())
                else:
                    watchdog = loop.call_later(bound - quiet, check)

            watchdog = loop.call_later(bound, check)
            try:
                yield
            finally:
                watchdog.cancel()
    except StorageUnavailable as exc:
        raise LimitsUnavailable(exc.reason) from exc
    except TimeoutError as exc:
        raise LimitsUnavailable(f"storage did not answer for {bound:g}s") from exc


class Pipeline:
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
        routing: RoutingTable | None = None,
        storage_deadline_seconds: float = 2.0,
        storage_silence: Callable[[], float] = lambda: math.inf,
    ) -> None:
        self._auth = auth
        self._guard = guard
        self._guard_policy = guard_policy
        self._ledger = ledger
        self._runtimes = runtimes
        self._redactor = redactor
        self._model_id = model_id
        self._routing = routing or RoutingTable.single(
            Deployment(name="default", provider="", model=model_id, price=price)
        )
        self._storage_deadline = storage_deadline_seconds
        self._storage_silence = storage_silence  # seconds since storage last answered
        # Settlements still running after their answer went out (strong references).
        self._settling: set[asyncio.Task[int]] = set()

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
        async with fail_closed(self._storage_deadline, self._storage_silence):
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
        record: AuditEntry | None = None,
        chain: str | None = None,
    ) -> Outcome:
        """Screen → admit (reserve, clamp) → invoke → settle → record, a span each.

        ``chain`` names the model fallback chain (None: the one the prompt file names,
        else the configured default). The reservation is priced at the dearest
        deployment the call may reach; the settlement at the one that answered.
        """
        tracer = telemetry.tracer()
        tenant = principal.tenant
        requested = max_tokens or spec.default_max_tokens_for(arguments)
        route = self._routing.chain(chain or spec.model_chain)
        await self._screen(spec, arguments, record)
        price = route.reservation_price
        async with fail_closed(self._storage_deadline, self._storage_silence):
            with tracer.start_as_current_span("admit") as span:
                hold = await self._ledger.admit(
                    tenant,
                    price=price,
                    prompt_tokens_bound=spec.prompt_token_bound(arguments),
                    requested_max_tokens=requested,
                    function=spec.id,
                    key_id=principal.key.key_id,
                )
                span.set_attribute("sk.max_tokens", hold.max_tokens)
                span.set_attribute("sk.hold_usd", usd(hold.amount_nano))
        started = time.perf_counter()
        try:
            with tracer.start_as_current_span("invoke", attributes={"sk.function": spec.id}):
                runtime = await self._runtime()
                completion = await runtime.invoke(spec, arguments, max_tokens=hold.max_tokens, chain=route)
        except BaseException as failure:
            with tracer.start_as_current_span("settle"):
                charged = await self._settle_bounded(hold, _charge_on_failure(failure, hold), 0, 0)
            if record is not None:
                record.cost_nano = charged
            raise
        duration = time.perf_counter() - started
        redaction = self._redactor(spec.id).redact(completion.text)
        usage = completion.usage
        cost = (completion.price or price).cost_nano(usage.prompt_tokens, usage.completion_tokens)
        with tracer.start_as_current_span("settle") as span:
            charged = await self._settle_bounded(hold, cost, usage.prompt_tokens, usage.completion_tokens)
            span.set_attribute("sk.cost_usd", usd(charged))
        self._record(tenant.id, spec.id, completion, duration, charged)
        if record is not None:
            record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
            record.cost_nano = charged
            record.redactions = redaction.total
        return Outcome(
            completion=completion,
            text=redaction.text,
            redactions=dict(redaction.counts),
            cost_nano=charged,
            rate=RateState(limit=hold.rpm_limit, remaining=hold.rpm_remaining, reset=hold.rpm_reset),
        )

    async def _screen(self, spec: FunctionSpec, arguments: dict[str, Any], record: AuditEntry | None) -> None:
        """Prompt-injection screening, before admission: a rejected prompt is neither
        charged nor counted."""
        from sk_core.guard import screen

        with telemetry.tracer().start_as_current_span("guard") as span:
            screening = await screen(
                self._guard, self._guard_policy(spec.id), spec.id, spec.user_texts(arguments)
            )
            if screening is None:
                return
            span.set_attribute("sk.guard.flagged", screening.flagged)
            if record is not None:
                record.guard = screening.summary
            screening.enforce()

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
        if hold.lease is not None:  # in memory: nothing to wait for
            return await self._settle_quietly(hold, cost_nano, prompt_tokens, completion_tokens)
        task = asyncio.get_running_loop().create_task(
            self._settle_quietly(hold, cost_nano, prompt_tokens, completion_tokens)
        )
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
        """Settle; if storage fails now, the hold expires and is charged its reservation."""
        try:
            settlement = await self._ledger.settle(
                hold, cost_nano=cost_nano, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
            )
        except StorageUnavailable as exc:
            logger.error(
                "could not settle %s (%s); it will expire and be charged %d nano-USD",
                hold.request_id,
                exc.reason,
                hold.amount_nano,
            )
            return hold.amount_nano
        return settlement.cost_nano

    def _record(
        self, tenant_id: str, function_id: str, completion: Completion, duration: float, cost_nano: int
    ) -> None:
        """gen_ai token and duration metrics plus our cost counter, with the same dimensions."""
        meters = telemetry.instruments()
        dimensions = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": self._model_id,
            "gen_ai.response.model": completion.model,
            "sk.tenant": tenant_id,
            "sk.function": function_id,
        }
        usage = completion.usage
        meters.token_usage.record(usage.prompt_tokens, {**dimensions, "gen_ai.token.type": "input"})
        meters.token_usage.record(usage.completion_tokens, {**dimensions, "gen_ai.token.type": "output"})
        meters.operation_duration.record(duration, dimensions)
        meters.cost.add(usd(cost_nano), dimensions)
