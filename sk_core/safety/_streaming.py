"""Streaming redaction: the pieces of a text redacted as they arrive, releasing exactly
what redacting the whole text would."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sk_core.safety._common import Span
from sk_core.safety._links import (
    INCOMPLETE,
    Construct,
    Parsed,
    autolinks,
    html_url_attributes,
    inline_links,
    reference_definitions,
)
from sk_core.safety._values import _ALL_CREDENTIAL_WORDS, _PEM_RE

if TYPE_CHECKING:
    from sk_core.safety._redactor import Redactor

# A word after which a stream may be cut: letters only (any script), optionally closed by
# sentence punctuation. Digits, '@', quotes, brackets, '=', ':' and the like can all be
# part of a value or a link that continues past the next space, so a cut never follows
# them.
_CLEAN_WORD_RE = re.compile(r"[^\W\d_]+[.,!?]?")
# Words that a value continues from across a blank: a bearer token, an assignment to a
# credential word ("api key = …" is judged from the word before '='), an HTML attribute
# whose '=' may come after a space.
_CARRYING_WORDS = frozenset(
    {"bearer", "src", "href", "srcset", "action", "formaction", "poster", "background", "data"}
)
_PEM_BEGIN = "-----BEGIN"
_PEM_END = "-----END"


class StreamingRedaction:
    """Redaction of a text that arrives in pieces, equal to redacting the whole at once.

    ``feed`` returns the part of the text that can no longer change, redacted; the rest
    (the shortest tail that could still become, or extend, a match) is held back until
    more text or ``finish`` arrives. The stream is cut only after a blank that follows a
    *clean* word (letters, not a credential word, not one of the function's template
    words), outside an unfinished PEM block, link destination, quoted HTML attribute or
    possible reference definition. No rule's match can cross such a cut, and every rule
    sees the same neighbours on both sides (each piece is redacted with the blanks before
    it as context), so the pieces redact exactly as the whole does; the property tests
    check it for arbitrary texts and chunkings.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._pending = ""
        # What the rules see before ``_pending``: the blanks that preceded it (line
        # starts, lookbehinds), after a NUL when the line began earlier, which no rule
        # matches and which, unlike a string start, is not a line start.
        self._context = ""
        self.counts: Counter[str] = Counter()
        # A template with words outside ASCII could be echoed from inside such a run.
        self._script_cuts = all(word.isascii() for word in redactor.template_words)

    def feed(self, text: str) -> str:
        """Add the next piece; return what is now final (possibly nothing)."""
        if not self._redactor.kinds:
            return text  # nothing to find: nothing to hold back
        self._pending += text
        cut = self._last_cut()
        if cut <= 0:
            return ""
        head, self._pending = self._pending[:cut], self._pending[cut:]
        released = self._redact(head)
        blanks = head[len(head.rstrip()) :]
        self._context = blanks if "\n" in blanks else "\x00" + blanks
        return released

    def finish(self) -> str:
        """The end of the text: release (redacted) whatever was held back."""
        head, self._pending = self._pending, ""
        return self._redact(head) if head else ""

    def _redact(self, piece: str) -> str:
        context = self._context
        result = self._redactor.redact(context + piece)
        self.counts.update(result.counts)
        # The context is blanks, never part of a match, so it comes back unchanged.
        return result.text[len(context) :]

    def _last_cut(self) -> int:
        text = self._pending
        limit, spans = _constructs(text)
        # After a blank that follows a clean word. A cut at the very end (the blank run
        # may still grow) is safe too: the next piece then starts with blanks, and is
        # judged with these as context.
        candidates = [
            (match.end(), match.start("word"))
            for match in _CUT_RE.finditer(text, 0, limit)
            if self._clean(match.group("word"))
        ]
        if self._script_cuts:
            # Between two letters outside ASCII (scripts written without blanks): no
            # value kind matches them, and no template word contains them.
            candidates += [
                (match.end(), match.start())
                for match in _SCRIPT_CUT_RE.finditer(text)
                if match.end() < min(limit, len(text))
            ]
        for cut, _word_start in sorted(candidates, reverse=True):
            if not any(start < cut < end for start, end in spans):
                return cut
        return 0

    def _clean(self, word: str) -> bool:
        if _CLEAN_WORD_RE.fullmatch(word) is None:
            return False
        bare = word.rstrip(".,!?").casefold()
        # The value patterns look only at ASCII around them: after a letter of another
        # script, "Bearer" starts a token as if it began the word.
        ascii_tail = bare[len(bare.rstrip("abcdefghijklmnopqrstuvwxyz")) :]
        return (
            bare not in _CARRYING_WORDS
            and ascii_tail not in _CARRYING_WORDS
            and not bare.endswith(_ALL_CREDENTIAL_WORDS)
            and bare not in self._redactor.template_words
        )


