"""The policy: both layers, one verdict, and what a verdict means for a request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, Literal

from sk_core.errors import ApiError
from sk_core.safety.guard._detector import Detection, Hit, InjectionDetector
from sk_core.safety.guard._shields import (
    GuardUnavailable,
    PromptShieldsClient,
    PromptShieldsError,
    ShieldResult,
)

logger = logging.getLogger(__name__)

#: What the request pipeline does with a flagged Detection.
Policy = Literal["block", "flag", "off"]


class PromptInjectionDetected(ApiError):
    """Raised by :func:`enforce` under the ``block`` policy."""

    status, code, title = 400, "prompt_rejected", "Prompt rejected"

    def __init__(self, detection: Detection) -> None:
        # Categories only: echoing the matched text would teach an attacker what to change.
        super().__init__(
            "The request was refused because its input looks like a prompt-injection attempt.",
            extensions={"categories": list(detection.categories)},
        )
        self.detection = detection


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class Guard:
    """Runs the local detector and (optionally) Prompt Shields; merges them into a Detection.

    * ``fail_closed``: when Prompt Shields fails, raise :class:`GuardUnavailable` (503)
      instead of answering from the local detector alone. Use it with the ``block``
      policy where screening is mandatory; under ``flag``, fail-open is the sensible pair.
    * ``shields_when_flagged``: call Prompt Shields even if the local detector already
      flagged (for telemetry on both layers). Off by default: the verdict cannot get
      more flagged, so the call would only add latency and cost.
    * ``shields_max_chars``/``shields_max_calls``: Prompt Shields accepts about 10,000
      characters per call, so longer input is split across parallel calls; more than
      ``shields_max_calls`` calls' worth is handled as a Shields failure (policy decides).
    """

    def __init__(
        self,
        detector: InjectionDetector,
        *,
        shields: PromptShieldsClient | None = None,
        fail_closed: bool = False,
        shields_when_flagged: bool = False,
        shields_max_chars: int = 10_000,
        shields_max_calls: int = 5,
    ) -> None:
        self.detector = detector
        self.shields = shields
        self.fail_closed = fail_closed
        self.shields_when_flagged = shields_when_flagged
        self._max_chars = shields_max_chars
        self._max_calls = shields_max_calls

    async def inspect(self, texts: Sequence[str], *, documents: Sequence[str] = ()) -> Detection:
        """Screen ``texts`` (the user's input) and ``documents`` (third-party content).

        Local hits index ``texts`` then ``documents`` as one list. Raises
        GuardUnavailable only when ``fail_closed`` and Prompt Shields failed.
        """
        local = self.detector.scan([*texts, *documents])
        if self.shields is None:
            return local
        if local.flagged and not self.shields_when_flagged:
            return Detection.from_hits(local.hits, shields="skipped")
        try:
            result = await self._shield(self.shields, texts, documents)
        except GuardUnavailable as exc:
            logger.warning(
                "prompt shields failed (%s); failing %s", exc.reason, "closed" if self.fail_closed else "open"
            )
            if self.fail_closed:
                raise
            return Detection.from_hits(local.hits, shields="error")
        extra: list[Hit] = []
        if result.user_prompt_attack:
            extra.append(Hit("PS-user-prompt", "prompt_shields_user_attack", 0, ""))
        for position, attacked in enumerate(result.document_attacks):
            if attacked:
                extra.append(Hit("PS-document", "prompt_shields_document_attack", len(texts) + position, ""))
        return Detection.from_hits((*local.hits, *extra), shields="attack" if extra else "clean")

    async def _shield(
        self, client: PromptShieldsClient, texts: Sequence[str], documents: Sequence[str]
    ) -> ShieldResult:
        # The user's texts (template variables) together form one user prompt.
        prompts = _chunks("\n\n".join(texts), self._max_chars) if texts else [""]
        doc_chunks = [
            (i, chunk) for i, doc in enumerate(documents) for chunk in _chunks(doc, self._max_chars)
        ]
        # Pack document chunks into batches of at most 5 and max_chars in total.
        batches: list[list[tuple[int, str]]] = []
        for item in doc_chunks:
            if (
                not batches
                or len(batches[-1]) >= 5
                or sum(len(c) for _, c in batches[-1]) + len(item[1]) > self._max_chars
            ):
                batches.append([])
            batches[-1].append(item)
        calls = list(zip_longest(prompts, batches, fillvalue=None))
        if len(calls) > self._max_calls:
            raise PromptShieldsError("input too long for prompt shields")
        answers = await asyncio.gather(
            *(client.shield(prompt or "", [c for _, c in batch or []]) for prompt, batch in calls)
        )
        user_attack = False
        doc_attacks = [False] * len(documents)
        for (prompt, batch), answer in zip(calls, answers, strict=True):
            user_attack |= prompt is not None and answer.user_prompt_attack
            for (doc_index, _), attacked in zip(batch or [], answer.document_attacks, strict=True):
                doc_attacks[doc_index] |= attacked
        return ShieldResult(user_attack, tuple(doc_attacks))

    async def aclose(self) -> None:
        """Close the Prompt Shields client, if any."""
        if self.shields is not None:
            await self.shields.aclose()


def enforce(detection: Detection, policy: Policy) -> None:
    """Apply ``policy``: raise PromptInjectionDetected for a flagged Detection under ``block``.

    ``flag`` and ``off`` never raise: ``flag`` means record (audit, metrics) and answer;
    ``off`` means the caller should not even have run the guard.
    """
    if policy == "block" and detection.flagged:
        raise PromptInjectionDetected(detection)


@dataclass(frozen=True)
class Screening:
    """The guard's verdict on one call: an audit summary and the policy's enforcement."""

    summary: dict[str, Any]
    flagged: bool
    enforce: Callable[[], None]


async def screen(guard: Guard, policy: Policy, function_id: str, texts: list[str]) -> Screening | None:
    """Prompt-injection screening of ``texts`` under ``policy`` (None when ``off``).

    The caller records ``summary`` and then calls ``enforce()``, which raises
    :class:`PromptInjectionDetected` (400 ``prompt_rejected``) under ``block``.
    """
    if policy == "off":
        return None
    detection = await guard.inspect(texts)
    if detection.flagged:
        logger.warning("prompt flagged for %s (%s): %s", function_id, policy, ",".join(detection.categories))
    return Screening(
        summary={**detection.to_audit(), "policy": policy},
        flagged=detection.flagged,
        enforce=lambda: enforce(detection, policy),
    )
