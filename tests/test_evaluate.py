"""Evaluation: metrics on known cases, the committed evaluators, and an end-to-end
evaluation of tiny ONNX generators built here (z -> MatMul -> ... -> image)."""

from __future__ import annotations

import argparse
import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from ganserve.training import metrics
from ganserve.training.data import default_data_dir, load_split

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ganserve.training.card import write_model_card  # noqa: E402
from ganserve.training.classifier import (  # noqa: E402
    load_classifier,
    predict,
    to_input,
    train_classifier,
)
from ganserve.training.evaluate import (  # noqa: E402
    EvaluationError,
    add_arguments,
    evaluate_onnx,
    prior_labels,
    run,
    write_quality,
)
from ganserve.training.report import EvalReport, ModelMetadata  # noqa: E402

MNIST = default_data_dir("mnist")
needs_mnist = pytest.mark.skipif(
    not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason=f"no MNIST data at {MNIST}"
)

# ------------------------------------------------------------------ metrics


def _whitened(n: int, d: int, seed: int) -> np.ndarray:
    """Samples with sample mean exactly 0 and sample covariance exactly I."""
    x = np.random.default_rng(seed).standard_normal((n, d))
    x -= x.mean(0)
    chol = np.linalg.cholesky(np.cov(x, rowvar=False))
    return x @ np.linalg.inv(chol).T


def test_fid_of_a_set_with_itself_is_zero() -> None:
    a = np.random.default_rng(0).standard_normal((500, 16))
    assert metrics.fid(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fid_matches_closed_form_for_shifted_scaled_gaussians() -> None:
    # N(0, I) vs N(mu, diag(s^2)): FID = |mu|^2 + sum (1 - s)^2
    x = _whitened(4000, 6, seed=1)
    mu = np.array([0.5, -1.0, 0.0, 2.0, 0.1, 0.0])
    s = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 0.2])
    expected = (mu**2).sum() + ((1 - s) ** 2).sum()
    assert metrics.fid(x, x * s + mu) == pytest.approx(expected, rel=1e-9)


def test_fid_is_symmetric_and_rotation_invariant_with_correlated_features() -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((800, 8)) @ rng.standard_normal((8, 8))
    b = rng.standard_normal((800, 8)) @ rng.standard_normal((8, 8)) + 1.0
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    value = metrics.fid(a, b)
    assert value > 1.0
    assert metrics.fid(b, a) == pytest.approx(value, rel=1e-9)
    assert metrics.fid(a @ q, b @ q) == pytest.approx(value, rel=1e-9)


def test_kth_neighbour_radii_on_a_line() -> None:
    x = np.arange(10.0)[:, None]
    assert metrics.kth_neighbour_radii(x, k=1).tolist() == [1.0] * 10
    r3 = metrics.kth_neighbour_radii(x, k=3, block=4)  # blocks straddle rows
    assert r3[0] == 3.0 and r3[5] == 2.0 and r3[9] == 3.0


def test_precision_recall_identical_disjoint_and_half() -> None:
    rng = np.random.default_rng(3)
    real = rng.standard_normal((1000, 4))
    assert metrics.precision_recall(real, real) == (1.0, 1.0)
    assert metrics.precision_recall(real, real + 100.0) == (0.0, 0.0)
    # half the fakes from the real distribution, half far away
    fake = np.concatenate([rng.standard_normal((500, 4)), rng.standard_normal((500, 4)) + 50])
    precision, recall = metrics.precision_recall(real, fake, block=64)
    assert 0.4 <= precision <= 0.5
    assert recall > 0.8
    assert metrics.precision_recall(real, fake, block=1000) == (precision, recall)


