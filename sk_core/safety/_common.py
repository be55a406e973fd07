"""What every redaction module shares: the kinds, the marker, the result, and the
finder machinery (a pattern, a judge of its matches, disjoint spans in order)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SECRET = "secret"  # noqa: S105 (a kind name, not a credential)
EMAIL = "email"
IBAN = "iban"
PAYMENT_CARD = "payment_card"
PHONE = "phone"
PROMPT_ECHO = "prompt_echo"
LINK = "link"

#: The kinds that replace a value (a key, an address, a number): digits or ``@`` inside.
VALUE_KINDS: tuple[str, ...] = (SECRET, EMAIL, IBAN, PAYMENT_CARD, PHONE)
#: Every kind, in priority order: the first kind that claims a value replaces it. The
#: output-side kinds come first: a leaking URL or an echoed template is one finding, not
#: the e-mail address inside it.
ALL_KINDS: tuple[str, ...] = (PROMPT_ECHO, LINK, *VALUE_KINDS)
#: Default for ``echo_words``: eight words in a row is a quote, not a coincidence.
DEFAULT_ECHO_WORDS = 8

#: The version of the redaction rules: a rule change (a kind finding more) bumps it, so
#: that answers redacted under the old rules are not served from the response cache.
RULES_VERSION = "2"  # 2: link destinations read as CommonMark reads them (issue 27)

Span = tuple[int, int]
_Judge = Callable[[str, re.Match[str]], tuple[list[Span], int]]
_Finder = Callable[[str], list[Span]]


def marker(kind: str) -> str:
    """The text that replaces a value of ``kind``: no digits and no ``@``, so it never matches."""
    return f"[REDACTED:{kind}]"


@dataclass(frozen=True, slots=True)
class RedactionResult:
    """Redacted text and how many values of each kind were replaced (kinds with none are absent)."""

    text: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        """Values replaced, all kinds together."""
        return sum(self.counts.values())


# Every pattern is ASCII-only: with Unicode semantics, IGNORECASE folds the Kelvin sign
# into "k" and \d matches Arabic-Indic digits, neither of which is a card or a key.
_FLAGS = re.ASCII | re.VERBOSE

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_DIGITS = frozenset("0123456789")


def _has_digit(value: str) -> bool:
    return any(ch in _DIGITS for ch in value)


def _glued(text: str, index: int) -> bool:
    """Whether ``text[index]`` is a letter, digit or underscore (the value would continue a word)."""
    return index < len(text) and (text[index] in _ALNUM or text[index] == "_")


def _scan(pattern: re.Pattern[str], judge: _Judge) -> _Finder:
    """A finder: every candidate of ``pattern``, judged, resuming where the judge says.

    The judge returns the spans to replace and where to resume; resuming never goes
    backwards, so candidates (and their spans) are disjoint and in order.
    """

    def find(text: str) -> list[Span]:
        spans: list[Span] = []
        pos = 0
        while (match := pattern.search(text, pos)) is not None:
            found, resume = judge(text, match)
            spans.extend(found)
            pos = max(resume, match.start() + 1)
        return spans

    return find


def _whole_if(predicate: Callable[[str], bool], group: str | int = 0) -> _Judge:
    """Judge: replace ``group`` of the match when ``predicate`` holds; resume after the match."""

    def judge(_text: str, match: re.Match[str]) -> tuple[list[Span], int]:
        if predicate(match.group(group)):
            return [match.span(group)], match.end()
        return [], match.end()

    return judge


def replace_spans(text: str, spans: list[Span], replacement: str) -> str:
    """``text`` with every span (disjoint, in order) replaced by ``replacement``."""
    parts: list[str] = []
    pos = 0
    for start, end in spans:
        parts.append(text[pos:start])
        parts.append(replacement)
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def policy_id(
    kinds: Iterable[str], *, link_hosts: Iterable[str] = (), echo_words: int = DEFAULT_ECHO_WORDS
) -> str:
    """A stable name of a redaction policy: what it redacts, under which rules.

    Two processes that would redact an answer differently never share a name, so the
    response cache, which stores answers already redacted, keys answers by it.
    """
    wanted = set(kinds)
    hosts = sorted({host.strip().lower().rstrip(".") for host in link_hosts if host.strip()})
    echo = f"echo={echo_words}" if PROMPT_ECHO in wanted else ""
    kinds_part = ",".join(kind for kind in ALL_KINDS if kind in wanted)
    hosts_part = ",".join(hosts) if LINK in wanted else ""
    return f"r{RULES_VERSION}|{kinds_part}|{hosts_part}|{echo}"
