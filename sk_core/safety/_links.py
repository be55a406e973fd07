"""The ``link`` kind: destinations of links and images that leave for another host.

A destination is decided the way a CommonMark renderer decides it, because the renderer
is what fetches the image: markdown-it-py's own destination parser reads it (``<...>``
or bare with balanced parentheses), and its entity and backslash-escape resolution gives
the URL (``https&#58;//x`` and ``https\\://x`` are ``https://x``). Then browsers' reading
applies (tabs and controls dropped, ``\\`` read as ``/``). Constructs:

* inline links and images: from every ``](``, the destination after any blanks (line
  ends included, with a block quote's ``>`` markers), an optional title, ``)``;
* reference definitions ``[label]: destination``: at a line start, also inside block
  quotes and list items, the label over several lines, the destination on the next line;
* autolinks ``<scheme:...>``;
* HTML ``src``/``href``/``srcset``/... attributes, whose values are entity-decoded as a
  browser decodes them, and whose ``srcset`` candidates are judged one by one.

Candidates are found where a renderer could find one, and more (a ``](`` inside a code
span counts too): a false positive costs a link in a code sample, a miss leaks data.
``tests/safety/test_redaction_links.py`` renders the redacted output with markdown-it-py and
checks that no URL of another host is left, across encodings and chunkings.

Each parser answers for a prefix of a stream too (``final=False``): :data:`INCOMPLETE`
when more text could still change the construct, which the streaming redaction holds back.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from sk_core.safety._common import Span, _Finder


@dataclass(frozen=True, slots=True)
class Construct:
    """A link-like construct in a text: where it ends, and what would be replaced."""

    end: int  # the end of the construct (exclusive)
    value: str  # the destination as a renderer resolves it
    replace: Span  # "(destination title)" of an inline link; the destination otherwise


#: More text could still make (or change) a construct here.
INCOMPLETE: Final = "incomplete"
Parsed = Construct | Literal["incomplete"] | None

# A line that may hold a reference definition: block quote markers and list markers
# (a definition may sit in either), indentation, then the label's "[". Any indentation:
# in a nested list a definition is indented further than three spaces.
_REFERENCE_START_RE = re.compile(
    r"^(?:[ \t]*+(?:>|(?:[-+*]|[0-9]{1,9}[.)])(?=[ \t])))*+[ \t]*+\[", re.MULTILINE
)
_MAX_LABEL = 999  # CommonMark's bound on a link label
_MAX_NESTING = 32  # markdown-it's bound on parentheses in a destination
_AUTOLINK_RE = re.compile(r"<(?P<dest>[A-Za-z][A-Za-z0-9+.-]{1,31}+:[^\s<>]*+)>")
_HTML_URL_ATTR_RE = re.compile(
    r"""\b(?P<name>src|href|srcset|action|formaction|poster|background|data)[\ \t]*+=[\ \t]*+
    (?:"(?P<dq>[^"]*+)"|'(?P<sq>[^']*+)'|(?P<bare>[^\s"'>]++))""",
    re.IGNORECASE | re.VERBOSE,
)
# Browsers drop tabs, newlines and leading/trailing controls from a URL and read "\" as
# "/" in http(s) URLs, so "java\tscript:" and "/\evil.example" must be read the same way.
_URL_IGNORED_RE = re.compile(r"[\x00-\x20\x7f]+")
# "<destination" still open at the end of a text: no line end, "<" or ">" (escapes skipped).
_OPEN_ANGLE_RE = re.compile(r"<(?:[^<>\n\\]++|\\.)*+\\?\Z", re.DOTALL)
_SRCSET_DESCRIPTOR_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?[wxh]", re.ASCII)


def _blanks(text: str, pos: int, *, final: bool) -> int | Literal["incomplete"] | None:
    """Past spaces, tabs and line ends (and the ``>`` markers after one), as a link's
    parts may be separated; None at a blank line, which ends a paragraph."""
    n = len(text)
    while pos < n:
        char = text[pos]
        if char in " \t":
            pos += 1
        elif char == "\n":
            pos += 1
            while pos < n and text[pos] in " \t>":
                pos += 1
            if pos < n and text[pos] == "\n":
                return None
        else:
            return pos
    return pos if final else INCOMPLETE


def _bare_destination_pattern() -> re.Pattern[str]:
    """markdown-it's bare destination as a regex: no blank or control, parentheses
    balanced and nested at most 32 deep, backslash escapes (``\\ `` ends it)."""
    atom = r"[^\x00-\x20\x7f()\\]++|\\[^ ]|\\\Z"
    nested = atom
    for _ in range(_MAX_NESTING):
        nested = rf"{atom}|\((?:{nested})*+\)"
    return re.compile(rf"(?:{nested})++")


