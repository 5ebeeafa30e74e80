"""ONNX Runtime runner on CPU: providers, correctness against numpy, threads, warm-up."""

from __future__ import annotations

import concurrent.futures
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tiny_onnx import make_tiny_generator

from ganserve.server import runtime
from ganserve.server.errors import Unavailable
from ganserve.server.repository import read_spec
from ganserve.server.runtime import (
    OrtRunner,
    RuntimeConfig,
    cuda_usable,
    resolve_providers,
    warmup_sizes,
)


def _runner(tmp_path: Path, num_classes: int = 0, **config: object) -> OrtRunner:
    path = make_tiny_generator(tmp_path / "model.onnx", latent_dim=8, num_classes=num_classes)
    return OrtRunner(path, read_spec(path, "tiny", "1"), RuntimeConfig(**config))  # type: ignore[arg-type]


def _reference(path: Path, z: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """The tiny generator in numpy: tanh([z, y] @ W) reshaped to (N, 1, 28, 28)."""
    model = onnx.load(str(path))
    weight = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "weight")
    x = z if y is None else np.concatenate([z, y], axis=1)
    return np.tanh(x @ weight).reshape(-1, 1, 28, 28)


def test_cpu_and_auto_providers() -> None:
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    auto = resolve_providers("auto")
    assert auto[-1] == "CPUExecutionProvider"
    assert (len(auto) == 2) == cuda_usable()
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_providers("tpu")


@pytest.mark.skipif(cuda_usable(), reason="a GPU is present")
def test_auto_falls_back_to_cpu_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    runtime._log_cpu_fallback.cache_clear()
    with caplog.at_level(logging.INFO, logger="ganserve.server.runtime"):
        for _ in range(3):
            assert resolve_providers("auto") == ["CPUExecutionProvider"]
    lines = [r.getMessage() for r in caplog.records if "CUDA" in r.getMessage()]
    assert lines == ["device auto: no usable CUDA GPU, running ONNX Runtime on CPU"]


