"""Model repository: spec checks, start, lookups, failures, hot reload."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_onnx import make_tiny_dcgan, make_tiny_generator, model_path, write_broken_file

from ganserve.server import repository as repository_module
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
    repository = _repo_in(tmp_path, metrics)
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
        # The batcher runs any number of images in one call: a fixed batch fails at serving.
        ({"batch_dim": 1}, "input 'z' has a fixed batch dimension 1"),
        # Every encoding maps [-1, 1] to 0..255: another range would be served wrong.
        ({"metadata_overrides": {"ganserve.value_range": "[0, 1]"}}, "must be \\[-1, 1\\]"),
        ({"metadata_overrides": {"ganserve.value_range": "[NaN, Infinity]"}}, "\\[-1, 1\\]"),
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


async def test_names_not_seen_yet_are_unavailable_until_the_first_load_ends(
    tmp_path: Path, repo: ModelRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a stream resumed on a restarted server got a final NOT_FOUND for
    a model that server had not reached yet. Until the first load has ended, a name or
    version not seen yet may still come: UNAVAILABLE, which clients retry."""
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    make_tiny_generator(model_path(tmp_path, "tiny", "2"), seed=1)
    gate, reached = threading.Event(), threading.Event()
    digest = repository_module._digest

    def held(path: Path, *args: Any) -> str:
        if path.parent.name == "1":  # tiny/1 is being read; tiny/2 not registered yet
            reached.set()
            gate.wait(10)
        return digest(path, *args)

    monkeypatch.setattr(repository_module, "_digest", held)
    with pytest.raises(Unavailable, match="model 'tiny' is not loaded yet: the server is starting"):
        repo.get("tiny")
    start = asyncio.ensure_future(repo.start())
    assert await asyncio.to_thread(reached.wait, 10)
    with pytest.raises(Unavailable, match="model 'tiny' version '2' is not loaded yet"):
        repo.get("tiny", "2")
    with pytest.raises(Unavailable, match="model 'other' is not loaded yet"):
        repo.get("other")
    gate.set()
    await start
    assert repo.get("tiny", "2").spec.version == "2"
    with pytest.raises(NotFound, match="no version '3'"):
        repo.get("tiny", "3")
    with pytest.raises(NotFound, match="model 'other' not found"):
        repo.get("other")


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
    tmp_path: Path, repo: ModelRepository, metrics: Metrics
) -> None:
    def stale() -> float | None:
        return _value(metrics, "ganserve_model_stale", model="tiny", version="1")

    path = make_tiny_generator(model_path(tmp_path, "tiny", "1"), seed=0)
    await repo.start()
    assert stale() == 0
    z = np.ones((1, 8), np.float32)
    before = await repo.get("tiny").generate(z, None)
    make_tiny_generator(path, seed=1)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert (await repo.reload())["loaded"] == ["tiny/1"]
    after = await repo.get("tiny").generate(z, None)
    assert not np.array_equal(before, after)

    assert stale() == 0

    write_broken_file(path)
    assert (await repo.reload())["failed"] == ["tiny/1"]
    np.testing.assert_array_equal(await repo.get("tiny").generate(z, None), after)
    assert "serving the previous file" in repo.status("tiny").message
    assert stale() == 1  # the state the log alone showed before
    assert (await repo.reload(retry_failed=True))["failed"] == ["tiny/1"]
    assert stale() == 1

    make_tiny_generator(path, seed=2)  # fixed: the file in the folder serves again
    assert (await repo.reload())["loaded"] == ["tiny/1"]
    assert stale() == 0
    path.unlink()
    assert (await repo.reload())["removed"] == ["tiny/1"]
    assert stale() is None  # gone with the version's other series


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


# ------------------------------------------------------------------ not the file's fault


async def test_a_model_that_computes_nan_fails_at_load(
    tmp_path: Path, repo: ModelRepository
) -> None:
    make_tiny_generator(model_path(tmp_path, "nan", "1"), nan_output=True)
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    await repo.start()
    status = repo.status("nan")
    assert status.state == "FAILED" and "not finite" in status.message
    assert repo.get("tiny").spec.version == "1"


def _repo_in(root: Path, metrics: Metrics, max_versions: int = 0) -> ModelRepository:
    return ModelRepository(root, RUNTIME, BatchingConfig(max_batch_size=4), metrics, max_versions)


