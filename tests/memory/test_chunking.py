"""Token windows with overlap, on the bundled WordPiece tokenizer."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sk_core.memory import Tokenizer
from sk_core.memory._chunking import chunk_spans, chunk_text


@given(
    tokens=st.integers(min_value=0, max_value=400),
    size=st.integers(min_value=1, max_value=64),
    overlap=st.integers(min_value=0, max_value=63),
)
@example(tokens=10, size=10, overlap=0)
@example(tokens=11, size=10, overlap=9)
def test_windows_cover_every_token_within_size_and_overlap(tokens: int, size: int, overlap: int) -> None:
    if overlap >= size:
        with pytest.raises(ValueError, match="overlap"):
            chunk_spans([(0, 1)], size=size, overlap=overlap)
        return
    spans = [(2 * i, 2 * i + 1) for i in range(tokens)]  # one-character tokens, a space apart
    windows = chunk_spans(spans, size=size, overlap=overlap)
    if tokens == 0:
        assert windows == []
        return
    starts = [spans.index(next(s for s in spans if s[0] == a)) for a, _ in windows]
    ends = [next(i for i, s in enumerate(spans) if s[1] == b) for _, b in windows]
    assert starts[0] == 0
    assert ends[-1] == tokens - 1
    for start, end in zip(starts, ends, strict=True):
        assert end - start + 1 <= size
    for (previous_start, previous_end), start in zip(
        zip(starts, ends, strict=True), starts[1:], strict=False
    ):
        # Windows advance, and consecutive ones share at least ``overlap`` tokens.
        assert start > previous_start
        assert previous_end - start + 1 >= overlap


def test_chunks_are_original_text_and_bounded_in_model_tokens() -> None:
    tokenizer = Tokenizer()
    text = " ".join(f"Sentence number {i} talks about invoices, renewals and naps." for i in range(60))
    chunks = chunk_text(text, tokenizer.spans, size=50, overlap=10)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk in text  # a slice of the original, not a detokenised paraphrase
        assert tokenizer.count(chunk) <= 50 + 2  # [CLS] and [SEP]
    assert chunks[0].startswith("Sentence number 0")
    assert chunks[-1].endswith("naps.")
