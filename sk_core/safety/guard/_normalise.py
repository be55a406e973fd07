"""Normalisation: the canonical form of a text that the rules match against.

Trivial obfuscation (case, spacing, zero-width characters, homoglyphs, accents,
full-width letters) must not change what the rules see, so every rule is written
against :func:`normalise`'s output.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

# Format and filler characters that render as nothing. Stripped before matching so that
# "ig\u200bnore" reads as "ignore". Includes bidi controls, variation selectors, Unicode
# tags (decoded separately, see _TAG_RUN_RE) and Hangul fillers.
_INVISIBLE_CLASS = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\U000e0000-\U000e007f\U000e0100-\U000e01ef"
)
# Combining diacritics: stripped after NFKD so "précédentes" matches "precedentes" and
# "ïgnörë" matches "ignore".
_STRIP_RE = re.compile(f"[{_INVISIBLE_CLASS}\u0300-\u036f]+")
INVISIBLE_RE = re.compile(f"[{_INVISIBLE_CLASS}]+")

# Cyrillic and Greek letters that look like Latin ones (after casefolding). Folded
# everywhere: no rule is written in Cyrillic or Greek, so folding can only make
# "ignоre" (Cyrillic o) readable, never hide a match; genuine Russian or Greek words just
# become harmless mixed-script strings in the matching copy.
_CONFUSABLES: Final = {
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԁ": "d",
    "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w", "ɡ": "g", "ν": "v", "ο": "o", "ρ": "p",
    "α": "a", "ι": "i", "κ": "k", "τ": "t", "υ": "u", "χ": "x", "ε": "e", "ѵ": "v",
}  # fmt: skip
# A regex over runs, not str.translate: translate with a dict costs a lookup per
# character of the whole text, while look-alikes are usually a handful of characters.
_CONFUSABLE_RUN_RE = re.compile("[" + "".join(_CONFUSABLES) + "]+")
_CONFUSABLE_TABLE = str.maketrans(_CONFUSABLES)


def _fold_run(match: re.Match[str]) -> str:
    return match.group().translate(_CONFUSABLE_TABLE)


def normalise(text: str) -> str:
    """Canonical form used for matching; idempotent (``normalise(normalise(x)) == normalise(x)``).

    NFKD (compatibility forms such as full-width or mathematical letters become plain
    ones), casefold, drop invisible characters and combining accents, fold Cyrillic and
    Greek look-alikes to Latin, NFKC, and collapse all whitespace to one space.
    """
    if text.isascii():  # the common case: no accents, invisibles or look-alikes to handle
        return " ".join(text.casefold().split())
    out = unicodedata.normalize("NFKD", text).casefold()
    out = _STRIP_RE.sub("", out)
    out = _CONFUSABLE_RUN_RE.sub(_fold_run, out)
    out = unicodedata.normalize("NFKC", out)
    out = " ".join(out.split())  # str.split() knows the same whitespace as \s, faster
    # NFKC and casefold do not commute for a handful of code points; one more round
    # reaches the fixed point in practice (checked by a property test), and only runs
    # for non-ASCII text, where the first round might have changed something.
    if not out.isascii():
        folded = out.casefold()
        if folded != out or not unicodedata.is_normalized("NFKC", folded):
            out = " ".join(_STRIP_RE.sub("", unicodedata.normalize("NFKC", folded)).split())
    return out
