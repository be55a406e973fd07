"""The OData filter subset of the in-memory table store (``_memory.py``).

``parse_filter`` turns a filter (after the SDK's parameter substitution) into a
predicate over stored entities, and into the **keys** it pins: the PartitionKey and
RowKey values an entity must have to match, when the filter says so (``PartitionKey eq
'x' and (RowKey eq 'a' or RowKey eq 'b')``). The store then looks those rows up instead
of testing every row of the table, as the service answers a point query from its
index: without it a simulation of hundreds of instances (``bench/scale.py``) spent most
of its CPU scanning lease rows, and its event loop stalled for hundreds of
milliseconds. The keys only narrow the candidates; every candidate is still tested by
the predicate, so the answer is the scan's (tests/storage/test_memory.py).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Wire = dict[str, Any]  # an entity as the service stores it: JSON values and odata.type notes
Predicate = Callable[[Wire], bool]


class FilterError(ValueError):
    """The filter is outside the subset (the store answers 400 InvalidInput)."""


@dataclass(frozen=True)
class Keys:
    """The key values a matching entity must have (None: any)."""

    partitions: frozenset[str] | None = None
    rows: frozenset[str] | None = None

    def both(self, other: Keys) -> Keys:
        """Both must hold (``and``): each pinned set narrows the other."""
        return Keys(_meet(self.partitions, other.partitions), _meet(self.rows, other.rows))

    def either(self, other: Keys) -> Keys:
        """One must hold (``or``): pinned only where both pin."""
        return Keys(_join(self.partitions, other.partitions), _join(self.rows, other.rows))


def _meet(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    return b if a is None else a if b is None else a & b


def _join(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    return None if a is None or b is None else a | b


def utf16(text: str) -> bytes:
    # The service orders and compares strings by UTF-16 code units, not code points.
    return text.encode("utf-16-be")


_TOKEN = re.compile(
    r"\s*(?:(?P<open>\()|(?P<close>\))"
    r"|(?P<typed>(?:datetime|guid|X|binary)'(?:[^']|'')*')"
    r"|(?P<string>'(?:[^']|'')*')"
    r"|(?P<number>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[Ll]?)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}
_NUMBER_TYPES = frozenset({"Edm.Int32", "Edm.Int64", "Edm.Double"})


@dataclass
class _Parser:
    tokens: list[tuple[str, str]]
    at: int = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise _bad_filter("unexpected end")
        self.at += 1
        return token

    def word(self, *words: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "word" and token[1].lower() in words:
            self.at += 1
            return True
        return False

    def expression(self) -> tuple[Predicate, Keys]:
        return self._joined("or", self.conjunction, any, Keys.either)

    def conjunction(self) -> tuple[Predicate, Keys]:
        return self._joined("and", self.unary, all, Keys.both)

    def _joined(
        self,
        word: str,
        part: Callable[[], tuple[Predicate, Keys]],
        test: Callable[[Iterable[bool]], bool],
        combine: Callable[[Keys, Keys], Keys],
    ) -> tuple[Predicate, Keys]:
        """``part (word part)*``: one predicate testing every part, the keys combined."""
        predicate, keys = part()
        parts = [predicate]
        while self.word(word):
            predicate, more = part()
            parts.append(predicate)
            keys = combine(keys, more)
        return (parts[0] if len(parts) == 1 else (lambda e: test(p(e) for p in parts))), keys

    def unary(self) -> tuple[Predicate, Keys]:
        if self.word("not"):
            inner, _ = self.unary()
            return (lambda e: not inner(e)), Keys()
        token = self.peek()
        if token is not None and token[0] == "open":
            self.at += 1
            found = self.expression()
            if self.take()[0] != "close":
                raise _bad_filter("unbalanced parenthesis")
            return found
        return self.comparison()

    def comparison(self) -> tuple[Predicate, Keys]:
        start = self.at
        left = self.operand()
        op = self.take()
        if op[0] != "word" or op[1].lower() not in _COMPARISONS:
            raise _bad_filter(f"expected a comparison, got {op[1]!r}")
        right = self.operand()
        compare = _COMPARISONS[op[1].lower()]
        keys = _pinned(self.tokens[start : self.at])

        def test(entity: Wire) -> bool:
            a, b = left(entity), right(entity)
            if a is None or b is None or not _same_kind(a[0], b[0]):
                return False  # a missing property or a type mismatch matches nothing
            return compare(a[1], b[1])

        return test, keys

    def operand(self) -> Callable[[Wire], tuple[str, Any] | None]:
        kind, text = self.take()
        if kind == "word" and text.lower() in ("true", "false"):
            value = ("Edm.Boolean", text.lower() == "true")
            return lambda _: value
        if kind == "word":
            return lambda entity: _typed(entity, text)
        literal = _literal(kind, text)
        return lambda _: literal


def _same_kind(a: str, b: str) -> bool:
    return a == b or (a in _NUMBER_TYPES and b in _NUMBER_TYPES)


def _bad_filter(why: str) -> FilterError:
    return FilterError(f"cannot parse the filter: {why}")


def _pinned(tokens: list[tuple[str, str]]) -> Keys:
    """``PartitionKey eq 'x'`` or ``RowKey eq 'x'`` (either way round) pins that key."""
    if len(tokens) != 3 or tokens[1][0] != "word" or tokens[1][1].lower() != "eq":
        return Keys()
    (left_kind, left), _, (right_kind, right) = tokens
    if left_kind == "string" and right_kind == "word":
        (left_kind, left), (right_kind, right) = (right_kind, right), (left_kind, left)
    if left_kind != "word" or right_kind != "string":
        return Keys()
    value = frozenset({_unquote(right)})
    if left == "PartitionKey":
        return Keys(partitions=value)
    return Keys(rows=value) if left == "RowKey" else Keys()


def _unquote(text: str) -> str:
    return text[text.index("'") + 1 : -1].replace("''", "'")


def _datetime(text: str) -> datetime:
    # Seven fraction digits (the service's) are more than fromisoformat takes: keep six.
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def _literal(kind: str, text: str) -> tuple[str, Any]:
    if kind == "string":
        return "Edm.String", utf16(_unquote(text))
    if kind == "number":
        if text[-1] in "Ll":
            return "Edm.Int64", int(text[:-1])
        return ("Edm.Double", float(text)) if any(c in text for c in ".eE") else ("Edm.Int32", int(text))
    prefix = text.split("'", 1)[0].lower()
    if prefix == "datetime":
        return "Edm.DateTime", _datetime(_unquote(text))
    if prefix == "guid":
        return "Edm.Guid", _unquote(text).lower()
    return "Edm.Binary", bytes.fromhex(_unquote(text))


def _typed(entity: Wire, name: str) -> tuple[str, Any] | None:
    """A property's (type, comparable value) from its stored form, or None when absent."""
    if name not in entity:
        return None
    value, declared = entity[name], entity.get(f"{name}@odata.type")
    if declared is None:
        if isinstance(value, bool):
            return "Edm.Boolean", value
        if isinstance(value, int):
            return "Edm.Int32", value
        return "Edm.String", utf16(str(value))
    if declared == "Edm.String":
        return declared, utf16(str(value))
    if declared in ("Edm.Int32", "Edm.Int64"):
        return declared, int(value)
    if declared == "Edm.Double":
        return declared, float(value)
    if declared == "Edm.DateTime":
        return declared, _datetime(str(value))
    if declared == "Edm.Guid":
        return declared, str(value).lower()
    if declared == "Edm.Binary":
        return declared, base64.b64decode(value)
    return declared, value


def parse_filter(text: str) -> tuple[Predicate, Keys]:
    """A predicate over stored entities for an OData filter (after parameter substitution),
    and the keys it pins."""
    tokens: list[tuple[str, str]] = []
    at = 0
    while at < len(text.rstrip()):
        match = _TOKEN.match(text, at)
        if match is None or match.lastgroup is None:
            raise _bad_filter(f"unexpected text at {at}: {text[at:at + 20]!r}")
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        at = match.end()
    parser = _Parser(tokens)
    found = parser.expression()
    if parser.peek() is not None:
        raise _bad_filter(f"unexpected {parser.peek()!r}")
    return found
