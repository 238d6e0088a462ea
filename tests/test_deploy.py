"""Offline checks of the deployment artefacts.

Nothing here needs a Docker engine or a cluster:

* every Kubernetes manifest under deploy/kubernetes/ is validated with the bundled schemas
  of ``kubernetes-validate`` (strict mode: unknown fields fail) at a pinned Kubernetes
  version, and the objects are checked against each other (names, selectors, ports);
* deploy/docker-compose.yml is parsed and its services, build contexts, mounted files and
  the gateway configuration it mounts are checked;
* the Dockerfile is checked textually.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.keys import generate_key

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S_DIR = DEPLOY / "kubernetes"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "requirements.lock"

# Kubernetes version whose schemas the manifests must satisfy.
K8S_VERSION = "1.31"

NAMESPACE = "ajs-identity-gateway"
GATEWAY = "ajs-identity-gateway"  # Deployment / Service / PDB / HPA name
CONFIG_DIR = "/etc/gateway"
CONFIG_PATH = f"{CONFIG_DIR}/domains.yaml"
PROXY_PORT = 8080
ADMIN_PORT = 9901

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Secrets whose committed values are placeholders the gateway refuses: tests that load the
# shipped configs supply freshly generated keys instead, as an operator would.
GENERATED_SECRETS = ("GATEWAY_SIGNING_KEYS", "GATEWAY_ADMIN_TOKEN", "REDIS_PASSWORD")
# The other value an operator must supply: the ingress controller's pod addresses (a typical
# pod CIDR here), whose committed placeholder the gateway refuses too.
TRUSTED_PROXIES_ENV = "GATEWAY_TRUSTED_PROXIES"
POD_CIDR = "10.244.0.0/16"


# --------------------------------------------------------------------------- helpers ---


def _k8s_files() -> list[Path]:
    return sorted(
        p
        for p in K8S_DIR.glob("*.y*ml")
        if p.suffix in {".yaml", ".yml"} and p.name != "kustomization.yaml"
    )


def _load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs = [doc for path in _k8s_files() for doc in _load_docs(path)]
    assert docs, "no Kubernetes manifests found"
    return docs


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d.get("kind") == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected exactly one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _gateway(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _find(docs, "Deployment", GATEWAY)


def _gateway_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _gateway(docs)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "the gateway pod should run exactly one container"
    return containers[0]


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _container_port(container: dict[str, Any], port: int | str) -> int:
    """Resolve a probe/Service target port (number or port name) to a container port."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def _arg_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag:
            assert i + 1 < len(args), f"{flag} has no value"
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _container_argv(container: dict[str, Any]) -> list[str]:
    return [str(a) for a in [*container.get("command", []), *container.get("args", [])]]


def _env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def _secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {**secret.get("data", {}), **secret.get("stringData", {})}


def _env_refs(config_text: str) -> set[str]:
    """``${NAME}`` references in the values of a gateway config (comments excluded)."""
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            refs.update(ENV_REF.findall(node.replace("$$", "")))

    walk(yaml.safe_load(config_text))
    return refs


def _drain_timeout(config_text: str) -> float:
    """The gateway's drain after SIGTERM; deployment files set it explicitly."""
    config = yaml.safe_load(config_text)
    drain = config.get("proxy", {}).get("drain_timeout")
    assert isinstance(drain, int | float), "set proxy.drain_timeout explicitly in the config"
    return float(drain)


