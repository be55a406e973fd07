"""The in-memory store's filters: the rows looked up by the keys a filter pins are exactly
the rows a scan of the whole table would match, for any filter of the subset.

The store answers ``PartitionKey eq 'p' and (RowKey eq 'a' or ...)`` from those keys
instead of testing every row (``sk_core/storage/_filter.py``); tests/storage/test_memory.py
checks the answers against Azurite for the filters the code writes, this checks the
narrowing itself on generated filters of every shape, in memory.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from sk_core.storage import MemoryTableStore
from sk_core.storage._filter import Keys, parse_filter

PARTITIONS = ["a", "b", "c"]
ROWS = ["r0", "r1", "r2", "é"]


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


KEY = st.sampled_from(["PartitionKey", "RowKey"])
VALUE = st.sampled_from([*PARTITIONS, *ROWS, "o'k", "zz"])
COMPARISON = st.one_of(
    st.builds(
        lambda k, op, v: f"{k} {op} {_quoted(v)}", KEY, st.sampled_from(["eq", "ne", "ge", "lt"]), VALUE
    ),
    st.builds(lambda k, v: f"{_quoted(v)} eq {k}", KEY, VALUE),  # the literal first
    st.builds(lambda n: f"n ge {n}", st.integers(0, 3)),
    st.just("PartitionKey eq 1"),  # another type: matches nothing, pins nothing
)
FILTERS = st.recursive(
    COMPARISON,
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"( {a} ) and ( {b} )", inner, inner),
        st.builds(lambda a, b: f"( {a} ) or ( {b} )", inner, inner),
        st.builds(lambda a: f"not ( {a} )", inner),
    ),
    max_leaves=6,
)


async def _rows() -> Any:
    store = MemoryTableStore(table_prefix="f")
    table = await store.table("t")
    for number, (partition, row) in enumerate((p, r) for p in PARTITIONS for r in ROWS):
        await table.create_entity({"PartitionKey": partition, "RowKey": row, "n": number % 4})
    return table


@given(text=FILTERS)
@example(text="PartitionKey eq 'a' and ( RowKey eq 'r0' or RowKey eq 'o''k' )")
@example(text="( PartitionKey eq 'a' ) or ( RowKey eq 'r1' )")
@example(text="not ( PartitionKey eq 'a' )")
def test_the_keys_a_filter_pins_never_narrow_what_it_matches(text: str) -> None:
    async def compare() -> None:
        table = await _rows()
        predicate, keys = parse_filter(text)
        narrowed = [(key, row) for key, row in table._candidates(keys)]
        everything = table._candidates(Keys())
        # The lookup may give fewer candidates, never fewer matches.
        assert {key for key, row in everything if predicate(_wire(key, row))} == {
            key for key, row in narrowed if predicate(_wire(key, row))
        }
        assert [(e["PartitionKey"], e["RowKey"]) async for e in table.query_entities(text)] == sorted(
            (key for key, row in everything if predicate(_wire(key, row))),
            key=lambda k: (k[0].encode("utf-16-be"), k[1].encode("utf-16-be")),
        )

    asyncio.run(compare())


def test_a_point_query_pins_its_keys_and_an_unpinned_side_of_an_or_pins_nothing() -> None:
    _, keys = parse_filter("PartitionKey eq 't' and ( RowKey eq 'a' or RowKey eq 'b' )")
    assert keys == Keys(frozenset({"t"}), frozenset({"a", "b"}))
    _, keys = parse_filter("PartitionKey eq 't' and ( RowKey eq 'a' or n ge 1 )")
    assert keys == Keys(frozenset({"t"}), None)
    _, keys = parse_filter("not ( PartitionKey eq 't' )")
    assert keys == Keys()


def _wire(key: tuple[str, str], row: Any) -> dict[str, Any]:
    return {**row.wire, "PartitionKey": key[0], "RowKey": key[1], "Timestamp": row.timestamp,
            "Timestamp@odata.type": "Edm.DateTime"}
