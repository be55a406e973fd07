"""The `docker compose` stack, checked where no container engine can pull images.

- compose.yaml against the Compose specification's JSON schema (check-jsonschema), plus
  what the schema cannot see: pinned images, files that exist, health checks behind
  every `service_healthy`, one `.env.example` for every interpolated variable, the app
  environment accepted by our Settings and pointing at the right services and ports.
- The collector, Prometheus and Grafana configs: parsed, and every reference between
  them (pipelines -> components, exporter -> scrape target, dashboard -> data source)
  resolved.
- The dashboard against what the app really exports: the container host runs in its
  own process, takes traffic (a success, an auth refusal, a budget refusal, a failed
  secret refresh), and pushes OTLP to a receiver here. The Prometheus names the
  collector will expose are derived from those OTLP metrics with the collector's
  translation rules (prometheus/otlptranslator, UnderscoreEscapingWithSuffixes, no
  namespace), checked equal to the app's own /metrics (the Python exporter implements
  the same rules), and every metric name, label and label value the dashboard queries
  must be among them.
- The tenant-setup job's script, run for real against Azurite: it creates `dev` once
  and prints a key that the service accepts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from scripts.devservices import ROOT, free_port, start_service
from sk_core.accounts import parse_key
from sk_core.storage import development_connection_string
from tests.support.settings import make_settings
from tests.support.stub_model import StubModelProcess

COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "infra" / "container" / "Dockerfile"
COLLECTOR = ROOT / "infra" / "compose" / "otel-collector.yaml"
PROMETHEUS = ROOT / "infra" / "compose" / "prometheus.yaml"
GRAFANA = ROOT / "infra" / "compose" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sk-functions.json"
PROMETHEUS_RULES = ROOT / "infra" / "compose" / "prometheus-rules.yaml"
SUMMARIZE = "/api/v1/summarize"

# ${NAME} or ${NAME:-default}; `$$` is compose's escape for a literal `$`.
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(text: str, env: Mapping[str, str] | None = None) -> str:
    """Compose's interpolation for the forms compose.yaml uses (unset -> the default)."""
    values = env or {}
    escaped = text.replace("$$", "\0")
    resolved = _VARIABLE.sub(lambda m: values.get(m["name"], m["default"] or ""), escaped)
    return resolved.replace("\0", "$")


def compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as compose would see it (anchors merged, variables interpolated)."""
    document: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    return document


def env_example() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    return {key.strip(): value.strip() for key, value in pairs}


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"//{url}")
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    return parts.hostname, parts.port


# --- compose.yaml ---------------------------------------------------------------------


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    result = check_compose_schema(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same check refuses a misspelt key, so the pass above means something.
    broken = compose()
    broken["services"]["api"]["depends_on"]["azurite"]["conditon"] = "service_healthy"
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    result = check_compose_schema(tmp_path / "compose.yaml")
    assert result.returncode != 0
    assert "conditon" in result.stdout + result.stderr


def test_every_image_is_pinned_and_every_mounted_file_exists() -> None:
    services = compose()["services"]
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image}"
        assert tag not in ("", "latest"), f"{name}: pin a tag ({image})"
        if "build" in service:
            build = service["build"]
            dockerfile = ROOT / build["context"] / build["dockerfile"]
            assert re.search(rf"^FROM .+ AS {build['target']}$", dockerfile.read_text(), re.MULTILINE), name
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
    # One image for the API, the model and the admin job: built once, same code everywhere.
    built = {name for name, service in services.items() if "build" in service}
    assert built == {"api", "local-model", "tenant-setup"}
    assert len({services[name]["image"] for name in built}) == 1


def test_dependencies_that_must_be_healthy_have_health_checks() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                check = services[dependency].get("healthcheck", {})
                assert check.get("test"), f"{dependency} has no health check"
                assert not check.get("disable"), f"{dependency} has its health check disabled"
    api = services["api"]["depends_on"]
    assert api["azurite"]["condition"] == api["local-model"]["condition"] == "service_healthy"
    assert services["tenant-setup"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_env_example_lists_every_interpolated_variable_with_its_default() -> None:
    text = COMPOSE.read_text().replace("$$", "")
    defaults = {m["name"]: m["default"] for m in _VARIABLE.finditer(text)}
    assert defaults, "compose.yaml interpolates nothing?"
    assert env_example() == defaults


def test_app_environment_is_valid_and_points_at_the_compose_services() -> None:
    document = compose()
    services = document["services"]
    env = services["api"]["environment"]
    settings = make_settings({k: v for k, v in env.items() if k.startswith("SKF_")})
    assert settings.price.input_per_million > 0  # the cost panels need a non-zero price
    # The API and the admin job share storage, pepper and table prefix (keys must verify).
    shared = document["x-app-environment"]
    assert {"SKF_STORAGE_CONNECTION_STRING", "SKF_API_KEY_PEPPER"} <= set(shared)
    for name in ("api", "tenant-setup"):
        environment = services[name]["environment"]
        assert {k: environment[k] for k in shared} == shared, name
    # Azurite: the well-known development key, by service name, on the ports it listens on.
    connection = dict(part.split("=", 1) for part in env["SKF_STORAGE_CONNECTION_STRING"].split(";") if part)
    ours = dict(part.split("=", 1) for part in development_connection_string().split(";") if part)
    assert connection["AccountKey"] == ours["AccountKey"]
    azurite = services["azurite"]["command"]
    for kind, port in (("Blob", 10000), ("Queue", 10001), ("Table", 10002)):
        assert host_port(connection[f"{kind}Endpoint"]) == ("azurite", port)
        assert azurite[azurite.index(f"--{kind.lower()}Host") + 1] == "0.0.0.0"
    # The local model, on the port its command line opens.
    model = services["local-model"]["command"]
    assert model[:2] == ["python", "scripts/local_model.py"]
    assert (ROOT / model[1]).exists()
    assert host_port(env["SKF_MODEL_BASE_URL"]) == ("local-model", int(model[model.index("--port") + 1]))
    assert model[model.index("--host") + 1] == "0.0.0.0"
    # OTLP/HTTP to the collector's http receiver.
    collector = yaml.safe_load(COLLECTOR.read_text())
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    receiver = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert host_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == ("otel-collector", host_port(receiver)[1])
    assert env["WEB_CONCURRENCY"] == "1"


# --- collector, Prometheus, Grafana ---------------------------------------------------


def test_collector_pipelines_reference_defined_components_and_reach_the_backends() -> None:
    config = yaml.safe_load(COLLECTOR.read_text())
    service = config["service"]
    used: dict[str, set[str]] = defaultdict(set)
    assert set(service["pipelines"]) == {"traces", "metrics", "logs"}
    for name, pipeline in service["pipelines"].items():
        assert pipeline["receivers"], name
        assert pipeline["exporters"], name
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"pipeline {name}: {kind} {component} is not defined"
                used[kind].add(component)
    for kind in ("receivers", "processors", "exporters"):
        assert set(config[kind]) == used[kind], f"defined but unused {kind}"
    assert set(service["extensions"]) == set(config["extensions"])
    # Traces reach Jaeger's OTLP gRPC port; the Prometheus exporter is what Prometheus scrapes.
    services = compose()["services"]
    jaeger = config["exporters"]["otlp_grpc/jaeger"]["endpoint"]
    assert host_port(jaeger) == ("jaeger", 4317)
    assert "jaeger" in services
    assert "otlp_grpc/jaeger" in service["pipelines"]["traces"]["exporters"]
    prometheus_exporter = config["exporters"]["prometheus"]
    assert "prometheus" in service["pipelines"]["metrics"]["exporters"]
    assert prometheus_exporter["translation_strategy"] == "UnderscoreEscapingWithSuffixes"
    assert "namespace" not in prometheus_exporter  # the dashboard's names carry none
    scrape = yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
    targets = [t for job in scrape for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"otel-collector:{host_port(prometheus_exporter['endpoint'])[1]}"]
    volumes = services["otel-collector"]["volumes"]
    mounted = next(v for v in volumes if v.startswith("./infra/compose/otel-collector.yaml:"))
    assert services["otel-collector"]["command"] == [f"--config={mounted.split(':')[1]}"]


def test_grafana_provisioning_resolves_data_sources_and_the_dashboard_folder() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text())
    by_uid = {source["uid"]: source for source in sources["datasources"]}
    services = compose()["services"]
    for source in by_uid.values():
        assert host_port(source["url"])[0] in services, source["name"]
    assert host_port(by_uid["prometheus"]["url"])[1] == 9090
    assert host_port(by_uid["jaeger"]["url"])[1] == 16686
    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        item["datasource"]["uid"]
        for panel in dashboard["panels"]
        for item in [panel, *panel.get("targets", [])]
        if "datasource" in item
    }
    assert used == {"prometheus"}
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text())
    [provider] = providers["providers"]
    grafana = services["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./infra/compose/grafana/dashboards"] == provider["options"]["path"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


# --- PromQL references ----------------------------------------------------------------

_AGGREGATIONS = {
    "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values", "limitk", "limit_ratio",
}  # fmt: skip
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "and", "or", "unless", "inf", "nan"}  # fmt: skip
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


@dataclass
class PromqlRefs:
    """The metric names, label names and exact label values one PromQL expression uses."""

    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    exact: set[tuple[str, str]] = field(default_factory=set)


def promql_refs(expr: str) -> PromqlRefs:
    """Enough of PromQL for dashboards: selectors, matchers, grouping clauses."""
    refs = PromqlRefs()
    for selector in re.findall(r"\{([^}]*)\}", expr):
        for label, op, value in _MATCHER.findall(selector):
            refs.labels.add(label)
            if op == "=":
                refs.exact.add((label, value))
    for group in _GROUPING.findall(expr):
        refs.labels.update(label.strip() for label in group.split(",") if label.strip())
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    bare = _GROUPING.sub(" ", bare)
    for name, call in _IDENTIFIER.findall(bare):
        if call or name in _AGGREGATIONS or name in _KEYWORDS:
            continue
        refs.metrics.add(name)
    return refs


def test_the_promql_reader_finds_names_labels_and_values() -> None:
    refs = promql_refs(
        'histogram_quantile(0.95, sum by (le, http_route) (rate(a_seconds_bucket{http_route=~"$route", '
        'reason="budget"}[$__rate_interval]))) / on (job) group_left sum without (x) (b_total) * 60'
    )
    assert refs.metrics == {"a_seconds_bucket", "b_total"}
    assert refs.labels == {"le", "http_route", "reason", "job", "x"}
    assert refs.exact == {("reason", "budget")}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"]).groups()  # type: ignore[union-attr]
        queries.append((f"${variable['name']}", f"group by ({label}) ({metric})"))
    # The alert rule examples Prometheus loads beside the dashboard.
    rules = yaml.safe_load(PROMETHEUS_RULES.read_text())
    queries += [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]
    return queries


# --- what the app exports, and what the collector will make of it ---------------------

# prometheus/otlptranslator (the collector's prometheus exporter, and Prometheus's own
# OTLP endpoint) — unit_namer.go / metric_namer.go.
_UNITS = {
    "d": "days", "h": "hours", "min": "minutes", "s": "seconds", "ms": "milliseconds",
    "us": "microseconds", "ns": "nanoseconds", "By": "bytes", "KiBy": "kibibytes",
    "MiBy": "mebibytes", "GiBy": "gibibytes", "TiBy": "tibibytes", "KBy": "kilobytes",
    "MBy": "megabytes", "GBy": "gigabytes", "TBy": "terabytes", "m": "meters", "V": "volts",
    "A": "amperes", "J": "joules", "W": "watts", "g": "grams", "Cel": "celsius", "Hz": "hertz",
    "1": "", "%": "percent",
}  # fmt: skip
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}


def _clean_unit(unit: str) -> str:
    return re.sub(r"__+", "_", re.sub(r"[^a-zA-Z0-9:]", "_", unit)).removeprefix("_")


def collector_metric_name(name: str, unit: str, kind: str) -> str:
    """The exposed name under UnderscoreEscapingWithSuffixes with no namespace."""
    tokens = [token for token in re.split(r"[^a-zA-Z0-9:]", name) if token]
    main, _, per = (part.strip() for part in unit.partition("/"))
    main_suffix = "" if not main or "{" in main or "}" in main else _UNITS.get(main, main)
    per_suffix = "" if not per or "{" in per or "}" in per else "per_" + _PER_UNITS.get(per, per)
    main_suffix, per_suffix = _clean_unit(main_suffix), _clean_unit(per_suffix)
    if main_suffix in tokens:
        main_suffix = ""
    per_suffix = "" if per_suffix == "per_" else per_suffix.removesuffix("_")
    if per_suffix in tokens:
        per_suffix = ""
    if per_suffix:
        main_suffix = main_suffix.removesuffix("_")
    tokens += [suffix for suffix in (main_suffix, per_suffix) if suffix]
    if kind == "counter":
        tokens = [token for token in tokens if token != "total"] + ["total"]
    if unit == "1" and kind == "gauge":
        tokens = [token for token in tokens if token != "ratio"] + ["ratio"]
    exposed = "_".join(tokens)
    return f"_{exposed}" if exposed[:1].isdigit() else exposed


def collector_label_name(key: str) -> str:
    label = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    return f"key_{label}" if label[:1].isdigit() else label


def test_the_name_translation_matches_the_collectors_documented_examples() -> None:
    # Examples from otlptranslator's own documentation and tests.
    assert collector_metric_name("http.server.duration", "s", "histogram") == "http_server_duration_seconds"
    assert collector_metric_name("requests.count", "1", "counter") == "requests_count_total"
    assert collector_metric_name("memory.usage", "By", "gauge") == "memory_usage_bytes"
    assert collector_metric_name("system.io", "By/s", "counter") == "system_io_bytes_per_second_total"
    assert collector_metric_name("cpu.utilization", "1", "gauge") == "cpu_utilization_ratio"
    assert collector_metric_name("queue.depth", "{message}", "gauge") == "queue_depth"


Series = dict[str, set[tuple[tuple[str, str], ...]]]  # sample name -> label sets


def series_from_otlp(bodies: list[bytes]) -> Series:
    """The series the collector's Prometheus exporter would expose for these OTLP exports."""
    series: Series = defaultdict(set)
    for body in bodies:
        for resource in ExportMetricsServiceRequest.FromString(body).resource_metrics:
            attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
            identity = {"job": attributes["service.name"], "instance": attributes["service.instance.id"]}
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    data = metric.WhichOneof("data")
                    if data == "sum":
                        kind = "counter" if metric.sum.is_monotonic else "gauge"
                    else:
                        assert data in ("histogram", "gauge"), f"{metric.name}: {data} not mapped here"
                        kind = data
                    name = collector_metric_name(metric.name, metric.unit, kind)
                    for point in getattr(metric, data).data_points:
                        labels = {collector_label_name(a.key): _value(a.value) for a in point.attributes}
                        labels.update(identity)
                        if kind == "histogram":
                            series[f"{name}_bucket"].add(tuple(sorted({**labels, "le": "+Inf"}.items())))
                            for suffix in ("_sum", "_count"):
                                series[name + suffix].add(tuple(sorted(labels.items())))
                        else:
                            series[name].add(tuple(sorted(labels.items())))
    return series


