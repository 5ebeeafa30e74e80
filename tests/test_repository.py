"""Model repository: spec checks, start, lookups, failures, hot reload."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import make_tiny_dcgan, make_tiny_generator, model_path, write_broken_file

from ganserve.server.batcher import BatchingConfig
from ganserve.server.errors import InvalidArgument, NotFound, Unavailable
from ganserve.server.latent import one_hot
from ganserve.server.metrics import Metrics
from ganserve.server.repository import ModelRepository, ModelSpecError, read_spec
from ganserve.server.runtime import RuntimeConfig

RUNTIME = RuntimeConfig(device="cpu", intra_op_threads=1, warmup_batch_sizes=(1, 4), tuning="off")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def repo(tmp_path: Path, metrics: Metrics) -> AsyncIterator[ModelRepository]:
    repository = ModelRepository(tmp_path, RUNTIME, BatchingConfig(max_batch_size=4), metrics)
    yield repository
    await repository.close()


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# ------------------------------------------------------------------ spec checks


def test_read_spec_from_metadata_and_directory(tmp_path: Path) -> None:
    path = make_tiny_generator(tmp_path / "m.onnx", latent_dim=6, num_classes=3, name="inner")
    spec = read_spec(path, "outer", "7")
    assert (spec.name, spec.version) == ("outer", "7")  # the directory wins
    assert spec.kind == "conditional" and spec.conditional
    assert (spec.latent_dim, spec.num_classes) == (6, 3)
    assert spec.class_names == ("class0", "class1", "class2")
    assert spec.image_shape == (1, 28, 28) and spec.value_range == (-1.0, 1.0)
    assert spec.quality == {"fid": 123.0} and spec.architecture == "mlp"
    assert spec.metadata["ganserve.name"] == "inner" and spec.path == path


def test_read_spec_defaults_from_the_graph(tmp_path: Path) -> None:
    keys = ("kind", "latent_dim", "num_classes", "class_names", "quality", "value_range")
    overrides: dict[str, str | None] = {f"ganserve.{k}": None for k in keys}
    path = make_tiny_generator(tmp_path / "m.onnx", 5, 2, metadata_overrides=overrides)
    spec = read_spec(path, "tiny", "1")
    assert (spec.kind, spec.latent_dim, spec.num_classes) == ("conditional", 5, 2)
    assert spec.class_names == ("0", "1") and spec.quality == {}
    assert spec.value_range == (-1.0, 1.0)


def test_unconditional_model_may_name_its_datasets_classes(tmp_path: Path) -> None:
    # The exporter writes the data set's class names on every model; an unconditional
    # one still loads and serves no class names (its input has no class).
    names = '["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]'
    path = make_tiny_generator(
        tmp_path / "m.onnx", metadata_overrides={"ganserve.class_names": names}
    )
    spec = read_spec(path, "tiny", "1")
    assert spec.kind == "unconditional" and spec.class_names == ()


def test_symbolic_output_dims_take_the_metadata_shape(tmp_path: Path) -> None:
    path = make_tiny_generator(tmp_path / "m.onnx", symbolic_image_dims=True)
    assert read_spec(path, "tiny", "1").image_shape == (1, 28, 28)
    overrides: dict[str, str | None] = {"ganserve.image_shape": None}
    path = make_tiny_generator(
        tmp_path / "m.onnx", symbolic_image_dims=True, metadata_overrides=overrides
    )
    assert read_spec(path, "tiny", "1").image_shape == (1, 28, 28)  # the convention's default


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"z_name": "latent"}, "missing input 'z'"),
        ({"z_rank": 3}, "input 'z' must have rank 2"),
        ({"image_shape": (28, 28)}, "must have rank 4"),
        ({"image_shape": (2, 28, 28)}, "C 1 or 3"),
        ({"num_classes": 4, "declared_classes": 5}, "ganserve.num_classes=4 contradicts"),
        ({"metadata_overrides": {"ganserve.latent_dim": "100"}}, "latent_dim=100 contradicts"),
        ({"metadata_overrides": {"ganserve.kind": "conditional"}}, "ganserve.kind"),
        ({"metadata_overrides": {"ganserve.quality": "{oops"}}, "quality is not valid JSON"),
        ({"metadata_overrides": {"ganserve.quality": '{"fid": "low"}'}}, "must be numbers"),
        (
            {"num_classes": 3, "metadata_overrides": {"ganserve.class_names": '["a"]'}},
            "has 1 names but input 'y' has 3",
        ),
        ({"broken": True}, "not a readable ONNX file"),
        ({"metadata_overrides": {"ganserve.image_shape": "[1, 32, 32]"}}, "contradicts the output"),
        ({"metadata_overrides": {"ganserve.image_shape": "[1, 28]"}}, "must be \\[C, H, W\\]"),
    ],
)
def test_read_spec_rejects_misfits(tmp_path: Path, kwargs: dict, match: str) -> None:  # type: ignore[type-arg]
    path = make_tiny_generator(tmp_path / "m.onnx", **kwargs)
    with pytest.raises(ModelSpecError, match=match) as err:
        read_spec(path, "tiny", "1")
    assert str(path) in str(err.value)  # the message names the file


# ------------------------------------------------------------------ start, get


async def test_start_serves_good_models_and_reports_broken_ones(  # type: ignore[no-untyped-def]
    tmp_path: Path, repo: ModelRepository, metrics: Metrics
) -> None:
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    make_tiny_generator(model_path(tmp_path, "tiny", "2"), seed=1)
    make_tiny_generator(model_path(tmp_path, "cond", "1"), num_classes=10)
    write_broken_file(model_path(tmp_path, "broken", "1"))
    make_tiny_generator(model_path(tmp_path, "misfit", "3"), z_name="noise")
    lying = {"ganserve.image_shape": "[1, 32, 32]"}  # only the warm-up can tell
    make_tiny_generator(
        model_path(tmp_path, "liar", "1"), symbolic_image_dims=True, metadata_overrides=lying
    )
    (tmp_path / "tiny" / "notaversion").mkdir()
    assert not repo.ready
    await repo.start()
    assert repo.ready

    statuses = repo.statuses()
    assert [s.name for s in statuses] == ["broken", "cond", "liar", "misfit", "tiny"]
    by_name = {s.name: s for s in statuses}
    assert by_name["tiny"].version == "2" and by_name["tiny"].versions == ["1", "2"]
    assert by_name["tiny"].state == "READY" and by_name["tiny"].device == "cpu"
    assert (
        by_name["broken"].state == "FAILED" and "not a readable ONNX" in by_name["broken"].message
    )
    assert by_name["misfit"].state == "FAILED" and "missing input 'z'" in by_name["misfit"].message
    assert by_name["broken"].spec is None

    model = repo.get("tiny")
    assert model.spec.version == "2" and model.runner.warmed == (1, 4)
    assert repo.get("tiny", "1").spec.version == "1"
    cond = repo.get("cond")
    out = await cond.generate(np.zeros((3, 8), np.float32), one_hot([0, 1, 2], 10))
    assert out.shape == (3, 1, 28, 28)

    with pytest.raises(
        NotFound, match="model 'nope' not found; available: broken, cond, liar, misfit, tiny"
    ):
        repo.get("nope")
    with pytest.raises(NotFound, match="no version '9'; available: 1, 2"):
        repo.get("tiny", "9")
    with pytest.raises(Unavailable, match="FAILED"):
        repo.get("broken")
    assert _value(metrics, "ganserve_model_load_failures_total", model="broken") == 1
    assert _value(metrics, "ganserve_model_state", model="tiny", version="2", state="READY") == 1
    assert _value(metrics, "ganserve_model_state", model="broken", version="1", state="FAILED") == 1


async def test_empty_repository_is_not_ready(repo: ModelRepository) -> None:
    await repo.start()
    assert not repo.ready and repo.statuses() == []
    with pytest.raises(NotFound, match="available: none"):
        repo.get("tiny")


# ------------------------------------------------------------------ reload


async def test_reload_warms_a_new_version_before_it_takes_traffic(  # type: ignore[no-untyped-def]
    tmp_path: Path, repo: ModelRepository, metrics: Metrics
) -> None:
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    await repo.start()
    old = repo.get("tiny")
    make_tiny_generator(model_path(tmp_path, "tiny", "2"), seed=1)
    reloading = asyncio.create_task(repo.reload())
    served: set[str] = set()
    while not reloading.done():  # whatever is served meanwhile is warm and READY
        model = repo.get("tiny")
        served.add(model.spec.version)
        assert model.runner.warmed == (1, 4)
        await model.generate(np.zeros((1, 8), np.float32), None)
    report = await reloading
    assert report["loaded"] == ["tiny/2"] and report["unchanged"] == ["tiny/1"]
    new = repo.get("tiny")
    assert new.spec.version == "2" and new.runner.warmed == (1, 4)
    assert served <= {"1", "2"}
    assert repo.get("tiny", "1") is old  # unchanged versions are not reloaded
    assert _value(metrics, "ganserve_reloads_total", result="ok") == 1

    # nothing changed on disk: nothing reloaded
    assert (await repo.reload())["loaded"] == []


async def test_broken_new_version_leaves_the_old_one_serving(  # type: ignore[no-untyped-def]
    tmp_path: Path, repo: ModelRepository, metrics: Metrics
) -> None:
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    await repo.start()
    write_broken_file(model_path(tmp_path, "tiny", "2"))
    report = await repo.reload()
    assert report["failed"] == ["tiny/2"]
    assert repo.get("tiny").spec.version == "1"
    assert (await repo.get("tiny").generate(np.ones((2, 8), np.float32), None)).shape[0] == 2
    status = repo.status("tiny", "2")
    assert status.state == "FAILED" and "not a readable ONNX file" in status.message
    assert repo.statuses()[0].version == "1" and repo.statuses()[0].versions == ["1", "2"]
    assert _value(metrics, "ganserve_model_load_failures_total", model="tiny") == 1
    assert _value(metrics, "ganserve_reloads_total", result="failed") == 1
    with pytest.raises(Unavailable, match="version 2 is FAILED"):
        repo.get("tiny", "2")

    # fixing the file brings version 2 up
    make_tiny_generator(model_path(tmp_path, "tiny", "2"), seed=2)
    assert (await repo.reload())["loaded"] == ["tiny/2"]
    assert repo.get("tiny").spec.version == "2"


async def test_changed_file_swaps_and_broken_change_keeps_old_session(  # type: ignore[no-untyped-def]
    tmp_path: Path, repo: ModelRepository
) -> None:
    path = make_tiny_generator(model_path(tmp_path, "tiny", "1"), seed=0)
    await repo.start()
    z = np.ones((1, 8), np.float32)
    before = await repo.get("tiny").generate(z, None)
    make_tiny_generator(path, seed=1)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert (await repo.reload())["loaded"] == ["tiny/1"]
    after = await repo.get("tiny").generate(z, None)
    assert not np.array_equal(before, after)

    write_broken_file(path)
    assert (await repo.reload())["failed"] == ["tiny/1"]
    np.testing.assert_array_equal(await repo.get("tiny").generate(z, None), after)
    assert "serving the previous file" in repo.status("tiny").message


async def test_removed_version_stops_taking_traffic(tmp_path: Path, repo: ModelRepository) -> None:
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    make_tiny_generator(model_path(tmp_path, "tiny", "2"))
    await repo.start()
    old = repo.get("tiny", "2")
    model_path(tmp_path, "tiny", "2").unlink()
    report = await repo.reload()
    assert report["removed"] == ["tiny/2"]
    assert repo.get("tiny").spec.version == "1"
    with pytest.raises(NotFound):
        repo.get("tiny", "2")
    assert not old.batcher.accepting
    with pytest.raises(Unavailable):
        await old.generate(np.zeros((1, 8), np.float32), None)


async def test_rewritten_layers_metric_follows_the_loaded_versions(  # type: ignore[no-untyped-def]
    tmp_path: Path, repo: ModelRepository, metrics
) -> None:
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    make_tiny_dcgan(model_path(tmp_path, "conv", "1"))
    await repo.start()
    layers = "ganserve_model_rewritten_layers"
    # single-threaded session (RUNTIME): the hidden layer is rewritten, the image layer not
    assert _value(metrics, layers, model="conv", version="1") == 1
    assert _value(metrics, layers, model="tiny", version="1") == 0  # no ConvTranspose
    model_path(tmp_path, "conv", "1").unlink()
    await repo.reload()
    assert _value(metrics, layers, model="conv", version="1") is None


@pytest.mark.parametrize(
    ("threads", "batching", "side"),
    [
        (2, BatchingConfig(max_batch_size=4), True),
        (2, BatchingConfig(max_batch_size=4, side_batches=False), False),
        (2, BatchingConfig(max_batch_size=4, instances=2), False),
        (2, BatchingConfig(max_batch_size=4, enabled=False), False),
        (4, BatchingConfig(max_batch_size=4), False),  # one thread of four per batch: no
    ],
)
async def test_side_batches_are_wired_where_they_pay(  # type: ignore[no-untyped-def]
    tmp_path: Path, metrics, caplog, threads, batching, side
) -> None:
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    runtime = RuntimeConfig(
        device="cpu", intra_op_threads=threads, warmup_batch_sizes=(1, 4), tuning="off"
    )
    repository = ModelRepository(tmp_path, runtime, batching, metrics)
    with caplog.at_level(logging.INFO, logger="ganserve.server.repository"):
        await repository.start()
    try:
        model = repository.get("tiny")
        assert model.runner.side_batches is side
        assert f"side batches {'on' if side else 'off'}" in caplog.text
        z = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
        np.testing.assert_array_equal(await model.generate(z), model.runner.run(z))
    finally:
        await repository.close()


async def test_a_version_in_use_is_closed_only_after_its_last_user(
    tmp_path: Path, repo: ModelRepository
) -> None:
    path = make_tiny_generator(model_path(tmp_path, "tiny", "1"), seed=0)
    await repo.start()
    held = repo.get("tiny")
    held.acquire()  # an RPC (e.g. a long stream) is using version 1's first file
    z = np.ones((2, 8), np.float32)
    before = await held.generate(z)
    make_tiny_generator(path, seed=1)
    os.utime(path, ns=(1, 1))
    assert (await repo.reload())["loaded"] == ["tiny/1"]
    assert repo.get("tiny") is not held  # new requests get the new file...
    np.testing.assert_array_equal(await held.generate(z), before)  # ...the holder the old
    assert held.batcher.accepting
    held.release()
    for _ in range(100):  # the background close runs once the holder lets go
        if not held.batcher.accepting:
            break
        await asyncio.sleep(0.01)
    assert not held.batcher.accepting
    with pytest.raises(Unavailable):
        await held.generate(z)


async def test_only_canonical_version_folders_count(tmp_path: Path, repo: ModelRepository) -> None:
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    for odd in ("01", "0", "²", "v2"):  # "01" would collide with "1"; int("²") raises
        make_tiny_generator(model_path(tmp_path, "tiny", odd))
    await repo.start()
    assert repo.status("tiny").versions == ["1"]
    assert repo.ready


async def test_concurrent_reloads_load_each_file_once(  # type: ignore[no-untyped-def]
    tmp_path: Path, repo: ModelRepository
) -> None:
    await repo.start()
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    reports = await asyncio.gather(repo.reload(), repo.reload(), repo.reload())
    assert sorted(r["loaded"] for r in reports) == [[], [], ["tiny/1"]]
    assert repo.ready


async def test_generate_checks_shapes_per_request(tmp_path: Path, repo: ModelRepository) -> None:
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    make_tiny_generator(model_path(tmp_path, "cond", "1"), num_classes=3)
    await repo.start()
    tiny, cond = repo.get("tiny"), repo.get("cond")
    z = np.zeros((2, 8), np.float32)
    with pytest.raises(InvalidArgument, match=r"latents must be \(N, 8\)"):
        await tiny.generate(np.zeros((2, 7), np.float32))
    with pytest.raises(InvalidArgument, match="unconditional"):
        await tiny.generate(z, one_hot([0, 1], 3))
    with pytest.raises(InvalidArgument, match="conditional: class vectors needed"):
        await cond.generate(z)
    with pytest.raises(InvalidArgument, match=r"class vectors must be \(2, 3\)"):
        await cond.generate(z, one_hot([0], 3))
    out = await cond.generate(z.astype(np.float64), one_hot([0, 1], 3))  # cast, not refused
    assert out.shape == (2, 1, 28, 28)
