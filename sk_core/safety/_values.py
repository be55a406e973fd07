"""The value kinds: credentials, e-mail addresses, IBANs, payment cards, phone numbers.

Each kind's rules are documented in :mod:`sk_core.safety._redactor`; this module holds
their patterns and judges, and :data:`VALUE_FINDERS`, the finders per kind.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from sk_core.safety._common import (
    _DIGITS,
    _FLAGS,
    EMAIL,
    IBAN,
    PAYMENT_CARD,
    PHONE,
    SECRET,
    Span,
    _Finder,
    _glued,
    _has_digit,
    _scan,
    _whole_if,
)

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


#: The finders of each value kind, in the order they run.
VALUE_FINDERS: dict[str, tuple[_Finder, ...]] = {
    SECRET: _SECRET_FINDERS,
    EMAIL: (_find_emails,),
    IBAN: (_scan(_IBAN_RE, _judge_iban),),
    PAYMENT_CARD: (_scan(_CARD_RUN_RE, _judge_card),),
    PHONE: (_scan(_PHONE_RE, _judge_phone),),
}
