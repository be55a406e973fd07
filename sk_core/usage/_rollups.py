"""Hourly rollups of the audit log, with a per-minute series inside, so charts never scan it.

Each audit row (one call: function, status, code, tokens, cost, latency) is added to
its tenant's bucket for the UTC hour it was recorded in: totals, refusals and errors by
code, a latency histogram per function, and per-minute calls and tokens (60 slots). The
buckets are written by the audit flusher, right after the audit rows they summarize are
stored (same table; the tenant's partition without a time bucket, ``_partitions``), so a
bucket never counts a row that was not stored. A bucket whose write failed is written
again at the next flush (the whole bucket: see below); a process killed in between
leaves its stored bucket behind by that flush's rows (the ledger's counters, which every
figure but the hourly charts comes from, are not affected). Until the audit rows moved
to a partition per hour, buckets shared their transaction; they cannot now, as a
transaction holds one partition's rows and a tenant's rollups must stay in one
partition for the charts to read them in one query.

One row per hour, not one per minute: the minute chart of 3 hours reads 4 rows, the
day's charts 25, and the table the storage scans (Azurite scans a whole table per
query) stays small: 24 rows a tenant a day, per writing process.

**Why no ETag here.** Every process (writer) keeps its own cumulative bucket in memory
and its own row per bucket (``rollup-h-<hour>-<writer>``); it rewrites the whole row
each flush. One writer per row and a full-state replace make the write idempotent: a
retried or repeated write stores the same value, so nothing is counted twice and no
conditional update is needed. Readers add the writers' rows of a bucket together.

Retention: ``RETENTION`` (35 days), through the ``expires_at`` the audit purge honours.

Latency is kept as a sparse log-scale histogram (bucket ``i`` holds latencies up to
``2 ** (i / 4)`` ms, 19 % wide), so p50 and p95 are exact to within one bucket and
buckets of any processes and periods merge by addition.

Pure: no I/O, no clock of its own, no Azure SDK (the audit log does the writing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sk_core.storage import int64, read_int

# Re-exported: the hour names were defined here before the partitions needed them.
from sk_core.usage._partitions import bucket_start as bucket_start
from sk_core.usage._partitions import stamp as stamp
from sk_core.usage._partitions import tenant_of

ROLLUP_PREFIX = "rollup-"
HOUR_PREFIX = f"{ROLLUP_PREFIX}h-"
RETENTION = timedelta(days=35)
# How long a writer keeps an hour's bucket after the hour ended; later rows are skipped,
# so an hour that ended longer ago than this is final in storage (readers cache it).
KEEP = timedelta(hours=2)
_BUCKETS_PER_DOUBLING = 4


def latency_bucket(latency_ms: float) -> int:
    """The histogram bucket of a latency: the smallest ``i`` with ``latency <= 2 ** (i/4)``."""
    if latency_ms <= 1:
        return 0
    return math.ceil(math.log2(latency_ms) * _BUCKETS_PER_DOUBLING)


def bucket_bound(index: int) -> float:
    """The upper bound (ms) of a histogram bucket."""
    return float(2 ** (index / _BUCKETS_PER_DOUBLING))


def percentile(histogram: Mapping[int, int], pct: float) -> float | None:
    """The upper bound of the bucket holding the ``pct`` percentile; None when empty."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = math.ceil(total * pct / 100)
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return round(bucket_bound(index), 1)
    return None  # unreachable: seen reaches total


@dataclass
class FunctionStats:
    """One function's calls in a bucket."""

    calls: int = 0
    cost_nano: int = 0
    latency: dict[int, int] = field(default_factory=dict)

    def merge(self, other: FunctionStats) -> None:
        self.calls += other.calls
        self.cost_nano += other.cost_nano
        for index, count in other.latency.items():
            self.latency[index] = self.latency.get(index, 0) + count


