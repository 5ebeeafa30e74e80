"""``ganserve quantize``: int8 copies of exported generators, checked offline and served
by a real server next to their float sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from ganserve.cli import main as ganserve_main
from ganserve.clients import GanClient
from ganserve.contract.model_format import read_metadata
from ganserve.server.rewrite import rewrite_conv_transpose
from ganserve.training import quantize as quantize_module
from ganserve.training.config import TrainConfig
from ganserve.training.export import export_checkpoint, random_inputs
from ganserve.training.quantize import quantize_model
from ganserve.training.train import train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/tiny-{dcgan,cdcgan,mlp}/1/model.onnx from dry-run training (G width 16: the
    narrowest whose ConvTranspose layers the server's rewrite turns into convolutions)."""
    root = tmp_path_factory.mktemp("quantize")
    for arch in ("dcgan", "cdcgan", "mlp"):
        cfg = TrainConfig(arch=arch, dry_run=True, epochs=1, g_width=16, d_width=8,
                          out=str(root / "runs" / arch), threads=1, device="cpu",
                          sample_every=0)  # fmt: skip
        path = root / "models" / f"tiny-{arch}" / "1" / "model.onnx"
        export_checkpoint(train(cfg, quiet=True), path, f"tiny-{arch}", "1")
    return root / "models"


