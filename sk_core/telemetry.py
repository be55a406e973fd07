"""OpenTelemetry: tracer, meter and logger providers, exporters, and our instruments.

Handlers use only the OpenTelemetry *API* (cheap to import; a no-op until providers
are installed). ``setup_telemetry`` installs the SDK providers once per process, on
first use of the service (not at import, which the Functions host pays for while
indexing), with the exporter the settings select:

- ``azure_monitor`` — Application Insights (``APPLICATIONINSIGHTS_CONNECTION_STRING``),
- ``otlp`` — OTLP over http/protobuf or grpc, configured by the standard
  ``OTEL_EXPORTER_OTLP_*`` variables,
- ``console`` — JSON lines on stdout, ``none`` — nothing leaves the process,
- ``auto`` (default) — Azure Monitor when its connection string is set, else OTLP when
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else none.

The container host also exposes Prometheus ``/metrics`` from the same meter provider.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

from sk_core import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.trace.export import SpanExporter

    from sk_core.settings import Settings

logger = logging.getLogger(__name__)

INSTRUMENTATION = "sk_functions"
SERVICE_NAME = "sk-functions"
TRACE_ID_HEADER = "X-Trace-Id"


class Instruments:
    """The metrics we emit; created from whatever meter provider is installed."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used per model call, by token type.",
        )
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Duration of model calls."
        )
        self.http_duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="HTTP request duration (its count is the request count).",
        )
        self.cost = meter.create_counter(
            "sk.cost", unit="USD", description="Cost charged to tenants, by tenant, model and function."
        )
        self.refusals = meter.create_counter(
            "sk.refusals",
            unit="{request}",
            description="Requests refused, by reason (rate, budget, auth, validation...).",
        )
        self.secret_refresh_failures = meter.create_counter(
            "sk.secrets.refresh_failures",
            unit="{failure}",
            description="Secret refreshes that failed (stale served).",
        )


_lock = threading.Lock()
_installed = False
_prometheus_reader: Any = None


def tracer() -> trace.Tracer:
    """Our tracer (a no-op one until ``setup_telemetry`` installs the SDK)."""
    return trace.get_tracer(INSTRUMENTATION, __version__)


_instruments: Instruments | None = None


def instruments() -> Instruments:
    """Our instruments, bound to the installed meter provider."""
    global _instruments
    if _instruments is None:
        _instruments = Instruments(metrics.get_meter(INSTRUMENTATION, __version__))
    return _instruments


@dataclass(frozen=True)
class Exporters:
    """Where telemetry goes; tests pass in-memory exporters."""

    spans: Sequence[SpanExporter] = ()
    metric_readers: Sequence[MetricReader] = ()
    logs: Sequence[LogRecordExporter] = ()
    synchronous: bool = False  # export each span/log as it ends (tests), not in batches


def _resource(host: str) -> Any:
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, Any] = {
        "service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME),
        "service.version": __version__,
        "sk.host": host,
    }
    if os.environ.get("WEBSITE_SITE_NAME"):  # set by Azure Functions / App Service
        attributes.update(
            {
                "cloud.provider": "azure",
                "cloud.platform": "azure_functions",
                "faas.name": os.environ["WEBSITE_SITE_NAME"],
            }
        )
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        attributes.update(
            {
                "cloud.provider": os.environ.get("SKF_CLOUD_PROVIDER", "azure"),
                "k8s.pod.name": os.environ.get("POD_NAME", socket.gethostname()),
                "k8s.namespace.name": os.environ.get("POD_NAMESPACE", ""),
            }
        )
    attributes.update(_parse_resource_attributes(os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    return Resource.create(attributes)


def _parse_resource_attributes(raw: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in raw.split(",") if "=" in item)
    return {key.strip(): value.strip() for key, value in pairs}


def _configured_exporters(settings: Settings) -> Exporters:
    choice = settings.telemetry_exporter
    if choice == "auto":
        if os.environ.get("APPLICATIONINSIGHTS_CONNECTION_STRING"):
            choice = "azure_monitor"
        elif os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        ):
            choice = "otlp"
        else:
            choice = "none"
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    if choice == "none":
        return Exporters()
    if choice == "console":
        from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return Exporters(
            spans=[ConsoleSpanExporter()],
            metric_readers=[PeriodicExportingMetricReader(ConsoleMetricExporter())],
            logs=[ConsoleLogRecordExporter()],
        )
    if choice == "azure_monitor":
        from azure.monitor.opentelemetry.exporter import (
            AzureMonitorLogExporter,
            AzureMonitorMetricExporter,
            AzureMonitorTraceExporter,
        )

        connection = os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"]
        return Exporters(
            spans=[AzureMonitorTraceExporter(connection_string=connection)],
            metric_readers=[
                PeriodicExportingMetricReader(AzureMonitorMetricExporter(connection_string=connection))
            ],
            logs=[AzureMonitorLogExporter(connection_string=connection)],
        )
    # otlp: the exporters read OTEL_EXPORTER_OTLP_* (endpoint, headers, timeout) themselves.
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # type: ignore[assignment]
            OTLPLogExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return Exporters(
        spans=[OTLPSpanExporter()],
        metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())],
        logs=[OTLPLogExporter()],
    )


