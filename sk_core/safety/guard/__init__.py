"""Prompt-injection guard (OWASP LLM01): a local pattern detector plus Azure Prompt Shields.

Two layers, because each covers the other's blind spot:

* :class:`InjectionDetector` is local, free and fast (pre-compiled regexes, linear time,
  no network). It catches the well-known phrasings of instruction override, system
  prompt extraction, role-play jailbreaks, chat-template role markers and encoded
  payloads, after normalising the text so trivial obfuscation (case, spacing, zero-width
  characters, homoglyphs, accents, spaced-out letters, base64/hex, Unicode tag
  "smuggling") does not evade it. It cannot understand paraphrase.
* :class:`PromptShieldsClient` calls Azure AI Content Safety Prompt Shields, a trained
  classifier that does understand paraphrase but costs a network round trip and money.

:class:`Guard` runs both and merges the verdicts into one :class:`Detection`. The caller
decides what a verdict means with a :data:`Policy` (``block``, ``flag`` or ``off``);
:func:`enforce` applies it.

What counts as an attack (and is therefore flagged): text addressed to the model that
tries to change its instructions, extract them, or lift its restrictions - including
such a string *quoted* inside an otherwise benign document, because a quoted payload
reaches the model all the same. What is not flagged: text that merely talks about
instructions ("the manual says to ignore the previous version") or that discusses
prompt injection in general terms without carrying a working payload.

Privacy: a :class:`Detection` names rule ids and categories; the only user text it holds
is :attr:`Hit.excerpt`, at most :data:`EXCERPT_CHARS` characters of the *normalised*
match, meant for debug logs. :meth:`Detection.to_audit` carries no user text at all.

Run ``python -m sk_core.safety.guard --evaluate`` to measure the detector on the bundled corpus.

Layout: ``_rules`` (rule data), ``_normalise`` (the matching form of a text),
``_detector`` (the local detector and its verdict types), ``_shields`` (the Prompt
Shields client), ``_policy`` (:class:`Guard`, :func:`enforce`, :func:`screen`) and
``_evaluation`` (the corpus and the ``--evaluate`` command). This package imports
neither a host (starlette, azure.functions) nor semantic_kernel.
"""

from sk_core.safety.guard._detector import EXCERPT_CHARS, Detection, Hit, InjectionDetector, ShieldsVerdict
from sk_core.safety.guard._evaluation import CorpusItem, Evaluation, _main, evaluate, load_corpus
from sk_core.safety.guard._normalise import normalise
from sk_core.safety.guard._policy import Guard, Policy, PromptInjectionDetected, Screening, enforce, screen
from sk_core.safety.guard._rules import CATEGORIES, Category
from sk_core.safety.guard._shields import (
    CONTENT_SAFETY_SCOPE,
    GuardUnavailable,
    PromptShieldsClient,
    PromptShieldsError,
    ShieldResult,
)

__all__ = [
    "CATEGORIES",
    "CONTENT_SAFETY_SCOPE",
    "EXCERPT_CHARS",
    "Category",
    "CorpusItem",
    "Detection",
    "Evaluation",
    "Guard",
    "GuardUnavailable",
    "Hit",
    "InjectionDetector",
    "Policy",
    "PromptInjectionDetected",
    "PromptShieldsClient",
    "PromptShieldsError",
    "Screening",
    "ShieldResult",
    "ShieldsVerdict",
    "_main",
    "enforce",
    "evaluate",
    "load_corpus",
    "normalise",
    "screen",
]
