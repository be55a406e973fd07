"""Reading metric points from the in-memory telemetry sink (tests/support/telemetry.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.support.telemetry import TelemetrySink


def metric_points(sink: TelemetrySink, name: str) -> list[Any]:
    """Every data point recorded so far for the metric ``name``."""
    data = sink.metrics.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]