def test_class_histogram_entropy_and_min_share() -> None:
    hist = metrics.class_histogram(np.array([0, 1, 1, 3]), 4)
    assert hist.tolist() == [1, 2, 0, 1]
    assert metrics.min_share(hist) == 0.0
    assert metrics.entropy_bits(hist) == pytest.approx(1.5)
    assert metrics.entropy_bits(np.full(10, 7)) == pytest.approx(math.log2(10))
    assert metrics.entropy_bits(np.array([0, 9, 0])) == 0.0
    assert metrics.min_share(np.array([1, 3])) == 0.25
    assert metrics.accuracy(np.array([1, 2, 3]), np.array([1, 2, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="outside"):
        metrics.class_histogram(np.array([10]), 10)


def _info(name: str, arch: str, dataset: str = "mnist") -> ModelMetadata:
    conditional = arch == "cdcgan"
    return ModelMetadata(
        name=name,
        version="1",
        architecture=arch,
        dataset=dataset,
        kind="conditional" if conditional else "unconditional",
        latent_dim=100,
        num_classes=10 if conditional else 0,
        class_names=[str(d) for d in range(10)],
    )


def test_prior_labels_follow_the_training_class_mix() -> None:
    train = np.repeat(np.arange(3), [50, 30, 20])  # 50 % / 30 % / 20 %
    labels = prior_labels(10, train, 3)
    assert labels.tolist() == [0] * 5 + [1] * 3 + [2] * 2
    odd = prior_labels(7, train, 4)  # quotas 3.5 / 2.1 / 1.4 / 0: the one left over goes to class 0
    assert np.bincount(odd, minlength=4).tolist() == [4, 2, 1, 0]
    assert len(prior_labels(10_000, np.arange(10), 10)) == 10_000


def test_targets_by_model_and_table_verdicts() -> None:
    real = {"fid": 0.1, "precision": 0.86, "recall": 0.86, "min_class_share": 0.09}
    generated = {"fid": 0.25, "precision": 0.75, "recall": 0.5, "min_class_share": 0.06}
    dcgan = EvalReport(_info("mnist-dcgan", "dcgan"), generated, real, n=10_000)
    assert dcgan.targets_met() == {
        "min_class_share": True,
        "precision": True,
        "recall": False,
        "fid": True,  # 0.25 <= 3 x 0.1
    }
    table = dcgan.table()
    assert "| recall (k=3) ↑ | 0.500 | 0.860 | ≥ 0.60: NOT met |" in table
    assert "≤ 3 × floor = 0.300: met" in table
    mlp = EvalReport(_info("mnist-mlp", "mlp"), generated, real, n=10_000)
    assert mlp.targets_met() == {"min_class_share": True}  # the baseline: coverage only
    assert "(≥ 0.60, guide)" in mlp.table()
    cond = {**generated, "cond_accuracy": 0.97}
    cdcgan = EvalReport(_info("mnist-cdcgan", "cdcgan"), cond, real, n=10_000)
    assert cdcgan.targets_met()["cond_accuracy"] is False
    # Fashion-MNIST conv models: FID <= 10 x floor, precision >= 0.8, recall >= 0.7,
    # conditional accuracy within 0.02 of the evaluator's own (its floor)
    real_f = {**real, "cond_accuracy": 0.909}
    clothes = {"fid": 0.9, "precision": 0.85, "recall": 0.75, "min_class_share": 0.09,
               "cond_accuracy": 0.895}  # fmt: skip
    fashion = EvalReport(_info("fashion-cdcgan", "cdcgan", "fashion-mnist"), clothes, real_f, n=1)
    assert fashion.targets_met() == {
        "min_class_share": True,
        "precision": True,
        "recall": True,
        "fid": True,  # 0.9 <= 10 x 0.1
        "cond_accuracy": True,  # 0.895 >= 0.909 - 0.02
    }
    worse = EvalReport(fashion.info, {**clothes, "fid": 1.1, "cond_accuracy": 0.88}, real_f, n=1)
    assert worse.targets_met()["fid"] is False and worse.targets_met()["cond_accuracy"] is False
    assert "≥ evaluator's − 0.02 = 0.889: NOT met" in worse.table()
    assert EvalReport.from_quality(dcgan.info, dcgan.quality()).table() == table


# ------------------------------------------------------------------ tiny data and generators


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 1,000 images of each real MNIST split, as IDX files (keeps tests fast)."""
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"no MNIST data at {MNIST}")
    out = tmp_path_factory.mktemp("mnist-small")
    for split in ("train", "t10k"):
        images, labels = load_split(MNIST, split)
        _write_idx(out / f"{split}-images-idx3-ubyte.gz", images[:1000], 2051)
        _write_idx(out / f"{split}-labels-idx1-ubyte.gz", labels[:1000], 2049)
    return out


def _tiny_generator(path: Path, data_dir: Path, conditional: bool, latent_dim: int = 8) -> None:
    """Unconditional: image = tanh(z W), noise. Conditional: image = clip(y M + 0.02 z W)
    with M the 10 class-median training digits, so the requested class should be recognised."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((latent_dim, 784)).astype(np.float32)
    inits = [numpy_helper.from_array(np.array([-1, 1, 28, 28], np.int64), "shape")]
    inputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", latent_dim])]
    if conditional:
        images, labels = load_split(data_dir, "train")
        medians = np.stack([np.median(images[labels == c], 0) for c in range(10)]) / 127.5 - 1
        inits += [
            numpy_helper.from_array(0.02 * w, "w"),
            numpy_helper.from_array(medians.reshape(10, 784).astype(np.float32), "m"),
            numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
        ]
        inputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]))
        nodes = [
            helper.make_node("MatMul", ["z", "w"], ["noise"]),
            helper.make_node("MatMul", ["y", "m"], ["template"]),
            helper.make_node("Add", ["template", "noise"], ["flat0"]),
            helper.make_node("Clip", ["flat0", "lo", "hi"], ["flat"]),
        ]
    else:
        inits.append(numpy_helper.from_array(w, "w"))
        nodes = [
            helper.make_node("MatMul", ["z", "w"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["flat"]),
        ]
    nodes.append(helper.make_node("Reshape", ["flat", "shape"], ["image"]))
    output = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])
    graph = helper.make_graph(nodes, "tiny", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    name = "tiny-cdcgan" if conditional else "tiny-mlp"
    meta = {
        "name": name,
        "version": "1",
        "architecture": "cdcgan" if conditional else "mlp",
        "dataset": "mnist",
        "kind": "conditional" if conditional else "unconditional",
        "latent_dim": str(latent_dim),
        "num_classes": "10" if conditional else "0",
        "class_names": json.dumps([str(d) for d in range(10)]),
        "image_shape": "[1, 28, 28]",
        "value_range": "[-1, 1]",
        "training_config": json.dumps({"train_seconds": 123.4, "epochs": 2}),
        "quality": "{}",
        "created": "2026-01-01T00:00:00Z",
    }
    for key, value in meta.items():
        model.metadata_props.add(key=f"ganserve.{key}", value=value)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


# ------------------------------------------------------------------ evaluators


@needs_mnist
def test_committed_mnist_evaluator_is_accurate(small_mnist: Path) -> None:
    model = load_classifier("mnist")
    assert model.meta["test_accuracy"] >= 0.99
    images, labels = load_split(small_mnist, "t10k")
    feats, preds = predict(model, to_input(images))
    assert feats.shape == (1000, 128)
    assert (preds == labels).mean() >= 0.98
    # background speckle (common in GAN samples) must not flip every digit to one class
    noisy = to_input(images) + 0.15 * torch.randn(
        1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)
    )
    _, noisy_preds = predict(model, noisy.clamp(-1, 1))
    assert (noisy_preds == labels).mean() >= 0.9