# Regexes, not markdown-it-py's own scanner: the same grammar (the property tests render
# with markdown-it-py), but at C speed, which a text of 100 k "](x" needs.
_BARE_DESTINATION_RE = _bare_destination_pattern()
_ANGLE_DESTINATION_RE = re.compile(r"<((?:[^<>\n\\]++|\\[\s\S])*+)>")
_BLANK_OR_CONTROL_RE = re.compile(r"[\x00-\x20\x7f]")
# A title's text: line ends allowed, a blank line (a paragraph's end) not.
_TITLE_BODY = r"(?:[^{stop}\\\n]++|\\[\s\S]|\n(?![ \t>]*+\n))*+"
_TITLE_RES = {
    opener: (
        re.compile(re.escape(opener) + _TITLE_BODY.format(stop=re.escape(stop)) + re.escape(closer)),
        re.compile(re.escape(opener) + _TITLE_BODY.format(stop=re.escape(stop)) + r"\\?\Z"),
    )
    for opener, closer, stop in (('"', '"', '"'), ("'", "'", "'"), ("(", ")", "()"))
}


class _NextBlank:
    """The first blank or control at or after a position, for positions asked in
    increasing order: one scan of the text in all (the streaming check of every ``](``)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._found = -1

    def after(self, pos: int) -> int:
        if pos > self._found:
            match = _BLANK_OR_CONTROL_RE.search(self._text, pos)
            self._found = match.start() if match is not None else len(self._text)
        return self._found


@functools.cache
def _unescape_all() -> Callable[[str], str]:
    """markdown-it-py's resolution of entities and backslash escapes. Imported on first
    use: markdown-it-py costs ~60 ms to import, which only an answer with a link should
    pay (cold starts are measured)."""
    from markdown_it.common.utils import unescapeAll

    return unescapeAll


def _destination(
    text: str, pos: int, *, final: bool, blanks: _NextBlank | None = None
) -> tuple[int, str] | Literal["incomplete"] | None:
    """The destination at ``pos``: (its end, its value with entities and backslash
    escapes resolved by markdown-it-py, as its renderer resolves them)."""
    unescape_all = _unescape_all()
    n = len(text)
    if text[pos] == "<":
        angle = _ANGLE_DESTINATION_RE.match(text, pos)
        if angle is not None:
            return angle.end(), unescape_all(angle.group(1))
        # "<..." not yet closed (no line end or "<" inside) may close in the next piece.
        return INCOMPLETE if not final and _OPEN_ANGLE_RE.match(text, pos) else None
    bare = _BARE_DESTINATION_RE.match(text, pos)
    end = bare.end() if bare is not None else pos
    if end < n and text[end] == "(":
        # Parentheses left open (or nested too deep): none, unless the text ends before
        # a blank does, when they may close in the next piece.
        if final:
            return None
        return INCOMPLETE if (blanks or _NextBlank(text)).after(end) >= n else None
    if end == pos:
        return None
    if end >= n and not final:
        return INCOMPLETE  # a bare destination may go on
    return end, unescape_all(text[pos:end])


def _title_end(text: str, pos: int, *, final: bool) -> int | Literal["incomplete"] | None:
    """After the link title starting at ``pos`` ("...", '...' or (...)); None if none."""
    whole, open_ = _TITLE_RES[text[pos]]
    found = whole.match(text, pos)
    if found is not None:
        return found.end()
    return INCOMPLETE if not final and open_.match(text, pos) else None


def inline_link(text: str, at: int, *, final: bool = True, blanks: _NextBlank | None = None) -> Parsed:
    """The inline link or image whose ``](`` is at ``at``."""
    start = _blanks(text, at + 2, final=final)
    if start is None or start == INCOMPLETE:
        return start
    if start >= len(text) or text[start] == ")":
        return None  # no destination: the link goes nowhere
    found = _destination(text, start, final=final, blanks=blanks)
    if found is None or found == INCOMPLETE:
        return found
    dest_end, value = found
    only_destination = Construct(dest_end, value, (start, dest_end))
    after = _blanks(text, dest_end, final=final)
    if after == INCOMPLETE:
        return INCOMPLETE
    if after is None or after >= len(text):
        return only_destination
    if after > dest_end and text[after] in "\"'(":
        title_end = _title_end(text, after, final=final)
        if title_end is None or title_end == INCOMPLETE:
            return only_destination if title_end is None else INCOMPLETE
        after = _blanks(text, title_end, final=final)
        if after == INCOMPLETE:
            return INCOMPLETE
        if after is None or after >= len(text):
            return only_destination
    if text[after] == ")":
        return Construct(after + 1, value, (at + 1, after + 1))
    # Not an inline link after all (CommonMark then reads "[text]" as a reference); the
    # destination is replaced anyway, which costs nothing a renderer would show as a link.
    return only_destination


def reference_definition(text: str, bracket: int, *, final: bool = True) -> Parsed:
    """The reference definition whose label opens with the ``[`` at ``bracket``."""
    n = len(text)
    i = bracket + 1
    label_chars = 0
    while True:
        if i >= n:
            return None if final else INCOMPLETE
        char = text[i]
        if char == "\\":
            i += 2
            label_chars += 2
        elif char == "[":
            return None
        elif char == "]":
            break
        elif char == "\n":
            after = _blanks(text, i, final=final)
            if after is None or after == INCOMPLETE:
                return after
            label_chars += after - i
            i = after
        else:
            i += 1
            label_chars += 1
        if label_chars > _MAX_LABEL:
            return None
    if not text[bracket + 1 : i].strip():
        return None
    if i + 1 >= n:
        return None if final else INCOMPLETE
    if text[i + 1] != ":":
        return None
    start = _blanks(text, i + 2, final=final)
    if start is None or start == INCOMPLETE:
        return start
    if start >= n:
        return None
    found = _destination(text, start, final=final)
    if found is None or found == INCOMPLETE:
        return found
    dest_end, value = found
    return Construct(dest_end, value, (start, dest_end))


def inline_links(text: str, *, final: bool = True) -> Iterator[tuple[int, Parsed]]:
    """Every ``](`` of ``text`` and what it starts; candidates inside a construct are skipped."""
    floor = 0
    blanks = _NextBlank(text)
    at = text.find("](")
    while at >= 0:
        if at >= floor:
            parsed = inline_link(text, at, final=final, blanks=blanks)
            yield at, parsed
            if isinstance(parsed, Construct):
                floor = parsed.end
        at = text.find("](", at + 1)


def reference_definitions(text: str, *, final: bool = True) -> Iterator[tuple[int, Parsed]]:
    """Every line that may start a reference definition (its start) and what it holds."""
    for line in _REFERENCE_START_RE.finditer(text):
        yield line.start(), reference_definition(text, line.end() - 1, final=final)


def autolinks(text: str) -> Iterator[re.Match[str]]:
    """``<scheme:...>`` autolinks (their text is the URL: no entities, no escapes)."""
    return _AUTOLINK_RE.finditer(text)


def html_url_attributes(text: str) -> Iterator[tuple[Span, list[str]]]:
    """Each URL-valued HTML attribute: the span of its value and the URLs in it, decoded
    as a browser decodes them (character references; ``srcset`` candidates one by one)."""
    for match in _HTML_URL_ATTR_RE.finditer(text):
        group = "dq" if match["dq"] is not None else "sq" if match["sq"] is not None else "bare"
        value = html.unescape(match[group])
        yield match.span(group), _srcset_urls(value) if match["name"].lower() == "srcset" else [value]


def _url_allowed(raw: str, exact: frozenset[str], suffixes: tuple[str, ...]) -> bool:
    url = _URL_IGNORED_RE.sub("", raw.strip("<>")).replace("\\", "/")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".")
    except ValueError:  # an invalid port or IPv6 literal: not a URL we can vouch for
        return False
    if not parts.scheme and not parts.netloc:
        return True  # relative: resolves to the page's own site
    if parts.scheme.lower() not in ("http", "https", "") or not host:
        return False
    return host in exact or host.endswith(suffixes)


def _srcset_urls(value: str) -> list[str]:
    """The URLs of a ``srcset`` ("a.png 1x, b.png 2x"): every word but the descriptors."""
    words = value.replace(",", " ").split()
    return [word for word in words if _SRCSET_DESCRIPTOR_RE.fullmatch(word) is None] or [value]


def _link_finder(hosts: Iterable[str]) -> _Finder:
    """Destinations of links and images whose host is not allowed (``*.x`` allows subdomains of x)."""
    cleaned = [host.strip().lower().rstrip(".") for host in hosts if host.strip()]
    exact = frozenset(host for host in cleaned if not host.startswith("*."))
    suffixes = tuple(host[1:] for host in cleaned if host.startswith("*."))

    def bad(url: str) -> bool:
        # Also read with HTML's entity rules (which accept "&#58" without ";"): a URL
        # that either reading sends elsewhere is replaced.
        return not _url_allowed(url, exact, suffixes) or not _url_allowed(html.unescape(url), exact, suffixes)

    def find(text: str) -> list[Span]:
        spans: list[Span] = []
        if "](" in text:
            spans += [p.replace for _, p in inline_links(text) if isinstance(p, Construct) and bad(p.value)]
        if "[" in text:
            spans += [
                p.replace for _, p in reference_definitions(text) if isinstance(p, Construct) and bad(p.value)
            ]
        if "<" in text:
            spans += [m.span() for m in autolinks(text) if bad(m["dest"])]
        if "=" in text:
            spans += [span for span, urls in html_url_attributes(text) if any(bad(url) for url in urls)]
        return _disjoint(spans)

    return find


def _disjoint(spans: list[Span]) -> list[Span]:
    """Sorted, with spans inside an earlier one dropped (an autolink inside a link's URL)."""
    kept: list[Span] = []
    for start, end in sorted(spans):
        if kept and start < kept[-1][1]:
            if end > kept[-1][1]:
                kept[-1] = (kept[-1][0], end)
            continue
        kept.append((start, end))
    return kept
