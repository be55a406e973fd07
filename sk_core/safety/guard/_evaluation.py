"""Corpus evaluation: how well the local detector does on labelled examples.

The corpus has three splits. ``tuning`` is what the rules were written against, so its
rates flatter them. ``held_out`` was written before the rules were tuned for it and must
never be tuned on: its rates are the honest estimate, and the ones the README reports.
``held_out_indirect`` (2026-12) holds what tool results and retrieved documents carry,
persona jailbreaks without keywords and German/French/Spanish paraphrases, written
before any rule was looked at for them; never tuned on either.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TextIO, get_args

from sk_core.safety.guard._detector import Detection, InjectionDetector

CORPUS_DIR: Final = Path(__file__).with_name("corpus")
Split = Literal["tuning", "held_out", "held_out_indirect"]
SPLITS: Final[tuple[Split, ...]] = get_args(Split)


@dataclass(frozen=True, slots=True)
class CorpusItem:
    """One labelled example from the corpus."""

    text: str
    category: str  # the expected category for positives; the kind of text for negatives
    note: str = ""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Detector quality on one split of the corpus."""

    split: str
    positives: int
    detected: int
    negatives: int
    false_positives: int
    per_category: dict[str, tuple[int, int]]  # category -> (detected, total)
    missed: tuple[CorpusItem, ...]
    false_alarms: tuple[tuple[CorpusItem, tuple[str, ...]], ...]
    mean_ms: float
    max_ms: float

    @property
    def detection_rate(self) -> float:
        """Share of positives flagged."""
        return self.detected / self.positives if self.positives else 0.0

    @property
    def false_positive_rate(self) -> float:
        """Share of negatives flagged."""
        return self.false_positives / self.negatives if self.negatives else 0.0


def _read_jsonl(path: Path) -> list[CorpusItem]:
    items: list[CorpusItem] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("//"):
            row = json.loads(line)
            items.append(
                CorpusItem(row["text"], row.get("category", row.get("kind", "")), row.get("note", ""))
            )
    return items


def load_corpus(
    split: Split = "tuning", directory: Path = CORPUS_DIR
) -> tuple[list[CorpusItem], list[CorpusItem]]:
    """(positives, negatives) of one split: ``<split>/positives.jsonl`` and ``negatives.jsonl``."""
    return (
        _read_jsonl(directory / split / "positives.jsonl"),
        _read_jsonl(directory / split / "negatives.jsonl"),
    )


def evaluate(
    detector: InjectionDetector | None = None, split: Split = "tuning", directory: Path = CORPUS_DIR
) -> Evaluation:
    """Run the detector over one split and count hits, misses and false alarms."""
    detector = detector or InjectionDetector()
    positives, negatives = load_corpus(split, directory)
    per_category: dict[str, list[int]] = {}
    missed: list[CorpusItem] = []
    false_alarms: list[tuple[CorpusItem, tuple[str, ...]]] = []
    timings: list[float] = []

    def timed_scan(text: str) -> Detection:
        start = time.perf_counter()
        result = detector.scan([text])
        timings.append((time.perf_counter() - start) * 1000)
        return result

    for item in positives:
        counts = per_category.setdefault(item.category, [0, 0])
        counts[1] += 1
        if timed_scan(item.text).flagged:
            counts[0] += 1
        else:
            missed.append(item)
    for item in negatives:
        detection = timed_scan(item.text)
        if detection.flagged:
            false_alarms.append((item, detection.rule_ids))
    return Evaluation(
        split=split,
        positives=len(positives),
        detected=len(positives) - len(missed),
        negatives=len(negatives),
        false_positives=len(false_alarms),
        per_category={k: (v[0], v[1]) for k, v in sorted(per_category.items())},
        missed=tuple(missed),
        false_alarms=tuple(false_alarms),
        mean_ms=sum(timings) / len(timings) if timings else 0.0,
        max_ms=max(timings, default=0.0),
    )


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sk_core.safety.guard", description="Prompt-injection guard tools."
    )
    parser.add_argument(
        "--evaluate", action="store_true", help="measure the detector on every split of the bundled corpus"
    )
    args = parser.parse_args(argv)
    if not args.evaluate:
        parser.print_help()
        return 2
    detector = InjectionDetector()
    out = sys.stdout
    for split in SPLITS:
        _report(evaluate(detector, split), out)
    return 0


def _report(result: Evaluation, out: TextIO) -> None:
    out.write(f"== {result.split}\n")
    out.write(f"positives: {result.detected}/{result.positives} detected ({result.detection_rate:.1%})\n")
    for category, (hit, total) in result.per_category.items():
        out.write(f"  {category:26s} {hit}/{total}\n")
    out.write(
        f"negatives: {result.false_positives}/{result.negatives} flagged "
        f"(false-positive rate {result.false_positive_rate:.1%})\n"
    )
    out.write(f"scan time per text: mean {result.mean_ms:.3f} ms, max {result.max_ms:.3f} ms\n")
    for item in result.missed:
        out.write(f"MISSED [{item.category}] {item.text[:70]!r}\n")
    for item, rules in result.false_alarms:
        out.write(f"FALSE ALARM [{item.category}] {','.join(rules)} {item.text[:70]!r}\n")