def _run(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = ganserve_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _images(path: Path, feeds: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["image"], feeds)[0]


@pytest.mark.parametrize("arch", ["dcgan", "cdcgan"])
def test_quantize_writes_an_int8_model_close_to_the_float_one(
    repo: Path, tmp_path: Path, arch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = repo / f"tiny-{arch}"
    out = tmp_path / "models" / f"tiny-{arch}-int8" / "2" / "model.onnx"
    code, printed, err = _run("quantize", "--model", str(source), "--out", str(out),
                              "--calibration-images", "200", capsys=capsys)  # fmt: skip
    assert code == 0, err
    assert "int8 convolutions" in printed and "ganserve evaluate --model" in printed
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ConvTranspose") == 1  # hidden layer rewritten; the image layer stays
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[0] in dequantized and n.input[1] in dequantized for n in convs)
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= len(convs)  # the weights are stored as int8

    meta, src = read_metadata(out), read_metadata(source / "1" / "model.onnx")
    assert meta["ganserve.name"] == f"tiny-{arch}-int8" and meta["ganserve.version"] == "2"
    assert meta["ganserve.quality"] == "{}"  # a quantized model is evaluated on its own
    for key in ("ganserve.latent_dim", "ganserve.kind", "ganserve.class_names",
                "ganserve.training_config"):  # fmt: skip
        assert meta[key] == src[key]
    recipe = json.loads(meta["ganserve.quantization"])
    assert recipe["source"] == f"tiny-{arch} v1" and recipe["calibration_images"] == 200
    assert 0 < recipe["mean_abs_difference"] <= recipe["max_abs_difference"]
    levels = recipe["grey_levels"]
    assert levels["int8"] >= levels["float"] / 2 and levels["float"] > 50

    # The same inputs through both files: int8 rounding, not another model.
    feeds = random_inputs(100, 10 if arch == "cdcgan" else 0, 64, seed=7)
    want, got = _images(source / "1" / "model.onnx", feeds), _images(out, feeds)
    assert np.array_equal(got, _images(out, feeds, threads=2))  # same bytes on 1 or 2 threads
    assert got.dtype == np.float32 and got.shape == want.shape
    diff = np.abs(got - want)
    assert 0 < diff.mean() < 0.02 and diff.max() < 0.5
    assert (out.parent.parent / "samples.png").is_file()
    card = (out.parent.parent / "README.md").read_text()
    assert "## Quantization" in card and f"`tiny-{arch} v1`" in card


def test_quantize_refuses_what_it_cannot_quantize(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q" / "1" / "model.onnx"
    code, _, err = _run("quantize", "--model", str(repo / "tiny-mlp"), "--out", str(out),
                        capsys=capsys)  # fmt: skip
    assert code == 2 and "no hidden convolution to quantize" in err and not out.exists()
    code, _, err = _run("quantize", "--model", str(repo / "tiny-dcgan"), "--out", str(out),
                        "--calibration-images", "0", capsys=capsys)  # fmt: skip
    assert code == 2 and "--calibration-images must be >= 1" in err
    quantize_model(repo / "tiny-dcgan" / "1" / "model.onnx", out, "q", calibration_images=64)
    again = tmp_path / "qq" / "1" / "model.onnx"
    code, _, err = _run("quantize", "--model", str(out), "--out", str(again), capsys=capsys)
    assert code == 2 and "already quantized" in err and not again.exists()
    code, _, err = _run("quantize", "--model", str(tmp_path / "none"), "--out", str(again),
                        capsys=capsys)  # fmt: skip
    assert code == 2 and "no ONNX model" in err
    checkpoint = tmp_path / "model.onnx"  # a file that is not an ONNX model at all
    torch.save({"format": 1}, checkpoint)
    code, _, err = _run("quantize", "--model", str(checkpoint), "--out", str(again),
                        capsys=capsys)  # fmt: skip
    assert code == 2 and "model.onnx: not an ONNX model" in err and "Traceback" not in err


def test_an_image_layer_stays_float(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph whose image layer is a Conv (here: the server's chained rewrite, Conv ->
    Tanh -> DepthToSpace): its output must not be quantized to 256 values before tanh."""
    model = onnx.load(str(repo / "tiny-dcgan" / "1" / "model.onnx"))
    assert rewrite_conv_transpose(model, chain=True) == 2
    chained = tmp_path / "chained" / "1" / "model.onnx"
    chained.parent.mkdir(parents=True)
    onnx.save(model, str(chained))
    (image_layer,) = quantize_module._image_layers(model.graph)
    assert image_layer.endswith("phases4")
    out = tmp_path / "q" / "1" / "model.onnx"
    result = quantize_model(chained, out, "q", calibration_images=128)
    assert result.float_convs == 1 and result.levels[0] >= result.levels[1] / 2
    convs = {n.name: n for n in onnx.load(str(out)).graph.node if n.op_type == "Conv"}
    dequantized = {o for n in onnx.load(str(out)).graph.node
                   if n.op_type == "DequantizeLinear" for o in n.output}  # fmt: skip
    assert convs[image_layer].input[1] not in dequantized  # float weights
    # The grey-level check (the bundled DCGAN with a quantized image layer: 37 levels of
    # the float model's 256; this tiny model's narrow pre-tanh range loses fewer, 132 of
    # 138, so a stricter share stands in for it here).
    monkeypatch.setattr(quantize_module, "_image_layers", lambda graph: [])
    monkeypatch.setattr(quantize_module, "MIN_LEVEL_SHARE", 1.0)
    with pytest.raises(ValueError, match="grey levels"):
        quantize_model(chained, tmp_path / "r" / "1" / "model.onnx", "r", calibration_images=128)


def test_quantize_refuses_to_overwrite_its_source_or_images_that_drift(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    shutil.copytree(repo / "tiny-dcgan", models / "tiny-dcgan")
    source = models / "tiny-dcgan" / "1" / "model.onnx"
    before = source.read_bytes()
    for out in (source, models / "tiny-dcgan" / "2" / "model.onnx"):
        with pytest.raises(ValueError, match="model folder of its own"):
            quantize_model(source, out, "x", calibration_images=64)
    assert source.read_bytes() == before and not (models / "tiny-dcgan" / "2").exists()
    monkeypatch.setattr(quantize_module, "MAX_MEAN_DIFFERENCE", 0.0)
    out = models / "drift" / "1" / "model.onnx"
    with pytest.raises(ValueError, match="differ from the float ones"):
        quantize_model(source, out, "drift", calibration_images=64)
    assert not out.exists() and not list((models / "drift" / "1").glob("*.tmp"))


def test_a_qdq_file_without_our_metadata_entry_counts_as_quantized(
    repo: Path, tmp_path: Path
) -> None:
    first = tmp_path / "a" / "1" / "model.onnx"
    quantize_model(repo / "tiny-dcgan" / "1" / "model.onnx", first, "a", calibration_images=64)
    model = onnx.load(str(first))
    kept = [p for p in model.metadata_props if p.key != "ganserve.quantization"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(first))
    with pytest.raises(ValueError, match=r"already quantized .*DequantizeLinear"):
        quantize_model(first, tmp_path / "b" / "1" / "model.onnx", "b", calibration_images=64)


def test_quantize_is_deterministic(repo: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for path in (a, b):
        quantize_model(repo / "tiny-cdcgan" / "1" / "model.onnx", path, "q", calibration_images=96)
    graph = [onnx.load(str(p)).graph.SerializeToString() for p in (a, b)]
    assert graph[0] == graph[1]


def test_the_server_serves_an_int8_model_beside_its_float_source(
    repo: Path, tmp_path: Path, start_server
) -> None:
    models = tmp_path / "models"
    shutil.copytree(repo / "tiny-dcgan", models / "tiny-dcgan")
    quantize_model(repo / "tiny-dcgan" / "1" / "model.onnx",
                   models / "tiny-dcgan-int8" / "1" / "model.onnx", "tiny-dcgan-int8",
                   calibration_images=128)  # fmt: skip
    server = start_server(models)
    with GanClient(server.target, timeout=30) as client:
        info = client.model_info("tiny-dcgan-int8")
        assert info.state == "ready"
        assert json.loads(info.metadata["ganserve.quantization"])["op_types"] == ["Conv"]
        float_images = client.sample("tiny-dcgan", 40, seed=11).images
        first = client.sample("tiny-dcgan-int8", 40, seed=11).images
        # merged into other batches and split differently: the same bytes per seed
        pieces = [client.sample("tiny-dcgan-int8", n, seed=11 + s).images
                  for s, n in ((0, 1), (1, 7), (8, 32))]  # fmt: skip
    assert np.array_equal(np.concatenate(pieces), first)
    diff = np.abs(first - float_images)
    assert 0 < diff.mean() < 0.02
    assert (
        "loaded model tiny-dcgan-int8 version 1 (unconditional, latent 100, 0 classes, int8)"
        in server.log()
    )
    assert (
        "loaded model tiny-dcgan version 1 (unconditional, latent 100, 0 classes) on"
        in server.log()
    )
