"""The GPU kit (benchmarks/gpu/) without network or GPU: parts, manifest, reassembly.

Files of a few MB stand in for the wheels: they are cut into parts and call folders,
carried call by call into a stash, put back together and checked; a damaged part is
refused. The shell scripts are run in the modes that need neither wheels nor a GPU.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tiny_onnx import make_tiny_generator

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "benchmarks" / "gpu"
SCRIPTS = sorted(GPU.glob("*.sh"))

sys.path.insert(0, str(GPU))
try:
    import kit
    import pack
finally:
    sys.path.remove(str(GPU))

PART = 1_000_000


@pytest.fixture
def files(tmp_path: Path) -> list[kit.Source]:
    rng = random.Random(0)
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"big.whl": 5 * PART + 123, "exact.whl": 2 * PART, "small.whl": 300_000}
    out = []
    for name, size in sizes.items():
        (src / name).write_bytes(rng.randbytes(size))
        out.append(kit.Source(src / name, "cuda" if name == "small.whl" else "core"))
    (src / "empty.whl").write_bytes(b"")
    return [*out, kit.Source(src / "empty.whl", "core")]


def _carry(out: Path, call: str, dest: Path) -> Path:
    """What one device call brings: that call folder alone."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(out / call, dest / call)
    return dest


def test_parts_fit_the_limits_and_join_back_to_the_same_bytes(
    tmp_path: Path, files: list[kit.Source]
) -> None:
    out = tmp_path / "parts"
    manifest = kit.build_kit(files, out, PART, int(1.5 * PART), {"target": {"python": "3.12"}})
    assert manifest["format"] == kit.FORMAT and manifest["target"] == {"python": "3.12"}
    for entry, source in zip(manifest["files"], files, strict=True):
        assert entry["sha256"] == kit.sha256_file(source.path)
        assert entry["size"] == sum(p["size"] for p in entry["parts"])
    assert [len(f["parts"]) for f in manifest["files"]] == [6, 2, 1, 1]  # big, exact, ...
    calls = manifest["calls"]
    assert [c["group"] for c in calls] == ["core"] * (len(calls) - 1) + ["cuda"]
    for call in calls:
        folder = out / call["dir"]
        parts = sorted(p for p in folder.iterdir() if p.name != kit.MANIFEST)
        assert [p.name for p in parts] == call["parts"]
        assert all(p.stat().st_size <= PART for p in parts)
        assert sum(p.stat().st_size for p in parts) == call["bytes"] <= 1.5 * PART
        assert json.loads((folder / kit.MANIFEST).read_text()) == manifest
    assert not list(out.glob(".staging*"))

    stash, carried = tmp_path / "stash", tmp_path / "carried"
    for i, call in enumerate(calls):
        assert kit.missing_calls(manifest, stash) == [c["dir"] for c in calls[i:]]
        copied = kit.collect(manifest, [_carry(out, call["dir"], carried)], stash)
        assert sorted(copied) == call["parts"]
    assert kit.missing_calls(manifest, stash) == []
    joined = kit.assemble(manifest, stash, tmp_path / "wheels", ["core", "cuda"])
    assert [p.name for p in joined] == [s.path.name for s in files]
    for path, source in zip(joined, files, strict=True):
        assert path.read_bytes() == source.path.read_bytes()


