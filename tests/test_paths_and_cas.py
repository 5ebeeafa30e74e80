"""Perceptual path length and classification accuracy score on tiny ONNX generators built
here (z [, y] -> MatMul -> Tanh / Sign / Clip -> image) and tiny synthetic IDX data: no
shared data set is needed, and every test takes seconds."""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ganserve.training import metrics

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ganserve.training.card import render_model_card  # noqa: E402
from ganserve.training.classifier import (  # noqa: E402
    CAS_CACHE,
    CAS_RECIPE,
    cas_cache_key,
    load_classifier,
    real_cas,
)
from ganserve.training.data import load_split, synthetic_split  # noqa: E402
from ganserve.training.evaluate import (  # noqa: E402
    EvaluationError,
    classification_accuracy,
    evaluate_onnx,
    path_lengths,
    walk_jumps,
)
from ganserve.training.report import EvalReport, ModelMetadata  # noqa: E402

LATENT = 8

# ------------------------------------------------------------------ tiny data and generators


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def bars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic digits (class k: a bright bar at row 3 + 2k, plus noise), 300 per split."""
    out = tmp_path_factory.mktemp("bars")
    for split, seed in (("train", 0), ("t10k", 1)):
        images, labels = synthetic_split(300, seed)
        _write_idx(out / f"{split}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(out / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
    return out


def _generator(
    path: Path,
    w: np.ndarray,
    activation: str = "Tanh",
    templates: np.ndarray | None = None,
) -> Path:
    """``image = act(z w [+ y templates])`` as ``(N, 1, 28, 28)``; conditional (10 classes)
    when ``templates`` ``(10, 784)`` are given. ``activation``: Tanh (smooth), Sign (every
    pixel jumps between -1 and 1) or Clip to [-1, 1]."""
    inits = [
        numpy_helper.from_array(w.astype(np.float32), "w"),
        numpy_helper.from_array(np.array([-1, 1, 28, 28], np.int64), "shape"),
        numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
    ]
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", LATENT])]
    nodes = [helper.make_node("MatMul", ["z", "w"], ["pre"])]
    if templates is not None:
        inits.append(numpy_helper.from_array(templates.astype(np.float32), "m"))
        inputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]))
        nodes.append(helper.make_node("MatMul", ["y", "m"], ["template"]))
        nodes.append(helper.make_node("Add", ["pre", "template"], ["pre_y"]))
    last = nodes[-1].output[0]
    extra = ["lo", "hi"] if activation == "Clip" else []
    nodes.append(helper.make_node(activation, [last, *extra], ["flat"]))
    nodes.append(helper.make_node("Reshape", ["flat", "shape"], ["image"]))
    output = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])
    graph = helper.make_graph(nodes, "tiny", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    conditional = templates is not None
    meta = {
        "name": path.parent.parent.name,
        "version": "1",
        "architecture": "cdcgan" if conditional else "mlp",
        "dataset": "mnist",
        "kind": "conditional" if conditional else "unconditional",
        "latent_dim": str(LATENT),
        "num_classes": "10" if conditional else "0",
        "class_names": json.dumps([str(d) for d in range(10)]),
        "training_config": "{}",
        "quality": "{}",
    }
    for key, value in meta.items():
        model.metadata_props.add(key=f"ganserve.{key}", value=value)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _weights(scale: float, seed: int = 0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal((LATENT, 784)) / np.sqrt(LATENT)


def _bar_templates(data_dir: Path) -> np.ndarray:
    """The class means of the synthetic training images in [-1, 1]: ``(10, 784)``."""
    images, labels = load_split(data_dir, "train")
    means = np.stack([images[labels == c].mean(0) for c in range(10)]) / 127.5 - 1
    return means.reshape(10, 784)


@pytest.fixture(scope="module")
def evaluator() -> torch.nn.Module:
    return load_classifier("mnist")


def _ppl(path: Path, evaluator: torch.nn.Module, along: str = "z", **kw: int) -> np.ndarray:
    info = ModelMetadata.from_onnx(path)
    kw.setdefault("pairs", 64)
    return path_lengths(path, info, evaluator, 1.0, along, batch_size=64, **kw)


# ------------------------------------------------------------------ perceptual path length


def test_path_length_summary_drops_the_outer_percentiles() -> None:
    d = np.concatenate([np.ones(990), np.zeros(5), np.full(5, 1e6)])
    mean, filtered = metrics.path_length_means(d)
    assert mean == pytest.approx((990 + 5e6) / 1000)
    assert filtered == 1.0  # the lowest and the highest half percent are dropped
    assert metrics.path_length_means(np.full(5, 3.0)) == (3.0, 3.0)
    with pytest.raises(ValueError, match="no path-length samples"):
        metrics.path_length_means(np.array([]))
    x = np.random.default_rng(0).standard_normal((3000, 4)) * [1.0, 2.0, 0.5, 0.0]
    # two independent draws differ by 2 * (1 + 4 + 0.25) in squared distance on average
    assert metrics.mean_pair_sq_distance(x) == pytest.approx(10.5, rel=0.05)
    step = metrics.feature_step_sq(np.ones((2, 3)), np.ones((2, 3)) + 1e-4, 2.0, 1e-4)
    assert step == pytest.approx([1.5, 1.5])  # 3 * (1e-4)^2 / (2 * 1e-8)


def test_path_length_is_finite_and_deterministic(
    tmp_path: Path, evaluator: torch.nn.Module
) -> None:
    path = _generator(tmp_path / "smooth" / "1" / "model.onnx", _weights(1.0))
    d = _ppl(path, evaluator, seed=3)
    assert d.shape == (64,) and np.isfinite(d).all() and (d > 0).all()
    assert np.array_equal(d, _ppl(path, evaluator, seed=3))
    assert not np.array_equal(d, _ppl(path, evaluator, seed=4))
    # batches split pairs, not the ends of one pair: the same samples for any batch size
    info = ModelMetadata.from_onnx(path)
    odd = path_lengths(path, info, evaluator, 1.0, "z", 64, 3, batch_size=10)
    assert odd == pytest.approx(d, rel=1e-4)


def test_path_length_is_zero_when_the_image_ignores_z(
    tmp_path: Path, bars: Path, evaluator: torch.nn.Module
) -> None:
    path = _generator(
        tmp_path / "no-z" / "1" / "model.onnx", 0 * _weights(1.0), "Clip", _bar_templates(bars)
    )
    assert (_ppl(path, evaluator, "z") == 0).all()
    blend = _ppl(path, evaluator, "class")  # the class still moves the image
    assert np.isfinite(blend).all() and blend.mean() > 0
    unconditional = _generator(tmp_path / "uncond" / "1" / "model.onnx", _weights(1.0))
    with pytest.raises(EvaluationError, match="conditional only"):
        _ppl(unconditional, evaluator, "class")


def test_path_length_of_a_jumping_generator_is_far_larger(
    tmp_path: Path, evaluator: torch.nn.Module
) -> None:
    smooth = _generator(tmp_path / "smooth" / "1" / "model.onnx", _weights(1.0))
    steep = _generator(tmp_path / "steep" / "1" / "model.onnx", _weights(3.0))
    jumps = _generator(tmp_path / "jumps" / "1" / "model.onnx", _weights(1.0), "Sign")
    means = {p.parent.parent.name: metrics.path_length_means(_ppl(p, evaluator, pairs=128))
             for p in (smooth, steep, jumps)}  # fmt: skip
    assert means["smooth"][0] < means["steep"][0]  # 3x the slope: steps 3x as long
    # a pixel flips sign somewhere on a path: a few of the 128 steps hit one
    assert means["jumps"][0] > 100 * means["steep"][0]
    assert means["jumps"][1] > 100 * means["steep"][1]  # more than 1 % of them


def test_largest_step_share_of_even_and_switching_walks() -> None:
    even = np.linspace(0, 1, 11)[None, :, None] * np.ones((1, 1, 4))  # 10 equal steps
    switch = np.concatenate([np.zeros((1, 5, 4)), np.ones((1, 6, 4))], axis=1)
    still = np.zeros((1, 11, 4))
    shares = metrics.largest_step_share(np.concatenate([even, switch, still]))
    # a walk that never changes is even (its 10 steps are equal), not better than even
    assert shares == pytest.approx([0.1, 1.0, 0.1])
    with pytest.raises(ValueError, match="frames >= 2"):
        metrics.largest_step_share(np.zeros((2, 1, 4)))
    with pytest.raises(ValueError, match="NaN or infinity"):
        metrics.largest_step_share(np.full((1, 3, 4), np.nan))


def test_the_largest_walk_step_sees_a_switch(tmp_path: Path, evaluator: torch.nn.Module) -> None:
    # every pixel is act(z . u): Tanh of a small slope morphs, Sign flips the whole image
    u = np.random.default_rng(0).standard_normal((LATENT, 1)) / np.sqrt(LATENT)
    rank_one = np.repeat(u, 784, axis=1)
    even = _generator(tmp_path / "even" / "1" / "model.onnx", 0.3 * rank_one)
    switch = _generator(tmp_path / "switch" / "1" / "model.onnx", rank_one, "Sign")
    s_even, s_switch = (
        walk_jumps(p, ModelMetadata.from_onnx(p), evaluator, 40, seed=1, frames=32)
        for p in (even, switch)
    )
    # a slerp crosses z . u = 0 at most once: one step holds all the change, or the walk
    # never changes (an even walk of 31 equal, zero, steps)
    crossed = s_switch > 0.5
    assert crossed.any() and s_switch[crossed] == pytest.approx(1.0)
    assert (~crossed).any() and s_switch[~crossed] == pytest.approx(1 / 31)
    assert s_even.mean() < 0.15 < s_switch.mean()


def test_evaluate_reports_both_path_lengths_and_cas(tmp_path: Path, bars: Path) -> None:
    path = _generator(
        tmp_path / "models" / "tiny-bars" / "1" / "model.onnx",
        _weights(0.1),
        "Clip",
        _bar_templates(bars),
    )
    cache = tmp_path / "cas-real.json"
    report = evaluate_onnx(
        path, bars, n=100, ppl_pairs=40, cas=True, cas_epochs=1, cas_images=128, cas_cache=cache
    )
    for key in ("ppl_z", "ppl_z_filtered", "ppl_class", "ppl_class_filtered"):
        assert np.isfinite(report.generated[key]) and report.generated[key] > 0
        assert key not in report.real
    assert 0 <= report.generated["cas"] <= 1 and 0 <= report.real["cas"] <= 1
    q = report.quality()
    assert {"ppl_z", "ppl_class_filtered", "cas", "cas_real"} <= set(q)
    assert q["ppl_pairs"] == 40 and q["cas_epochs"] == 1 and q["cas_images"] == 128
    back = EvalReport.from_quality(report.info, q)
    assert back.table() == report.table()
    assert "| perceptual path length, class blend: mean ↓ |" in report.table()
    card = render_model_card(path, report)
    assert "Karras et al. 2019" in card and "40 paths" in card
    assert "Ravuri & Vinyals 2019" in card and "1 epochs on 128 generated images" in card
    assert len(json.loads(cache.read_text())) == 1  # the ceiling, cached

    int8 = EvalReport.from_quality(replace(report.info, quantization={"source": "x"}), q)
    assert "8-bit grid" in render_model_card(path, int8) and "8-bit grid" not in card

    # no path lengths, no CAS: neither figure nor its notes
    plain = evaluate_onnx(path, bars, n=100, ppl_pairs=0)
    assert not {k for k in plain.generated if k.startswith(("ppl", "cas"))}
    assert "ppl_pairs" not in plain.quality() and "Karras" not in render_model_card(path, plain)
    with pytest.raises(EvaluationError, match="ppl_pairs >= 0"):
        evaluate_onnx(path, bars, n=100, ppl_pairs=-1)


# ------------------------------------------------------------------ classification accuracy score


def test_cas_tells_a_class_faithful_generator_from_one_that_ignores_y(
    tmp_path: Path, bars: Path
) -> None:
    templates = _bar_templates(bars)
    faithful = _generator(tmp_path / "f" / "1" / "model.onnx", _weights(0.1), "Clip", templates)
    same = np.repeat(templates.mean(0, keepdims=True), 10, 0)  # every class the same image
    blind = _generator(tmp_path / "b" / "1" / "model.onnx", _weights(0.1), "Clip", same)
    scores = {}
    for path in (faithful, blind):
        info = ModelMetadata.from_onnx(path)
        scores[path.parent.parent.name], ceiling = classification_accuracy(
            path, info, "mnist", bars, epochs=8, cache=tmp_path / "c.json", images=300
        )
    # 8 epochs of 300 images (24 steps) learn the bars; nothing is learnt from one image
    assert scores["f"] > 0.5 and scores["b"] <= 0.2 and ceiling > 0.5
    info = ModelMetadata.from_onnx(faithful)
    with pytest.raises(EvaluationError, match="epochs and images must be >= 1"):
        classification_accuracy(faithful, info, "mnist", bars, epochs=0, cache=None)


def test_cas_ceiling_is_cached_by_data_and_recipe(tmp_path: Path, bars: Path) -> None:
    cache = tmp_path / "cas-real.json"
    first = real_cas("mnist", bars, n=200, epochs=1, seed=0, cache=cache)
    entries = json.loads(cache.read_text())
    (key,) = entries
    assert "mnist images=200 epochs=1 seed=0 data=" in key
    assert entries[key]["accuracy"] == first
    entries[key]["accuracy"] = 0.123  # a cached figure is read, not recomputed
    cache.write_text(json.dumps(entries))
    assert real_cas("mnist", bars, n=200, epochs=1, seed=0, cache=cache) == 0.123
    real_cas("mnist", bars, n=200, epochs=2, seed=0, cache=cache)  # another recipe: its own
    assert len(json.loads(cache.read_text())) == 2
    assert real_cas("mnist", bars, n=200, epochs=1, seed=0, cache=None) == first  # seeded


def test_cas_trains_without_affine_jitter(bars: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The jitter would supply the variety CAS measures: generated and real training
    images both get pixel noise only, whatever the data set's evaluator uses."""
    from ganserve.training import classifier as clf

    seen: list[bool] = []
    real_fit = clf.fit_classifier

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(bool(kwargs["affine"]))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(clf, "fit_classifier", spy)
    real_cas("mnist", bars, n=100, epochs=1, seed=0, cache=None)
    assert seen == [False]
    assert clf.AFFINE_AUGMENT["mnist"] is True  # the evaluator itself keeps its jitter


