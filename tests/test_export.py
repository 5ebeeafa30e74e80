"""ONNX export: graph interface, metadata, torch-vs-ONNX Runtime agreement, sample grids,
and ``build-model`` end to end on a dry run."""

from __future__ import annotations

import json
import struct
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from ganserve.cli import main as ganserve_main
from ganserve.contract.model_format import read_metadata, write_metadata
from ganserve.seeds import latents_from_seeds
from ganserve.training.build import run_mismatch
from ganserve.training.config import ARCHS, TrainConfig
from ganserve.training.export import (
    ExportError,
    export_checkpoint,
    load_generator,
    verify_onnx,
    write_samples,
)
from ganserve.training.grid import grid_image
from ganserve.training.recipes import get_recipe
from ganserve.training.train import train

torch.set_num_threads(1)

REQUIRED_KEYS = {
    "ganserve.name", "ganserve.version", "ganserve.architecture", "ganserve.dataset",
    "ganserve.kind", "ganserve.latent_dim", "ganserve.num_classes", "ganserve.class_names",
    "ganserve.image_shape", "ganserve.value_range", "ganserve.training_config",
    "ganserve.quality", "ganserve.created",
}  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, float]]:
    """arch -> (checkpoint, model.onnx, max |torch - ORT|) of a tiny dry-run model."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for arch in ARCHS:
        cfg = TrainConfig(arch=arch, dry_run=True, epochs=1, g_width=8, d_width=8,
                          out=str(root / "runs" / arch), threads=1, device="cpu",
                          sample_every=0)  # fmt: skip
        ckpt = train(cfg, quiet=True)
        onnx_path = root / "models" / f"tiny-{arch}" / "3" / "model.onnx"
        diff = export_checkpoint(ckpt, onnx_path, f"tiny-{arch}", "3")
        out[arch] = (ckpt, onnx_path, diff)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_graph_interface_follows_the_conventions(exported: dict, arch: str) -> None:
    _, onnx_path, _ = exported[arch]
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    expected = ["z", "y"] if arch == "cdcgan" else ["z"]
    assert list(inputs) == expected
    for t in inputs.values():
        assert t.elem_type == onnx.TensorProto.FLOAT
        assert t.shape.dim[0].dim_param == "N"
    assert inputs["z"].shape.dim[1].dim_value == 100
    if arch == "cdcgan":
        assert inputs["y"].shape.dim[1].dim_value == 10
    (output,) = model.graph.output
    assert output.name == "image"
    dims = output.type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert onnx_path.stat().st_size < 8_000_000


@pytest.mark.parametrize("arch", ARCHS)
def test_metadata_is_complete_and_parseable(exported: dict, arch: str) -> None:
    _, onnx_path, _ = exported[arch]
    meta = read_metadata(onnx_path)
    assert set(meta) >= REQUIRED_KEYS
    assert meta["ganserve.name"] == f"tiny-{arch}" and meta["ganserve.version"] == "3"
    assert meta["ganserve.architecture"] == arch and meta["ganserve.dataset"] == "mnist"
    conditional = arch == "cdcgan"
    assert meta["ganserve.kind"] == ("conditional" if conditional else "unconditional")
    assert int(meta["ganserve.num_classes"]) == (10 if conditional else 0)
    assert int(meta["ganserve.latent_dim"]) == 100
    assert json.loads(meta["ganserve.class_names"]) == [str(d) for d in range(10)]
    assert json.loads(meta["ganserve.image_shape"]) == [1, 28, 28]
    assert json.loads(meta["ganserve.value_range"]) == [-1, 1]
    assert json.loads(meta["ganserve.quality"]) == {}
    training = json.loads(meta["ganserve.training_config"])
    assert training["arch"] == arch and training["train_seconds"] >= 0 and training["ema"]
    assert datetime.fromisoformat(meta["ganserve.created"]).utcoffset().total_seconds() == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_runtime_agrees_with_torch_at_1_7_256(exported: dict, arch: str) -> None:
    ckpt, onnx_path, diff = exported[arch]
    assert diff <= 1e-4
    generator, _ = load_generator(ckpt)
    num_classes = 10 if arch == "cdcgan" else 0
    assert verify_onnx(generator, onnx_path, num_classes, 100) <= 1e-4


def test_verification_catches_a_generator_that_differs(exported: dict) -> None:
    _, onnx_path, _ = exported["dcgan"]
    torch.manual_seed(123)
    from ganserve.training.nets import build_generator

    other = build_generator("dcgan", 100, width=8).eval()  # same shape, other weights
    with pytest.raises(ExportError, match="differs from torch"):
        verify_onnx(other, onnx_path, 0, 100)


def _doctored(checkpoint: Path, path: Path, **changes: object) -> Path:
    """A copy of a checkpoint with some entries changed (as diverged training leaves it)."""
    from ganserve.training.train import load_checkpoint

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(load_checkpoint(checkpoint) | changes, path)
    return path


def test_a_generator_that_makes_nan_images_is_not_exported(
    exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """NaN images agree with NaN images (max(0, nan) is 0): verification used to pass."""
    ckpt_path, _, _ = exported["dcgan"]
    ema = load_generator(ckpt_path)[1]["ema"]
    shadow = {k: v.fill_(float("nan")) if v.is_floating_point() else v
              for k, v in ema["shadow"].items()}  # fmt: skip
    nan = _doctored(ckpt_path, tmp_path / "nan.pt", ema=ema | {"shadow": shadow})
    out = tmp_path / "models" / "nan" / "1" / "model.onnx"
    with pytest.raises(ExportError, match="hold NaN or infinity"):
        export_checkpoint(nan, out, "nan")
    assert not out.exists() and not out.with_name("model.onnx.tmp").exists()
    assert ganserve_main(["export", "--checkpoint", str(nan), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ganserve export: error:" in err and "NaN" in err and "Traceback" not in err


def test_a_checkpoint_that_does_not_fit_its_config_is_a_one_line_error(
    exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Weights of other nets than the config builds, and a format-1 dict without the
    entries a checkpoint holds: one line each, not torch's load_state_dict traceback or
    "error: config"."""
    ckpt_path, _, _ = exported["dcgan"]
    config = load_generator(ckpt_path)[1]["config"]
    wider = _doctored(ckpt_path, tmp_path / "run" / "checkpoint.pt",
                      config=config | {"g_width": 16})  # fmt: skip
    bare = tmp_path / "bare.pt"
    torch.save({"format": 1, "epoch": 1}, bare)
    out = str(tmp_path / "m" / "1" / "model.onnx")
    with pytest.raises(ValueError, match=r"averaged generator weights do not fit.*size mismatch"):
        export_checkpoint(wider, out, "m")
    cases = [
        (["export", "--checkpoint", str(wider), "--out", out], "weights do not fit"),
        (["export", "--checkpoint", str(wider), "--out", out, "--no-ema"], "generator weights"),
        (["train", "--resume", "--out", str(wider.parent)], "weights do not fit"),
        (["export", "--checkpoint", str(bare), "--out", out], "incomplete checkpoint: config"),
    ]
    for argv, message in cases:
        assert ganserve_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_generator_that_never_took_a_step_is_not_exported(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """WGAN-GP steps G every 5th batch: a 3-batch dry run never does, and its generator
    is the random init's noise."""
    cfg = TrainConfig(arch="dcgan", loss="wgan-gp", n_critic=5, dry_run=True, epochs=1,
                      g_width=8, d_width=8, out=str(tmp_path / "run"), threads=1,
                      device="cpu", sample_every=0)  # fmt: skip
    ckpt = train(cfg, quiet=True)
    out = tmp_path / "m" / "1" / "model.onnx"
    with pytest.raises(ExportError, match=r"never took a training step \(1 epoch"):
        export_checkpoint(ckpt, out, "m")
    for flags in ([], ["--no-ema"]):  # the raw generator has taken no step either
        assert ganserve_main(["export", "--checkpoint", str(ckpt), "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err
        assert "never took a training step" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("arch", ["dcgan", "cdcgan"])
def test_sample_grid_follows_the_seed_rule(exported: dict, arch: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    _, onnx_path, _ = exported[arch]
    png = write_samples(onnx_path, tmp_path / "samples.png")
    with Image.open(png) as im:
        grid = np.asarray(im)[::2, ::2]  # undo the 2x upscale
    assert grid.shape == (10 * 30 + 2, 10 * 30 + 2)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    # tile (row 1, col 2): seed 12 unconditionally; seed 2 with class 1 conditionally
    if arch == "cdcgan":
        feeds = {"z": latents_from_seeds(2, 1, 100), "y": np.eye(10, dtype=np.float32)[[1]]}
    else:
        feeds = {"z": latents_from_seeds(12, 1, 100)}
    (image,) = session.run(["image"], feeds)
    tile = grid_image(image, ncol=1)[2:30, 2:30]
    assert np.array_equal(grid[32:60, 62:90], tile)


def test_generator_with_a_code_exports_with_z_alone(tmp_path: Path) -> None:
    cfg = TrainConfig(arch="dcgan", codes=10, g_blocks=1, dry_run=True, epochs=1, g_width=8,
                      d_width=8, out=str(tmp_path / "run"), threads=1, device="cpu",
                      sample_every=0)  # fmt: skip
    onnx_path = tmp_path / "models" / "coded" / "1" / "model.onnx"
    diff = export_checkpoint(train(cfg, quiet=True), onnx_path, "coded")
    assert diff <= 1e-4  # verified at batch 1, 7 and 256 (the code's argmax included)
    model = onnx.load(str(onnx_path))
    assert [i.name for i in model.graph.input] == ["z"]
    ops = [n.op_type for n in model.graph.node]
    assert {"ArgMax", "Gather"} <= set(ops)
    assert ops.count("MatMul") + ops.count("Gemm") == 2  # B z and the fc: the code is a Gather
    meta = read_metadata(onnx_path)
    assert meta["ganserve.kind"] == "unconditional" and meta["ganserve.num_classes"] == "0"
    assert json.loads(meta["ganserve.training_config"])["codes"] == 10
    # ... and the served image of a seed is torch's image of that seed's latent
    generator, _ = load_generator(tmp_path / "run" / "checkpoint.pt")
    z = latents_from_seeds(3, 3, 100)  # seeds 3, 4, 5
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["image"], {"z": z})
    with torch.no_grad():
        want = generator(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_write_metadata_adds_and_replaces(exported: dict, tmp_path: Path) -> None:
    _, onnx_path, _ = exported["mlp"]
    copy = tmp_path / "model.onnx"
    copy.write_bytes(onnx_path.read_bytes())
    write_metadata(copy, {"ganserve.quality": json.dumps({"fid": 1.5}), "extra": "x"})
    meta = read_metadata(copy)
    assert json.loads(meta["ganserve.quality"]) == {"fid": 1.5} and meta["extra"] == "x"
    assert meta["ganserve.name"] == "tiny-mlp"


def test_cli_export_layout_and_errors(
    exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt, _, _ = exported["cdcgan"]
    out = tmp_path / "models" / "digits" / "2" / "model.onnx"
    argv = ["export", "--checkpoint", str(ckpt), "--out", str(out)]
    assert ganserve_main(argv) == 0
    meta = read_metadata(out)
    assert (meta["ganserve.name"], meta["ganserve.version"]) == ("digits", "2")
    assert (tmp_path / "models" / "digits" / "samples.png").is_file()
    capsys.readouterr()
    missing = ["export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)]
    assert ganserve_main(missing) == 2
    assert "nope.pt: no such checkpoint" in capsys.readouterr().err


def test_build_model_dry_run_end_to_end(tmp_path: Path) -> None:
    argv = ["build-model", "mnist-cdcgan", "--dry-run", "--models-dir", str(tmp_path / "models"),
            "--runs-dir", str(tmp_path / "runs"), "--threads", "1", "--quiet"]  # fmt: skip
    assert ganserve_main(argv) == 0
    root = tmp_path / "models" / "mnist-cdcgan"
    meta = read_metadata(root / "1" / "model.onnx")
    assert meta["ganserve.name"] == "mnist-cdcgan" and meta["ganserve.kind"] == "conditional"
    assert json.loads(meta["ganserve.training_config"])["dry_run"] is True
    with Image.open(root / "samples.png") as im:
        assert im.size == (604, 604)


def test_build_model_continues_its_own_run_folder(tmp_path: Path) -> None:
    """A build whose run folder holds the recipe's checkpoint resumes it (here: a finished
    run, re-exported), although `ganserve train` refuses a folder with a run in it."""
    data = tmp_path / "data"  # 64 blank images: one batch of the recipe, no shared data
    data.mkdir()
    for name, magic, dims in (("train-images-idx3-ubyte", 2051, (64, 28, 28)),
                              ("train-labels-idx1-ubyte", 2049, (64,))):  # fmt: skip
        header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims)
        (data / name).write_bytes(header + bytes(int(np.prod(dims))))
    argv = ["build-model", "mnist-mlp", "--data-dir", str(data), "--epochs", "1",
            "--runs-dir", str(tmp_path / "runs"), "--models-dir", str(tmp_path / "models"),
            "--no-evaluate", "--threads", "1", "--quiet"]  # fmt: skip
    assert ganserve_main(argv) == 0
    onnx_path = tmp_path / "models" / "mnist-mlp" / "1" / "model.onnx"
    onnx_path.unlink()  # an interrupted build: trained, not exported
    assert ganserve_main(argv) == 0
    assert onnx_path.is_file()
    log = (tmp_path / "runs" / "mnist-mlp" / "log.jsonl").read_text().splitlines()
    assert len(log) == 1  # resumed with nothing left to train, not retrained


def test_build_model_one_data_dir_for_two_data_sets_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["build-model", "mnist-dcgan", "fashion-cdcgan", "--data-dir", str(tmp_path)]
    assert ganserve_main(argv) == 2
    assert "--data-root" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--eval-repeats", "0"], "--eval-repeats"),
        (["--eval-n", "3"], "--eval-repeats"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_build_model_refuses_a_bad_evaluation_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    argv = ["build-model", "mnist-dcgan", "--runs-dir", str(tmp_path / "runs"), *flags]
    assert ganserve_main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_run_mismatch_names_what_differs_from_the_recipe() -> None:
    cfg = get_recipe("mnist-infogan").train_config("runs/mnist-infogan", None, threads=2)
    saved = asdict(cfg) | {"out": "elsewhere", "threads": 1, "data_dir": "/d"}  # run-only
    assert run_mismatch(saved, cfg.epochs - 1, cfg) == []  # an unfinished run of the recipe
    diff = run_mismatch(saved | {"codes": 0}, cfg.epochs + 50, cfg)
    assert diff == ["codes=0 (recipe: 10)", f"{cfg.epochs + 50} epochs done (recipe: {cfg.epochs})"]


def test_build_model_refuses_another_recipes_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A run folder left by another recipe is not resumed and exported under this name."""
    runs = tmp_path / "runs"
    dry = ["train", "--arch", "dcgan", "--dry-run", "--out", str(runs / "mnist-mlp"), "--quiet"]
    assert ganserve_main(dry) == 0
    argv = ["build-model", "mnist-mlp", "--runs-dir", str(runs), "--models-dir",
            str(tmp_path / "models"), "--no-evaluate", "--quiet"]  # fmt: skip
    assert ganserve_main(argv) == 2
    err = capsys.readouterr().err
    assert "not the mnist-mlp recipe's" in err and "arch='dcgan' (recipe: 'mlp')" in err
    assert not (tmp_path / "models").exists()  # nothing was exported