def test_a_damaged_or_missing_part_is_refused(tmp_path: Path, files: list[kit.Source]) -> None:
    out, stash = tmp_path / "parts", tmp_path / "stash"
    manifest = kit.build_kit(files, out, PART)
    victim = sorted(out.glob("call-01/*.part*"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed
    victim.write_bytes(bytes(data))
    with pytest.raises(kit.KitError, match=f"part .*{victim.name} is damaged.*sha256"):
        kit.collect(manifest, [out], stash)
    assert not (stash / victim.name).exists()

    shutil.rmtree(out)
    manifest = kit.build_kit(files, out, PART)
    kit.collect(manifest, [out], stash)
    (stash / manifest["calls"][2]["parts"][0]).unlink()
    with pytest.raises(kit.KitError, match=r"carry call-03 .*first"):
        kit.assemble(manifest, stash, tmp_path / "wheels", ["core"])
    kit.collect(manifest, [out], stash)  # carried again
    stashed = stash / victim.name
    stashed.write_bytes(stashed.read_bytes()[:-1] + b"\0")  # damaged after it was checked
    with pytest.raises(kit.KitError, match=f"{victim.name} in the stash is damaged"):
        kit.assemble(manifest, stash, tmp_path / "wheels", ["core"])
    assert not stashed.exists(), "a damaged part must not stay in the stash"
    assert not list((tmp_path / "wheels").glob("*.tmp"))


def _script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(GPU / "unpack_install.sh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_install_script_collects_call_by_call_and_checks_the_python(
    tmp_path: Path, files: list[kit.Source]
) -> None:
    out = tmp_path / "parts"
    meta = {"target": {"python": "0.1"}, "requirements": [], "cuda_requirements": []}
    manifest = kit.build_kit(files, out, PART, meta=meta)
    env = {"GANSERVE_GPU_HOME": str(tmp_path / "home")}
    first = manifest["calls"][0]["dir"]
    carried = _carry(out, first, tmp_path / "carried")
    run = _script("--collect-only", "--parts", str(carried), "--python", sys.executable, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "group core: 1/" in run.stdout and "still to carry: call-02" in run.stdout
    run = _script("--parts", str(carried), "--python", sys.executable, env=env)
    assert run.returncode == 1 and "the wheels are for Python 0.1" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_install_script_says_clearly_that_cuda_is_absent(tmp_path: Path) -> None:
    from ganserve.server.runtime import cuda_usable

    if cuda_usable():
        pytest.skip("this machine has a usable GPU")
    model = make_tiny_generator(tmp_path / "m.onnx")
    run = _script("--check-only", "--python", sys.executable, "--model", str(model))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "check_cuda: CUDA is" in run.stderr and "Traceback" not in run.stderr
    assert "unpack_install: ONNX Runtime cannot run on CUDA" in run.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_scripts_are_shellcheck_clean() -> None:
    assert SCRIPTS, "no scripts found"
    run = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_pack_asks_pip_for_the_server_set_on_the_gpu_python(tmp_path: Path) -> None:
    name, reqs, build = pack.requirement_lines(ROOT / "pyproject.toml", "server")
    names = {r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in reqs}
    assert name == "ganserve" and not any(r.startswith("ganserve") for r in reqs)
    assert {"onnxruntime-gpu", "grpcio", "numpy", "onnx", "prometheus-client"} <= names
    assert any(r.startswith("setuptools") for r in build)
    flags = pack.target_flags("3.12", "2.28")
    assert "manylinux_2_28_x86_64" in flags and "manylinux_2_29_x86_64" not in flags
    assert flags[flags.index("--python-version") + 1] == "3.12" and "cp312" in flags
    wheel = tmp_path / "ort-1.0-cp312-cp312-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(
            "ort-1.0.dist-info/METADATA",
            "Name: ort\nRequires-Dist: numpy\nProvides-Extra: cuda\n"
            'Requires-Dist: nvidia-cuda-runtime~=13.0; extra == "cuda"\nProvides-Extra: cudnn\n'
            "Requires-Dist: nvidia-cudnn-cu13~=9.0; extra == 'cudnn'\n",
        )
    assert pack.wheel_extras(wheel) == {
        "cuda": ["nvidia-cuda-runtime~=13.0"],
        "cudnn": ["nvidia-cudnn-cu13~=9.0"],
    }


def test_the_parts_folder_is_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    # gigabytes of wheels must never be committed; a device call carries them by name
    for path in ("benchmarks/gpu/parts/manifest.json", "benchmarks/gpu/parts/call-01/x.part000"):
        run = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path])
        assert run.returncode == 0, f"{path} is not git-ignored"