async def test_a_model_root_that_is_gone_fails_the_reload_and_keeps_the_models(
    tmp_path: Path, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    make_tiny_generator(model_path(root, "tiny", "1"))
    repo = _repo_in(root, metrics)
    try:
        await repo.start()
        root.rename(tmp_path / "elsewhere")  # a volume remounted, a directory swapped
        with caplog.at_level(logging.ERROR):
            report = await repo.reload()
        assert report["error"] and report["removed"] == [] and "elsewhere" not in str(report)
        assert "every model loaded stays as it is" in caplog.text
        assert repo.ready and repo.get("tiny").spec.version == "1"
        assert _value(metrics, "ganserve_reloads_total", result="failed") == 1
        (tmp_path / "elsewhere").rename(root)
        assert (await repo.reload())["unchanged"] == ["tiny/1"]
    finally:
        await repo.close()


async def test_an_unreadable_file_fails_its_version_not_the_reload(  # type: ignore[no-untyped-def]
    tmp_path: Path, repo: ModelRepository, metrics: Metrics
) -> None:
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    # stat() works, read() fails (EIO): what a file with the wrong permissions or on a
    # failing disk looks like to a server running as any user.
    unreadable = model_path(tmp_path, "unreadable", "1")
    unreadable.parent.mkdir(parents=True)
    unreadable.symlink_to("/proc/self/mem")
    await repo.start()  # before: OSError out of start(), the server exited
    assert repo.status("unreadable").state == "FAILED"
    assert "cannot read it" in repo.status("unreadable").message
    assert repo.get("tiny").spec.version == "1"
    assert _value(metrics, "ganserve_model_load_failures_total", model="unreadable") == 1

    make_tiny_generator(model_path(tmp_path, "tiny", "2"), seed=1)
    model_path(tmp_path, "tiny", "1").unlink()
    report = await repo.reload()  # the same unreadable file again, beside real changes
    assert report["loaded"] == ["tiny/2"] and report["removed"] == ["tiny/1"]
    assert repo.get("tiny").spec.version == "2"
    assert "error" not in report


def _weights_apart(root: Path) -> tuple[Path, bytes]:
    """``root/ext/1/model.onnx`` with its weights in ``weights.bin`` (ONNX external
    data), that file taken away: its path and bytes, to bring back later."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    path = make_tiny_generator(model_path(root, "ext", "1"))
    model = onnx.load(str(path))
    convert_model_to_external_data(model, location="weights.bin", size_threshold=1024)
    onnx.save(model, str(path))
    weights = path.parent / "weights.bin"
    held = weights.read_bytes()
    weights.unlink()
    return weights, held


async def test_a_failed_version_is_retried_when_its_folder_changes_or_when_asked(
    tmp_path: Path, repo: ModelRepository
) -> None:
    """The weights of a model with external data arrive after its graph: the folder
    changed though model.onnx did not, so a poll loads it. An explicit reload
    (``retry_failed``: SIGHUP) tries a failed version again even when nothing changed:
    the cause may have been memory or a device, not the files."""
    weights, held = _weights_apart(tmp_path)  # the graph arrived first
    await repo.start()
    assert repo.status("ext").state == "FAILED"

    assert (await repo.reload())["unchanged"] == ["ext/1"]  # a poll: nothing new
    report = await repo.reload(retry_failed=True)  # SIGHUP: try it again anyway
    assert report["failed"] == ["ext/1"] and report["unchanged"] == []

    weights.write_bytes(held)
    assert (await repo.reload())["loaded"] == ["ext/1"]  # a poll sees the folder change
    assert repo.get("ext").spec.version == "1"
    assert repo.status("ext").state == "READY" and repo.status("ext").message == ""
    report = await repo.reload(retry_failed=True)  # READY versions are not reloaded
    assert report["unchanged"] == ["ext/1"]


async def test_layout_misfits_are_logged_once(
    tmp_path: Path, repo: ModelRepository, caplog: pytest.LogCaptureFixture
) -> None:
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    (tmp_path / "tiny" / "2").mkdir()  # the file not copied yet
    (tmp_path / "tiny" / "v3").mkdir()
    with caplog.at_level(logging.WARNING):
        await repo.start()
        await repo.reload()
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 2, lines
    assert any(
        "no model.onnx file" in line and line.endswith(f"{os.sep}2: no model.onnx file in it")
        for line in lines
    )
    assert any("v3: not a version folder" in line for line in lines)


# ------------------------------------------------------------------ --max-versions


async def test_max_versions_loads_the_newest_and_keeps_serving_through_a_broken_one(
    tmp_path: Path, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "models"
    for version in ("1", "2"):
        make_tiny_generator(model_path(root, "tiny", version), seed=int(version))
    repo = _repo_in(root, metrics, max_versions=1)
    try:
        with caplog.at_level(logging.INFO):
            await repo.start()
        assert repo.status("tiny").versions == ["2"]
        assert "tiny/1 not loaded (--max-versions 1)" in caplog.text
        with pytest.raises(NotFound, match="the server loads the newest 1"):
            repo.get("tiny", "1")

        # A broken version 3 is now the newest: version 2 keeps serving until a newer
        # one is READY, or the policy would leave the model with none.
        write_broken_file(model_path(root, "tiny", "3"))
        report = await repo.reload()
        assert report["failed"] == ["tiny/3"] and report["removed"] == []
        assert repo.get("tiny").spec.version == "2"
        served = repo.get("tiny")

        # Serving on, version 2 is still a served version: a file replaced in place is
        # loaded, and a broken replacement leaves it serving its previous file, stale.
        stale = {"model": "tiny", "version": "2"}
        make_tiny_generator(model_path(root, "tiny", "2"), seed=22)
        report = await repo.reload()
        assert report["loaded"] == ["tiny/2"] and report["failed"] == []
        assert repo.get("tiny").spec.version == "2" and repo.get("tiny") is not served
        write_broken_file(model_path(root, "tiny", "2"))
        assert (await repo.reload())["failed"] == ["tiny/2"]
        assert _value(metrics, "ganserve_model_stale", **stale) == 1
        make_tiny_generator(model_path(root, "tiny", "2"), seed=2)
        assert (await repo.reload())["loaded"] == ["tiny/2"]
        assert _value(metrics, "ganserve_model_stale", **stale) == 0

        # Version 3 fixed while version 2's file changes too: 2 is retired, not loaded
        # again first only to go (found in review).
        make_tiny_generator(model_path(root, "tiny", "2"), seed=23)
        make_tiny_generator(model_path(root, "tiny", "3"), seed=3)
        report = await repo.reload()
        assert report["loaded"] == ["tiny/3"] and report["removed"] == ["tiny/2"]
        assert repo.status("tiny").versions == ["3"]
        assert repo.get("tiny").spec.version == "3"
        state = {"model": "tiny", "version": "2", "state": "READY"}
        assert _value(metrics, "ganserve_model_state", **state) is None
    finally:
        await repo.close()


async def test_only_the_model_and_its_weights_count_as_the_version(
    tmp_path: Path, repo: ModelRepository
) -> None:
    """Found in review: with every file of the folder in the fingerprint, an editor's
    lock file (a dangling link), a model card or a copy in progress under a temporary
    name reloaded the model, or retired it when the file vanished mid-scan."""
    path = make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    await repo.start()
    served = repo.get("tiny")
    folder = path.parent
    (folder / ".#README.md").symlink_to("nobody@host.1234")  # Emacs's lock file
    (folder / "README.md").write_text("notes")
    (folder / "model.onnx.tmp").write_bytes(b"half a copy")
    report = await repo.reload()
    assert report["unchanged"] == ["tiny/1"] and report["removed"] == []
    assert repo.get("tiny") is served
    # A plan saved by `ganserve tune` is part of what the version loads: it applies.
    (folder / "tuning.json").write_text("{}")
    assert (await repo.reload())["loaded"] == ["tiny/1"]
    assert (await repo.reload())["unchanged"] == ["tiny/1"]


async def test_a_model_folder_whose_link_target_is_gone_keeps_its_versions(
    tmp_path: Path, metrics: Metrics
) -> None:
    """Model folders are often links into a volume: one not mounted (yet) is unreadable,
    not a model removed."""
    root, volume = tmp_path / "models", tmp_path / "volume"
    make_tiny_generator(model_path(volume, "tiny", "1"))
    root.mkdir()
    (root / "tiny").symlink_to(volume / "tiny")
    repo = _repo_in(root, metrics)
    try:
        await repo.start()
        served = repo.get("tiny")
        volume.rename(tmp_path / "unmounted")
        report = await repo.reload()
        assert report["removed"] == [] and repo.get("tiny") is served
        (tmp_path / "unmounted").rename(volume)
        assert (await repo.reload())["unchanged"] == ["tiny/1"]
    finally:
        await repo.close()


def test_a_file_over_two_gib_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    with path.open("wb") as f:
        f.truncate(3 << 30)  # sparse: no disk; read whole, 3 GiB of memory
    with pytest.raises(ModelSpecError, match="over the 2 GiB a protobuf can hold"):
        read_spec(path, "big", "1")


async def test_weights_that_could_not_be_read_are_loaded_once_replaced(
    tmp_path: Path, repo: ModelRepository
) -> None:
    """Found in review: a version whose weights file could not be read stored a
    fingerprint without that file, so replacing it with a good one changed nothing a
    poll could see. (A directory stands in for a file the server may not read: the
    tests may run as root.)"""
    weights, held = _weights_apart(tmp_path)
    weights.mkdir()
    await repo.start()
    status = repo.status("ext")
    assert status.state == "FAILED" and "weights.bin: cannot read it" in status.message
    assert (await repo.reload())["unchanged"] == ["ext/1"]
    weights.rmdir()
    weights.write_bytes(held)
    assert (await repo.reload())["loaded"] == ["ext/1"]  # a poll, no SIGHUP
