"""Self-tuning at load: the choice rules on given costs, real measurements of tiny
models, `ganserve tune`'s saved plans, and what a real server reports."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import make_tiny_dcgan, make_tiny_generator, model_path

from ganserve.cli import main as ganserve_main
from ganserve.clients.sync import GanClient
from ganserve.server.runtime import OrtRunner, RuntimeConfig
from ganserve.server.spec import read_spec
from ganserve.server.tuning import TUNING_FILE, Cost, choose, host_fingerprint, load_saved

SIZES = (1, 2, 4, 8)


def _costs(table: dict[tuple[str, int], list[float]]) -> list[Cost]:
    return [
        Cost(n, graph, threads, seconds)
        for (graph, threads), row in table.items()
        for n, seconds in zip(SIZES, row, strict=True)
    ]


def test_one_graph_for_every_size_by_the_geometric_mean() -> None:
    # rewritten wins small batches by a little and loses the largest by a lot
    costs = _costs({
        ("original", 1): [1.0, 2.0, 4.0, 8.0],
        ("original", 2): [1.5, 2.0, 3.0, 5.0],
        ("rewritten", 1): [0.9, 1.9, 3.9, 12.0],
        ("rewritten", 2): [1.4, 1.9, 3.5, 11.0],
    })  # fmt: skip
    graph, single = choose(costs, SIZES)
    assert graph == "original"  # one graph: a request's bytes never depend on its batch
    assert single == 2  # one thread at least as fast for 1 and 2, slower from 4


def test_a_near_tie_keeps_the_rewritten_graph() -> None:
    costs = _costs({("original", 1): [0.97] * 4, ("rewritten", 1): [1.0] * 4})
    assert choose(costs, SIZES)[0] == "rewritten"  # 3 %: replicas must not split on noise
    costs = _costs({("original", 1): [0.9] * 4, ("rewritten", 1): [1.0] * 4})
    assert choose(costs, SIZES)[0] == "original"


def test_the_single_thread_range_is_contiguous_from_one() -> None:
    costs = _costs({
        ("rewritten", 1): [1.0, 3.0, 3.0, 6.0],
        ("rewritten", 2): [1.2, 2.0, 3.5, 5.0],
    })  # fmt: skip
    assert choose(costs, SIZES) == ("rewritten", 1)  # 4 won again, but after 2 lost
    assert choose(costs, SIZES, pinned_single_max=8) == ("rewritten", 8)
    slower = _costs({("rewritten", 1): [2.0] * 4, ("rewritten", 2): [1.0] * 4})
    assert choose(slower, SIZES) == ("rewritten", 0)


def _runner(path: Path, name: str, **config: object) -> OrtRunner:
    runtime = RuntimeConfig(device="cpu", tuning_budget_s=0.05, **config)  # type: ignore[arg-type]
    return OrtRunner(path, read_spec(path, name, "1"), runtime, tune_sizes=SIZES)


def test_a_conv_model_is_measured_on_both_graphs_and_thread_counts(tmp_path: Path) -> None:
    path = make_tiny_dcgan(model_path(tmp_path, "conv", "1"))
    runner = _runner(path, "conv", intra_op_threads=2, tuning="measure")
    plan = runner.plan
    assert plan.source == "measured" and 0 < plan.seconds < 5
    measured = {(c.graph, c.threads, c.batch_size) for c in plan.costs}
    assert measured == {(g, t, n) for g in ("original", "rewritten") for t in (1, 2) for n in SIZES}
    assert all(c.seconds > 0 for c in plan.costs)
    assert plan.graph == choose(plan.costs, SIZES)[0]
    # two threads: the hidden layer rewritten and the image layer chained onto it
    assert runner.rewritten == (2 if plan.graph == "rewritten" else 0)
    assert runner.small_batch_max == plan.single_thread_max
    assert set(plan.chosen_costs()) == set(SIZES)
    # whatever was chosen computes what the model computes
    z = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    plain = OrtRunner(path, runner.spec, RuntimeConfig(device="cpu", rewrite_conv_transpose=False))
    np.testing.assert_allclose(runner.run(z), plain.run(z), atol=1e-5)


def test_a_model_without_conv_transpose_has_one_graph(tmp_path: Path) -> None:
    path = make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    plan = _runner(path, "tiny", intra_op_threads=2, tuning="measure").plan
    assert plan.graph == "original" and {c.graph for c in plan.costs} == {"original"}


def test_pins_and_off_measure_nothing(tmp_path: Path) -> None:
    path = make_tiny_dcgan(model_path(tmp_path, "conv", "1"))
    pinned = _runner(path, "conv", intra_op_threads=2, small_batch_max=3,
                     rewrite_conv_transpose=False).plan  # fmt: skip
    assert (pinned.source, pinned.graph, pinned.single_thread_max, pinned.costs) == (
        "pinned",
        "original",
        3,
        (),
    )
    off = _runner(path, "conv", intra_op_threads=2, tuning="off").plan
    assert (off.source, off.graph, off.single_thread_max) == ("defaults", "rewritten", 8)
    # one pin: the other choice is still measured, the pinned one kept
    half = _runner(path, "conv", intra_op_threads=2, small_batch_max=2, tuning="measure").plan
    assert half.source == "measured" and half.single_thread_max == 2


def test_tune_saves_a_plan_that_serve_reuses_on_this_host_only(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = make_tiny_dcgan(model_path(tmp_path, "conv", "1"))
    make_tiny_generator(model_path(tmp_path, "other", "1"))
    argv = ["tune", "--model-dir", str(tmp_path), "--model", "conv", "--device", "cpu",
            "--intra-op-threads", "2", "--tuning-budget-s", "0.05",
            "--max-batch-size", "8"]  # fmt: skip
    assert ganserve_main(argv) == 0
    assert "conv/1: " in capsys.readouterr().out
    assert not (tmp_path / "other" / "1" / TUNING_FILE).exists()  # --model: only conv
    saved = json.loads((path.parent / TUNING_FILE).read_text())
    assert saved["host"]["threads"] == 2 and len(saved["costs"]) == 2 * 2 * 4

    runner = _runner(path, "conv", intra_op_threads=2)  # tuning auto
    assert runner.plan.source == "saved"
    assert (runner.plan.graph, runner.plan.single_thread_max) == (
        saved["graph"], saved["single_thread_max"])  # fmt: skip
    # other thread counts, another CPU, or another model file: measured again
    assert _runner(path, "conv", intra_op_threads=1).plan.source == "measured"
    config = RuntimeConfig(device="cpu", intra_op_threads=2)
    elsewhere = saved | {"host": saved["host"] | {"cpu": "another CPU"}}
    (path.parent / TUNING_FILE).write_text(json.dumps(elsewhere))
    assert load_saved(path, config, SIZES) is None
    (path.parent / TUNING_FILE).write_text(json.dumps(saved))
    assert load_saved(path, config, SIZES) is not None
    shutil.copy(make_tiny_generator(tmp_path / "x" / "model.onnx"), path)
    assert load_saved(path, config, SIZES) is None
    for broken in ("{not json", "null", "[]", '"x"'):
        (path.parent / TUNING_FILE).write_text(broken)
        assert load_saved(path, config, SIZES) is None
    wrong = saved | {"host": host_fingerprint(path, config, SIZES)}
    for damage in ({"costs": [{"batch_size": 1}]}, {"graph": "other"}, {"seconds": "x"}):
        (path.parent / TUNING_FILE).write_text(json.dumps(wrong | damage))
        assert load_saved(path, config, SIZES) is None  # measured again, never a failed load
    (path.parent / TUNING_FILE).write_text(json.dumps(wrong))
    assert load_saved(path, config, SIZES) is not None


def test_a_plan_saved_with_pins_is_not_reused_without_them(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = make_tiny_dcgan(model_path(tmp_path, "conv", "1"))
    argv = ["tune", "--model-dir", str(tmp_path), "--device", "cpu", "--intra-op-threads",
            "2", "--tuning-budget-s", "0.05", "--max-batch-size", "8",
            "--small-batch-max", "4"]  # fmt: skip
    assert ganserve_main(argv) == 0
    assert (path.parent / TUNING_FILE).exists()
    assert _runner(path, "conv", intra_op_threads=2).plan.source == "measured"
    assert _runner(path, "conv", intra_op_threads=2, small_batch_max=4).plan.source == "saved"


def test_tune_goes_on_past_a_model_it_cannot_save(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    locked = make_tiny_dcgan(model_path(tmp_path, "a-locked", "1")).parent
    make_tiny_dcgan(model_path(tmp_path, "b-open", "1"))
    (locked / TUNING_FILE).mkdir()  # a file that cannot be written, even by root
    argv = ["tune", "--model-dir", str(tmp_path), "--device", "cpu", "--intra-op-threads",
            "2", "--tuning-budget-s", "0.02", "--max-batch-size", "2"]  # fmt: skip
    assert ganserve_main(argv) == 1
    captured = capsys.readouterr()
    assert "a-locked/1: measured (" in captured.err and "but not saved" in captured.err
    assert "b-open/1: " in captured.out
    assert (tmp_path / "b-open" / "1" / TUNING_FILE).is_file()


def test_the_plan_says_what_the_runner_runs(tmp_path: Path) -> None:
    plain = make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    off = _runner(plain, "tiny", intra_op_threads=2, tuning="off")
    assert off.plan.graph == "original" and off.rewritten == 0  # nothing to rewrite
    conv = make_tiny_dcgan(model_path(tmp_path, "conv", "1"))
    one = _runner(conv, "conv", intra_op_threads=1, tuning="off")
    assert one.plan.single_thread_max == one.small_batch_max == 0  # one thread: no twin
    none = OrtRunner(conv, one.spec, RuntimeConfig(device="cpu", intra_op_threads=2), tune_sizes=())
    assert none.plan.source == "defaults"  # no warm-up sizes: nothing to measure at


def test_tune_refuses_an_unknown_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_tiny_generator(model_path(tmp_path, "tiny", "1"))
    assert ganserve_main(["tune", "--model-dir", str(tmp_path), "--model", "nope"]) == 2
    assert "no model nope" in capsys.readouterr().err


def test_the_server_reports_its_plan(tmp_path: Path, start_server, scrape) -> None:  # type: ignore[no-untyped-def]
    make_tiny_dcgan(model_path(tmp_path, "conv", "1"))
    proc = start_server(tmp_path, "--tuning", "measure", "--tuning-budget-s", "0.05",
                        "--intra-op-threads", "2", "--max-batch-size", "8")  # fmt: skip
    with GanClient(proc.target) as client:
        info = client.get_model("conv")
    plan = info.runtime
    assert plan is not None and plan.source == "measured" and plan.threads == 2
    assert plan.graph in ("original", "rewritten") and 0 < plan.tuning_seconds < 5
    assert {(n, g, t) for n, g, t, _ in plan.costs} == {
        (n, g, t) for n in SIZES for g in ("original", "rewritten") for t in (1, 2)
    }
    m = scrape(proc)
    labels = (("graph", plan.graph), ("model", "conv"), ("source", "measured"), ("version", "1"))
    assert m[("ganserve_model_runtime_plan", labels)] == 1
    assert m[("ganserve_model_single_thread_max_batch", (("model", "conv"), ("version", "1")))] == (
        plan.single_thread_max_batch
    )
    for n in SIZES:
        key = ("ganserve_model_batch_seconds", (("batch_size", str(n)), ("model", "conv"),
                                                 ("version", "1")))  # fmt: skip
        assert m[key] > 0
    assert "measured in" in proc.log()  # the load line says what it chose
    url = f"http://127.0.0.1:{proc.http_port}/v1/models/conv"
    with urllib.request.urlopen(url, timeout=10) as response:
        runtime = json.loads(response.read())["runtime"]
    assert runtime["graph"] == plan.graph and runtime["source"] == "measured"
    assert len(runtime["costs"]) == len(plan.costs)
