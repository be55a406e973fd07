"""Redaction of a streamed answer: for any answer and any chunking, the concatenated
stream equals ``Redactor.redact`` of the whole, counts included, and text is released
before the end whenever it safely can be.

The property draws answers from the pieces that make redaction hard to stream: values
of every kind (some spanning blanks: grouped cards, IBANs, phones, bearer tokens,
assignments), links with titles, quoted HTML attributes, reference definitions, PEM
blocks, runs of the function's own template, and the words and blanks between them;
then cuts the answer at arbitrary places.
"""

from __future__ import annotations

import itertools

from hypothesis import example, given
from hypothesis import strategies as st

from sk_core.safety import Redactor

TEMPLATE = "You are a helpful, concise assistant. Summarize the following text in a few words for the reader."
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEabc123DEF456ghi789JKL012mno345PQR678stu901VWX234\n"
    "-----END RSA PRIVATE KEY-----"
)
FRAGMENTS = [
    "jane@example.com", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "+44 20 7946 0958",
    "(415) 555-2671", "020 7946 0958", "sk-proj-abcdEFGH1234abcdEFGH1234", "api_key = 'Zx81kLmq9PwRt2Vb7'",
    "password: hunter22x", "Bearer abcdef1234567890abcdef", "AKIAABCDEFGHIJKLMNOP",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc", PEM, "-----BEGIN EC PRIVATE KEY-----\nMIIB",
    "![x](https://evil.example/?q=1)", '[link](http://evil.com "my title here")', "[a]: http://evil.com/x",
    "  [my label]: <http://x y>", "<https://evil.com/a>", '<img src="http://evil.com/a b.png">',
    "You are a helpful, concise assistant. Summarize the following text in a few",
    "Summarize the following text", "hello", "world", "the", "and", "Note:", "key", "version 1.2.3",
    "x", "Hello,", "bar.", "href", "=", '"', "](", ")", "Bearer", "apikey", "-----", "Ünïcödé", "数字",
    "こんにちは世界", "数字文本很长", "<https://例え.jp/パス>", '[x](https://例え.jp/パス "标题 这里")',
    "<a href=例え.jp>", "<https://例え",
    # Destinations a CommonMark renderer resolves (issue 27): entities, escapes, the next line.
    "![x](https&#58;//evil.example/?q=s)", "![x](https\\://evil.example/?q=s)", "[r]:\n  https://evil.example/x",
    "> [r]:\n> https://evil.example/y", '<img srcset="/a.png 1x, https://evil.example/b 2x">', "[my\nlabel",
]
SEPARATORS = ["", " ", " ", "\n", "\n\n", ", ", "  ", "\t"]

answers = st.lists(
    st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from(SEPARATORS)), min_size=1, max_size=16
).map(lambda parts: "".join(fragment + separator for fragment, separator in parts))


def chunked(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(max(cut, 0), len(text)) for cut in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


def streamed(redactor: Redactor, pieces: list[str]) -> tuple[list[str], dict[str, int]]:
    stream = redactor.stream()
    released = [stream.feed(piece) for piece in pieces]
    released.append(stream.finish())
    return released, dict(stream.counts)


@given(text=answers, cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=24))
@example(  # a clean word inside a finished PEM block's END line must not become a cut
    text="x " + PEM + " foo, ", cuts=[40, 41, 59, 90]
)
@example(text='[link](http://evil.com "my title here") bar.\n', cuts=[17, 37])
@example(text="Hello [a]: http://evil.com/x\n", cuts=[6, 7])
@example(  # after a letter of another script, "Bearer" still starts a bearer token
    text="<https://例えBearer abcdef1234567890abcdef, ", cuts=[9, 16, 32]
)
def test_any_chunking_of_any_answer_redacts_like_the_whole(text: str, cuts: list[int]) -> None:
    redactor = Redactor(template=TEMPLATE)
    released, counts = streamed(redactor, chunked(text, cuts))
    whole = redactor.redact(text)
    assert "".join(released) == whole.text
    assert counts == whole.counts


@given(text=answers)
def test_one_character_at_a_time_redacts_like_the_whole(text: str) -> None:
    redactor = Redactor(template=TEMPLATE)
    released, counts = streamed(redactor, list(text))
    assert ("".join(released), counts) == (redactor.redact(text).text, redactor.redact(text).counts)


def test_plain_prose_is_released_word_by_word_not_at_the_end() -> None:
    released, _ = streamed(Redactor(template=TEMPLATE), ["Hello ", "there ", "my ", "friend ", "again"])
    # A clean word is final once a blank follows it; the last word may still grow.
    assert released == ["Hello ", "there ", "my ", "friend ", "", "again"]


def test_tokens_with_leading_blanks_are_released_one_token_behind() -> None:
    released, _ = streamed(Redactor(template=TEMPLATE), ["Hello", " there", " my", " friend"])
    assert released == ["", "Hello ", "there ", "my ", "friend"]


def test_without_kinds_nothing_is_held_back() -> None:
    released, counts = streamed(Redactor(()), ["jane@", "example.com ", "4111"])
    assert (released, counts) == (["jane@", "example.com ", "4111", ""], {})


def test_a_value_split_across_chunks_is_held_then_redacted() -> None:
    pieces = ["Card: ", "4111 11", "11 1111 ", "1111 and ", "then ", "more"]
    released, counts = streamed(Redactor(), pieces)
    assert "".join(released) == "Card: [REDACTED:payment_card] and then more"
    assert counts == {"payment_card": 1}
    assert not any("4111" in piece or "1111" in piece for piece in released)


def test_an_open_link_title_is_held_until_it_closes() -> None:
    stream = Redactor().stream()
    assert stream.feed('Read [this](http://evil.example "a long ') == "Read "
    assert stream.feed("title here") == ""
    assert stream.feed('") now ') == "[this][REDACTED:link] now "
    assert stream.feed("please") == ""
    assert stream.finish() == "please"


def test_text_without_blanks_streams_between_letters_of_its_script() -> None:
    released, _ = streamed(Redactor(template=TEMPLATE), ["こんにちは", "世界、", "元気ですか"])
    # A cut needs letters on both sides, and the one after it must have arrived.
    assert released == ["こんにち", "は世", "界、元気です", "か"]