def _seconds(duration: str | int) -> float:
    """A compose duration such as ``40s`` or ``1m30s``."""
    if isinstance(duration, int):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def _committed_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment with the values committed in the Secret and ConfigMaps."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[item["name"]] = _secret_data(_find(docs, "Secret", ref["name"]))[ref["key"]]
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[item["name"]] = _find(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
        elif "value" in item:
            env[item["name"]] = item["value"]
    return env


def _operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The gateway's environment once an operator has replaced the placeholders."""
    env = _committed_env(docs, _gateway_container(docs))
    env.update({name: generate_key() for name in GENERATED_SECRETS})
    env[TRUSTED_PROXIES_ENV] = POD_CIDR
    return env


def _hpa_targets(docs: list[dict[str, Any]]) -> set[str]:
    return {
        d["spec"]["scaleTargetRef"]["name"]
        for d in docs
        if d["kind"] == "HorizontalPodAutoscaler"
        and d["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    }


def _gateway_config_text(docs: list[dict[str, Any]]) -> str:
    container = _gateway_container(docs)
    pod = _gateway(docs)["spec"]["template"]["spec"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == CONFIG_DIR)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = _find(docs, "ConfigMap", volume["configMap"]["name"])
    return cm["data"]["domains.yaml"]


# ------------------------------------------------------------------ kubernetes: schema ---


@pytest.mark.parametrize("path", _k8s_files(), ids=lambda p: p.name)
def test_manifest_validates_against_pinned_kubernetes_schema(path: Path) -> None:
    docs = _load_docs(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        used = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert used == K8S_VERSION, f"validated against {used}, not the pinned {K8S_VERSION}"


def test_strict_validation_rejects_unknown_and_mistyped_fields(
    manifests: list[dict[str, Any]],
) -> None:
    # Guards the schema test itself: strict mode must catch a typo in a field name ...
    typo = copy.deepcopy(_gateway(manifests))
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, K8S_VERSION, strict=True)
    # ... and a value of the wrong type.
    mistyped = copy.deepcopy(_gateway(manifests))
    mistyped["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(mistyped, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_namespace_is_consistent(
    manifests: list[dict[str, Any]],
) -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "duplicate entries in resources"
    for res in resources:
        assert (K8S_DIR / res).is_file(), f"kustomization lists missing file {res}"
    assert set(resources) == {p.name for p in _k8s_files()}

    namespace = kustomization.get("namespace", NAMESPACE)
    assert namespace == NAMESPACE
    namespaces = [d for d in manifests if d["kind"] == "Namespace"]
    assert [d["metadata"]["name"] for d in namespaces] in ([], [NAMESPACE])
    for doc in manifests:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]


# --------------------------------------------------------------- kubernetes: gateway ---


def test_gateway_deployment_replicas_and_selector(manifests: list[dict[str, Any]]) -> None:
    deployment = _gateway(manifests)
    assert deployment["apiVersion"] == "apps/v1"
    assert GATEWAY in _hpa_targets(manifests), "the HPA keeps at least two replicas"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert _selects(selector, _pod_labels(deployment))
    rolling = deployment["spec"].get("strategy", {}).get("rollingUpdate", {})
    assert rolling.get("maxUnavailable") in (0, "0%"), "rollouts must not reduce capacity"


def test_gateway_references_existing_configmap_and_secret(
    manifests: list[dict[str, Any]],
) -> None:
    pod = _gateway(manifests)["spec"]["template"]["spec"]
    checked_configmaps = 0
    for volume in pod.get("volumes", []):
        if "configMap" in volume:
            cm = _find(manifests, "ConfigMap", volume["configMap"]["name"])
            for item in volume["configMap"].get("items", []):
                assert item["key"] in cm["data"], f"ConfigMap has no key {item['key']}"
            checked_configmaps += 1
        if "secret" in volume:
            _find(manifests, "Secret", volume["secret"]["secretName"])
    assert checked_configmaps >= 1, "the gateway config should come from a ConfigMap"

    checked_secret_refs = 0
    for container in pod["containers"]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secret = _find(manifests, "Secret", ref["name"])
                assert ref["key"] in _secret_data(secret), f"Secret has no key {ref['key']}"
                checked_secret_refs += 1
            ref = env.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                assert ref["key"] in _find(manifests, "ConfigMap", ref["name"])["data"]
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                _find(manifests, "Secret", source["secretRef"]["name"])
                checked_secret_refs += 1
            if "configMapRef" in source:
                _find(manifests, "ConfigMap", source["configMapRef"]["name"])
    assert checked_secret_refs >= 1, "secrets should come from the Secret"


def test_the_hpa_alone_owns_the_replica_count(manifests: list[dict[str, Any]]) -> None:
    """Every ``kubectl apply`` re-applies a Deployment's ``replicas``: under an HPA that snaps a
    scaled-out gateway back to the file's number until the HPA notices again."""
    targets = _hpa_targets(manifests)
    assert targets, "no HorizontalPodAutoscaler"
    for deployment in (d for d in manifests if d["kind"] == "Deployment"):
        if deployment["metadata"]["name"] in targets:
            assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]
    # The one way to set a count by hand under kustomize would be a replicas: entry there.
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert not {r["name"] for r in kustomization.get("replicas", [])} & targets
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "edit-last-applied" in readme, "say how to drop replicas from a live Deployment"


def test_gateway_secrets_come_from_the_secret_not_literals(
    manifests: list[dict[str, Any]],
) -> None:
    container = _gateway_container(manifests)
    from_secret = {
        e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
    }
    for name in (
        "SEGMENT_WRITE_KEY",
        "GATEWAY_SIGNING_KEYS",
        "REDIS_PASSWORD",
        "GATEWAY_ADMIN_TOKEN",
    ):
        assert name in from_secret, f"{name} should be read from the Secret"


def test_secret_placeholders_are_clearly_marked(manifests: list[dict[str, Any]]) -> None:
    secrets = [d for d in manifests if d["kind"] == "Secret"]
    assert secrets
    text = (K8S_DIR / "secret.yaml").read_text()
    assert "PLACEHOLDER" in text.upper()
    for secret in secrets:
        data = secret.get("stringData", {})
        for key in (
            "SEGMENT_WRITE_KEY",
            "GATEWAY_SIGNING_KEYS",
            "GATEWAY_ADMIN_TOKEN",
            "REDIS_PASSWORD",
        ):
            assert "REPLACE_ME" in data.get(key, ""), f"{key} should be an obvious placeholder"


def test_committed_placeholder_secrets_are_refused(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    """A forgotten replace fails start-up instead of signing with a publicly known key, using a
    publicly known Redis password, or trusting no front proxy (or the wrong one)."""
    from gateway.config import ConfigError, load_config

    env = _committed_env(manifests, _gateway_container(manifests))
    path = tmp_path / "domains.yaml"
    path.write_text(_gateway_config_text(manifests), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    refused = {p.path for p in info.value.problems}
    assert refused == {"signing.keys", "admin.token", "store.url", "proxy.trusted_proxies"}, (
        info.value
    )
    assert "placeholder" in str(info.value)
    assert "REPLACE_ME-ingress-pod-CIDR" in str(info.value), "name the value to replace"


def test_admin_port_on_the_pod_ip_needs_the_token(manifests: list[dict[str, Any]]) -> None:
    """The admin port listens beyond loopback (probes need it), so /metrics is guarded by
    admin.token from the Secret."""
    argv = _container_argv(_gateway_container(manifests))
    assert _arg_value(argv, "--admin-host") == "0.0.0.0"
    admin = yaml.safe_load(_gateway_config_text(manifests))["admin"]
    assert admin.get("token") == "${GATEWAY_ADMIN_TOKEN}"
    env = {e["name"]: e for e in _gateway_container(manifests)["env"]}
    ref = env["GATEWAY_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] in _secret_data(_find(manifests, "Secret", ref["name"]))


def test_config_is_mounted_at_etc_gateway(manifests: list[dict[str, Any]]) -> None:
    container = _gateway_container(manifests)
    mounts = [m for m in container["volumeMounts"] if m["mountPath"] == CONFIG_DIR]
    assert len(mounts) == 1, f"config volume should be mounted at {CONFIG_DIR}"
    # A subPath mount would never see ConfigMap updates.
    assert "subPath" not in mounts[0]
    assert mounts[0].get("readOnly") is True
    argv = _container_argv(container)
    assert argv[:3] == ["python", "-m", "gateway"] and "serve" in argv
    assert _arg_value(argv, "--config") == CONFIG_PATH
    # The file name the gateway reads is a key in the ConfigMap.
    assert _gateway_config_text(manifests).strip()


def test_config_env_references_are_provided(manifests: list[dict[str, Any]]) -> None:
    refs = _env_refs(_gateway_config_text(manifests))
    assert refs, "the config should take its secrets from ${ENV} references"
    missing = refs - _env_names(_gateway_container(manifests))
    assert not missing, f"config references env vars the pod does not set: {missing}"


def test_probes_use_admin_port(manifests: list[dict[str, Any]]) -> None:
    container = _gateway_container(manifests)
    argv = _container_argv(container)
    admin_arg = _arg_value(argv, "--admin-port")
    assert admin_arg in (None, str(ADMIN_PORT))
    assert _arg_value(argv, "--admin-host") == "0.0.0.0"
    assert _arg_value(argv, "--host") == "0.0.0.0"
    assert _arg_value(argv, "--port") in (None, str(PROXY_PORT))
    expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe_name, path in expected.items():
        probe = container.get(probe_name)
        assert probe, f"missing {probe_name}"
        http = probe["httpGet"]
        assert http["path"] == path
        assert _container_port(container, http["port"]) == ADMIN_PORT
    startup = container.get("startupProbe")
    if startup:
        assert startup["httpGet"]["path"] == "/healthz"
        assert _container_port(container, startup["httpGet"]["port"]) == ADMIN_PORT
    ports = {int(p["containerPort"]) for p in container["ports"]}
    assert {PROXY_PORT, ADMIN_PORT} <= ports


def test_container_commands_parse_with_the_gateway_cli(manifests: list[dict[str, Any]]) -> None:
    from gateway.__main__ import build_parser

    parser = build_parser()
    argv = _container_argv(_gateway_container(manifests))
    assert argv[:3] == ["python", "-m", "gateway"]
    args = parser.parse_args(argv[3:])
    assert (args.command, args.config) == ("serve", CONFIG_PATH)
    assert args.admin_port in (None, ADMIN_PORT)
    assert args.port in (None, PROXY_PORT)

    cmd = next(_exec_form(rest) for keyword, rest in _dockerfile_instructions() if keyword == "CMD")
    args = parser.parse_args(cmd[3:])
    assert (args.command, args.config, args.admin_host) == ("serve", CONFIG_PATH, "0.0.0.0")


def _quantity(value: str | int) -> float:
    """A Kubernetes CPU or memory quantity as a number (cores, bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def test_resources_do_not_throttle_and_bound_memory(manifests: list[dict[str, Any]]) -> None:
    """A CPU limit below what a CPU-bound process uses stalls it for the rest of each CFS
    period (latency spikes with idle cores on the node); memory is not compressible, so it is
    bounded. Either no CPU limit, or one equal to the request."""
    for deployment in (d for d in manifests if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            name = f"{deployment['metadata']['name']}/{container['name']}"
            requests = container["resources"]["requests"]
            limits = container["resources"]["limits"]
            assert {"cpu", "memory"} <= set(requests), name
            assert "memory" in limits, f"{name}: no memory limit"
            assert _quantity(limits["memory"]) >= _quantity(requests["memory"]), name
            if "cpu" in limits:
                assert _quantity(limits["cpu"]) == _quantity(requests["cpu"]), name
    # The HPA's utilization target is a share of the request, so the request must be there,
    # and the choice is explained where it is made.
    text = (K8S_DIR / "deployment.yaml").read_text(encoding="utf-8")
    assert "No CPU limit, on purpose" in text


def test_resources_and_security_context(manifests: list[dict[str, Any]]) -> None:
    pod = _gateway(manifests)["spec"]["template"]["spec"]
    container = _gateway_container(manifests)
    pod_sc = pod.get("securityContext", {})
    sc = container["securityContext"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert "ALL" in sc.get("capabilities", {}).get("drop", [])
    # With a read-only root, Python still needs a writable /tmp.
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def _prestop_sleep_seconds(container: dict[str, Any]) -> int:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    assert pre_stop, "the gateway container needs a preStop hook"
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    if len(command) == 1 or command[0] in ("sh", "/bin/sh"):
        command = shlex.split(command[-1])
    assert Path(command[0]).name == "sleep", f"preStop should sleep, got {command}"
    return int(command[1])


def test_graceful_shutdown_timing(manifests: list[dict[str, Any]]) -> None:
    pod = _gateway(manifests)["spec"]["template"]["spec"]
    sleep = _prestop_sleep_seconds(_gateway_container(manifests))
    assert 3 <= sleep <= 30, "preStop should give endpoint removal a few seconds"
    grace = pod["terminationGracePeriodSeconds"]
    drain = _drain_timeout(_gateway_config_text(manifests))
    assert grace > sleep + drain, "SIGKILL would cut the drain short"


def test_replicas_spread_across_nodes(manifests: list[dict[str, Any]]) -> None:
    deployment = _gateway(manifests)
    pod = deployment["spec"]["template"]["spec"]
    labels = _pod_labels(deployment)
    spread = [
        c
        for c in pod.get("topologySpreadConstraints", [])
        if c["topologyKey"] == "kubernetes.io/hostname"
        and _selects(c["labelSelector"]["matchLabels"], labels)
    ]
    anti = pod.get("affinity", {}).get("podAntiAffinity", {})
    terms = [
        t.get("podAffinityTerm", t)
        for key in (
            "preferredDuringSchedulingIgnoredDuringExecution",
            "requiredDuringSchedulingIgnoredDuringExecution",
        )
        for t in anti.get(key, [])
    ]
    anti_terms = [
        t
        for t in terms
        if t["topologyKey"] == "kubernetes.io/hostname"
        and _selects(t["labelSelector"]["matchLabels"], labels)
    ]
    assert spread or anti_terms, "replicas should be spread across nodes"


def test_service_targets_gateway_pods(manifests: list[dict[str, Any]]) -> None:
    service = _find(manifests, "Service", GATEWAY)
    deployment = _gateway(manifests)
    container = _gateway_container(manifests)
    assert _selects(service["spec"]["selector"], _pod_labels(deployment))
    redis = _find(manifests, "Deployment", "redis")
    assert not _selects(service["spec"]["selector"], _pod_labels(redis))

    ports = {int(p["port"]): p for p in service["spec"]["ports"]}
    assert 80 in ports, "the Service should serve HTTP on port 80"
    assert _container_port(container, ports[80]["targetPort"]) == PROXY_PORT
    admin = [p for p in ports.values() if _container_port(container, p["targetPort"]) == ADMIN_PORT]
    assert admin, "the admin port should be reachable for Prometheus"

    # Prometheus discovery annotations on the Service and/or the pods.
    annotated = [
        a
        for a in (
            service["metadata"].get("annotations", {}),
            deployment["spec"]["template"]["metadata"].get("annotations", {}),
        )
        if a.get("prometheus.io/scrape") == "true"
    ]
    assert annotated, "prometheus.io/scrape annotations are missing"
    for a in annotated:
        assert a.get("prometheus.io/port") == str(ADMIN_PORT)
        assert a.get("prometheus.io/path", "/metrics") == "/metrics"


def test_pdb_targets_gateway(manifests: list[dict[str, Any]]) -> None:
    pdb = _find(manifests, "PodDisruptionBudget", GATEWAY)
    deployment = _gateway(manifests)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert _selects(pdb["spec"]["selector"]["matchLabels"], _pod_labels(deployment))
    # minAvailable below the least replicas the HPA keeps, or node drains would block forever.
    hpa = _find(manifests, "HorizontalPodAutoscaler", GATEWAY)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


def test_hpa_targets_gateway_on_cpu(manifests: list[dict[str, Any]]) -> None:
    hpas = [d for d in manifests if d["kind"] == "HorizontalPodAutoscaler"]
    assert len(hpas) == 1
    hpa = hpas[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        GATEWAY,
    )
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    cpu = [
        m
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Resource" and m["resource"]["name"] == "cpu"
    ]
    assert cpu, "the HPA should scale on CPU"
    # Utilization targets are relative to the CPU request.
    assert "cpu" in _gateway_container(manifests)["resources"]["requests"]


def test_redis_deployment_service_and_store_url(manifests: list[dict[str, Any]]) -> None:
    redis = _find(manifests, "Deployment", "redis")
    service = _find(manifests, "Service", "redis")
    assert redis["spec"]["replicas"] == 1
    assert _selects(service["spec"]["selector"], _pod_labels(redis))
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].split(":")[0] in ("redis", "docker.io/library/redis")
    svc_port = service["spec"]["ports"][0]
    assert _container_port(container, svc_port["targetPort"]) == 6379

    # The store URL the gateway gets points at this Service.
    store = yaml.safe_load(_gateway_config_text(manifests))["store"]["url"]
    url = urlsplit(store)
    assert url.scheme == "redis"
    assert url.hostname is not None
    assert url.hostname.split(".")[0] == "redis"
    assert url.port == int(svc_port["port"])


def test_redis_requires_the_password_the_gateway_sends(manifests: list[dict[str, Any]]) -> None:
    """Redis starts with ``--requirepass`` from the Secret, and the gateway's store URL carries
    the same Secret key through ``${ENV}``; the readiness probe authenticates too."""
    redis = _find(manifests, "Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    refs = {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in redis["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    password = _arg_value(_container_argv(redis), "--requirepass")
    assert password is not None, "Redis must require a password"
    var = re.fullmatch(r"\$\((\w+)\)", password)
    assert var, f"--requirepass should expand an env var, not hold a literal: {password!r}"
    secret_ref = refs[var.group(1)]

    store = yaml.safe_load(_gateway_config_text(manifests))["store"]["url"]
    url = urlsplit(store)
    assert url.username in ("", None)
    (gateway_var,) = ENV_REF.findall(url.password or "")
    assert url.password == f"${{{gateway_var}}}", "the password comes from the environment"
    gateway_env = {e["name"]: e for e in _gateway_container(manifests)["env"]}
    ref = gateway_env[gateway_var]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == secret_ref, "Redis and the gateway use the same Secret key"

    # redis-cli answers an error reply with exit code 0: the probe must check for PONG.
    assert refs.get("REDISCLI_AUTH") == secret_ref
    probe = " ".join(redis["readinessProbe"]["exec"]["command"])
    assert "redis-cli ping" in probe and "PONG" in probe


def test_trusted_proxies_come_from_a_value_the_operator_sets(
    manifests: list[dict[str, Any]],
) -> None:
    """The gateway speaks plain HTTP behind the ingress, which ends TLS: only the ingress's
    X-Forwarded-Proto tells it (and the upstream) that the visitor used https, and only its
    X-Forwarded-For the visitor's address. The ConfigMap holds the ingress pods' CIDR."""
    from gateway.config import parse_config

    config = yaml.safe_load(_gateway_config_text(manifests))
    assert config["proxy"]["trusted_proxies"] == f"${{{TRUSTED_PROXIES_ENV}}}"
    env = {e["name"]: e for e in _gateway_container(manifests)["env"]}
    ref = env[TRUSTED_PROXIES_ENV]["valueFrom"]["configMapKeyRef"]
    committed = _find(manifests, "ConfigMap", ref["name"])["data"][ref["key"]]
    assert "REPLACE_ME" in committed, "no one CIDR fits every cluster: the operator sets it"

    operator = _operator_env(manifests)
    operator[TRUSTED_PROXIES_ENV] = f"{POD_CIDR},fd00:10:244::/56"
    loaded = parse_config(_gateway_config_text(manifests), "configmap", operator)
    assert [str(n) for n in loaded.proxy.trusted_proxies] == [POD_CIDR, "fd00:10:244::/56"]
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for needed in (TRUSTED_PROXIES_ENV, "X-Forwarded-Proto", "X-Forwarded-For", "Secure"):
        assert needed in readme, f"deploy/README.md should explain {needed}"


def test_kubernetes_config_loads(manifests: list[dict[str, Any]], tmp_path: Path, monkeypatch):
    from gateway.config import load_config

    for name, value in _operator_env(manifests).items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "domains.yaml"
    path.write_text(_gateway_config_text(manifests), encoding="utf-8")
    # Loading is the check (ConfigError lists every problem); the result must be a real config.
    config = load_config(path)
    assert config.sites and config.cross_domains
    assert config.warnings == (), "the shipped config should need no warning"


# ---------------------------------------------------------- kubernetes: network policy ---


def _policies(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "NetworkPolicy"]


def _policy_for(docs: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, Any]:
    """The one policy that names this Deployment's pods (the default deny aside)."""
    labels = _pod_labels(deployment)
    matches = [
        p
        for p in _policies(docs)
        if _selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)
    ]
    assert len(matches) == 1, f"expected one NetworkPolicy for {deployment['metadata']['name']}"
    return matches[0]


def _rule_ports(
    rule: dict[str, Any], container: dict[str, Any] | None = None
) -> set[tuple[int, str]]:
    """(port, protocol) pairs of a rule, named ports resolved on the destination container
    (without one, ports must be numbers: a name means whatever the peer pods call a port)."""
    ports = rule.get("ports")
    assert ports, "every rule should name its ports (a rule without ports admits all of them)"
    out = set()
    for p in ports:
        assert "endPort" not in p, "single ports only"
        if container is None:
            assert isinstance(p["port"], int), f"use a port number in {rule}"
        port = p["port"] if container is None else _container_port(container, p["port"])
        out.add((port, p.get("protocol", "TCP")))
    return out


def _peers(rule: dict[str, Any], key: str) -> list[dict[str, Any]]:
    peers = rule.get(key)
    assert peers, f"every rule should name its peers (a rule without '{key}' admits anyone)"
    return peers


def _peer_labels(peer: dict[str, Any]) -> set[str]:
    return {
        value
        for selector in ("namespaceSelector", "podSelector")
        for value in peer.get(selector, {}).get("matchLabels", {}).values()
    }


def test_namespace_denies_by_default(manifests: list[dict[str, Any]]) -> None:
    deny = [p for p in _policies(manifests) if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1, "one default-deny policy for every pod in the namespace"
    spec = deny[0]["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert not spec.get("ingress") and not spec.get("egress")
    # Every workload is also covered by a policy of its own, for both directions.
    for deployment in (d for d in manifests if d["kind"] == "Deployment"):
        policy = _policy_for(manifests, deployment)
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


def test_gateway_ingress_admits_the_ingress_controller_and_the_scraper_only(
    manifests: list[dict[str, Any]],
) -> None:
    container = _gateway_container(manifests)
    policy = _policy_for(manifests, _gateway(manifests))
    admitted: dict[int, set[str]] = {}
    for rule in policy["spec"]["ingress"]:
        ports = _rule_ports(rule, container)
        for peer in _peers(rule, "from"):
            # Both selectors in one peer: these pods in that namespace (not either one).
            assert peer.get("namespaceSelector", {}).get("matchLabels"), peer
            assert peer.get("podSelector", {}).get("matchLabels"), peer
            assert "ipBlock" not in peer, "no address ranges: they would outlive the pods"
            for port, protocol in ports:
                assert protocol == "TCP"
                admitted.setdefault(port, set()).update(_peer_labels(peer))
    # Exactly the container's ports, each to its own client.
    assert set(admitted) == {int(p["containerPort"]) for p in container["ports"]}
    assert set(admitted) == {PROXY_PORT, ADMIN_PORT}
    assert any("ingress" in label for label in admitted[PROXY_PORT])
    assert not any("prometheus" in label for label in admitted[PROXY_PORT])
    assert any("prometheus" in label for label in admitted[ADMIN_PORT])
    assert not any("ingress" in label for label in admitted[ADMIN_PORT])
    # What the Service forwards is what the policy admits.
    service = _find(manifests, "Service", GATEWAY)
    targets = {_container_port(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets <= set(admitted)


def test_gateway_egress_reaches_dns_redis_and_the_upstreams(
    manifests: list[dict[str, Any]],
) -> None:
    policy = _policy_for(manifests, _gateway(manifests))
    redis = _find(manifests, "Deployment", "redis")
    redis_container = redis["spec"]["template"]["spec"]["containers"][0]
    allowed: set[tuple[int, str]] = set()
    to_redis: set[int] = set()
    for rule in policy["spec"]["egress"]:
        peers = _peers(rule, "to")
        ports = _rule_ports(rule)
        allowed |= ports
        for peer in peers:
            selector = peer.get("podSelector", {}).get("matchLabels", {})
            if "namespaceSelector" not in peer and _selects(selector, _pod_labels(redis)):
                to_redis |= {port for port, _ in ports}
    assert {(53, "UDP"), (53, "TCP")} <= allowed, "DNS"
    assert to_redis == {int(p["containerPort"]) for p in redis_container["ports"]}
    for site in yaml.safe_load(_gateway_config_text(manifests))["sites"]:
        url = urlsplit(site["upstream"])
        port = url.port or (443 if url.scheme == "https" else 80)
        assert (port, "TCP") in allowed, f"no egress to the upstream {site['upstream']}"


def test_gateway_egress_to_segment_is_https_to_public_addresses_only(
    manifests: list[dict[str, Any]],
) -> None:
    """First-party delivery and server-side events talk to Segment over HTTPS; the rule that
    admits it must not open the cluster's private ranges (Redis, upstreams, metadata)."""
    policy = _policy_for(manifests, _gateway(manifests))
    blocks = [
        (peer["ipBlock"], _rule_ports(rule))
        for rule in policy["spec"]["egress"]
        for peer in _peers(rule, "to")
        if "ipBlock" in peer
    ]
    assert blocks, "no egress to Segment"
    for block, ports in blocks:
        assert ports == {(443, "TCP")}
        assert block["cidr"] == "0.0.0.0/0"
        assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(
            block.get("except", ())
        )


def test_redis_admits_only_the_gateway_and_reaches_nothing(
    manifests: list[dict[str, Any]],
) -> None:
    redis = _find(manifests, "Deployment", "redis")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    policy = _policy_for(manifests, redis)
    assert not policy["spec"].get("egress")
    (rule,) = policy["spec"]["ingress"]
    assert _rule_ports(rule, container) == {
        (int(p["containerPort"]), "TCP") for p in container["ports"]
    }
    (peer,) = _peers(rule, "from")
    assert set(peer) == {"podSelector"}, "same namespace, gateway pods only"
    assert (
        peer["podSelector"]["matchLabels"] == _gateway(manifests)["spec"]["selector"]["matchLabels"]
    )


# ------------------------------------------------------------------- docker compose ---


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _compose_default(value: str) -> str:
    """What compose substitutes for ``${VAR:-default}`` when VAR is unset (``${VAR:?message}``,
    a required variable, has no default: empty here, an error in compose)."""

    def repl(m: re.Match[str]) -> str:
        return m.group(2) or ""

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*)|:?\?[^}]*)?\}", repl, value)


def _compose_required(value: str) -> str | None:
    """The message of a required ``${VAR:?message}`` value, or None."""
    m = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?\?([^}]*)\}", value)
    return m.group(1) if m else None


def _compose_binds(service: dict[str, Any]) -> list[tuple[str, str]]:
    binds = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            if volume.get("type") != "bind":
                continue
            source, target = volume["source"], volume["target"]
        if source.startswith((".", "/")):
            binds.append((source, target))
    return binds


def _compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _compose_gateway_config(compose: dict[str, Any]) -> Path:
    for source, target in _compose_binds(compose["services"]["gateway"]):
        if target == CONFIG_PATH:
            return (DEPLOY / source).resolve()
    raise AssertionError(f"compose does not mount a gateway config at {CONFIG_PATH}")


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"gateway", "redis", "demo-sites"} <= set(services)
    assert services["redis"]["image"].split(":")[0] == "redis"
    redis_cmd = " ".join(_compose_command(services["redis"]))
    assert "--appendonly no" in redis_cmd and "--save" in redis_cmd
    assert not services["redis"].get("volumes"), "redis needs no persistence"


