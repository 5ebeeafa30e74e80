"""Smoke test of benchmarks/bench.py: a --quick run against a tiny stand-in model.

It runs the real thing (four server subprocesses, the load generator, raw ORT) for a
fraction of a second per point and checks the report's shape, never its figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from tiny_onnx import make_tiny_generator

from ganserve.v1 import generator_pb2 as pb
from ganserve.v1 import generator_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks" / "bench.py"
TARGETS = ("bare-grpc", "naive", "batched", "unbatched")
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
    lines = targets.strip().splitlines()
    verdicts = {line.split()[1]: line.split()[0] for line in lines}
    assert list(verdicts) == ["(1)", "(1b)", "(2a)", "(2b)", "(2c)", "(3)", "(3b)", "(3c)"], text
    assert set(verdicts.values()) <= {"PASS", "MISS"}, text  # every point was measured
    assert "naive server req/s" in targets and "default options" in targets
    assert "CPU-normalised" in context and "bare gRPC p50" in context
    assert "naive / batched CPU per request" in context and "raw ORT batch-1" in context
    doc = json.loads(out.read_text())
    assert {p["target"] for p in doc["points"]} == set(TARGETS)
    assert all(p["requests"] > 0 and p["req_per_s"] > 0 for p in doc["points"])
    naive = {(p["count"], p["concurrency"]): p for p in doc["points"] if p["target"] == "naive"}
    assert set(naive) == {(1, 1), (1, 4), (64, 1)}, naive
    for (count, _), p in naive.items():
        assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] < 10_000, p
        assert p["img_per_s"] == pytest.approx(p["req_per_s"] * count), p
        assert p["server_cpu"] > 0 and "mean_batch" not in p, p  # no /metrics to scrape
    assert {t["name"].split()[0] for t in doc["targets"]} >= {"(2c)", "(3c)"}
    batched = [p for p in doc["points"] if p["target"] == "batched"]
    assert all("mean_batch" in p for p in batched), "batch-size metric not scraped"


@pytest.mark.parametrize("classes", [0, 3])
def test_naive_server_answers_float32_images_from_the_seed(tmp_path: Path, classes: int) -> None:
    sys.path.insert(0, str(BENCH.parent))
    try:
        from _procs import ServerProcess
    finally:
        sys.path.remove(str(BENCH.parent))
    model = make_tiny_generator(tmp_path / "m.onnx", latent_dim=8, num_classes=classes)
    server = ServerProcess.launch_naive(tmp_path, model, "cpu").wait_ready(60)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.GeneratorStub(channel)

            def sample(seed: int, count: int = 3, labels: tuple[int, ...] = ()) -> pb.Images:
                request = pb.SampleRequest(model="m", count=count, seed=seed, labels=labels)
                response = stub.Sample(request, timeout=30)
                assert response.model == "m" and response.seed == seed
                if classes:  # one label for every image, or image i gets class i % classes
                    default = [i % classes for i in range(count)]
                    assert list(response.labels) == ([*labels] * count if labels else default)
                return response.images

            images = sample(7)
            assert images.encoding == pb.ENCODING_FLOAT32 and images.count == 3
            assert list(images.shape) == [1, 28, 28] and len(images.data) == 3 * 784 * 4
            pixels = np.frombuffer(images.data, np.float32)
            assert np.all(np.abs(pixels) <= 1) and pixels.std() > 0
            assert sample(7).data == images.data  # seeded: the same request, the same bytes
            assert sample(8).data != images.data
            assert len(sample(9, count=64).data) == 64 * 784 * 4
            if classes:
                assert sample(7, labels=(2,)).data != images.data
    finally:
        assert server.stop() == 0


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


def test_targets_compare_with_the_naive_server_and_the_p50_budget() -> None:
    sys.path.insert(0, str(BENCH.parent))
    try:
        from _loadgen import PointResult
        from _raw_ort import RawResult
        from _report import ratios
    finally:
        sys.path.remove(str(BENCH.parent))

    def point(req_per_s: float, count: int = 1, latency_ms: float = 1.0) -> PointResult:
        lats = np.full(int(req_per_s), latency_ms / 1e3)  # one second of requests
        return PointResult(lats, 1.0, count, 1.0, 0.5, 0.0)

    results = {
        ("bare-grpc", 1, 64): point(10_000),
        ("naive", 1, 64): point(1_000),
        ("batched", 1, 64): point(3_000),
        ("unbatched", 1, 64): point(2_000),
        ("bare-grpc", 1, 1): point(3_000, latency_ms=0.3),
        ("batched", 1, 1): point(1_000, latency_ms=0.9),
        ("batched", 64, 4): point(100, count=64),
    }
    raw = {
        ("raw-ort", 1): RawResult(1, 2_000, 1.0, np.zeros(1), 1.0),  # 0.5 ms a call
        ("raw-ort", 64): RawResult(64, 125, 1.0, np.zeros(1), 1.0),  # 8,000 img/s
        ("raw-ort-dflt", 64): RawResult(64, 100, 1.0, np.zeros(1), 1.0),  # 6,400 img/s
    }
    found = {r.name.split()[0]: r for r in ratios(results, raw, 64, 4, 64, 1)}
    assert found["(2c)"].value == pytest.approx(3.0) and found["(2c)"].verdict == "PASS"
    assert found["(1b)"].value == pytest.approx(1.0) and found["(1b)"].verdict == "PASS"
    assert found["(1)"].value == pytest.approx(0.8) and found["(1)"].verdict == "MISS"
    # p50 0.9 ms = bare 0.3 + raw 0.5 + 0.1: within the 0.15 ms budget
    assert found["(3c)"].value == pytest.approx(0.1) and found["(3c)"].verdict == "PASS"
    assert found["(3b)"].verdict == "PASS" and "(G)" not in found
    del results[("naive", 1, 64)], results[("bare-grpc", 1, 1)]  # e.g. --no-naive
    found = {r.name.split()[0]: r for r in ratios(results, raw, 64, 4, 64, 1, "cuda")}
    assert found["(2c)"].verdict == "N/A" and found["(3c)"].verdict == "N/A"
    assert found["(G)"].value == pytest.approx(0.8) and found["(G)"].verdict == "PASS"
