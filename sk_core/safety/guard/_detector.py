"""The local detector: rules run over normalised text, spaced-out letters and decoded blobs."""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import unquote, unquote_plus

from sk_core.safety.guard._normalise import INVISIBLE_RE, normalise
from sk_core.safety.guard._rules import CATEGORIES, COMPACT_RULES, NATIVE_RULES, TEXT_RULES, Rule

#: What Prompt Shields contributed to a Detection.
ShieldsVerdict = Literal["not_configured", "skipped", "clean", "attack", "error"]

#: The most user text (normalised) a Hit keeps, so logs never hold a whole prompt.
EXCERPT_CHARS: Final = 40


@dataclass(frozen=True, slots=True)
class Hit:
    """One rule that matched one input text."""

    rule_id: str
    category: str
    #: Index of the text in the list given to ``scan``/``inspect``.
    text_index: int
    #: At most EXCERPT_CHARS of the normalised (or decoded) match; for debug logs only.
    excerpt: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Detection:
    """The guard's verdict on one request's texts."""

    flagged: bool
    categories: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = ()
    hits: tuple[Hit, ...] = field(default=(), repr=False)
    shields: ShieldsVerdict = "not_configured"

    @classmethod
    def from_hits(cls, hits: Iterable[Hit], *, shields: ShieldsVerdict = "not_configured") -> Detection:
        """Build a Detection whose categories and rule ids are the hits', in first-seen order."""
        kept = tuple(hits)
        return cls(
            flagged=bool(kept),
            categories=tuple(dict.fromkeys(h.category for h in kept)),
            rule_ids=tuple(dict.fromkeys(h.rule_id for h in kept)),
            hits=kept,
            shields=shields,
        )

    def to_audit(self) -> dict[str, Any]:
        """A compact, text-free summary for the audit log and metrics."""
        return {
            "flagged": self.flagged,
            "categories": list(self.categories),
            "rules": list(self.rule_ids),
            "shields": self.shields,
        }


# A run of at least six single characters separated by one separator each.
_SPACED_RUN_RE = re.compile(r"(?<![a-z0-9])(?:[a-z0-9][ .\-_*|/+~]){5,}[a-z0-9](?![a-z0-9])")
_SPACED_SEPARATORS_RE = re.compile(r"[ .\-_*|/+~]")
# Cheap gate for the above: starts with a literal space, so the engine skims (the text is
# prefixed with a space when tested).
_SPACED_GATE_RE = re.compile(r" [a-z0-9][ .\-_*|/+~][a-z0-9][ .\-_*|/+~][a-z0-9][ .\-_*|/+~][a-z0-9]")

# --- encoded payloads ----------------------------------------------------------------
_BASE64_RE = re.compile(r"[A-Za-z0-9+/_-]{24,}+={0,2}")
# Hex bytes, bare ("49676e"), separated ("49 67 6e", "49:67") or escaped ("\x49\x67").
# The repetition is possessive and nothing follows it, so a failed start costs O(1).
_HEX_RE = re.compile(r"(?:\\x)?[0-9a-fA-F]{2}(?:(?:\\x|[ :,])?[0-9a-fA-F]{2}){11,}+")
# Text encoded as hex starts most bytes with a digit (ASCII is 0x20-0x7e): a fast gate.
_HEX_GATE_RE = re.compile(r"[0-9][0-9a-fA-F](?:\\x|[ :,])?[0-9][0-9a-fA-F](?:\\x|[ :,])?[0-9][0-9a-fA-F]")
_HEX_SEPARATORS_RE = re.compile(r"[ :,]|\\x")
# Unicode tag characters shadow ASCII one-to-one and render as nothing: "ASCII smuggling".
_TAG_RUN_RE = re.compile("([\U0001f3f4]?)([\U000e0020-\U000e007e]++)(\U000e007f?)")
# Zero-width characters inside a Latin word: "ig\u200bnore". ZWJ/ZWNJ between emoji or in
# Indic/Persian script are legitimate and not matched (they are not between a-z letters).
_ZW_IN_WORD_RE = re.compile("[A-Za-z][\u200b-\u200d\u2060\ufeff\u180e]++(?=[A-Za-z])")
_ZERO_WIDTH_CHARS = "\u200b\u200c\u200d\u2060\ufeff\u180e"
_BIDI_OVERRIDE_RE = re.compile("[\u202d\u202e]")
_BIDI_EMBED_RE = re.compile("[\u202a\u202b\u2066-\u2069]")
_RTL_LETTER_RE = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc]")