@dataclass
class Bucket:
    """What a tenant's audited calls added up to in one minute or hour."""

    calls: int = 0
    errors: int = 0  # answers with status >= 400 (refusals included)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nano: int = 0
    codes: dict[str, int] = field(default_factory=dict)  # error code -> calls
    functions: dict[str, FunctionStats] = field(default_factory=dict)
    # minute of the hour (0-59) -> [calls, tokens]
    minutes: dict[int, list[int]] = field(default_factory=dict)

    def add(self, row: Mapping[str, Any]) -> None:
        """Count one audit row (as ``AuditLog`` builds it)."""
        self.calls += 1
        status = int(row.get("status", 0))
        if status >= 400:
            self.errors += 1
        code = str(row.get("code") or "")
        if code:
            self.codes[code] = self.codes.get(code, 0) + 1
        cost = read_int(row.get("cost_nano"))
        tokens = int(row.get("prompt_tokens", 0)), int(row.get("completion_tokens", 0))
        self.prompt_tokens += tokens[0]
        self.completion_tokens += tokens[1]
        self.cost_nano += cost
        slot = self.minutes.setdefault(row["created_at"].minute, [0, 0])
        slot[0] += 1
        slot[1] += sum(tokens)
        function = str(row.get("function") or "") or "-"
        stats = self.functions.setdefault(function, FunctionStats())
        stats.calls += 1
        stats.cost_nano += cost
        index = latency_bucket(float(row.get("latency_ms", 0.0)))
        stats.latency[index] = stats.latency.get(index, 0) + 1

    def merge(self, other: Bucket) -> None:
        """Add another writer's (or period's) bucket to this one."""
        self.calls += other.calls
        self.errors += other.errors
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_nano += other.cost_nano
        for code, count in other.codes.items():
            self.codes[code] = self.codes.get(code, 0) + count
        for name, stats in other.functions.items():
            self.functions.setdefault(name, FunctionStats()).merge(stats)
        for minute, (calls, tokens) in other.minutes.items():
            slot = self.minutes.setdefault(minute, [0, 0])
            slot[0] += calls
            slot[1] += tokens

    def copy(self) -> Bucket:
        twin = Bucket()
        twin.merge(self)
        return twin

    def entity(self, tenant_id: str, name: str, writer: str) -> dict[str, Any]:
        """The Table entity of this writer's bucket (replaced whole on every flush)."""
        functions = {
            fn: {
                "calls": s.calls,
                "cost_nano": s.cost_nano,
                "latency": {str(i): n for i, n in s.latency.items()},
            }
            for fn, s in self.functions.items()
        }
        return {
            "PartitionKey": tenant_id,
            "RowKey": f"{HOUR_PREFIX}{name}-{writer}",
            "calls": int64(self.calls),
            "errors": int64(self.errors),
            "prompt_tokens": int64(self.prompt_tokens),
            "completion_tokens": int64(self.completion_tokens),
            "cost_nano": int64(self.cost_nano),
            "codes": json.dumps(self.codes, sort_keys=True),
            "functions": json.dumps(functions, sort_keys=True, separators=(",", ":")),
            "minutes": json.dumps(
                {str(m): v for m, v in sorted(self.minutes.items())}, separators=(",", ":")
            ),
            "expires_at": bucket_start(name) + RETENTION,
        }

    @classmethod
    def from_entity(cls, entity: Mapping[str, Any]) -> Bucket:
        """A stored bucket row."""
        functions = {
            fn: FunctionStats(
                calls=int(value["calls"]),
                cost_nano=int(value["cost_nano"]),
                latency={int(i): int(n) for i, n in value["latency"].items()},
            )
            for fn, value in json.loads(entity.get("functions") or "{}").items()
        }
        return cls(
            calls=read_int(entity.get("calls")),
            errors=read_int(entity.get("errors")),
            prompt_tokens=read_int(entity.get("prompt_tokens")),
            completion_tokens=read_int(entity.get("completion_tokens")),
            cost_nano=read_int(entity.get("cost_nano")),
            codes={str(k): int(v) for k, v in json.loads(entity.get("codes") or "{}").items()},
            functions=functions,
            minutes={
                int(m): [int(v[0]), int(v[1])] for m, v in json.loads(entity.get("minutes") or "{}").items()
            },
        )


def bucket_name(row_key: str) -> str:
    """The bucket (hour) of a rollup RowKey ``rollup-h-<hour>-<writer>``."""
    return row_key.removeprefix(HOUR_PREFIX).split("-", 1)[0]


def combine(entities: Iterable[Mapping[str, Any]]) -> dict[str, Bucket]:
    """Stored rows, every writer's rows of a bucket added together, by bucket name."""
    buckets: dict[str, Bucket] = {}
    for entity in entities:
        buckets.setdefault(bucket_name(str(entity["RowKey"])), Bucket()).merge(Bucket.from_entity(entity))
    return buckets


class Rollups:
    """One writer's in-memory buckets, and the rows a flush must write.

    ``plan`` returns updated copies; the audit log keeps them (``commit``) only once
    its transaction has stored the audit rows they count.
    """

    def __init__(self, writer: str, keep: timedelta = KEEP) -> None:
        self.writer = writer
        self._keep = keep
        self._buckets: dict[tuple[str, str], Bucket] = {}
        # Rows older than this are no longer rolled up (their bucket was dropped from
        # memory; restarting it from zero would overwrite the stored total).
        self._dropped_before: datetime | None = None
        self.skipped = 0

    def plan(self, rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Bucket]:
        """The buckets (tenant, hour) these rows change, as updated copies."""
        changed: dict[tuple[str, str], Bucket] = {}
        for row in rows:
            created: datetime = row["created_at"]
            if self._dropped_before is not None and created < self._dropped_before:
                self.skipped += 1
                continue
            key = (tenant_of(str(row["PartitionKey"])), stamp(created))
            if key not in changed:
                changed[key] = self._buckets[key].copy() if key in self._buckets else Bucket()
            changed[key].add(row)
        return changed

    def entities(self, changed: Mapping[tuple[str, str], Bucket]) -> list[dict[str, Any]]:
        """The rows to upsert for ``changed``."""
        return [bucket.entity(tenant, name, self.writer) for (tenant, name), bucket in changed.items()]

    def current(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Bucket]:
        """The buckets of ``keys`` this writer still keeps (as stored once written)."""
        return {key: self._buckets[key] for key in keys if key in self._buckets}

    def commit(self, changed: Mapping[tuple[str, str], Bucket], now: datetime) -> None:
        """Keep the stored state; forget buckets that ended more than ``keep`` ago."""
        self._buckets.update(changed)
        horizon = now - self._keep
        for key in [k for k in self._buckets if bucket_start(k[1]) + timedelta(hours=1) < horizon]:
            del self._buckets[key]
            self._dropped_before = max(self._dropped_before or horizon, horizon)
