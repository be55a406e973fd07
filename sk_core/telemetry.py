"""OpenTelemetry: tracer, meter and logger providers, exporters, and our instruments.

Handlers use only the OpenTelemetry *API* (cheap to import; a no-op until providers
are installed). ``setup_telemetry`` installs the SDK providers once per process, on
first use of the service (not at import, which the Functions host pays for while
indexing), with the exporter the settings select:

- ``azure_monitor`` — Application Insights (``APPLICATIONINSIGHTS_CONNECTION_STRING``),
- ``otlp`` — OTLP over http/protobuf or grpc, configured by the standard
  ``OTEL_EXPORTER_OTLP_*`` variables; where the gRPC exporter cannot load (under the
  Functions worker, whose protobuf is too old for it) it falls back to http/protobuf,
  with a warning,
- ``console`` — JSON lines on stdout, ``none`` — nothing leaves the process,
- ``auto`` (default) — Azure Monitor when its connection string is set, else OTLP when
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else none.

The container host also exposes Prometheus ``/metrics`` from the same meter provider.

Setting telemetry up never fails a request: what cannot be set up is logged once, with
the reason. JSON log lines go to stdout except under the Functions worker, which
forwards Python logging to the host itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

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


# Streamed calls (gen_ai semantic conventions: time_to_first_chunk as the provider's
# client, time_to_first_token / time_per_output_token as our clients' server); the
# conventions have no rate, so tokens per second is ours.
_STREAM_HISTOGRAMS = {
    "time_to_first_chunk": (
        "gen_ai.client.operation.time_to_first_chunk", "s",
        "Streamed model calls: from the start of the call to the provider's first text chunk.",
    ),
    "time_to_first_token": (
        "gen_ai.server.time_to_first_token", "s",
        "Streamed answers: from the start of the call to the first text sent to the client.",
    ),
    "time_per_output_token": (
        "gen_ai.server.time_per_output_token", "s",
        "Streamed answers: time per output token after the first.",
    ),
    "output_token_rate": (
        "sk.stream.output_tokens_per_second", "{token}/s",
        "Streamed answers: output tokens per second, first token to last.",
    ),
}


class Instruments:
    """The metrics we emit; created from whatever meter provider is installed."""

    time_to_first_chunk: metrics.Histogram
    time_to_first_token: metrics.Histogram
    time_per_output_token: metrics.Histogram
    output_token_rate: metrics.Histogram

    def __init__(self, meter: metrics.Meter) -> None:
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used per model call, by token type.",
        )
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="Duration of model calls."
        )
        for attribute, (name, unit, description) in _STREAM_HISTOGRAMS.items():
            setattr(self, attribute, meter.create_histogram(name, unit=unit, description=description))
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
        # Model routing (sk_core/model/_deployments.py): attempts per deployment with the breaker
        # state they saw, and breaker transitions (an open breaker is an alert).
        self.model_attempts = meter.create_counter(
            "sk.model.attempts",
            unit="{attempt}",
            description="Model call attempts by deployment, outcome and breaker state.",
        )
        self.breaker_transitions = meter.create_counter(
            "sk.model.breaker.transitions",
            unit="{transition}",
            description="Circuit breaker state changes by deployment and new state.",
        )
        self.breaker_state = meter.create_observable_gauge(
            "sk.model.breaker.state",
            callbacks=[_observe_breakers],
            unit="{state}",
            description="Circuit breaker state by deployment now: 0 closed, 1 half-open, 2 open.",
        )
        # Budgets against spend (sk_core/usage/_gauges.py keeps the values): bounded to the
        # SKF_BUDGET_GAUGE_TENANTS most recently active tenants of this process, two
        # windows each, so the series count stays bounded whatever the number of tenants.
        self.budget_limit = meter.create_observable_gauge(
            "sk.budget.limit",
            callbacks=[_observe_budget_limits],
            unit="USD",
            description="A tenant's budget for the window (day, month); absent when unlimited.",
        )
        self.budget_remaining = meter.create_observable_gauge(
            "sk.budget.remaining",
            callbacks=[_observe_budget_remaining],
            unit="USD",
            description="Budget minus settled spend for the window (held and leased money not deducted).",
        )
        self.cache_requests = meter.create_counter(
            "sk.cache.requests",
            unit="{request}",
            description="Calls of cacheable functions, by result (hit, miss) and tier (memory, table).",
        )
        self.cost_saved = meter.create_counter(
            "sk.cost.saved",
            unit="USD",
            description="What cache hits would have cost, by tenant and function.",
        )
        # Tool runs (sk_core.tools): model round trips, and tool executions by outcome.
        self.tool_steps = meter.create_counter(
            "sk.tools.steps", unit="{step}", description="Model round trips of tool runs, by function."
        )
        self.tool_calls = meter.create_counter(
            "sk.tools.calls",
            unit="{call}",
            description="Tool executions by tool and outcome (ok, error, timeout, withheld, refused).",
        )
        self.secret_refresh_failures = meter.create_counter(
            "sk.secrets.refresh_failures",
            unit="{failure}",
            description="Secret refreshes that failed (stale served).",
        )


_lock = threading.Lock()
_installed = False
_setup_failure_logged = False  # the reason is logged once, not per retry
_prometheus_reader: Any = None


_tracer: tuple[object, trace.Tracer] | None = None  # (the provider it came from, it)


def tracer() -> trace.Tracer:
    """Our tracer (a no-op one until ``setup_telemetry`` installs the SDK).

    Kept while the global provider stays the same: ``get_tracer`` builds a new tracer
    and instrumentation scope at every call (about 8 us), and a request asks for one
    per span, some eight times before a stream's first byte (issue #23, defect 6)."""
    global _tracer
    provider = trace.get_tracer_provider()
    cached = _tracer
    if cached is None or cached[0] is not provider:
        cached = _tracer = (provider, provider.get_tracer(INSTRUMENTATION, __version__))
    return cached[1]