def test_compose_build_contexts_and_mounts_exist(compose: dict[str, Any]) -> None:
    builds = 0
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = (DEPLOY / build.get("context", ".")).resolve()
            assert context.is_dir(), f"{name}: build context {context} is missing"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
            assert dockerfile == DOCKERFILE
            builds += 1
        for source, _target in _compose_binds(service):
            assert (DEPLOY / source).resolve().exists(), f"{name}: mount {source} missing"
        for env_file in (
            service.get("env_file", []) if isinstance(service.get("env_file"), list) else []
        ):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            assert (DEPLOY / path).exists(), f"{name}: env_file {path} missing"
    assert compose["services"]["gateway"].get("build"), "the gateway is built from the repo"
    assert builds >= 2, "demo-sites should use the same image built from the repo"


def test_compose_gateway_environment(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    env = _compose_env(gateway)
    assert env.get("GATEWAY_STORE_URL") == "redis://redis:6379/0"
    assert _compose_default(env.get("SEGMENT_WRITE_KEY", "")), "SEGMENT_WRITE_KEY should be set"
    config_text = _compose_gateway_config(compose).read_text(encoding="utf-8")
    refs = _env_refs(config_text)
    assert refs, "the compose gateway config should use ${ENV} references for secrets"
    assert refs <= set(env), f"unset env references: {refs - set(env)}"
    # No default for keys: a value written in this file would be public.
    assert "GATEWAY_SIGNING_KEYS" in refs
    for name in refs & set(GENERATED_SECRETS):
        message = _compose_required(env.get(name, ""))
        assert message is not None, f"{name} should be required (${{{name}:?...}})"
        assert "gen-key" in message, f"{name}: say how to make one"
    assert "redis" in gateway.get("depends_on", {})
    drain = _drain_timeout(config_text)
    assert _seconds(gateway["stop_grace_period"]) > drain, "docker would kill the drain"


def test_compose_demo_sites_match_gateway_upstreams(compose: dict[str, Any]) -> None:
    demo = compose["services"]["demo-sites"]
    command = _compose_command(demo)
    assert command[:3] == ["python", "-m", "gateway.demo.sites"]
    assert _arg_value(command, "--host") == "0.0.0.0"
    demo_ports = {int(_arg_value(command, f) or 0) for f in ("--shop-port", "--checkout-port")}
    assert 0 not in demo_ports
    # The module compose runs is part of the package.
    module = REPO / "gateway" / "demo"
    assert (module / "sites.py").is_file() or (module / "sites" / "__main__.py").is_file()

    config = yaml.safe_load(_compose_gateway_config(compose).read_text(encoding="utf-8"))
    upstreams = {urlsplit(site["upstream"]) for site in config["sites"]}
    assert {u.hostname for u in upstreams} == {"demo-sites"}
    assert {u.port for u in upstreams} == demo_ports

    # The demo pages link to each other by these host names: the gateway must answer them.
    from gateway.demo import sites

    by_port = {urlsplit(s["upstream"]).port: s["host"] for s in config["sites"]}
    assert by_port[int(_arg_value(command, "--shop-port") or 0)] == sites.SHOP_HOST
    assert by_port[int(_arg_value(command, "--checkout-port") or 0)] == sites.CHECKOUT_HOST


def test_compose_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("gateway", "redis", "demo-sites"):
        test = services[name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no healthcheck"
        if isinstance(test, list) and test[:2] == ["CMD", "python"]:
            assert test[2] == "-c"
            compile(test[3], f"<{name} healthcheck>", "exec")
    gateway_check = " ".join(services["gateway"]["healthcheck"]["test"])
    assert f":{ADMIN_PORT}/" in gateway_check
    assert "/readyz" in gateway_check or "/healthz" in gateway_check
    for dependency, condition in services["gateway"]["depends_on"].items():
        assert condition.get("condition") == "service_healthy", dependency


def test_compose_gateway_config_loads(compose: dict[str, Any], monkeypatch) -> None:
    from gateway.config import load_config

    for name, value in _compose_env(compose["services"]["gateway"]).items():
        monkeypatch.setenv(name, _compose_default(value))
    for name in GENERATED_SECRETS:
        monkeypatch.setenv(name, generate_key())
    config = load_config(_compose_gateway_config(compose))
    assert config.sites and config.cross_domains


# ------------------------------------------------------------------------ Dockerfile ---


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return instructions


def _exec_form(args: str) -> list[str]:
    value = yaml.safe_load(args)  # a JSON array is valid YAML
    assert isinstance(value, list), f"expected exec (JSON array) form: {args}"
    return [str(v) for v in value]


def _dockerignore_excludes(rel: str) -> bool:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        variants = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatch(c, v) for c in candidates for v in variants):
            excluded = not negate
    return excluded


def _copies() -> list[tuple[list[str], str]]:
    copies = []
    for keyword, args in _dockerfile_instructions():
        if keyword not in ("COPY", "ADD"):
            continue
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        copies.append((words[:-1], words[-1]))
    return copies


# The platform the image runs on, for the environment markers of the dependencies.
IMAGE_MARKERS = {
    "python_version": "3.11",
    "python_full_version": "3.11.16",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def _base_images() -> list[str]:
    """Each FROM's image, ARG defaults substituted; a FROM of an earlier stage is left out."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args.setdefault(key, value)
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--platform")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
            if image not in stages - {words[-1]}:
                bases.append(image)
    return bases


def _lock() -> dict[str, tuple[Requirement, list[str]]]:
    """requirements.lock (pip-compile's format) as {normalised name: (requirement, hashes)}."""
    entries: dict[str, tuple[Requirement, list[str]]] = {}
    logical = ""
    for raw in LOCK.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("--hash") else raw
        line = line.strip()
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        if logical.strip():
            spec, *hashes = re.split(r"\s+--hash=", logical.strip())
            requirement = Requirement(spec)
            entries[canonicalize_name(requirement.name)] = (requirement, hashes)
        logical = ""
    return entries


def test_dockerfile_base_images_are_pinned_by_digest() -> None:
    """A tag moves (python:3.11-slim moved from Debian bookworm to trixie); a digest does not.
    deploy/README.md says how to refresh it."""
    bases = _base_images()
    assert bases, "no FROM"
    for image in bases:
        name, _, digest = image.partition("@")
        assert SHA256.fullmatch(digest), f"{image} is not pinned by digest (name@sha256:<64 hex>)"
        assert re.fullmatch(r"python:3\.11-slim(-bookworm)?", name), f"unexpected base {name}"
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "imagetools inspect" in readme, "say how to find the digest to refresh the pin"


def test_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """Every dependency pyproject.toml names for the image's platform is in requirements.lock at
    one exact version, within the range pyproject.toml allows, with the hashes pip checks; so is
    the build backend, which the Dockerfile takes from the lock too (no build isolation)."""
    lock = _lock()
    for name, (requirement, hashes) in lock.items():
        assert len(requirement.specifier) == 1, f"{name}: not one exact version"
        (pin,) = requirement.specifier
        assert pin.operator == "==", f"{name}: {pin} is not an exact pin"
        assert hashes and all(SHA256.fullmatch(h) for h in hashes), f"{name}: no sha256 hashes"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = [Requirement(d) for d in pyproject["project"]["dependencies"]]
    wanted += [Requirement(d) for d in pyproject["build-system"]["requires"]]
    checked = 0
    for dependency in wanted:
        if dependency.marker is not None and not dependency.marker.evaluate(IMAGE_MARKERS):
            continue
        name = canonicalize_name(dependency.name)
        assert name in lock, f"{dependency.name} is not in requirements.lock: run make lock"
        (pin,) = lock[name][0].specifier
        assert dependency.specifier.contains(pin.version, prereleases=True), (
            f"requirements.lock pins {name}=={pin.version}, outside {dependency.specifier}: "
            "run make lock"
        )
        checked += 1
    assert checked >= 10


def test_dockerfile_installs_from_the_lock_with_hashes_only() -> None:
    """Dependencies come only from the lock, hash-checked and unresolved; the package adds none
    and is built with the locked setuptools. The lock is copied first, so the dependency layer
    is rebuilt only when it changes."""
    instructions = _dockerfile_instructions()
    installs: list[tuple[int, list[str]]] = []  # (instruction index, pip install arguments)
    for i, (keyword, rest) in enumerate(instructions):
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[1:3] == ["-m", "pip"]:
                installs.append((i, words[words.index("install") + 1 :]))
    steps = [arguments for _, arguments in installs]
    assert steps, "no pip install"
    from_lock = [s for s in steps if "-r" in s and s[s.index("-r") + 1] == LOCK.name]
    assert len(from_lock) == 1, "one install from requirements.lock"
    assert {"--require-hashes", "--no-deps"} <= set(from_lock[0])
    package = [s for s in steps if "." in s]
    assert len(package) == 1, "one install of the package itself"
    assert {"--no-deps", "--no-build-isolation"} <= set(package[0])
    for step in steps:
        assert "--no-deps" in step, f"pip would resolve dependencies: pip install {step}"
    lock_copy = next(
        i
        for i, (keyword, rest) in enumerate(instructions)
        if keyword == "COPY" and LOCK.name in shlex.split(rest)[:-1]
    )
    first_install = installs[0][0]
    assert lock_copy < first_install
    source_copy = min(
        i
        for i, (keyword, rest) in enumerate(instructions)
        if keyword == "COPY" and "gateway" in shlex.split(rest)[:-1]
    )
    assert first_install < source_copy, "install the locked dependencies before the source"

    # Everything `pip install .` needs is copied before it runs.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    readme = pyproject["project"].get("readme")
    needed = {"pyproject.toml", "setup.py", "gateway"} | (
        {readme} if isinstance(readme, str) else set()
    )
    copied = {Path(src).as_posix().rstrip("/") for sources, _ in _copies() for src in sources}
    assert needed <= copied, f"not copied into the build: {needed - copied}"


def _stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's instructions by stage ("FROM image AS name")."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in _dockerfile_instructions():
        if keyword == "FROM":
            current = stages.setdefault(rest.split()[-1], [])
        current.append((keyword, rest))
    return stages


def test_dockerfile_compiles_the_html_scanner_in_the_build_stage_only() -> None:
    """The image runs the compiled HTML scanner: gcc in the build stage, a build that fails
    rather than ship the pure-Python fallback, and no compiler in the runtime image."""
    stages = _stages()
    build = " ".join(rest for keyword, rest in stages["build"] if keyword == "RUN")
    runtime = " ".join(rest for keyword, rest in stages["runtime"] if keyword == "RUN")
    assert re.search(r"apt-get install [^&]*\bgcc\b", build)
    # Importing the extension fails the build (and checks it loads in the runtime stage).
    assert 'python -c "import gateway.html._speedups"' in build
    assert 'python -c "import gateway.html._speedups"' in runtime
    assert "gcc" not in runtime
    assert _dockerignore_excludes("gateway/html/_speedups.cpython-311-x86_64-linux-gnu.so")


def test_dockerfile_copied_files_exist_and_are_not_dockerignored() -> None:
    copies = _copies()
    assert copies
    for sources, _dest in copies:
        for src in sources:
            assert (REPO / src).exists(), f"COPY source {src} does not exist in the repo"
            assert not _dockerignore_excludes(src.rstrip("/")), f"{src} is in .dockerignore"
    for heavy in (".git", ".venv", "tests"):
        assert _dockerignore_excludes(heavy), f".dockerignore should exclude {heavy}"


def test_dockerfile_default_config() -> None:
    assert (["config/domains.yaml"], CONFIG_PATH) in _copies()
    cmds = [_exec_form(rest) for keyword, rest in _dockerfile_instructions() if keyword == "CMD"]
    assert cmds, "no CMD"
    assert cmds[-1] == [
        "python",
        "-m",
        "gateway",
        "serve",
        "--config",
        CONFIG_PATH,
        "--host",
        "0.0.0.0",
        "--admin-host",
        "0.0.0.0",
    ]
    assert not any(k == "ENTRYPOINT" for k, _ in _dockerfile_instructions()), (
        "an ENTRYPOINT would break compose's demo-sites command override"
    )


def test_dockerfile_runs_as_non_root() -> None:
    users = [rest for keyword, rest in _dockerfile_instructions() if keyword == "USER"]
    assert users, "the image should switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    # Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
    assert user.isdigit()


def test_dockerfile_exposes_ports_and_healthcheck() -> None:
    instructions = _dockerfile_instructions()
    exposed = {
        int(p.split("/")[0]) for k, rest in instructions if k == "EXPOSE" for p in rest.split()
    }
    assert {PROXY_PORT, ADMIN_PORT} <= exposed
    checks = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, "exactly one HEALTHCHECK"
    _, _, command = checks[0].partition("CMD")
    argv = _exec_form(command.strip())
    assert argv[:2] == ["python", "-c"], "slim images have no curl: use python"
    assert (
        f"127.0.0.1:{ADMIN_PORT}/healthz" in argv[2]
        or f"localhost:{ADMIN_PORT}/healthz" in (argv[2])
    )
    compile(argv[2], "<HEALTHCHECK>", "exec")