# --- whole-text transforms: each is gated by a cheap test, so clean text pays nothing --
_CYRILLIC_RE = re.compile("[\u0400-\u04ff]")
# Leetspeak: digits or symbols standing for letters *between* letters ("1gn0r3",
# "pr3v10u5"). Numbers glued to one end of a word ("llm01", "3pm", "4g") are ordinary.
# Only the words around such tokens are re-read, not the whole text: a phrase rule spans
# a few words, and a second full scan would double the cost of every prompt with a hash.
_LEET_WORD_RE = re.compile(r"[a-z][013457@$]++[a-z]")
_LEET_TABLE = str.maketrans("013457@$", "oieastas")
_LEET_WINDOW = 10  # words either side of a leet word
_URL_ESCAPES_RE = re.compile(r"(?:%[0-9a-fA-F]{2}[^%]{0,20}){3}")
_BASE32_RE = re.compile(r"(?<![A-Za-z0-9])[A-Z2-7]{16,}+={0,6}")
# Key words of an attack as they look under ROT13 and reversed: the gate for trying
# those transforms at all ("ignore", "instructions", "previous", "system", "prompt").
_ROT13_MARKERS = ("rot13", "rot-13", "rot 13", "vtaber", "vafgehpgvba", "cerivbhf", "flfgrz", "cebzcg")
_REVERSED_MARKERS = ("erongi", "snoitcurtsni", "suoiverp", "metsys", "tpmorp", "dragersid")

_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
_MIN_DECODED_CHARS = 12
_MAX_DECODE_BYTES = 256 * 1024  # per input text: bounds work on a wall of base64


def _excerpt(text: str) -> str:
    return text[:EXCERPT_CHARS]


