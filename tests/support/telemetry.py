"""The in-memory OpenTelemetry exporters the whole test process records into."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@dataclass
class TelemetrySink:
    """In-memory OpenTelemetry exporters installed for the whole test process."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    logs: InMemoryLogRecordExporter