def test_committed_fashion_evaluator_record() -> None:
    assert load_classifier("fashion-mnist").meta["test_accuracy"] >= 0.90


def test_train_classifier_saves_what_it_measured(tmp_path: Path) -> None:
    from ganserve.training.data import synthetic_split

    for split, seed in (("train", 0), ("t10k", 1)):
        images, labels = synthetic_split(128, seed)
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images, 2051)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels, 2049)
    out = tmp_path / "clf.pt"
    meta = train_classifier("mnist", tmp_path, out, epochs=1, seed=0, threads=1, batch_size=32)
    assert meta["train_images"] == 128 and 0.0 <= meta["test_accuracy"] <= 1.0
    model = load_classifier("mnist", out)
    assert model.meta == meta
    # the recorded accuracy is that of the saved (float16) weights
    images, labels = load_split(tmp_path, "t10k")
    _, preds = predict(model, to_input(images))
    assert (preds == labels).mean() == meta["test_accuracy"]
    with pytest.raises(FileNotFoundError, match="--train-classifier"):
        load_classifier("mnist", tmp_path / "absent.pt")


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def cond_model(small_mnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repo") / "models" / "tiny-cdcgan" / "1" / "model.onnx"
    _tiny_generator(path, small_mnist, conditional=True)
    return path


def test_evaluate_unconditional_noise_is_far_from_the_floor(
    small_mnist: Path, tmp_path: Path
) -> None:
    path = tmp_path / "noise.onnx"
    _tiny_generator(path, small_mnist, conditional=False)
    report = evaluate_onnx(path, small_mnist, n=200, ppl_pairs=0)
    assert set(report.generated) == {
        "fid",
        "precision",
        "recall",
        "class_entropy",
        "min_class_share",
    }
    assert set(report.real) == set(report.generated)
    assert report.generated["fid"] > 5 * report.real["fid"] > 0
    assert report.generated["precision"] < report.real["precision"]
    assert report.real["precision"] > 0.5 and report.real["recall"] > 0.5
    assert report.real["class_entropy"] > 3.0  # real digits are near uniform over 10 classes
    assert sum(report.histogram) == 200
    assert "NOT met" in report.table()  # mlp on mnist: min class share is required


def test_repeats_report_the_mean_and_spread_of_disjoint_seed_sets(
    small_mnist: Path, tmp_path: Path
) -> None:
    path = tmp_path / "models" / "tiny-mlp" / "1" / "model.onnx"
    _tiny_generator(path, small_mnist, conditional=False)
    report = evaluate_onnx(path, small_mnist, n=100, seed=7, repeats=3, ppl_pairs=0)
    singles = [
        evaluate_onnx(path, small_mnist, n=100, seed=7 + 100 * r, ppl_pairs=0) for r in range(3)
    ]
    for key, value in report.generated.items():
        values = [one.generated[key] for one in singles]
        assert value == pytest.approx(float(np.mean(values)))
        assert report.spread[key] == pytest.approx(float(np.std(values, ddof=1)))
    assert report.spread["fid"] > 0  # the sets differ
    assert report.real == pytest.approx(singles[0].real)  # one floor for all sets
    assert sum(report.histogram) == 300 and report.last_seed == 306

    q = report.quality()
    assert q["repeats"] == 3 and q["fid_sd"] == pytest.approx(report.spread["fid"], abs=1e-6)
    back = EvalReport.from_quality(report.info, q)
    assert back.repeats == 3 and back.spread == pytest.approx(report.spread, abs=1e-6)
    fid_row = next(line for line in report.table().splitlines() if line.startswith("| FID"))
    assert " ± " in fid_row
    card = write_model_card(path.parent.parent, path, report).read_text()
    assert "3 disjoint sets of 100 images (seeds 7..306" in card
    assert "± " in card
    assert "the same number of real training images" in card
    # n above the train split (1,000 images here): the floor used all of them, and says so
    big = EvalReport.from_quality(report.info, {**q, "n": 5000.0})
    text = write_model_card(path.parent.parent, path, big).read_text()
    assert "all 1,000 real training images (fewer than the 5,000 generated per set)" in text

    single = singles[0]
    assert single.spread == {} and "repeats" not in single.quality()
    assert " ± " not in single.table()
    with pytest.raises(EvaluationError, match="repeats must be >= 1"):
        evaluate_onnx(path, small_mnist, n=100, repeats=0)
    # a negative batch size used to skip generation and score uninitialised memory
    with pytest.raises(EvaluationError, match="batch_size and threads must be >= 1"):
        evaluate_onnx(path, small_mnist, n=100, batch_size=-5)


def test_evaluate_conditional_write_quality_and_card(cond_model: Path, small_mnist: Path) -> None:
    report = evaluate_onnx(cond_model, small_mnist, n=200, seed=5, ppl_pairs=50)
    assert report.generated["cond_accuracy"] >= 0.8  # class medians are recognisable digits
    assert report.real["cond_accuracy"] == report.classifier_accuracy >= 0.95
    assert report.generated["min_class_share"] > 0.05  # labels in the train split's mix
    q = report.quality()
    assert {"fid", "fid_real", "precision_real", "recall", "cond_accuracy", "ppl_class",
            "walk_jump"} <= set(q)  # fmt: skip
    assert q["n"] == 200 and q["seed"] == 5 and q["ppl_pairs"] == 50
    assert report.table().startswith("| metric | model | real floor | target |")

    before = {p.key: p.value for p in onnx.load(str(cond_model)).metadata_props}
    write_quality(cond_model, report)
    after = {p.key: p.value for p in onnx.load(str(cond_model)).metadata_props}
    assert json.loads(after.pop("ganserve.quality")) == q
    before.pop("ganserve.quality")
    assert after == before
    again = evaluate_onnx(cond_model, small_mnist, n=200, seed=5, ppl_pairs=50)  # still runs
    assert again.generated == pytest.approx(report.generated)

    card = write_model_card(cond_model.parent.parent, cond_model, report)
    text = card.read_text()
    assert "# tiny-cdcgan (version 1)" in text
    for figure in (report.generated["fid"], report.real["fid"]):  # < 100 here
        assert f"{figure:#.3g}".rstrip(".") in text
    assert "samples.png" in text and "2.1 min" in text  # train_seconds 123.4
    assert "1,000 images" in text  # the train split of small_mnist
    # a card from metadata alone shows the stored figures
    assert ModelMetadata.from_onnx(cond_model).quality == q
    assert write_model_card(cond_model.parent.parent, cond_model, None).read_text() == text


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_writes_and_reports_errors(
    cond_model: Path, small_mnist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = cond_model.parent.parent
    args = ["--model", str(model_dir), "--data-dir", str(small_mnist), "--n", "100", "--write",
            "--ppl-pairs", "20"]  # fmt: skip
    assert run(_cli(args)) == 0
    out = capsys.readouterr().out
    assert "| metric |" in out and "README.md" in out and "| perceptual path length" in out
    assert ModelMetadata.from_onnx(cond_model).quality["n"] == 100
    assert ModelMetadata.from_onnx(cond_model).quality["ppl_pairs"] == 20
    card = (model_dir / "README.md").read_text()
    (model_dir / "README.md").unlink()
    assert run(_cli(["--model", str(model_dir), "--card-only"])) == 0
    assert (model_dir / "README.md").read_text() == card  # the card is the metadata's

    assert run(_cli(["--model", str(model_dir / "missing")])) == 2
    assert "no ONNX model" in capsys.readouterr().err
    assert run(_cli(["--train-classifier"])) == 2
    assert "needs --dataset" in capsys.readouterr().err
    assert run(_cli(["--model", str(model_dir), "--ppl-pairs", "-1"])) == 2
    assert "ppl_pairs >= 0" in capsys.readouterr().err


# ------------------------------------------------------------------ refusals


def _edited(src: Path, dst: Path, edit: object) -> Path:
    """A copy of the ONNX file ``src`` at ``dst`` after ``edit(model)``."""
    model = onnx.load(str(src))
    edit(model)  # type: ignore[operator]
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def test_a_generator_with_non_finite_output_is_refused(small_mnist: Path, tmp_path: Path) -> None:
    """Scored, NaN pixels would read as black ones and the model as merely poor."""
    good = tmp_path / "noise.onnx"
    _tiny_generator(good, small_mnist, conditional=False)

    def poison(model: onnx.ModelProto) -> None:  # image = reshape(tanh(zW) * NaN)
        model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan"))
        tanh = next(n for n in model.graph.node if n.op_type == "Tanh")
        tanh.output[0] = "pre_nan"
        model.graph.node.insert(
            list(model.graph.node).index(tanh) + 1,
            helper.make_node("Mul", ["pre_nan", "nan"], ["flat"]),
        )

    bad = _edited(good, tmp_path / "nan.onnx", poison)
    with pytest.raises(EvaluationError, match=r"NaN or infinite .* the generator is broken"):
        evaluate_onnx(bad, small_mnist, n=50, ppl_pairs=0)


def test_onnx_runtime_failures_and_wrong_widths_are_one_line_errors(
    small_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "m" / "noise.onnx"
    _tiny_generator(good, small_mnist, conditional=False)

    def wide(model: onnx.ModelProto) -> None:  # metadata says 8, the graph takes 8: say 16
        for prop in model.metadata_props:
            if prop.key == "ganserve.latent_dim":
                prop.value = "16"

    def renamed(model: onnx.ModelProto) -> None:
        model.graph.output[0].name = "picture"
        model.graph.node[-1].output[0] = "picture"

    def future(model: onnx.ModelProto) -> None:
        model.ir_version = 99

    cases = [(wide, "input z is 8 wide, metadata: 16"),
             (renamed, "expected one named image"),
             (future, "ONNX Runtime cannot load it")]  # fmt: skip
    for edit, message in cases:
        path = _edited(good, tmp_path / edit.__name__ / "model.onnx", edit)
        argv = ["--model", str(path), "--data-dir", str(small_mnist), "--n", "20",
                "--ppl-pairs", "0"]  # fmt: skip
        assert run(_cli(argv)) == 2, edit.__name__
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (edit.__name__, err)


def test_another_data_set_or_its_files_are_refused(
    cond_model: Path, small_mnist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The wrong evaluator or data would score any model as awful, and --write would store
    those figures in its card; data that is not the official files is scored, with a
    warning."""
    with pytest.raises(EvaluationError, match="trained on mnist: scoring it with the fashion"):
        evaluate_onnx(cond_model, small_mnist, dataset="fashion-mnist", n=20, ppl_pairs=0)
    fashion = default_data_dir("fashion-mnist")
    if (fashion / "t10k-images-idx3-ubyte.gz").is_file():
        with pytest.raises(EvaluationError, match="t10k images are fashion-mnist's, not mnist's"):
            evaluate_onnx(cond_model, fashion, n=20, ppl_pairs=0)
    capsys.readouterr()
    evaluate_onnx(cond_model, small_mnist, n=20, ppl_pairs=0)
    assert "not the official mnist files" in capsys.readouterr().err