@pytest.mark.skipif(cuda_usable(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(Unavailable, match="no usable CUDA GPU"):
        resolve_providers("cuda")


@pytest.mark.skipif(cuda_usable(), reason="a GPU is present")
def test_a_cuda_provider_that_falls_back_loads_as_a_cpu_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: when the driver check passed but ONNX Runtime's CUDA provider
    did not start (e.g. no cuDNN), --device auto served on the CPU with the plan made
    for CUDA: no tuning, no rewrite, no single-threaded twin. Here the driver check is
    made to pass on a machine without a GPU, where ONNX Runtime falls back as it would."""
    monkeypatch.setattr(runtime, "cuda_usable", lambda: True)
    assert resolve_providers("auto")[0][0] == "CUDAExecutionProvider"
    with caplog.at_level(logging.WARNING, logger="ganserve.server.runtime"):
        runner = _runner(tmp_path, device="auto", intra_op_threads=2)
    assert runner.device == "cpu"
    assert "CUDA provider failed to start, running on CPU" in caplog.text
    cpu = _runner(tmp_path / "cpu", device="cpu", intra_op_threads=2)
    assert runner.plan == cpu.plan and runner.plan.single_thread_max > 0  # CUDA's: 0
    assert resolve_providers("auto")[0][0] == "CUDAExecutionProvider"  # tried again
    with pytest.raises(Unavailable, match="could not start its CUDA provider"):
        _runner(tmp_path / "cuda", device="cuda")


@pytest.mark.parametrize("num_classes", [0, 10])
def test_run_matches_numpy_reference(tmp_path: Path, num_classes: int) -> None:
    runner = _runner(tmp_path, num_classes=num_classes, device="cpu")
    assert runner.device == "cpu"
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 8)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[[0, 1, 2, 3, 9]] if num_classes else None
    out = runner.run(z, y)
    assert out.shape == (5, 1, 28, 28) and out.dtype == np.float32
    assert np.abs(out).max() <= 1.0
    np.testing.assert_allclose(out, _reference(tmp_path / "model.onnx", z, y), atol=1e-5)
    if num_classes:
        other = runner.run(z, np.eye(10, dtype=np.float32)[[9, 9, 9, 9, 0]])
        assert not np.allclose(other, out)  # the class input matters
        with pytest.raises(ValueError, match="needs class vectors"):
            runner.run(z, None)


def test_auto_device_runs(tmp_path: Path) -> None:
    runner = _runner(tmp_path, device="auto")
    assert runner.device == ("cuda" if cuda_usable() else "cpu")
    assert runner.run(np.zeros((2, 8), np.float32)).shape == (2, 1, 28, 28)


def test_run_is_thread_safe(tmp_path: Path) -> None:
    runner = _runner(tmp_path, device="cpu", intra_op_threads=1)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 3, 7, 16) * 8]
    expected = [runner.run(z) for z in inputs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(runner.run, inputs))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_warmup_sizes_and_warmup(tmp_path: Path) -> None:
    assert warmup_sizes(RuntimeConfig(), 64) == (1, 2, 4, 8, 16, 32, 64)
    assert warmup_sizes(RuntimeConfig(), 48) == (1, 2, 4, 8, 16, 32, 48)
    assert warmup_sizes(RuntimeConfig(warmup_batch_sizes=(3, 5)), 64) == (3, 5)
    runner = _runner(tmp_path, num_classes=4, device="cpu")
    runner.warmup((1, 2, 4))
    assert runner.warmed == (1, 2, 4)


@pytest.mark.parametrize("num_classes", [0, 10])
def test_small_batches_run_on_a_single_threaded_twin_with_identical_results(
    tmp_path: Path, num_classes: int
) -> None:
    twin = _runner(tmp_path, num_classes=num_classes, device="cpu", intra_op_threads=2)
    assert twin.small_batch_max == 8  # the default
    small = _runner(
        tmp_path, num_classes=num_classes, device="cpu", intra_op_threads=2, small_batch_max=4
    )
    plain = _runner(
        tmp_path, num_classes=num_classes, device="cpu", intra_op_threads=2, small_batch_max=0
    )
    assert (small.small_batch_max, plain.small_batch_max) == (4, 0)
    rng = np.random.default_rng(2)
    for n in (1, 4, 5, 16):  # both sides of the limit
        z = rng.standard_normal((n, 8)).astype(np.float32)
        y = np.eye(10, dtype=np.float32)[np.arange(n) % 10] if num_classes else None
        np.testing.assert_array_equal(small.run(z, y), plain.run(z, y))
        # the twin runs any batch size for side batches, to the same bytes
        np.testing.assert_array_equal(small.run_single_threaded(z, y), plain.run(z, y))
    one = _runner(tmp_path, device="cpu", intra_op_threads=1)
    assert one.small_batch_max == 0  # already single-threaded: no twin


def test_side_batches_only_on_two_intra_op_threads(tmp_path: Path) -> None:
    """Side batches run on the single-threaded twin: granted with two intra-op threads
    (measured), not with one (no twin) or more (a batch on one thread would idle the
    rest); the twin then exists even with small batches off, and is warmed at every size."""
    path = make_tiny_generator(tmp_path / "model.onnx", latent_dim=8)
    spec = read_spec(path, "tiny", "1")

    def runner(threads: int, **config: Any) -> OrtRunner:
        runtime = RuntimeConfig(device="cpu", intra_op_threads=threads, **config)
        return OrtRunner(path, spec, runtime, side_batches=True)

    two = runner(2, small_batch_max=0)
    assert two.side_batches and not OrtRunner(path, spec, RuntimeConfig(device="cpu")).side_batches
    assert not runner(1).side_batches and not runner(4).side_batches
    z = np.random.default_rng(4).standard_normal((16, 8)).astype(np.float32)
    np.testing.assert_array_equal(two.run_single_threaded(z), two.run(z))
    calls: list[int] = []
    real = two.run_single_threaded
    two.run_single_threaded = lambda z, y=None: calls.append(len(z)) or real(z, y)  # type: ignore[method-assign]
    two.warmup((1, 4, 16))
    assert calls == [1, 4, 16]  # small_batch_max 0: every size also on the twin


@pytest.mark.parametrize(
    "config",
    [
        {"device": "gpu"},
        {"intra_op_threads": -1},
        {"warmup_batch_sizes": (0,)},
        {"small_batch_max": -1},
    ],
)
def test_runtime_config_validation(config: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RuntimeConfig(**config)  # type: ignore[arg-type]
