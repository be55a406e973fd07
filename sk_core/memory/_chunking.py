"""Token-based chunking with overlap, aligned to the tokenizer's character offsets."""

from __future__ import annotations

from collections.abc import Callable


def chunk_spans(spans: list[tuple[int, int]], *, size: int, overlap: int) -> list[tuple[int, int]]:
    """Character ranges of consecutive windows of ``size`` tokens, each starting
    ``size - overlap`` tokens after the previous one; the last window ends at the last
    token. ``spans`` are the tokens' (start, end) offsets."""
    if size <= 0 or not 0 <= overlap < size:
        raise ValueError("need 0 <= overlap < size")
    if not spans:
        return []
    step = size - overlap
    windows: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + size, len(spans))
        windows.append((spans[start][0], spans[end - 1][1]))
        if end == len(spans):
            return windows
        start += step


def chunk_text(
    text: str, tokens: Callable[[str], list[tuple[int, int]]], *, size: int, overlap: int
) -> list[str]:
    """``text`` cut into chunks of at most ``size`` tokens overlapping by ``overlap``
    (the original characters between the first and last token of each window)."""
    return [text[a:b] for a, b in chunk_spans(tokens(text), size=size, overlap=overlap)]