_instruments: Instruments | None = None


# What the ``sk.model.breaker.state`` gauge reads: (deployment, state) pairs of this
# process's model runtime (``model_runtime.make_health`` registers them; a rebuilt
# runtime replaces them). Read without side effects: collection must not move a breaker.
_breaker_states: Callable[[], Iterable[tuple[str, str]]] | None = None
_BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}


def report_breakers(states: Callable[[], Iterable[tuple[str, str]]]) -> None:
    """Have the breaker-state gauge report ``states()`` from now on."""
    global _breaker_states
    _breaker_states = states
    instruments()  # the gauge exists from the first runtime on


def _observe_breakers(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    states = _breaker_states
    if states is None:
        return []
    return [metrics.Observation(_BREAKER_VALUES[state], {"sk.deployment": name}) for name, state in states()]


# What the budget gauges read: (tenant, window, limit USD, remaining USD) of the tenants
# this process served lately (``usage.BudgetGauges.observations``, refreshed off the
# request path). Collection reads a snapshot: it never touches storage. Held weakly, so a
# service that is gone (tests build several) stops reporting instead of being kept alive.
_budget_sources: list[weakref.WeakMethod[Callable[[], Iterable[tuple[str, str, float, float]]]]] = []


def report_budgets(source: Callable[[], Iterable[tuple[str, str, float, float]]]) -> None:
    """Have the budget gauges also report ``source()`` (a bound method) from now on."""
    _budget_sources[:] = [ref for ref in _budget_sources if ref() is not None]
    _budget_sources.append(weakref.WeakMethod(source))
    instruments()


def _budget_points(remaining: bool) -> list[metrics.Observation]:
    points: dict[tuple[str, str], float] = {}
    for ref in list(_budget_sources):
        source = ref()
        for tenant, window, limit, left in source() if source is not None else ():
            points[(tenant, window)] = left if remaining else limit
    return [
        metrics.Observation(value, {"sk.tenant": tenant, "sk.window": window})
        for (tenant, window), value in points.items()
    ]


def _observe_budget_limits(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    return _budget_points(remaining=False)


def _observe_budget_remaining(options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
    return _budget_points(remaining=True)


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
    # One id per process: every uvicorn worker and every Functions worker process pushes
    # its own cumulative counters, and the collector tells streams apart by this id. A
    # configured id (e.g. the pod's) stays as the prefix so a human still recognises it.
    base = attributes.get("service.instance.id") or socket.gethostname()
    attributes["service.instance.id"] = f"{base}-{os.getpid()}"
    return Resource.create(attributes)


def _parse_resource_attributes(raw: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in raw.split(",") if "=" in item)
    return {key.strip(): value.strip() for key, value in pairs}


def _configured_exporters(settings: Settings, problems: list[str]) -> Exporters:
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
    return _otlp_exporters(problems)


# The ports IANA registered for OTLP: collectors (and the Aspire dashboard, Jaeger...)
# listen on both, so a gRPC endpoint on 4317 has its http/protobuf twin on 4318.
_OTLP_GRPC_PORT, _OTLP_HTTP_PORT = 4317, 4318
_SIGNALS = ("traces", "metrics", "logs")


def _otlp_exporters(problems: list[str]) -> Exporters:
    """OTLP exporters; they read ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout)."""
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as error:
            # Under the Azure Functions Python worker the worker's own folder comes first
            # on sys.path, so the app runs on the worker's protobuf (4.25), and the gRPC
            # exporter's generated code (googleapis-common-protos) needs a newer one. The
            # http/protobuf exporter runs on it: falling back keeps telemetry on, where
            # refusing would leave a Functions app with no telemetry at all.
            endpoints = {signal: _http_twin_of_grpc_endpoint(signal) for signal in _SIGNALS}
            problems.append(
                "OTLP over gRPC is unavailable in this process "
                f"({type(error).__name__}: {error}); exporting OTLP over http/protobuf instead, "
                f"to {endpoints['traces'] or 'the exporter default'} (and /v1/metrics, /v1/logs). "
                "Set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf and the collector's OTLP/HTTP "
                "endpoint to silence this warning."
            )
            return _otlp_http_exporters(endpoints)
        return Exporters(
            spans=[OTLPSpanExporter()],
            metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())],
            logs=[OTLPLogExporter()],
        )
    return _otlp_http_exporters({})


def _otlp_http_exporters(endpoints: dict[str, str | None]) -> Exporters:
    """http/protobuf exporters; ``endpoints`` overrides a signal's URL (else the env's)."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    return Exporters(
        spans=[OTLPSpanExporter(endpoint=endpoints.get("traces"))],
        metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoints.get("metrics")))],
        logs=[OTLPLogExporter(endpoint=endpoints.get("logs"))],
    )


def _http_twin_of_grpc_endpoint(signal: str) -> str | None:
    """The OTLP/HTTP URL for ``signal`` matching the configured gRPC endpoint (None: the
    exporter's default). A gRPC endpoint has no path, so the signal's path is appended;
    the standard gRPC port becomes the standard HTTP one."""
    raw = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not raw:
        return None
    url = urlsplit(raw if "://" in raw else f"http://{raw}")
    netloc = url.netloc
    if url.port == _OTLP_GRPC_PORT:
        netloc = netloc.rsplit(":", 1)[0] + f":{_OTLP_HTTP_PORT}"
    return urlunsplit((url.scheme, netloc, f"{url.path.rstrip('/')}/v1/{signal}", "", ""))


def installed() -> bool:
    """Whether this process's SDK providers are installed (False after a failed setup)."""
    return _installed


def setup_telemetry(settings: Settings, *, host: str, exporters: Exporters | None = None) -> bool:
    """Install the SDK providers once per process; True when this call installed them.

    Never raises: telemetry is not worth a failed request. An exporter that cannot be set
    up is replaced (OTLP gRPC by OTLP http/protobuf) or left out, and said once as a
    warning. If the providers themselves cannot be installed, the process stays on the
    API's no-op providers, ``installed()`` stays False, the reason is logged once as an
    error, and the next call tries again.
    """
    global _installed, _setup_failure_logged
    with _lock:
        if _installed:
            return False
        problems: list[str] = []
        try:
            _install(settings, host, exporters, problems)
        except Exception as error:
            if not _setup_failure_logged:
                _setup_failure_logged = True
                logger.error(
                    "telemetry is off: the OpenTelemetry providers could not be installed "
                    "(%s: %s); requests are served without traces, metrics or exported logs",
                    type(error).__name__,
                    error,
                    exc_info=True,
                )
            return False
        _installed = True
    # After installing, so that these also reach the exporters that did start.
    for problem in problems:
        logger.warning("telemetry: %s", problem)
    return True


def _install(settings: Settings, host: str, exporters: Exporters | None, problems: list[str]) -> None:
    # Everything that can fail (imports, exporters, providers) comes before the first
    # global change, so a failure leaves the process as it was and a retry is clean.
    global _prometheus_reader, _instruments
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.instrumentation.logging.handler import LoggingHandler
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporters is not None:
        chosen = exporters
    else:
        try:
            chosen = _configured_exporters(settings, problems)
        except Exception as error:
            # Traces still carry X-Trace-Id and Prometheus still serves: keep what works.
            problems.append(
                f"no exporter for SKF_TELEMETRY_EXPORTER={settings.telemetry_exporter} "
                f"({type(error).__name__}: {error}); spans, metrics and logs stay in this process"
            )
            chosen = Exporters()
    resource = _resource(host)
    tracer_provider = TracerProvider(resource=resource)
    for span_exporter in chosen.spans:
        tracer_provider.add_span_processor(
            SimpleSpanProcessor(span_exporter) if chosen.synchronous else BatchSpanProcessor(span_exporter)
        )
    readers = list(chosen.metric_readers)
    prometheus_reader = None
    if settings.prometheus_metrics and host == "container":
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        prometheus_reader = PrometheusMetricReader()
        readers.append(prometheus_reader)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    logger_provider = LoggerProvider(resource=resource)
    for log_exporter in chosen.logs:
        logger_provider.add_log_record_processor(
            SimpleLogRecordProcessor(log_exporter)
            if chosen.synchronous
            else BatchLogRecordProcessor(log_exporter)
        )
    log_handler = LoggingHandler(level=logging.INFO, logger_provider=logger_provider)

    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _prometheus_reader = prometheus_reader
    _instruments = None  # rebind to the real meter provider
    set_logger_provider(logger_provider)
    root = logging.getLogger()
    root.addHandler(log_handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    if not under_functions_worker():
        # Under the Functions worker, not: the worker already forwards every record of
        # the root logger to the host over its gRPC channel (RpcLog), and the host also
        # relays the worker's output, so a handler of ours would write each line twice.
        _install_stderr_logging(root, JsonFormatter() if settings.log_format == "json" else TEXT_FORMAT)
    if not settings.genai_sensitive_diagnostics:
        _quiet_third_party_loggers()
    if settings.genai_diagnostics:
        # Semantic Kernel reads these when it is imported (kernel build, later).
        os.environ.setdefault("SEMANTICKERNEL_EXPERIMENTAL_GENAI_ENABLE_OTEL_DIAGNOSTICS", "true")
    if settings.genai_sensitive_diagnostics:
        os.environ.setdefault("SEMANTICKERNEL_EXPERIMENTAL_GENAI_ENABLE_OTEL_DIAGNOSTICS_SENSITIVE", "true")


def under_functions_worker() -> bool:
    """Whether this process is an Azure Functions language worker (the host sets this)."""
    return bool(os.environ.get("FUNCTIONS_WORKER_RUNTIME"))


# Loggers that write provider error text (Semantic Kernel logs the provider's message
# at ERROR, the HTTP clients log request lines and headers). We log our own classified,
# text-free line for each failure instead (sk_core.model._runtime).
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


# ``SKF_LOG_FORMAT=text``: one readable line per record, for a developer's terminal.
TEXT_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s - %(message)s")


def _install_stderr_logging(root: logging.Logger, formatter: logging.Formatter) -> None:
    # stderr: the admin CLI's output (CSV, JSON) goes to stdout and must stay parseable.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
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