def _value(value: Any) -> str:
    kind = value.WhichOneof("value")
    return str(getattr(value, kind)) if kind else ""


def series_from_exposition(text: str) -> Series:
    """The series in a Prometheus text exposition, without the SDK's own bookkeeping."""
    series: Series = defaultdict(set)
    for family in text_string_to_metric_families(text):
        if family.name == "target_info":
            continue
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope_")}
            if sample.name.endswith("_bucket"):
                labels["le"] = "+Inf"  # one bucket stands for all
            series[sample.name].add(tuple(sorted(labels.items())))
    return series


def label_names(series: Series, name: str) -> set[str]:
    return {key for labels in series[name] for key, _ in labels}


def label_values(series: Series, name: str, label: str) -> set[str]:
    return {value for labels in series[name] for key, value in labels if key == label}


class _OtlpMetricsReceiver(BaseHTTPRequestHandler):
    bodies: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/metrics":
            self.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def otlp_metrics() -> Iterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP endpoint on loopback that keeps every metrics export."""
    bodies: list[bytes] = []
    handler = type("Receiver", (_OtlpMetricsReceiver,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def admin(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sk_core.admin", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_tenant_setup(overrides: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """The tenant-setup service's own script, with its compose environment and ``python``
    from this virtualenv (the image's is the same package set)."""
    job = compose()["services"]["tenant-setup"]
    assert job["entrypoint"] == ["sh", "-c"]
    env = {
        **os.environ,
        **job["environment"],
        **overrides,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(
        ["sh", "-c", job["command"][0]], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180
    )


def issued_key(output: str) -> str:
    keys = re.findall(r"^(\S+)$", output, re.MULTILINE)
    assert len(keys) == 1, output
    return str(keys[0])


@dataclass
class Exported:
    """What the running service exported after the traffic below."""

    otlp: Series
    exposition: Series
    dev_key: str


@pytest.fixture(scope="module")
def exported(
    otlp_metrics: tuple[str, list[bytes]],
    service_env: dict[str, str],
    stub_process: StubModelProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Exported]:
    endpoint, bodies = otlp_metrics
    stub_process.client.reset()
    # Tables of their own, so `dev` here is this module's alone.
    prefix = "compose" + os.urandom(3).hex()
    shared = {
        "SKF_STORAGE_CONNECTION_STRING": service_env["SKF_STORAGE_CONNECTION_STRING"],
        "SKF_API_KEY_PEPPER": service_env["SKF_API_KEY_PEPPER"],
        "SKF_STORAGE_TABLE_PREFIX": prefix,
    }
    first = run_tenant_setup(shared)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created tenant dev" in first.stdout
    again = run_tenant_setup(shared)  # a second `docker compose up`: no duplicate, a new key
    assert again.returncode == 0, again.stdout + again.stderr
    assert "created tenant" not in again.stdout
    dev_key = issued_key(again.stdout)
    assert dev_key != issued_key(first.stdout)
    created = admin(shared, "tenant", "create", "broke", "--name", "No budget", "--daily-usd", "0")
    assert created.returncode == 0, created.stderr
    broke_key = json.loads(admin(shared, "--json", "key", "issue", "broke").stdout)["key"]

    telemetry = {
        **service_env,
        **shared,
        "SKF_TELEMETRY_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_SERVICE_NAME": "sk-functions",
    }
    logs = tmp_path_factory.mktemp("compose")
    # One service as compose runs it, and one whose Key Vault is unreachable (a closed
    # port on loopback; only the environment credential, so nothing probes for a
    # managed identity): the only way to a real secret refresh failure.
    service = start_service(
        port=(port := free_port()),
        env={**telemetry, "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=api"},
        log=logs / "api.log",
    )
    vaultless = start_service(
        port=(vaultless_port := free_port()),
        env={
            **telemetry,
            "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=vaultless",
            "SKF_KEY_VAULT_URL": f"https://127.0.0.1:{free_port()}",
            "AZURE_TOKEN_CREDENTIALS": "EnvironmentCredential",
        },
        log=logs / "vaultless.log",
    )
    try:
        exposition = asyncio.run(_traffic(port, vaultless_port, dev_key, broke_key))
        deadline = time.monotonic() + 30
        while True:
            otlp = series_from_otlp(list(bodies))
            refusals = _pairs(otlp, "sk_refusals_total")
            if (
                ("secret", "api-key-pepper") in _pairs(otlp, "sk_secrets_refresh_failures_total")
                and {("reason", "budget"), ("reason", "auth")} <= refusals
                and ("sk_window", "day") in _pairs(otlp, "sk_budget_limit_USD")
            ):
                break
            assert time.monotonic() < deadline, f"OTLP exports incomplete: {sorted(otlp)}"
            time.sleep(0.2)
        yield Exported(otlp=otlp, exposition=exposition, dev_key=dev_key)
    finally:
        service.stop()
        vaultless.stop()


def _pairs(series: Series, name: str) -> set[tuple[str, str]]:
    return {pair for labels in series.get(name, set()) for pair in labels}


async def _traffic(port: int, vaultless_port: int, dev_key: str, broke_key: str) -> Series:
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as api,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{vaultless_port}", timeout=60) as vaultless,
    ):
        ok = await api.post(SUMMARIZE, json={"text": "Compose stacks start many services."},
                            headers={"x-api-key": dev_key})  # fmt: skip
        assert ok.status_code == 200, ok.text
        unauthorized = await api.post(SUMMARIZE, json={"text": "no key"})
        assert unauthorized.status_code == 401
        broke = await api.post(SUMMARIZE, json={"text": "no budget"}, headers={"x-api-key": broke_key})
        assert broke.json()["code"] == "budget_exceeded", broke.text
        no_vault = await vaultless.post(SUMMARIZE, json={"text": "x"}, headers={"x-api-key": dev_key})
        assert no_vault.status_code >= 500, no_vault.text
        series: Series = defaultdict(set)
        for client in (api, vaultless):
            scraped = await client.get("/metrics")
            assert scraped.status_code == 200
            for name, labels in series_from_exposition(scraped.text).items():
                series[name] |= labels
        return series


def test_collector_names_equal_the_apps_own_prometheus_names(exported: Exported) -> None:
    # Both sides follow the same OTel -> Prometheus rules; the dashboard works on either.
    ours = {name: label_names(exported.otlp, name) - {"job", "instance"} for name in exported.otlp}
    # prometheus_client's default registry also serves its own process_* and python_*
    # collectors on /metrics; they are not OpenTelemetry metrics and never reach OTLP.
    theirs = {
        name: label_names(exported.exposition, name) - {"job", "instance"}
        for name in exported.exposition
        if not name.startswith(("process_", "python_"))
    }
    assert ours == theirs
    assert {
        "http_server_request_duration_seconds_bucket",
        "gen_ai_client_token_usage_sum",
        "gen_ai_client_operation_duration_seconds_bucket",
        "sk_cost_USD_total",
        "sk_refusals_total",
        "sk_secrets_refresh_failures_total",
    } <= set(ours)


def test_every_dashboard_query_uses_metrics_and_labels_the_app_exports(exported: Exported) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 12
    exposed = exported.otlp
    covered: set[str] = set()
    for where, expr in queries:
        refs = promql_refs(expr)
        assert refs.metrics, f"{where}: no metric found in {expr!r}"
        for metric in refs.metrics:
            assert metric in exposed, f"{where}: {metric} is not exported (have {sorted(exposed)})"
            missing = refs.labels - label_names(exposed, metric)
            assert not missing, f"{where}: {metric} has no label(s) {sorted(missing)}"
            for label, value in refs.exact:
                assert value in label_values(exposed, metric, label), f"{where}: no {label}={value!r}"
            covered.add(metric)
    # The panels the issue asks for, each backed by its metric.
    assert {
        "http_server_request_duration_seconds_count",  # requests by code
        "sk_refusals_total",  # refusals by code, budget refusals
        "http_server_request_duration_seconds_bucket",  # latency p50/p95 by function (route)
        "gen_ai_client_token_usage_sum",  # tokens per tenant and model
        "sk_cost_USD_total",  # USD per tenant and model, budget use
        "sk_secrets_refresh_failures_total",
        "sk_budget_limit_USD",  # % of budget spent, and the 80 % / 100 % alerts
        "sk_budget_remaining_USD",
    } <= covered


def test_the_tenant_setup_key_is_accepted_by_the_service(exported: Exported) -> None:
    # The fixture's first request used it and got a 200; the series prove it was `dev`'s.
    tenants = label_values(exported.otlp, "sk_cost_USD_total", "sk_tenant")
    assert tenants == {"dev"}
    assert parse_key(exported.dev_key) is not None