class InjectionDetector:
    """Pattern-based prompt-injection detector. Thread-safe and reusable; build once.

    ``categories`` limits which categories run (default: all). ``extra_patterns`` are
    regexes matched against the normalised text (casefolded, whitespace collapsed to one
    space) and reported as category ``custom`` with ids ``custom-0``, ``custom-1``...;
    they are the operator's responsibility for backtracking (Python 3.11 supports
    possessive quantifiers and atomic groups). Invalid patterns raise ``ValueError`` here,
    at startup, not on a request. ``max_decode_depth`` bounds nested encodings
    (base64 of base64).
    """

    def __init__(
        self,
        *,
        categories: Iterable[str] | None = None,
        extra_patterns: Sequence[str] = (),
        max_decode_depth: int = 2,
    ) -> None:
        enabled = set(CATEGORIES if categories is None else categories)
        unknown = enabled - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown guard categories: {sorted(unknown)}; known: {list(CATEGORIES)}")
        custom: list[Rule] = []
        for index, source in enumerate(extra_patterns):
            try:
                custom.append(Rule(f"custom-{index}", "custom", re.compile(source), ()))
            except re.error as exc:
                raise ValueError(f"guard extra pattern #{index} is not a valid regex: {exc}") from None
        self.categories: frozenset[str] = frozenset(enabled | ({"custom"} if custom else set()))
        self._rules = tuple(r for r in TEXT_RULES if r.category in enabled) + tuple(custom)
        self._compact_rules = tuple(r for r in COMPACT_RULES if r.category in enabled)
        # Decoded payloads are judged by every phrase rule: "encoded_payload" names the
        # hiding technique, so enabling it alone must still recognise what was hidden.
        self._decoded_rules = TEXT_RULES + tuple(custom)
        self._native_rules = tuple(r for r in NATIVE_RULES if r.category in enabled)
        self._max_depth = max_decode_depth

    def scan(self, texts: Sequence[str]) -> Detection:
        """Scan every text; the Detection lists all hits (one per rule and text)."""
        hits: list[Hit] = []
        for index, text in enumerate(texts):
            hits.extend(self.scan_text(text, index=index))
        return Detection.from_hits(hits)

    def scan_text(self, text: str, *, index: int = 0) -> list[Hit]:
        """Hits for one text, deduplicated by rule id."""
        seen: dict[str, Hit] = {}
        for hit in self._scan(text, index, depth=0):
            seen.setdefault(hit.rule_id, hit)
        return list(seen.values())

    def _scan(self, text: str, index: int, depth: int) -> Iterator[Hit]:
        norm = normalise(text)
        yield from self._match(self._rules if depth == 0 else self._decoded_rules, norm, index)
        if self._native_rules and not text.isascii() and _CYRILLIC_RE.search(text):
            native = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
            yield from self._match(self._native_rules, native, index)
        if self._compact_rules and _SPACED_GATE_RE.search(" " + norm):
            for run in _SPACED_RUN_RE.finditer(norm):
                squashed = _SPACED_SEPARATORS_RE.sub("", run.group())
                yield from self._match(self._compact_rules, squashed, index)
        if depth < self._max_depth:
            yield from self._scan_markup(text, index, depth)
        if "encoded_payload" in self.categories:
            yield from self._scan_encoded(text, index, depth)

    def _scan_markup(self, text: str, index: int, depth: int) -> Iterator[Hit]:
        """The text as a markup reader decodes it: HTML character references
        (``Ign&#111;re``, ``&#60;message&#62;``: what a Markdown/HTML renderer, and a
        model that has read the web, reads as plain text) and percent-encoding.

        Every family is judged on the decoded form under its own category (``rule@entity``),
        not as an encoded payload only: such text means what it decodes to, and
        disabling ``encoded_payload`` must not let it through.
        """
        for kind, decoded in _markup_decodings(text):
            for inner in self._scan(decoded, index, depth + 1):
                yield Hit(f"{inner.rule_id}@{kind}", inner.category, index, inner.excerpt)

    @staticmethod
    def _match(rules: Sequence[Rule], norm: str, index: int) -> Iterator[Hit]:
        present: dict[str, bool] = {}  # rules share triggers: test each substring once per text
        for rule in rules:
            if rule.triggers and not any(
                present[t] if t in present else present.setdefault(t, t in norm) for t in rule.triggers
            ):
                continue
            found = rule.pattern.search(norm)
            if found is not None:
                yield Hit(rule.rule_id, rule.category, index, _excerpt(found.group()))

    def _scan_encoded(self, text: str, index: int, depth: int) -> Iterator[Hit]:
        """Hidden-character tricks and encoded blobs whose decoded text is an attack."""
        if not text.isascii():
            yield from self._scan_invisible(text, index, depth)
        if depth >= self._max_depth:
            return
        # Case matters for base64, so blobs are found in the raw text (invisible characters
        # removed: "aWdu\u200bb3Jl" must still decode).
        raw = text if text.isascii() else INVISIBLE_RE.sub("", text)
        budget = _MAX_DECODE_BYTES
        for kind, decoded in (*self._decoded_blobs(raw), *_transformed(raw, normalise(raw))):
            budget -= len(decoded)
            if budget < 0:
                break
            for inner in self._scan(decoded, index, depth + 1):
                yield Hit(f"EP-{kind}", "encoded_payload", index, inner.excerpt)
                yield Hit(f"{inner.rule_id}@{kind}", inner.category, index, inner.excerpt)

    def _scan_invisible(self, text: str, index: int, depth: int) -> Iterator[Hit]:
        if any(ch in text for ch in _ZERO_WIDTH_CHARS) and (
            len(_ZW_IN_WORD_RE.findall(text)) >= 2
            or sum(text.count(ch) for ch in "\u200b\u2060\u180e\ufeff") >= 5
        ):
            yield Hit("EP-zero-width", "encoded_payload", index, "")
        if _BIDI_OVERRIDE_RE.search(text) or (
            _BIDI_EMBED_RE.search(text) and not _RTL_LETTER_RE.search(text)
        ):
            yield Hit("EP-bidi-control", "encoded_payload", index, "")
        for flag, run, cancel in _TAG_RUN_RE.findall(text):
            if flag and cancel and len(run) <= 6:  # a subdivision flag emoji such as England's
                continue
            hidden = "".join(chr(ord(c) - 0xE0000) for c in run)
            yield Hit("EP-unicode-tags", "encoded_payload", index, _excerpt(hidden))
            if depth < self._max_depth:
                for inner in self._scan(hidden, index, depth + 1):
                    yield Hit(f"{inner.rule_id}@tags", inner.category, index, inner.excerpt)

    @staticmethod
    def _decoded_blobs(raw: str) -> Iterator[tuple[str, str]]:
        for found in _BASE64_RE.finditer(raw):
            decoded = _decode_base64(found.group())
            if decoded is not None:
                yield "base64", decoded
        if not _HEX_GATE_RE.search(raw):
            return
        for found in _HEX_RE.finditer(raw):
            decoded = _decode_hex(found.group())
            if decoded is not None:
                yield "hex", decoded


