"""The image's build arguments, and make image-test's files, checked without podman.

``make image-test`` (deploy/image/) really builds and runs the image, but takes
minutes and root, so it stays out of ``make test``; these are the properties it and
users rely on that can break silently: both stages build on the ``BASE_IMAGE``
argument (default: the public slim Python image), the ONNX Runtime package is a build
argument (default: the GPU package with its CUDA wheels), the ``server-core`` extra is
``server`` without ONNX Runtime, the scripts parse, the Makefile keeps image-test out
of ``test``, and the podman settings parse.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile import instructions

# Python 3.11+ (the project supports 3.10, whose tomllib is the tomli package).
tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "deploy" / "image"
SCRIPTS = sorted(IMAGE.glob("*.sh"))


def _stages() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """The global ARG defaults (before the first FROM), and each stage's instructions."""
    global_args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
        elif word == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default.strip('"')
    return global_args, stages


def _arg_default(stage: list[tuple[str, str]], name: str) -> str | None:
    for word, rest in stage:
        key, eq, default = rest.partition("=")
        if word == "ARG" and key == name:
            return default.strip('"') if eq else None
    return None


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_stage_builds_on_the_base_image_argument() -> None:
    global_args, stages = _stages()
    assert len(stages) == 2, "a build stage and the runtime stage"
    for stage in stages:
        image = stage[0][1].split()[0]
        # The venv is copied from the build stage and links to its interpreter: both
        # stages must use the same base.
        assert image == "${BASE_IMAGE}", f"FROM {image}: not the BASE_IMAGE argument"
    default = global_args.get("BASE_IMAGE")
    match = re.fullmatch(r"python:(3)\.(\d+)-slim", default or "")
    assert match, f"BASE_IMAGE default {default!r}: not the public python:3.X-slim image"
    low = re.search(r">=\s*(\d+)\.(\d+)", _pyproject()["project"]["requires-python"])
    assert low and (int(match[1]), int(match[2])) >= (int(low[1]), int(low[2]))


def test_onnxruntime_is_a_build_argument_defaulting_to_the_gpu_package() -> None:
    _, (build, runtime) = _stages()
    assert _arg_default(build, "ONNXRUNTIME") == "onnxruntime-gpu[cuda,cudnn]"
    runs = " ".join(rest for word, rest in build if word == "RUN")
    # The server without ORT (and the OTLP trace exporter), and the chosen ORT package,
    # in one pip resolve.
    install = re.search(r"pip install (\S+) (\S+)", runs.split("--upgrade pip", 1)[-1])
    assert install, runs
    assert install.groups() == ('".[server-core,otlp]"', '"${ONNXRUNTIME}"')
    # The runtime stage installs nothing of its own; what the build chose is what runs.
    assert not [rest for word, rest in runtime if word == "RUN" and "pip" in rest]


def test_server_extra_is_server_core_plus_onnxruntime() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]
    core, server = extras["server-core"], extras["server"]
    assert not [r for r in core if r.startswith("onnxruntime")], "server-core must not pin ORT"
    assert "ganserve[server-core]" in server
    ort = {r.split(">=")[0] for r in server if r.startswith("onnxruntime")}
    assert ort == {"onnxruntime-gpu", "onnxruntime"}, server
    assert set(server) - {"ganserve[server-core]"} == {
        r for r in server if r.startswith("onnxruntime")
    }, "whatever else the server needs belongs in server-core, which the image installs"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_server_core_has_every_package_the_server_imports() -> None:
    """The image installs the base dependencies + server-core + its ORT package only."""
    modules: set[str] = set()
    for path in (ROOT / "server").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | {"ganserve", "onnxruntime"}
    project = _pyproject()["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["server-core"]
    declared = {_canonical(re.split(r"[^A-Za-z0-9._-]", r, maxsplit=1)[0]) for r in requirements}
    distributions = importlib.metadata.packages_distributions()
    for module in sorted(modules):
        provided_by = {_canonical(d) for d in distributions.get(module, [module])}
        assert provided_by & declared, f"server imports {module}: {provided_by} not declared"


def test_version_label_defaults_to_the_package_version() -> None:
    _, (_, runtime) = _stages()
    assert _arg_default(runtime, "VERSION") == _pyproject()["project"]["version"]
    labels = " ".join(rest for word, rest in runtime if word == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_is_executable(script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.access(script, os.X_OK), f"{script.name}: not executable (make runs it directly)"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_scripts_pass_shellcheck() -> None:
    done = subprocess.run(
        ["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_scripts_exist() -> None:
    assert {p.name for p in SCRIPTS} >= {"image-test.sh", "build-base.sh"}


def _make_rules() -> dict[str, list[str]]:
    rules: dict[str, list[str]] = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.$()/-]+):(?!=)\s*(.*)$", line)
        if match:
            rules.setdefault(match[1], []).extend(match[2].split())
    return rules


def test_make_image_test_runs_the_script_and_stays_out_of_make_test() -> None:
    rules = _make_rules()
    assert "image-test" in rules
    assert "image-test" in rules[".PHONY"]
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nimage-test:", 1)[1].split("\n\n", 1)[0]
    assert "deploy/image/image-test.sh" in recipe
    # Nothing make test runs, directly or through its prerequisites, is image-test.
    seen, todo = set(), ["test"]
    while todo:
        target = todo.pop()
        if target not in seen:
            seen.add(target)
            todo.extend(rules.get(target, []))
    assert "image-test" not in seen
    assert "image-test" not in makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]


def test_containers_conf_parses_and_sets_no_default_ulimits() -> None:
    conf = tomllib.loads((IMAGE / "containers.conf").read_text())
    # Rootful podman otherwise raises RLIMIT_NOFILE, which fails without CAP_SYS_RESOURCE.
    assert conf["containers"]["default_ulimits"] == []
    assert conf["engine"]["cgroup_manager"] == "cgroupfs"


def test_image_test_runs_the_container_as_the_deployment_does() -> None:
    script = (IMAGE / "image-test.sh").read_text()
    run = re.search(r"podman run --detach(.*?)\"\$image_tag\"", script, re.S)
    assert run, "no podman run of the built image"
    options = run[1]
    words = options.replace("\\\n", " ").split()
    for option in ("--read-only", "--network", "--cap-drop", "--tmpfs"):
        assert option in words, option
    assert words[words.index("--tmpfs") + 1].startswith("/tmp:")
    assert not {"--user", "-u"} & set(words), "runs as the image's USER"
    assert "ONNXRUNTIME:-onnxruntime}" in script, "the test image is the CPU variant"
    assert "trap cleanup EXIT" in script


def test_base_recipe_provides_what_the_dockerfile_uses() -> None:
    recipe = (IMAGE / "build-base.sh").read_text()
    (packages,) = re.findall(r"^packages=(\S+)$", recipe, re.M)
    # `python -m venv` needs python (python-is-python3) and ensurepip (python3-venv).
    assert {"python3", "python3-venv", "python-is-python3"} <= set(packages.split(","))
    assert "--variant=minbase" in recipe
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert "python -m venv" in runs and "useradd" in runs


def test_check_server_finds_free_ports() -> None:
    done = subprocess.run(
        [sys.executable, str(IMAGE / "check_server.py"), "ports"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ports = [int(p) for p in done.stdout.split()]
    assert len(ports) == 3 and len(set(ports)) == 3 and all(0 < p < 65536 for p in ports)
