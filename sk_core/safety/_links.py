"""The ``link`` kind: destinations of links and images that leave for another host."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from sk_core.safety._common import Span, _Finder

# Inline destination: found from "](" so that link text with nested brackets needs no
# parsing; one level of balanced parentheses, as CommonMark allows; an optional title.
_INLINE_LINK_RE = re.compile(
    r"""
    \]\(
    [\ \t\n]*+
    (?P<dest><[^<>\n]*+>|(?:[^\s()]++|\([^\s()]*+\))++)
    (?:[\ \t\n]++(?:"[^"\n]*+"|'[^'\n]*+'|\([^()\n]*+\)))?+
    [\ \t\n]*+\)
    """,
    re.VERBOSE,
)
_REFERENCE_DEF_RE = re.compile(
    r"^[\ \t]{0,3}\[[^\[\]\n]{1,999}+\]:[\ \t]*+(?P<dest><[^<>\n]*+>|\S++)", re.MULTILINE | re.VERBOSE
)
_AUTOLINK_RE = re.compile(r"<(?P<dest>[A-Za-z][A-Za-z0-9+.-]{1,31}+:[^\s<>]*+)>")
_HTML_URL_ATTR_RE = re.compile(
    r"""\b(?:src|href|srcset|action|formaction|poster|background|data)[\ \t]*+=[\ \t]*+
    (?:"(?P<dq>[^"]*+)"|'(?P<sq>[^']*+)'|(?P<bare>[^\s"'>]++))""",
    re.IGNORECASE | re.VERBOSE,
)
# Browsers drop tabs, newlines and leading/trailing controls from a URL and read "\" as
# "/" in http(s) URLs, so "java\tscript:" and "/\evil.example" must be read the same way.
_URL_IGNORED_RE = re.compile(r"[\x00-\x20\x7f]+")


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


def _link_finder(hosts: Iterable[str]) -> _Finder:
    """Destinations of links and images whose host is not allowed (``*.x`` allows subdomains of x)."""
    cleaned = [host.strip().lower().rstrip(".") for host in hosts if host.strip()]
    exact = frozenset(host for host in cleaned if not host.startswith("*."))
    suffixes = tuple(host[1:] for host in cleaned if host.startswith("*."))

    def bad(dest: str) -> bool:
        return not _url_allowed(dest, exact, suffixes)

    def find(text: str) -> list[Span]:
        spans: list[Span] = []
        if "](" in text:
            # The whole "(destination title)", so the title goes too.
            spans += [(m.start() + 1, m.end()) for m in _INLINE_LINK_RE.finditer(text) if bad(m["dest"])]
        if "]:" in text:
            spans += [m.span("dest") for m in _REFERENCE_DEF_RE.finditer(text) if bad(m["dest"])]
        if "<" in text:
            spans += [m.span() for m in _AUTOLINK_RE.finditer(text) if bad(m["dest"])]
        if "=" in text:
            for m in _HTML_URL_ATTR_RE.finditer(text):
                group = "dq" if m["dq"] is not None else "sq" if m["sq"] is not None else "bare"
                if bad(m[group]):
                    spans.append(m.span(group))
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