def _constructs(text: str) -> tuple[int, list[Span]]:
    """Where the earliest construct that may still grow into a match starts (else the
    end), and the spans of finished ones: PEM blocks, inline links, quoted HTML
    attributes, whose insides (a title, a PEM label) may hold clean words."""
    limit, spans = len(text), []
    for begin in _all(text, _PEM_BEGIN):
        found = _PEM_RE.match(text, begin)
        if found is None:
            closed = "\n" in text[begin:]  # the header is one line
        else:
            rest = text[found.end() : found.end() + len(_PEM_END)]
            closed = found.group("end") is not None or (rest != "" and not _PEM_END.startswith(rest))
            spans.append(found.span())
        if not closed:
            limit = min(limit, begin)
            break
    # Links and reference definitions as a prefix of a stream: an unfinished one holds
    # the stream back from its start (its destination may still change or appear).
    for start, parsed in _links(text):
        if parsed == INCOMPLETE:
            limit = min(limit, start)
            break
        if isinstance(parsed, Construct):
            spans.append((start, parsed.end))
    spans.extend(span for span, _ in html_url_attributes(text))
    spans.extend(m.span() for m in autolinks(text))
    autolink = _OPEN_AUTOLINK_RE.search(text)
    if autolink is not None:
        limit = min(limit, autolink.start())
    quote = _OPEN_ATTRIBUTE_RE.search(text)
    if quote is not None:
        limit = min(limit, quote.start())
    return limit, spans


def _links(text: str) -> Iterator[tuple[int, Parsed]]:
    """Inline links and reference definitions (the line's start), in the text's order."""
    found = [*inline_links(text, final=False), *reference_definitions(text, final=False)]
    return iter(sorted(found, key=lambda item: item[0]))


def _all(text: str, needle: str) -> Iterator[int]:
    position = text.find(needle)
    while position >= 0:
        yield position
        position = text.find(needle, position + 1)


# A word (a run of non-blanks) and the blanks after it: where a stream is cut.
# Possessive, from a word's start only: a long run without blanks is scanned once, not once
# per position (quadratic).
_CUT_RE = re.compile(r"(?<!\S)(?P<word>\S++)\s+")
# Two letters outside ASCII in a row: where text without blanks (Chinese, Japanese) is cut.
_SCRIPT_CUT_RE = re.compile(r"[^\W\d_\x00-\x7f](?=[^\W\d_\x00-\x7f])")
# An autolink still open at the end of the text (its URL may hold such letters).
_OPEN_AUTOLINK_RE = re.compile(r"<[A-Za-z][A-Za-z0-9+.-]{1,31}+:[^\s<>]*+\Z")
# An HTML URL attribute whose quoted value is still open at the end of the text.
_OPEN_ATTRIBUTE_RE = re.compile(
    r"""\b(?:src|href|srcset|action|formaction|poster|background|data)[\ \t]*+=[\ \t]*+
    (?:"[^"]*+|'[^']*+)\Z""",
    re.IGNORECASE | re.VERBOSE,
)
