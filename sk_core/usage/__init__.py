"""Usage: the audit log, the hourly rollups written with it, and the usage read model
(CLI, usage API, admin API, CSV, charts)."""

from __future__ import annotations

from sk_core.usage._audit import ANONYMOUS, AUDIT_TABLE, AuditEntry, AuditLog
from sk_core.usage._gauges import BudgetGauges
from sk_core.usage._history import RollupHistory, history_for
from sk_core.usage._overview import overview_document, summarize
from sk_core.usage._read_model import (
    CHART_DAYS,
    UsageResponse,
    Window,
    current_windows,
    day_window,
    detail,
    last_days,
    month_window,
    overview,
    read_windows,
    usage_csv,
    usage_of,
    window_entry,
)
from sk_core.usage._rollups import (
    HOUR_PREFIX,
    ROLLUP_PREFIX,
    Bucket,
    Rollups,
    bucket_bound,
    combine,
    latency_bucket,
    percentile,
    stamp,
)

__all__ = [
    "ANONYMOUS",
    "AUDIT_TABLE",
    "CHART_DAYS",
    "HOUR_PREFIX",
    "ROLLUP_PREFIX",
    "AuditEntry",
    "AuditLog",
    "Bucket",
    "BudgetGauges",
    "RollupHistory",
    "Rollups",
    "UsageResponse",
    "Window",
    "bucket_bound",
    "combine",
    "current_windows",
    "day_window",
    "detail",
    "history_for",
    "last_days",
    "latency_bucket",
    "month_window",
    "overview",
    "overview_document",
    "percentile",
    "read_windows",
    "stamp",
    "summarize",
    "usage_csv",
    "usage_of",
    "window_entry",
]
