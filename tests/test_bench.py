"""Smoke test of benchmarks/bench.py: a --quick run against a tiny stand-in model.

It runs the real thing (three server subprocesses, the load generator, raw ORT) for a
fraction of a second per point and checks the report's shape, never its figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench.py"
TARGETS = ("bare-grpc", "batched", "unbatched")
_CONVS = ("Conv", "ConvTranspose")


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_quick_run_prints_the_table_and_targets(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = _bench(
        *("--model-dir", str(tmp_path / "empty"), "--model", "tiny-gen", "--standin", "tiny"),
        *("--quick", "--device", "cpu", "--json", str(out)),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    text = run.stdout
    assert "STAND-IN tiny" in text
    assert "cores=" in text and "onnxruntime=" in text and "device=cpu" in text
    assert "p99 ms" in text and "img/s" in text
    rows = [line.split() for line in text.splitlines()]
    # --quick sweeps count=1 at c=1,4 and count=64 at c=1 on every server.
    for target in TARGETS:
        measured = {(int(r[1]), int(r[2])) for r in rows if r and r[0] == target}
        assert measured == {(1, 1), (1, 4), (64, 1)}, (target, text)
    for reference in ("raw-ort", "raw-ort-dflt"):
        assert {int(r[1]) for r in rows if r and r[0] == reference} == {1, 64}, text
    targets, context = text.split("\ntargets:")[1].split("context (same run):")
    verdicts = [line.split()[0] for line in targets.strip().splitlines()]
    assert len(verdicts) == 4 and set(verdicts) <= {"PASS", "MISS", "N/A"}, text
    assert "CPU-normalised" in context and "bare gRPC p50" in context
    doc = json.loads(out.read_text())
    assert {p["target"] for p in doc["points"]} == set(TARGETS)
    assert all(p["requests"] > 0 and p["req_per_s"] > 0 for p in doc["points"])
    batched = [p for p in doc["points"] if p["target"] == "batched"]
    assert all("mean_batch" in p for p in batched), "batch-size metric not scraped"


def test_bad_arguments_give_a_message_not_a_traceback(tmp_path: Path) -> None:
    run = _bench("--concurrency", "0,4", timeout=60)
    assert run.returncode == 2
    assert "positive integers" in run.stderr and "Traceback" not in run.stderr
    run = _bench("--model-dir", str(tmp_path), "--standin", "nope", timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    from ganserve.server.runtime import cuda_usable

    if cuda_usable():
        pytest.skip("this machine has a usable GPU")
    run = _bench("--model-dir", str(tmp_path), "--standin", "tiny", "--quick", "--device", "cuda")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "no usable CUDA GPU" in run.stderr and "Traceback" not in run.stderr


def test_profile_summary_charges_native_frames_to_their_owner() -> None:
    sys.path.insert(0, str(BENCH.parent))
    try:
        from _profile import summarize
    finally:
        sys.path.remove(str(BENCH.parent))
    loop = "MainThread;BaseEventLoop._run_once (asyncio/base_events.py:1)"
    raw = "\n".join(
        [
            f"thread (10): {loop};Sample (server/service.py:9);0x1 (grpc/cygrpc.so);write (libc) 6",
            f"thread (10): {loop};latents (ganserve/seeds.py:5);0x2 (numpy/_pcg64.so) 3",
            f"thread (10): {loop};EpollSelector.select (selectors.py:1);epoll_wait (libc.so.6) 50",
            "thread (11): batcher;Thread.run (threading.py:1);run (onnxruntime/x.so) 1",
        ]
    )
    cpu = {10: ("python", 0.5), 11: ("python", 0.2), 12: ("python", 0.3)}
    text = summarize(raw, rate=100, seconds=1, thread_cpu=cpu)
    assert "(10 such, 50 waiting" in text
    assert "60.0%  grpc" in text and "30.0%  numpy" in text and "10.0%  onnxruntime" in text
    assert "no Python frames" in text  # thread 12: CPU seen only in /proc
    assert "90.0%  Sample (server/service.py:9)" not in text  # inclusive: 6 of 10 samples
    assert "60.0%  Sample (server/service.py:9)" in text


def test_dcgan_standins_match_the_bundled_recipe_and_the_reference_size(tmp_path: Path) -> None:
    import onnx

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _raw_ort import write_standin
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from ganserve.training.recipes import get_recipe

    def convs(kind: str) -> list[str]:
        model = onnx.load(str(write_standin(tmp_path / kind, "m", kind)))
        return [n.op_type for n in model.graph.node if n.op_type in _CONVS]

    blocks = get_recipe("mnist-dcgan").config.g_blocks
    assert convs("dcgan-ref") == ["ConvTranspose", "ConvTranspose"]
    assert convs("dcgan").count("Conv") == blocks  # the bundled model's extra 3x3 blocks
    bundled = onnx.load(str(ROOT / "models" / "mnist-dcgan" / "1" / "model.onnx"))
    assert [n.op_type for n in bundled.graph.node if n.op_type in _CONVS] == convs("dcgan")
