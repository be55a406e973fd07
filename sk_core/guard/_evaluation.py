"""Corpus evaluation: how well the local detector does on labelled examples."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sk_core.guard._detector import Detection, InjectionDetector

CORPUS_DIR: Final = Path(__file__).with_name("corpus")


@dataclass(frozen=True, slots=True)
class CorpusItem:
    """One labelled example from ``guard_corpus``."""

    text: str
    category: str  # the expected category for positives; the kind of text for negatives
    note: str = ""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Detector quality on the corpus."""

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


def load_corpus(directory: Path = CORPUS_DIR) -> tuple[list[CorpusItem], list[CorpusItem]]:
    """(positives, negatives) from ``positives.jsonl`` and ``negatives.jsonl``."""
    return _read_jsonl(directory / "positives.jsonl"), _read_jsonl(directory / "negatives.jsonl")


def evaluate(detector: InjectionDetector | None = None, directory: Path = CORPUS_DIR) -> Evaluation:
    """Run the detector over the corpus and count hits, misses and false alarms."""
    detector = detector or InjectionDetector()
    positives, negatives = load_corpus(directory)
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
        prog="python -m sk_core.guard", description="Prompt-injection guard tools."
    )
    parser.add_argument("--evaluate", action="store_true", help="measure the detector on the bundled corpus")
    args = parser.parse_args(argv)
    if not args.evaluate:
        parser.print_help()
        return 2
    result = evaluate()
    out = sys.stdout
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
    return 0