def test_a_ceiling_trained_on_cuda_has_its_own_cache_entry() -> None:
    """GPU kernels need not reproduce the CPU's figure to the last digit: the device is in
    the key when it is CUDA; CPU keys keep the form the bundled cache was written with."""
    cpu = cas_cache_key("mnist", 10_000, 10, 0, "abc", cuda=False)
    assert cpu == f"mnist images=10000 epochs=10 seed=0 data=abc recipe={CAS_RECIPE}"
    assert cas_cache_key("mnist", 10_000, 10, 0, "abc", cuda=True) == cpu + " device=cuda"
    bundled = json.loads(Path(CAS_CACHE).read_text())
    assert all("device=" not in key for key in bundled)  # written on CPU


def test_path_length_standard_errors_shrink_with_more_paths() -> None:
    """The path length is one draw of its paths, however many --repeats: its figure
    carries a bootstrap standard error, about sd / sqrt(n) for the plain mean."""
    rng = np.random.default_rng(0)
    small, large = rng.exponential(10.0, 400), rng.exponential(10.0, 6400)
    se_small, se_small_f = metrics.path_length_se(small, resamples=400)
    se_large, _ = metrics.path_length_se(large, resamples=400)
    assert se_small == pytest.approx(small.std() / np.sqrt(small.size), rel=0.15)
    assert se_small_f > 0
    assert se_large == pytest.approx(se_small / 4, rel=0.25)
    assert metrics.path_length_se(small, resamples=50, seed=3) == metrics.path_length_se(
        small, resamples=50, seed=3
    )  # seeded
    with pytest.raises(ValueError, match="at least 2"):
        metrics.path_length_se(np.ones(1))