def setup_telemetry(settings: Settings, *, host: str, exporters: Exporters | None = None) -> bool:
    """Install the SDK providers once per process; returns False if already installed."""
    global _installed, _prometheus_reader, _instruments
    with _lock:
        if _installed:
            return False
        _installed = True
        from opentelemetry._logs import set_logger_provider
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        chosen = exporters if exporters is not None else _configured_exporters(settings)
        resource = _resource(host)
        tracer_provider = TracerProvider(resource=resource)
        for span_exporter in chosen.spans:
            tracer_provider.add_span_processor(
                SimpleSpanProcessor(span_exporter)
                if chosen.synchronous
                else BatchSpanProcessor(span_exporter)
            )
        trace.set_tracer_provider(tracer_provider)

        readers = list(chosen.metric_readers)
        if settings.prometheus_metrics and host == "container":
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            _prometheus_reader = PrometheusMetricReader()
            readers.append(_prometheus_reader)
        metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
        _instruments = None  # rebind to the real meter provider

        logger_provider = LoggerProvider(resource=resource)
        for log_exporter in chosen.logs:
            logger_provider.add_log_record_processor(
                SimpleLogRecordProcessor(log_exporter)
                if chosen.synchronous
                else BatchLogRecordProcessor(log_exporter)
            )
        set_logger_provider(logger_provider)
        root = logging.getLogger()
        root.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        if settings.log_format == "json":
            _install_json_stdout_logging(root)
        if not settings.genai_sensitive_diagnostics:
            _quiet_third_party_loggers()
        if settings.genai_diagnostics:
            # Semantic Kernel reads these when it is imported (kernel build, later).
            os.environ.setdefault("SEMANTICKERNEL_EXPERIMENTAL_GENAI_ENABLE_OTEL_DIAGNOSTICS", "true")
        if settings.genai_sensitive_diagnostics:
            os.environ.setdefault(
                "SEMANTICKERNEL_EXPERIMENTAL_GENAI_ENABLE_OTEL_DIAGNOSTICS_SENSITIVE", "true"
            )
        return True


# Loggers that write provider error text (Semantic Kernel logs the provider's message
# at ERROR, the HTTP clients log request lines and headers). We log our own classified,
# text-free line for each failure instead (sk_core.model_runtime).
_QUIET_LOGGERS = {
    "semantic_kernel": logging.CRITICAL,
    "openai": logging.WARNING,
    "httpx": logging.WARNING,
    "httpx2": logging.WARNING,
    "httpcore": logging.WARNING,
    "httpcore2": logging.WARNING,
    "azure": logging.WARNING,
}


def _quiet_third_party_loggers() -> None:
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the active trace and span ids for correlation."""

    def format(self, record: logging.LogRecord) -> str:
        span = trace.get_current_span().get_span_context()
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exception"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(entry)


def _install_json_stdout_logging(root: logging.Logger) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)


def prometheus_payload() -> tuple[bytes, str] | None:
    """The Prometheus exposition of our metrics, or None when not enabled."""
    if _prometheus_reader is None:
        return None
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def current_trace_id() -> str | None:
    """The active trace id as 32 hex digits, if any."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