def _transformed(raw: str, norm: str) -> Iterator[tuple[str, str]]:
    """The whole text read as leetspeak, URL-encoded, ROT13 or reversed, where it looks so."""
    leet = _leet_windows(norm)
    if leet:
        yield "leet", leet
    if "%" in raw and _URL_ESCAPES_RE.search(raw):
        # Form-encoding too ("+" for a space); plain percent-decoding is a markup view.
        plus = unquote_plus(raw)
        if plus != unquote(raw):
            yield "url", plus
    if any(marker in norm for marker in _ROT13_MARKERS):
        yield "rot13", codecs.encode(raw, "rot13")
    if any(marker in norm for marker in _REVERSED_MARKERS):
        yield "reversed", raw[::-1]
    for found in _BASE32_RE.finditer(raw):
        decoded = _decode_base32(found.group())
        if decoded is not None:
            yield "base32", decoded


# A character reference (named, decimal or hex, with or without its ";") and a
# percent-escaped byte: cheap gates for the decodings below.
_ENTITY_RE = re.compile(r"&(?:#[0-9]{1,8}|#[xX][0-9a-fA-F]{1,8}|[A-Za-z][A-Za-z0-9]{1,31})")
_PERCENT_RE = re.compile(r"%[0-9a-fA-F]{2}")


def _markup_decodings(raw: str) -> Iterator[tuple[str, str]]:
    """``raw`` with character references resolved, and percent-decoded, where that changes it.

    Both at once as well, in either order (``%26%23111%3B`` is ``&#111;``): the
    recursion in ``_scan`` goes as deep as ``max_decode_depth``.
    """
    if "&" in raw and _ENTITY_RE.search(raw):
        decoded = html.unescape(raw)
        if decoded != raw:
            yield "entity", decoded
    if "%" in raw and _PERCENT_RE.search(raw):
        decoded = unquote(raw, errors="replace")
        if decoded != raw:
            yield "percent", decoded


def _leet_windows(norm: str) -> str:
    """The words around leet words, de-leeted; empty unless at least two words are leet."""
    if not _LEET_WORD_RE.search(norm):
        return ""
    words = norm.split(" ")
    marked = [i for i, word in enumerate(words) if _LEET_WORD_RE.search(word)]
    if len(marked) < 2:
        return ""
    keep: set[int] = set()
    for i in marked:
        keep.update(range(max(0, i - _LEET_WINDOW), min(len(words), i + _LEET_WINDOW + 1)))
    return " ".join(words[i].translate(_LEET_TABLE) for i in sorted(keep))


def _decode_base32(blob: str) -> str | None:
    core = blob.rstrip("=")
    try:
        data = base64.b32decode(core + "=" * (-len(core) % 8))
    except (binascii.Error, ValueError):
        return None
    return _printable_text(data)


def _printable_text(data: bytes) -> str | None:
    """``data`` as text if it is mostly printable UTF-8 (a hash or an image is not)."""
    if len(data) < _MIN_DECODED_CHARS:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    control = len(_CONTROL_RE.findall(text))
    return text if control <= 0.05 * len(text) else None


def _decode_base64(blob: str) -> str | None:
    core = blob.rstrip("=")
    if len(core) % 4 == 1:  # cannot be base64 of anything
        core = core[:-1]
    padded = core + "=" * (-len(core) % 4)
    altchars = b"-_" if ("-" in core or "_" in core) else None
    if altchars is not None and ("+" in core or "/" in core):
        return None
    try:
        data = base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable_text(data)


def _decode_hex(blob: str) -> str | None:
    digits = _HEX_SEPARATORS_RE.sub("", blob)
    try:
        data = bytes.fromhex(digits)
    except ValueError:
        return None
    return _printable_text(data)
